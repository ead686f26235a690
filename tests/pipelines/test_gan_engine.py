"""Tests for pipelines.engines.gan: GAN super-resolution training (phases, AMP, resume), validation metrics with the
interpolation baseline, and the LR | SR | HR TensorBoard handler, on tiny networks and smooth synthetic fields."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from torch.utils.data import DataLoader

from monai.handlers import CheckpointSaver, ValidationHandler
from monai.inferers import SlidingWindowInferer
from networks.esrgan import RRDBNet, VGGStyleDiscriminator
from pipelines.engines import (
    ResumableCheckpoint,
    SuperResolutionEvaluator,
    SuperResolutionTrainer,
    TensorBoardTriplets,
)
from pipelines.engines.gan import loss_output_transform
from pipelines.engines.handlers import triplet_panel
from pipelines.io.weights import load_weights
from pipelines.losses import GeneratorLoss


# ------------------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The networks here are tiny: one intra-op thread is fastest, and on a busy 2-core machine several threads
    spinning on each other's barriers make these tests 10-20 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_pairs(n: int, hr_shape: tuple[int, ...], scale: tuple[int, ...], seed: int = 0) -> list[dict]:
    """``n`` smooth random HR fields in [0, 1] (coarse noise up-sampled) and their LR versions (average pooling)."""
    g = torch.Generator().manual_seed(seed)
    dims = len(hr_shape)
    coarse = torch.rand(n, 1, *(max(s // 4, 2) for s in hr_shape), generator=g)
    mode = "bicubic" if dims == 2 else "trilinear"
    hr = F.interpolate(coarse, size=hr_shape, mode=mode, align_corners=False).clamp(0, 1)
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    lr = pool(hr, kernel_size=scale, stride=scale)
    return [{"lr": lr[i], "hr": hr[i]} for i in range(n)]


def tiny_generator(dims: int, scale, seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(dims, 1, 1, features=8, growth_channels=4, num_blocks=1, scale=scale)


def tiny_discriminator(dims: int, head: str, hr_shape, seed: int = 0) -> VGGStyleDiscriminator:
    torch.manual_seed(seed + 1)
    return VGGStyleDiscriminator(
        dims, 1, in_shape=hr_shape if head == "fc" else None, features=4, channel_mults=(1, 2), head=head,
        fc_hidden=8,
    )


def make_trainer(dims=2, head="patch", pretrain_epochs=1, max_epochs=2, seed=0, data=None, handlers=None, **kwargs):
    hr_shape = (16, 16) if dims == 2 else (12, 12, 12)
    scale = (2, 2) if dims == 2 else (1, 1, 2)
    data = data if data is not None else smooth_pairs(4, hr_shape, scale)
    gen = tiny_generator(dims, scale, seed)
    disc = tiny_discriminator(dims, head, hr_shape, seed)
    g_opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    trainer = SuperResolutionTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=DataLoader(data, batch_size=2, shuffle=False),
        generator=gen,
        discriminator=disc,
        g_optimizer=g_opt,
        d_optimizer=d_opt,
        g_loss=kwargs.pop("g_loss", None),  # None: GeneratorLoss(generator.spatial_dims), ESRGAN weights
        pretrain_epochs=pretrain_epochs,
        train_handlers=handlers,
        **kwargs,
    )
    return trainer


def clone_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def first(output, key):
    item = output[0] if isinstance(output, list) else output
    return item[key]


# ------------------------------------------------------------------------------------------------------------ trainer
def test_psnr_phase_loss_decreases_and_discriminator_untouched():
    data = smooth_pairs(2, (16, 16), (2, 2))
    trainer = make_trainer(dims=2, pretrain_epochs=100, max_epochs=30, data=data)
    d_before = clone_state(trainer.discriminator)
    losses = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(float(first(e.state.output, "g_loss")))
    )
    trainer.run()
    assert len(losses) == 30 and trainer.state.phase == "psnr"
    # L1 on a fixed batch: the untrained generator (small init, output near 0) is about 0.55 off fields of mean
    # about 0.5; 30 Adam steps (lr 1e-3) bring it below 0.2 (0.557 -> 0.168 with these seeds)
    assert losses[0] > 0.3
    assert losses[-1] < 0.4 * losses[0]
    assert min(losses[-5:]) < min(losses[:5])
    assert float(first(trainer.state.output, "d_loss")) == 0.0
    assert float(first(trainer.state.output, "g_pixel")) == pytest.approx(losses[-1])
    assert states_equal(d_before, trainer.discriminator.state_dict())  # weights and BN statistics
    assert not trainer.d_optimizer.state


@pytest.mark.parametrize("dims,head", [(2, "fc"), (3, "patch")])
def test_phase_switch_and_discriminator_steps_only_in_gan_phase(dims, head, caplog):
    records = []

    def snapshot(engine):
        records.append((engine.state.epoch, engine.state.phase, clone_state(engine.discriminator), engine.state.output))

    trainer = make_trainer(dims=dims, head=head, pretrain_epochs=1, max_epochs=2)
    assert isinstance(trainer.g_loss, GeneratorLoss) and trainer.g_loss.ssim_loss is None
    assert (trainer.g_loss.pixel_weight, trainer.g_loss.gan_weight, trainer.g_loss.content_weight) == (1e-2, 5e-3, 1.0)
    d_initial = clone_state(trainer.discriminator)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, snapshot)
    with caplog.at_level(logging.INFO):
        trainer.run()
    (e1, p1, d1, out1), (e2, p2, d2, out2) = records
    assert (e1, p1, e2, p2) == (1, "psnr", 2, "gan")
    assert states_equal(d_initial, d1)
    assert not states_equal(d1, d2)
    assert any("switching training phase from 'psnr' to 'gan'" in r.getMessage() for r in caplog.records)
    keys = {"lr", "hr", "pred", "g_loss", "d_loss", "loss", "g_pixel", "g_gan", "g_content", "phase"}
    for out, phase in ((out1, "psnr"), (out2, "gan")):
        assert isinstance(out, list) and len(out) == 2  # decollated batch of 2
        assert keys <= set(out[0])
        assert out[0]["phase"] == phase
        assert out[0]["pred"].shape == out[0]["hr"].shape and not out[0]["pred"].requires_grad
        assert float(out[0]["loss"]) == float(out[0]["g_loss"])
    assert float(out1[0]["d_loss"]) == 0.0 and float(out1[0]["g_gan"]) == 0.0
    assert float(out2[0]["d_loss"]) > 0.0 and float(out2[0]["g_gan"]) > 0.0 and float(out2[0]["g_content"]) > 0.0
    # the weighted sum of the logged terms is the generator loss (ESRGAN weights)
    expected = 1e-2 * float(out2[0]["g_pixel"]) + 5e-3 * float(out2[0]["g_gan"]) + float(out2[0]["g_content"])
    assert float(out2[0]["g_loss"]) == pytest.approx(expected, rel=1e-5)


def test_amp_bf16_autocast_on_cpu():
    trainer = make_trainer(dims=2, pretrain_epochs=1, max_epochs=2, amp=True)
    assert trainer.amp_dtype == torch.bfloat16 and trainer.g_scaler is None and trainer.d_scaler is None
    dtypes = set()
    trainer.generator.conv_first.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    trainer.run()
    assert dtypes == {torch.bfloat16}
    out = trainer.state.output[0]
    assert out["pred"].dtype == torch.float32
    assert math.isfinite(float(out["g_loss"])) and math.isfinite(float(out["d_loss"]))
    # the evaluator autocasts on CPU too (MONAI's SupervisedEvaluator autocasts "cuda" only); metrics in float32
    dtypes.clear()
    evaluator = SuperResolutionEvaluator("cpu", DataLoader(smooth_pairs(2, (16, 16), (2, 2)), batch_size=2),
                                         trainer.generator, spatial_dims=2, amp=True, ssim_kwargs={"win_size": 5})
    preds = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: preds.append(e.state.output[0]["pred"]))
    evaluator.run()
    assert dtypes == {torch.bfloat16} and preds[0].dtype == torch.float32
    assert all(math.isfinite(v) for v in evaluator.state.metrics.values())


def test_amp_float16_uses_one_grad_scaler_per_optimizer():
    trainer = make_trainer(dims=2, pretrain_epochs=0, max_epochs=1, amp=True, amp_dtype="float16")
    assert trainer.g_scaler is not None and trainer.d_scaler is not None and trainer.g_scaler is not trainer.d_scaler
    trainer.run()
    objects = trainer.checkpoint_objects()
    assert {"generator", "discriminator", "g_optimizer", "d_optimizer", "g_scaler", "d_scaler"} <= set(objects)
    assert math.isfinite(float(trainer.state.output[0]["g_loss"]))


def test_pretrained_generator_is_loaded_from_a_local_file_only(tmp_path):
    source = tiny_generator(2, 2, seed=5)
    path = tmp_path / "g.pt"
    torch.save({"generator": source.state_dict()}, path)
    trainer = make_trainer(dims=2, pretrain_epochs=0, max_epochs=1, pretrained_generator=str(path))
    assert states_equal(source.state_dict(), trainer.generator.state_dict())
    with pytest.raises(FileNotFoundError, match="not a URL; nothing is downloaded"):
        load_weights(tiny_generator(2, 2), "https://example.org/g.pt")
    with pytest.raises(FileNotFoundError, match="trained weights not found"):
        make_trainer(dims=2, pretrain_epochs=0, max_epochs=1, pretrained_generator=str(tmp_path / "missing.pt"))


def test_resume_continues_at_epoch_3_and_matches_an_uninterrupted_run(tmp_path):
    def build(seed, max_epochs, ckpt_dir=None, extra=()):
        trainer = make_trainer(dims=2, head="patch", pretrain_epochs=1, max_epochs=max_epochs, seed=seed,
                               lr_scheduler_step="epoch")
        trainer.g_lr_scheduler = torch.optim.lr_scheduler.StepLR(trainer.g_optimizer, step_size=1, gamma=0.5)
        trainer.d_lr_scheduler = torch.optim.lr_scheduler.StepLR(trainer.d_optimizer, step_size=1, gamma=0.5)
        evaluator = SuperResolutionEvaluator("cpu", DataLoader(smooth_pairs(2, (16, 16), (2, 2), seed=9), batch_size=2),
                                             trainer.generator, spatial_dims=2, ssim_kwargs={"win_size": 5})
        handlers = [ValidationHandler(interval=1, validator=evaluator)]
        if ckpt_dir is not None:
            saver = CheckpointSaver(str(ckpt_dir), {"model": trainer.generator}, save_key_metric=True,
                                    key_metric_filename="model.pt")
            saver.attach(evaluator)
            handlers.append(ResumableCheckpoint(str(ckpt_dir), evaluator=evaluator, best_saver=saver))
        for h in (*handlers, *extra):
            h.attach(trainer)
        return trainer, evaluator

    reference, _ = build(seed=0, max_epochs=4)
    reference.run()

    first_run, _ = build(seed=0, max_epochs=2, ckpt_dir=tmp_path)
    first_run.run()
    saved = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert saved["trainer"]["iteration"] == 4 and saved["trainer"]["phase"] == "gan"
    names = {"generator", "discriminator", "g_optimizer", "d_optimizer", "g_lr_scheduler", "d_lr_scheduler"}
    assert names <= set(saved)
    assert (tmp_path / "model.pt").is_file()

    class Probe:
        """Attached after ResumableCheckpoint: records the state right after loading, and the epochs run."""

        def __init__(self):
            self.at_start, self.epochs = None, []

        def attach(self, engine):
            engine.add_event_handler(Events.STARTED, self.started)
            engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.epochs.append((e.state.epoch, e.state.phase)))

        def started(self, engine):
            self.at_start = {
                "epoch": engine.state.epoch,
                "phase": engine.state.phase,
                "g_exp_avg": [engine.g_optimizer.state[p]["exp_avg"].clone() for p in engine.generator.parameters()],
                "d_exp_avg": [
                    engine.d_optimizer.state[p]["exp_avg"].clone() for p in engine.discriminator.parameters()
                ],
            }

    probe = Probe()
    resumed, resumed_eval = build(seed=123, max_epochs=4, ckpt_dir=tmp_path, extra=(probe,))
    assert resumed.state.phase == "psnr"  # a fresh trainer starts in the pre-training phase
    resumed.run()
    assert probe.at_start["epoch"] == 2 and probe.at_start["phase"] == "gan"
    assert probe.epochs == [(3, "gan"), (4, "gan")]
    for name in ("g", "d"):
        saved_state = saved[f"{name}_optimizer"]["state"]
        assert len(saved_state) == len(probe.at_start[f"{name}_exp_avg"]) > 0
        for i, value in enumerate(probe.at_start[f"{name}_exp_avg"]):
            assert torch.equal(value, saved_state[i]["exp_avg"])
    assert resumed.state.epoch == 4 and resumed.state.iteration == 8
    # same data order, no randomness in training, single process on CPU: the resumed run is bit-identical
    assert states_equal(reference.generator.state_dict(), resumed.generator.state_dict())
    assert states_equal(reference.discriminator.state_dict(), resumed.discriminator.state_dict())
    assert reference.g_optimizer.param_groups[0]["lr"] == resumed.g_optimizer.param_groups[0]["lr"] == 1e-3 / 16
    assert reference.d_optimizer.param_groups[0]["lr"] == resumed.d_optimizer.param_groups[0]["lr"] == 1e-3 / 8
    ref_state, res_state = reference.d_optimizer.state_dict()["state"], resumed.d_optimizer.state_dict()["state"]
    assert all(torch.equal(ref_state[i]["exp_avg_sq"], res_state[i]["exp_avg_sq"]) for i in ref_state)
    assert resumed_eval.state.best_metric_epoch >= 1


# ---------------------------------------------------------------------------------------------------------- evaluator
class _Constant(torch.nn.Module):
    """A 'generator' returning the reference image it was given (a perfect super-resolution network)."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target)

    def forward(self, x):
        return self.target.expand(x.shape[0], *self.target.shape[1:])


