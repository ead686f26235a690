"""GAN training and validation for super-resolution (ESRGAN, SE-ESRGAN) on ``monai.engines`` (Ignite), 2D and 3D.

- :class:`SuperResolutionTrainer`: ESRGAN's two-phase schedule in one run: a PSNR-oriented phase (generator only,
  L1) for ``pretrain_epochs`` epochs, then relativistic-average GAN training of generator and discriminator that
  continues from the same generator. Separate optimisers, optional per-iteration or per-epoch lr schedulers, AMP with
  one ``GradScaler`` per optimiser (fp16 only), and a state that :class:`pipelines.engines.ResumableCheckpoint`
  saves and restores in full (networks, optimisers, schedulers, scalers, epoch, iteration, phase).
- :class:`SuperResolutionEvaluator`: a ``SupervisedEvaluator`` mapping ``lr -> image`` and ``hr -> label`` that
  also computes the bicubic (2D) or trilinear (3D) interpolation of the LR input, so the network and the
  interpolation baseline are measured by the same metrics in the same run (:func:`super_resolution_metrics`:
  PSNR, SSIM, MSE, each also as ``*_interp``).
- :class:`SuperResolutionPrepareBatch`; ``pretrained_generator`` weights are read by
  :func:`pipelines.io.weights.load_weights` (local files only, never downloads).

MONAI lacks a supervised (paired, conditional) GAN trainer with a pre-training phase: ``GanTrainer`` draws random
latent codes, and ``AdversarialTrainer`` has a single ``g_loss_function(fake_logits)`` (no real logits, so no
relativistic loss, no discriminator features) and no pre-training phase.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Events
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader

from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator, Trainer
from monai.engines.utils import IterationEvents, PrepareBatch, default_metric_cmp_fn
from monai.handlers import IgniteMetricHandler, MeanSquaredError, PeakSignalToNoiseRatio, from_engine
from monai.inferers import Inferer
from monai.metrics import SSIMMetric
from monai.utils import CommonKeys as Keys

from pipelines.io.weights import load_weights
from pipelines.losses import GeneratorLoss, l1_pixel_loss, ragan_discriminator_loss

__all__ = [
    "PHASE_PSNR",
    "PHASE_GAN",
    "SuperResolutionPrepareBatch",
    "SuperResolutionTrainer",
    "SuperResolutionEvaluator",
    "interpolate_to",
    "loss_output_transform",
    "resolve_amp_dtype",
    "super_resolution_metrics",
]

logger = logging.getLogger(__name__)

PHASE_PSNR = "psnr"
PHASE_GAN = "gan"
SCHEDULER_STEPS = ("iteration", "epoch")
INTERP_KEY = "interp"


def resolve_amp_dtype(amp_dtype: torch.dtype | str | None, device: torch.device | str) -> torch.dtype:
    """The autocast dtype: ``amp_dtype`` (a dtype or its name, e.g. ``"bfloat16"``) or, when ``None``, bfloat16
    where the device supports it (CPU; CUDA with ``torch.cuda.is_bf16_supported()``) and float16 otherwise."""
    if isinstance(amp_dtype, str):
        name = amp_dtype.removeprefix("torch.")
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown amp_dtype {amp_dtype!r}.")
        return dtype
    if amp_dtype is not None:
        return amp_dtype
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def interpolate_to(x: torch.Tensor, size: Sequence[int], mode: str | None = None) -> torch.Tensor:
    """Up-sample a ``(B, C, *spatial)`` batch to ``size`` with ``F.interpolate`` (``align_corners=False``).

    ``mode=None`` picks the classical super-resolution baseline: bicubic in 2D, trilinear in 3D (PyTorch has no
    tricubic mode). The computation runs in float32 and returns a plain tensor.
    """
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    spatial_dims = x.ndim - 2
    if mode is None:
        mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[spatial_dims]
    align = None if mode in ("nearest", "nearest-exact", "area") else False
    return F.interpolate(x.float(), size=tuple(int(s) for s in size), mode=mode, align_corners=align)


class SuperResolutionPrepareBatch(PrepareBatch):
    """Return ``(batch[lr_key], batch[hr_key])`` on ``device``: the ``(inputs, targets)`` pair MONAI engines expect.

    With a ``SupervisedEvaluator`` the LR image becomes the engine output's ``"image"`` and the HR image its
    ``"label"``. A missing ``hr_key`` gives ``None`` as target (inference only).
    """

    def __init__(self, lr_key: str = "lr", hr_key: str = "hr") -> None:
        self.lr_key = lr_key
        self.hr_key = hr_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(batchdata, dict) or self.lr_key not in batchdata:
            keys = list(batchdata) if isinstance(batchdata, dict) else type(batchdata).__name__
            raise KeyError(f"expected a batch dict with key {self.lr_key!r} (and {self.hr_key!r}), got {keys}.")
        lr = batchdata[self.lr_key].to(device=device, non_blocking=non_blocking, **kwargs)
        hr = batchdata.get(self.hr_key)
        if hr is not None:
            hr = hr.to(device=device, non_blocking=non_blocking, **kwargs)
        return lr, hr


def _loss_term_names(g_loss: Callable) -> tuple[str, ...]:
    """Names of the terms a :class:`GeneratorLoss` reports (so that pre-training iterations report them as 0)."""
    if not isinstance(g_loss, GeneratorLoss):
        return ()
    names = []
    if g_loss.pixel_weight:
        names.append("pixel")
    if g_loss.gan_weight:
        names.append("gan")
    if g_loss.content_weight and g_loss.content_loss is not None:
        names.append("content")
    if g_loss.ssim_loss is not None:
        names.append("ssim")
    if g_loss.edge_loss is not None:
        names.append("edge")
    return tuple(names)


class SuperResolutionTrainer(Trainer):
    """Paired GAN training for super-resolution: ESRGAN's PSNR-oriented pre-training, then RaGAN training.

    **Why ``monai.engines.Trainer`` and not ``GanTrainer``:** ``GanTrainer`` generates fakes from random latent codes
    (``g_prepare_batch`` makes latents, ``g_loss_function(fakes)`` never sees the target), trains D before G, has no
    AMP and no grad scalers, and returns only ``g_loss``/``d_loss``; its ``_iteration`` would be replaced entirely,
    and its constructor arguments (latent shape, ``d_train_steps``) would be meaningless. ``AdversarialTrainer`` is
    closer (paired data, G then D, AMP) but calls ``g_loss_function(fake_logits)`` without the real logits or the
    discriminator features, so neither a relativistic loss nor feature matching fits, and it has no pre-training
    phase. So this class derives from ``Trainer`` (Ignite engine, metrics, handlers, decollation, postprocessing)
    and writes the iteration itself.

    **Phases.** ``engine.state.phase`` is ``"psnr"`` while ``epoch <= pretrain_epochs`` and ``"gan"`` afterwards; it
    is set at every ``EPOCH_STARTED`` (before any handler in ``train_handlers`` runs) and a line is logged when it
    changes. The GAN phase continues from the same generator object.

    - ``"psnr"``: ``sr = G(lr)``, ``loss = pretrain_loss(sr, hr)`` (L1), one generator step. The discriminator is
      not run at all (weights, BN statistics and optimiser state stay untouched).
    - ``"gan"`` (ESRGAN/BasicSR order): generator step with D frozen on
      ``g_loss(sr, hr, D(sr), D(hr).detach(), features...)``, then a discriminator step on
      ``d_loss(D(hr), D(sr.detach()))`` (:func:`~pipelines.losses.ragan_discriminator_loss`: both relativistic
      terms). The discriminator may have a patch head (any input size) or an fc head (then every HR training patch
      must have the size it was built for). Discriminator features are requested only when ``g_loss`` needs them
      (:class:`~pipelines.losses.GeneratorLoss` with ``content="feature_matching"``).

    **Output** (``engine.state.output``, decollated into a list of per-item dicts when ``decollate=True``):
    ``"lr"``, ``"hr"``, ``"pred"`` (detached, float32), ``"g_loss"`` and ``"loss"`` (the same value, so
    ``StatsHandler(output_transform=from_engine(["loss"], first=True))`` works), ``"d_loss"`` (0 in the PSNR phase),
    ``"d_real"``/``"d_fake"`` (mean discriminator logits, 0 in the PSNR phase), ``"g_<term>"`` for each term of a
    :class:`~pipelines.losses.GeneratorLoss` (``g_pixel``, ``g_gan``, ``g_content``, ...; in the PSNR phase
    ``g_pixel`` is the pre-training loss and the other terms are 0) and ``"phase"``.

    **Learning-rate schedulers.** ``g_lr_scheduler`` and ``d_lr_scheduler`` are stepped every iteration
    (``lr_scheduler_step="iteration"``, right after the optimiser step, as ESRGAN's iteration-based milestones) or at
    every epoch end (``"epoch"``, before any handler in ``train_handlers`` so a checkpoint saved at that epoch end
    holds the stepped scheduler). The generator's scheduler runs through both phases (its clock starts at
    iteration 1; use ``SequentialLR`` for a separate GAN-phase schedule); the discriminator's is stepped only in the
    GAN phase (its clock starts with the discriminator's first step). Schedulers that need a metric
    (``ReduceLROnPlateau``) belong in a ``LrScheduleHandler`` instead.

    **AMP.** ``amp=True`` runs the forward passes under ``torch.autocast(device.type, dtype=amp_dtype)``; the
    default dtype is bfloat16 on CPU and on CUDA devices that support it, float16 otherwise. With float16 each
    optimiser gets its own ``torch.amp.GradScaler`` (``engine.g_scaler``, ``engine.d_scaler``); bfloat16 needs none.

    **Resume.** :meth:`checkpoint_objects` names everything a resumable checkpoint needs (generator, discriminator,
    both optimisers, schedulers, scalers); :class:`~pipelines.engines.ResumableCheckpoint` picks them up on its own,
    and the trainer's ``state_dict()`` carries ``phase`` beside epoch and iteration.

    Args:
        device: device to train on.
        max_epochs: total number of epochs (pre-training included).
        train_data_loader: batches as dicts with ``lr_key`` ``(B, C, *lr_spatial)`` and ``hr_key``
            ``(B, C, *hr_spatial)`` float tensors, usually in [0, 1].
        generator: super-resolution network ``G``, e.g. :class:`networks.esrgan.RRDBNet`.
        discriminator: ``D`` returning logits (any shape), and ``(logits, features)`` when called with
            ``return_features=True`` (:class:`networks.esrgan.VGGStyleDiscriminator`).
        g_optimizer: optimiser of the generator's parameters.
        d_optimizer: optimiser of the discriminator's parameters.
        g_loss: GAN-phase generator objective; a :class:`~pipelines.losses.GeneratorLoss` (its ``terms`` are
            logged) or any callable ``(sr, hr, fake_logits, real_logits, fake_features, real_features) -> loss``.
            Default: ``GeneratorLoss(spatial_dims)`` with ESRGAN's weights (pixel 1e-2, adversarial 5e-3,
            content 1) and discriminator feature matching as content term.
        d_loss: discriminator objective ``(real_logits, fake_logits) -> loss``; default RaGAN with both terms.
        pretrain_loss: PSNR-phase objective ``(sr, hr) -> loss``; default L1.
        pretrain_epochs: number of PSNR-oriented epochs before the GAN phase (0: GAN from the first epoch).
        pretrained_generator: local file of generator weights loaded at construction (see
            :func:`pipelines.io.weights.load_weights`), typically the ``model.pt`` of a PSNR-oriented run with
            ``pretrain_epochs=0``. A resumed checkpoint overrides it. Never downloads.
        lr_key: key of the low-resolution input in the batch dict.
        hr_key: key of the high-resolution target in the batch dict.
        epoch_length: iterations per epoch; default ``len(train_data_loader)``.
        non_blocking: asynchronous host-to-device copies.
        g_lr_scheduler: optional scheduler of ``g_optimizer``.
        d_lr_scheduler: optional scheduler of ``d_optimizer``.
        lr_scheduler_step: ``"iteration"`` or ``"epoch"``: when the schedulers are stepped.
        amp: mixed precision.
        amp_dtype: autocast dtype (a ``torch.dtype`` or its name); ``None`` picks as described above.
        postprocessing: transforms applied to the output after each iteration (as in MONAI trainers).
        key_train_metric: Ignite metric computed on the training output, e.g. PSNR of ``("pred", "hr")``.
        additional_metrics: more Ignite metrics.
        metric_cmp_fn: comparison of the key metric with the best so far.
        train_handlers: handlers with ``attach(engine)``; attached after the trainer's own event handlers.
        decollate: decollate the output into a list of per-item dicts (MONAI default).
        optim_set_to_none: ``zero_grad(set_to_none=...)``.
        to_kwargs: extra arguments of ``Tensor.to`` for the batch.
        spatial_dims: spatial dims of the default ``g_loss``; default ``generator.spatial_dims``, else 2.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        generator: torch.nn.Module,
        discriminator: torch.nn.Module,
        g_optimizer: Optimizer,
        d_optimizer: Optimizer,
        g_loss: Callable | None = None,
        d_loss: Callable = ragan_discriminator_loss,
        pretrain_loss: Callable = l1_pixel_loss,
        pretrain_epochs: int = 0,
        pretrained_generator: str | Path | None = None,
        lr_key: str = "lr",
        hr_key: str = "hr",
        epoch_length: int | None = None,
        non_blocking: bool = False,
        g_lr_scheduler: Any = None,
        d_lr_scheduler: Any = None,
        lr_scheduler_step: str = "iteration",
        amp: bool = False,
        amp_dtype: torch.dtype | str | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        decollate: bool = True,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        spatial_dims: int | None = None,
    ) -> None:
        if pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be >= 0, got {pretrain_epochs}.")
        if lr_scheduler_step not in SCHEDULER_STEPS:
            raise ValueError(f"lr_scheduler_step must be one of {SCHEDULER_STEPS}, got {lr_scheduler_step!r}.")
        device = torch.device(device)
        self.amp_dtype = resolve_amp_dtype(amp_dtype, device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=SuperResolutionPrepareBatch(lr_key, hr_key),
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=None,  # attached below, after the trainer's own handlers
            amp=amp,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs={"dtype": self.amp_dtype},
        )
        if pretrained_generator:
            load_weights(generator, pretrained_generator)
            logger.info("loaded pretrained generator weights from %s", pretrained_generator)
        if g_loss is None:
            g_loss = GeneratorLoss(spatial_dims=spatial_dims or getattr(generator, "spatial_dims", 2)).to(device)
        self.generator = generator
        self.discriminator = discriminator
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.g_loss = g_loss
        self.d_loss = d_loss
        self.pretrain_loss = pretrain_loss
        self.pretrain_epochs = int(pretrain_epochs)
        self.lr_key = lr_key
        self.hr_key = hr_key
        self.g_lr_scheduler = g_lr_scheduler
        self.d_lr_scheduler = d_lr_scheduler
        self.lr_scheduler_step = lr_scheduler_step
        self.optim_set_to_none = optim_set_to_none
        self._term_names = _loss_term_names(g_loss)
        # discriminator features are computed only for a feature-matching content term
        self._needs_features = getattr(g_loss, "content", None) == "feature_matching" and bool(
            getattr(g_loss, "content_weight", 0)
        )
        # a GradScaler per optimiser, for float16 only (bfloat16 has float32's exponent range)
        use_scaler = amp and self.amp_dtype == torch.float16
        self.g_scaler = torch.amp.GradScaler(device.type) if use_scaler else None
        self.d_scaler = torch.amp.GradScaler(device.type) if use_scaler else None
        self._run_started = False

        self.state.phase = self.phase_of_epoch(1)
        self._state_dict_user_keys.append("phase")
        self.add_event_handler(Events.STARTED, self._mark_run_started)
        self.add_event_handler(Events.EPOCH_STARTED, self._update_phase)
        if lr_scheduler_step == "epoch":
            self.add_event_handler(Events.EPOCH_COMPLETED, self._step_schedulers)
        if train_handlers is not None:
            self._register_handlers(train_handlers)

    # ----------------------------------------------------------------------------------------------------------------
    def phase_of_epoch(self, epoch: int) -> str:
        """``"psnr"`` for ``epoch <= pretrain_epochs`` (1-based epochs), ``"gan"`` otherwise."""
        return PHASE_PSNR if epoch <= self.pretrain_epochs else PHASE_GAN

    def _mark_run_started(self, engine: SuperResolutionTrainer) -> None:
        self._run_started = True

    def _update_phase(self, engine: SuperResolutionTrainer) -> None:
        """Set ``state.phase`` from the epoch (after a resume: from the restored epoch) and log the phase."""
        previous = engine.state.phase
        phase = self.phase_of_epoch(engine.state.epoch)
        engine.state.phase = phase
        epoch = engine.state.epoch
        if previous == PHASE_GAN and phase == PHASE_PSNR:
            self.logger.warning(
                "epoch %d: the restored state was in the GAN phase but pretrain_epochs=%d puts this epoch in the "
                "PSNR phase again.",
                epoch,
                self.pretrain_epochs,
            )
        if phase != previous and epoch > 1:
            self.logger.info("epoch %d: switching training phase from %r to %r", epoch, previous, phase)
        elif self._run_started:
            described = "PSNR-oriented pre-training (generator only, L1)" if phase == PHASE_PSNR else "GAN training"
            self.logger.info("epoch %d: training phase %r: %s", epoch, phase, described)
        self._run_started = False

    def _step_schedulers(self, engine: SuperResolutionTrainer | None = None) -> None:
        if self.g_lr_scheduler is not None:
            self.g_lr_scheduler.step()
        if self.d_lr_scheduler is not None and self.state.phase == PHASE_GAN:
            self.d_lr_scheduler.step()

    def checkpoint_objects(self) -> dict[str, Any]:
        """Objects with ``state_dict``/``load_state_dict`` that a resumable checkpoint must hold, by name.

        :class:`~pipelines.engines.ResumableCheckpoint` adds them to its ``save_dict`` (its own entries win), along
        with the trainer itself (epoch, iteration, phase).
        """
        objects = {
            "generator": self.generator,
            "discriminator": self.discriminator,
            "g_optimizer": self.g_optimizer,
            "d_optimizer": self.d_optimizer,
            "g_lr_scheduler": self.g_lr_scheduler,
            "d_lr_scheduler": self.d_lr_scheduler,
            "g_scaler": self.g_scaler,
            "d_scaler": self.d_scaler,
        }
        return {k: v for k, v in objects.items() if v is not None}

    def load_state_dict(self, state_dict: Any) -> None:
        """Ignite's ``load_state_dict``; a state without ``phase`` (an older checkpoint) gets it from its epoch."""
        if "phase" not in state_dict:
            state_dict = dict(state_dict)
            epoch_length = state_dict.get("epoch_length") or 1
            epoch = state_dict.get("epoch", state_dict.get("iteration", 0) // epoch_length)
            state_dict["phase"] = self.phase_of_epoch(max(int(epoch), 1))
        super().load_state_dict(state_dict)

    def run(self) -> None:  # type: ignore[override]
        """Train (or continue training) up to ``max_epochs``.

        ``Trainer.run`` would create one ``torch.cuda.amp.GradScaler`` in ``self.scaler``; this trainer keeps one
        scaler per optimiser instead, created once at construction so that a resumed state is not overwritten.
        """
        self.scaler = None
        super(Trainer, self).run()

    # ----------------------------------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.state.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def _backward_step(self, loss: torch.Tensor, optimizer: Optimizer, scaler: Any) -> None:
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def _discriminate(self, x: torch.Tensor, features: bool) -> tuple[torch.Tensor, list | None]:
        """The frozen discriminator of the generator step. Under ``DistributedDataParallel`` the wrapped module is
        called directly: the discriminator's gradients are not used in this step, so DDP's reducer preparation and
        buffer broadcast are skipped (with PyTorch 2.13 and gloo, calling the wrapper works as well; tested both)."""
        discriminator = self.discriminator
        if isinstance(discriminator, torch.nn.parallel.DistributedDataParallel):
            discriminator = discriminator.module
        if features:
            logits, feats = discriminator(x, return_features=True)
            return logits, list(feats)
        return discriminator(x), None

    def _iteration(self, engine: SuperResolutionTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One training iteration: a generator step in the PSNR phase; a generator and a discriminator step in the
        GAN phase. See the class docstring for the output keys."""
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        lr, hr = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if hr is None:
            raise KeyError(f"training batches need the high-resolution key {engine.hr_key!r}.")
        phase = engine.phase_of_epoch(engine.state.epoch)
        engine.state.phase = phase
        zero = torch.zeros((), device=hr.device)
        out: dict[str, Any] = {engine.lr_key: lr, engine.hr_key: hr}

        # ---- generator step
        engine.generator.train()
        engine.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if phase == PHASE_PSNR:
            with engine._autocast():
                sr = engine.generator(lr)
                g_total = engine.pretrain_loss(sr.float(), hr)
            terms = {name: zero for name in engine._term_names}
            terms["pixel"] = g_total.detach()
        else:
            engine.discriminator.train()
            needs_features = engine._needs_features
            engine.discriminator.requires_grad_(False)
            try:
                with engine._autocast():
                    sr = engine.generator(lr)
                    real_logits, real_feats = engine._discriminate(hr, needs_features)
                    fake_logits, fake_feats = engine._discriminate(sr, needs_features)
                    g_args = (sr.float(), hr, fake_logits.float(), real_logits.detach().float())
                    g_feats = (fake_feats, [f.detach() for f in real_feats] if real_feats is not None else None)
                    if hasattr(engine.g_loss, "terms"):
                        terms = dict(engine.g_loss.terms(*g_args, *g_feats))
                        g_total = terms.pop("total")
                    else:
                        g_total = engine.g_loss(*g_args, *g_feats)
                        terms = {}
            finally:
                engine.discriminator.requires_grad_(True)
            terms = {k: v.detach() for k, v in terms.items()}
        engine._backward_step(g_total, engine.g_optimizer, engine.g_scaler)

        # ---- discriminator step (GAN phase only)
        d_total, d_real, d_fake = zero, zero, zero
        if phase == PHASE_GAN:
            engine.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            with engine._autocast():
                real_logits = engine.discriminator(hr).float()
                fake_logits = engine.discriminator(sr.detach()).float()
                d_total = engine.d_loss(real_logits, fake_logits)
            engine._backward_step(d_total, engine.d_optimizer, engine.d_scaler)
            d_total, d_real, d_fake = d_total.detach(), real_logits.detach().mean(), fake_logits.detach().mean()

        if engine.lr_scheduler_step == "iteration":
            engine._step_schedulers()

        g_total = g_total.detach()
        out.update(
            {
                Keys.PRED: sr.detach().float(),
                "g_loss": g_total,
                Keys.LOSS: g_total,
                "d_loss": d_total,
                "d_real": d_real,
                "d_fake": d_fake,
                "phase": phase,
            }
        )
        out.update({f"g_{name}": value for name, value in terms.items()})
        engine.state.output = out
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


#: scalar keys of :class:`SuperResolutionTrainer`'s output, in the order they are usually plotted
LOSS_KEYS = ("g_loss", "d_loss", "g_pixel", "g_gan", "g_content", "g_ssim", "g_edge", "d_real", "d_fake")


def loss_output_transform(keys: Sequence[str] = LOSS_KEYS, prefix: str = "train_") -> Callable[[Any], dict]:
    """An ``output_transform`` giving ``{prefix + key: value}`` of the first item for each of ``keys`` present.

    For ``TensorBoardStatsHandler``, which writes a returned dict as one scalar curve per key (MONAI's
    ``from_engine`` returns a tuple, which it would not plot), so generator and discriminator losses and the
    individual terms show up together: ``{"_target_": "pipelines.engines.gan.loss_output_transform"}``.
    """

    def transform(output: Any) -> dict:
        item = output[0] if isinstance(output, list) and output else output
        if not isinstance(item, dict):
            return {}
        return {f"{prefix}{k}": float(item[k]) for k in keys if k in item and item[k] is not None}

    return transform


def super_resolution_metrics(
    spatial_dims: int,
    data_range: float = 1.0,
    prefix: str = "val",
    pred_key: str = Keys.PRED,
    label_key: str = Keys.LABEL,
    interp_key: str | None = INTERP_KEY,
    ssim_kwargs: dict | None = None,
) -> tuple[dict, dict]:
    """PSNR (key metric), SSIM and MSE of ``pred_key`` against ``label_key``, and the same three for ``interp_key``.

    Returns ``(key_metric, additional_metrics)``: ``{"<prefix>_psnr": ...}`` and ``{"<prefix>_ssim", "<prefix>_mse",
    "<prefix>_psnr_interp", "<prefix>_ssim_interp", "<prefix>_mse_interp"}`` (no ``*_interp`` when ``interp_key`` is
    None). PSNR and MSE are :mod:`monai.handlers` handlers; MONAI has no SSIM handler, so SSIM is
    ``IgniteMetricHandler(SSIMMetric(spatial_dims, data_range))``. A perfect prediction has MSE 0 and PSNR ``inf``
    (MONAI's ``PSNRMetric``), which compares, logs and checkpoints fine.

    Args:
        spatial_dims: 2 or 3.
        data_range: intensity range of the images (1.0 for [0, 1]); PSNR's peak and SSIM's range.
        prefix: metric name prefix.
        pred_key: output key of the network's prediction.
        label_key: output key of the reference HR image.
        interp_key: output key of the interpolated LR image, or ``None``.
        ssim_kwargs: more :class:`monai.metrics.SSIMMetric` arguments (``win_size`` 11 needs HR images of at least
            11 voxels per axis; pass a smaller one for small images).
    """

    def make(key: str, suffix: str) -> dict:
        transform = from_engine([key, label_key])
        return {
            f"{prefix}_psnr{suffix}": PeakSignalToNoiseRatio(max_val=data_range, output_transform=transform),
            f"{prefix}_ssim{suffix}": IgniteMetricHandler(
                metric_fn=SSIMMetric(spatial_dims, data_range=data_range, **(ssim_kwargs or {})),
                output_transform=transform,
            ),
            f"{prefix}_mse{suffix}": MeanSquaredError(output_transform=transform),
        }

    net = make(pred_key, "")
    key_name = f"{prefix}_psnr"
    key = {key_name: net.pop(key_name)}
    if interp_key is not None:
        net.update(make(interp_key, "_interp"))
    return key, net


class SuperResolutionEvaluator(SupervisedEvaluator):
    """Validation of a super-resolution generator, with the interpolation baseline in the same pass.

    ``lr_key``/``hr_key`` become the output's ``"image"`` and ``"label"`` (:class:`SuperResolutionPrepareBatch`);
    the generator runs through ``inferer`` (``SimpleInferer``, or ``SlidingWindowInferer`` with an LR ``roi_size``:
    MONAI's sliding window accepts outputs larger than the window by an integer factor per axis). After the
    forward pass the output also holds ``"interp"``: the LR image up-sampled to the HR size (bicubic in 2D,
    trilinear in 3D, :func:`interpolate_to`). ``"pred"`` is cast to float32 and, like ``"interp"``, clamped to
    ``clamp`` (the data range, as an image is when stored), so both are scored the same way.

    With ``key_val_metric=None`` the metrics of :func:`super_resolution_metrics` are used: ``val_psnr`` (key metric,
    so ``CheckpointSaver(save_key_metric=True, key_metric_filename="model.pt")`` keeps the best-PSNR generator),
    ``val_ssim``, ``val_mse`` and ``val_psnr_interp``, ``val_ssim_interp``, ``val_mse_interp``.
    ``additional_metrics`` are added to those.

    Args:
        device: device to evaluate on.
        val_data_loader: batches as dicts with ``lr_key`` and ``hr_key``.
        network: the generator.
        spatial_dims: 2 or 3 (for SSIM and the interpolation mode).
        inferer: MONAI inferer for the generator; default ``SimpleInferer()``.
        lr_key: key of the low-resolution input.
        hr_key: key of the high-resolution reference.
        key_val_metric: key metric; default PSNR as described.
        additional_metrics: more metrics.
        metric_prefix: prefix of the default metric names.
        data_range: intensity range of the images.
        ssim_kwargs: more :class:`monai.metrics.SSIMMetric` arguments for the default metrics.
        interp_baseline: compute ``"interp"`` (and its default metrics).
        interp_mode: ``F.interpolate`` mode; default bicubic (2D) or trilinear (3D).
        clamp: ``(min, max)`` applied to ``"pred"`` and ``"interp"``, or ``None``.
        val_handlers: handlers with ``attach(engine)``, attached after the evaluator's own event handlers.
        amp: mixed-precision inference with ``torch.autocast(device.type, dtype=amp_dtype)``.
        amp_dtype: autocast dtype (see :func:`resolve_amp_dtype`).
        other arguments: as :class:`monai.engines.SupervisedEvaluator`.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        spatial_dims: int,
        inferer: Inferer | None = None,
        lr_key: str = "lr",
        hr_key: str = "hr",
        key_val_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_prefix: str = "val",
        data_range: float = 1.0,
        ssim_kwargs: dict | None = None,
        interp_baseline: bool = True,
        interp_mode: str | None = None,
        clamp: Sequence[float] | None = (0.0, 1.0),
        val_handlers: Sequence | None = None,
        amp: bool = False,
        amp_dtype: torch.dtype | str | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        postprocessing: Callable | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        decollate: bool = True,
        to_kwargs: dict | None = None,
    ) -> None:
        device = torch.device(device)
        self.amp_dtype = resolve_amp_dtype(amp_dtype, device)
        if key_val_metric is None:
            key_val_metric, defaults = super_resolution_metrics(
                spatial_dims,
                data_range=data_range,
                prefix=metric_prefix,
                interp_key=INTERP_KEY if interp_baseline else None,
                ssim_kwargs=ssim_kwargs,
            )
            additional_metrics = {**defaults, **(additional_metrics or {})}
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            network=network,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=SuperResolutionPrepareBatch(lr_key, hr_key),
            inferer=inferer,
            postprocessing=postprocessing,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            val_handlers=None,  # attached below, after the evaluator's own handlers
            amp=amp,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs={"dtype": self.amp_dtype},
        )
        self.spatial_dims = spatial_dims
        self.interp_baseline = interp_baseline
        self.interp_mode = interp_mode
        self.clamp = None if clamp is None else (float(clamp[0]), float(clamp[1]))
        self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._add_baseline)
        if val_handlers is not None:
            self._register_handlers(val_handlers)

    def _iteration(self, engine: SuperResolutionEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:
        """``SupervisedEvaluator._iteration`` under ``torch.autocast(device.type)``: MONAI's autocasts ``"cuda"``
        only, so ``amp=True`` would be a no-op (with a warning) on other devices."""
        if not engine.amp or engine.state.device.type == "cuda":
            return super()._iteration(engine, batchdata)
        amp, engine.amp = engine.amp, False
        try:
            with torch.autocast(engine.state.device.type, dtype=engine.amp_dtype):
                return super()._iteration(engine, batchdata)
        finally:
            engine.amp = amp

    def _add_baseline(self, engine: SuperResolutionEvaluator) -> None:
        output = engine.state.output
        pred = output[Keys.PRED].float()
        if self.clamp is not None:
            pred = pred.clamp(*self.clamp)
        output[Keys.PRED] = pred
        label = output.get(Keys.LABEL)
        if self.interp_baseline:
            image = output[Keys.IMAGE]
            size = label.shape[2:] if label is not None else pred.shape[2:]
            with torch.no_grad(), torch.autocast(engine.state.device.type, enabled=False):
                interp = interpolate_to(image, size, self.interp_mode)
            if self.clamp is not None:
                interp = interp.clamp(*self.clamp)
            output[INTERP_KEY] = interp