def test_evaluator_perfect_generator_gives_infinite_psnr_and_saves(tmp_path):
    hr = torch.rand(1, 1, 12, 12)
    data = [{"lr": F.avg_pool2d(hr, 2)[0], "hr": hr[0]}]
    net = _Constant(hr)
    evaluator = SuperResolutionEvaluator("cpu", DataLoader(data, batch_size=1), net, spatial_dims=2,
                                         ssim_kwargs={"win_size": 5})
    saver = CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_filename="model.pt")
    saver.attach(evaluator)
    evaluator.run()
    m = evaluator.state.metrics
    assert evaluator.state.key_metric_name == "val_psnr"
    assert m["val_psnr"] == math.inf and m["val_mse"] == 0.0 and m["val_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert math.isfinite(m["val_psnr_interp"]) and m["val_psnr_interp"] < m["val_psnr"]
    assert (tmp_path / "model.pt").is_file() and evaluator.state.best_metric == math.inf


def test_evaluator_interpolation_baseline_hand_computed_2d():
    # bicubic keeps a constant image constant: LR 0.5 -> 0.5 everywhere; HR 0.6: MSE 0.01, PSNR 20 dB
    data = [{"lr": torch.full((1, 4, 4), 0.5), "hr": torch.full((1, 8, 8), 0.6)}]
    evaluator = SuperResolutionEvaluator("cpu", DataLoader(data, batch_size=1), tiny_generator(2, 2), spatial_dims=2,
                                         ssim_kwargs={"win_size": 3})
    evaluator.run()
    m = evaluator.state.metrics
    assert m["val_mse_interp"] == pytest.approx(0.01, rel=1e-5)
    assert m["val_psnr_interp"] == pytest.approx(20.0, rel=1e-5)
    assert {"val_psnr", "val_ssim", "val_mse", "val_ssim_interp"} <= set(m)


def test_evaluator_interpolation_baseline_hand_computed_3d_slice_axis():
    # trilinear x2 along the last axis only (align_corners=False): [0, 1] -> [0, 0.25, 0.75, 1];
    # HR [0, 1/3, 2/3, 1]: squared errors (0, 1/144, 1/144, 0) -> MSE 1/288, PSNR 10 log10(288)
    lr = torch.tensor([0.0, 1.0]).expand(1, 4, 4, 2).clone()
    hr = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]).expand(1, 4, 4, 4).clone()
    evaluator = SuperResolutionEvaluator("cpu", DataLoader([{"lr": lr, "hr": hr}], batch_size=1),
                                         tiny_generator(3, (1, 1, 2)), spatial_dims=3, ssim_kwargs={"win_size": 3})
    seen = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output[0]["interp"]))
    evaluator.run()
    assert torch.allclose(seen[0][0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    m = evaluator.state.metrics
    assert m["val_mse_interp"] == pytest.approx(1 / 288, rel=1e-5)
    assert m["val_psnr_interp"] == pytest.approx(10 * math.log10(288), rel=1e-5)


def test_evaluator_sliding_window_with_upsampling_output():
    data = smooth_pairs(1, (8, 8, 16), (1, 1, 2))
    gen = tiny_generator(3, (1, 1, 2))
    evaluator = SuperResolutionEvaluator("cpu", DataLoader(data, batch_size=1), gen, spatial_dims=3,
                                         inferer=SlidingWindowInferer(roi_size=(8, 8, 4), overlap=0.25),
                                         ssim_kwargs={"win_size": 3})
    shapes = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: shapes.append(e.state.output[0]["pred"].shape))
    evaluator.run()
    assert tuple(shapes[0]) == (1, 8, 8, 16)
    assert all(math.isfinite(v) for v in evaluator.state.metrics.values())


# ------------------------------------------------------------------------------------------------------ TensorBoard
def test_triplet_panel_layout_2d_and_3d():
    lr = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    hr = torch.rand(1, 4, 4)
    panel = triplet_panel(lr, hr, hr)
    assert panel.shape == (3, 4, 12)
    np.testing.assert_allclose(panel[0, :, :4], np.kron([[0, 1], [1, 0]], np.ones((2, 2))))  # nearest blocks
    np.testing.assert_allclose(panel[0, :, 4:8], hr[0].numpy().T, atol=1e-6)  # PIL (x, y) order: x across, y down
    # 3D (C, H, W, D) with the slice axis D last, slice_axis=0: the panel shows the (W, D) plane, D running upwards
    z = torch.linspace(0, 1, 6)
    hr3 = z.expand(1, 5, 4, 6).clone()
    lr3 = hr3[..., ::2]
    panel3 = triplet_panel(lr3, hr3, hr3, slice_axis=0)
    assert panel3.shape == (3, 6, 12)
    np.testing.assert_allclose(panel3[0, :, 8], z.flip(0).numpy(), atol=1e-6)  # HR column: top row is the last slice
    np.testing.assert_allclose(panel3[0, ::2, 0], panel3[0, 1::2, 0])  # LR nearest-up-sampled along D


def test_loss_scalars_written_to_tensorboard(tmp_path):
    from monai.handlers import TensorBoardStatsHandler
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    handler = TensorBoardStatsHandler(writer, output_transform=loss_output_transform(), epoch_log=False)
    make_trainer(dims=2, pretrain_epochs=1, max_epochs=2, handlers=[handler]).run()
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train_g_loss", "train_d_loss", "train_g_pixel", "train_g_gan", "train_g_content"} <= tags
    d_loss = [e.value for e in acc.Scalars("train_d_loss")]
    assert len(d_loss) == 4 and d_loss[:2] == [0.0, 0.0] and all(v > 0 for v in d_loss[2:])


def test_triplets_written_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    for dims, hr_shape, scale in ((2, (16, 16), (2, 2)), (3, (12, 10, 16), (1, 1, 2))):
        data = smooth_pairs(2, hr_shape, scale)
        evaluator = SuperResolutionEvaluator(
            "cpu", DataLoader(data, batch_size=2), tiny_generator(dims, scale), spatial_dims=dims,
            ssim_kwargs={"win_size": 5}, val_handlers=[TensorBoardTriplets(writer, tag=f"val/triplet_{dims}d")],
        )
        evaluator.run(global_epoch=3)
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    assert {"val/triplet_2d", "val/triplet_3d"} <= set(acc.Tags()["images"])
    img2, img3 = acc.Images("val/triplet_2d")[0], acc.Images("val/triplet_3d")[0]
    # enlarged to >= 256 px by an integer factor: 2D 16 x 16 by 16; 3D the axial (H, W) = (12, 10) plane, W high, by 26
    assert (img2.step, img2.width, img2.height) == (3, 3 * 16 * 16, 16 * 16)
    assert (img3.step, img3.width, img3.height) == (3, 3 * 12 * 26, 10 * 26)
