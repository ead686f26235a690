"""Resumable training: one ``checkpoint.pt`` rewritten atomically at every epoch end, loaded at start if present.

MONAI's ``CheckpointSaver`` names files by epoch and ``CheckpointLoader`` needs a fixed path chosen before the run,
so "start again with the same command and carry on" needs glue that upstream does not have. This handler keeps
everything needed to continue (network, optimiser, scheduler, grad scaler, the trainer's epoch and iteration, the
evaluator's best metric, and the best-model saver's record so a worse epoch cannot overwrite ``model.pt``).

Interrupted runs (SIGKILL, SIGTERM, power loss), the policy:

- ``checkpoint.pt`` is written to a temporary ``.checkpoint.pt.partial-*`` file and renamed, so a kill during a
  write leaves the previous checkpoint intact plus, at worst (SIGKILL skips the clean-up), that temporary file. At
  start the saving process deletes such leftovers (logged) and resumes from ``checkpoint.pt``; a leftover is never
  read.
- A ``checkpoint.pt`` that cannot be loaded (corrupt, truncated by something other than this handler, or from
  another network) stops training at start with a ``ValueError`` naming the file and saying to delete or move it to
  start afresh. It is not moved aside automatically: silently restarting would throw away the record of the best
  metric and let a worse epoch overwrite ``model.pt``; the user decides.
- Only rank 0 saves under ``torch.distributed`` (whatever ``enabled`` says); every rank loads, so all continue from
  the same state.
- The saving process holds an exclusive lock on ``lock_dir`` (the bundle's ``bundle_root``) for its lifetime
  (:class:`~pipelines.engines.run_state.FolderLock`): a second training started into the same folder stops at once
  with a message naming the holder, before it can touch the first run's files.
- The checkpoint holds the random state of torch, NumPy, Python, MONAI's random transforms and MONAI's determinism
  (:func:`~pipelines.engines.run_state.capture_random_state`), so on the CPU a run killed and resumed ends with the
  same weights as one that was never interrupted. It holds only tensors, numbers, strings and containers, and is
  read with ``torch.load(weights_only=True)``: a pickle planted as ``checkpoint.pt`` is refused, never run.
- A write that fails for lack of space says so and names the path (torch's own message is "unexpected pos ...").
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from pipelines.distributed import is_main_process
from pipelines.engines.run_state import FolderLock, capture_random_state, restore_random_state
from pipelines.io import atomic_path

__all__ = ["ResumableCheckpoint"]

logger = logging.getLogger(__name__)


class ResumableCheckpoint:
    """Save ``save_dict`` to ``<ckpt_dir>/<filename>`` every ``interval`` epochs and resume from it at start.

    Attach to the trainer *after* ``ValidationHandler`` so the saved state includes that epoch's validation.

    Args:
        ckpt_dir: folder of the checkpoint.
        save_dict: objects with ``state_dict``/``load_state_dict``: ``{"network": ..., "optimizer": ...,
            "lr_scheduler": ...}``. The engine it is attached to (its epoch and iteration) and, when AMP is on, the
            engine's grad scaler are added, so a bundle config needs no reference back to its own trainer. An
            engine with a ``checkpoint_objects()`` method (e.g. ``SuperResolutionTrainer``: both networks, both
            optimisers, schedulers and scalers) adds those too, so ``save_dict`` may then be left out; entries of
            ``save_dict`` win over the engine's on a name clash.
        evaluator: the validation evaluator; its best metric and epoch are kept.
        best_saver: the evaluator's ``CheckpointSaver(save_key_metric=True)``; its record of the best score is kept.
        filename: checkpoint file name.
        interval: save every this many epochs.
        enabled: ``False`` turns the handler off (non-zero ranks in distributed training).
        lock_dir: the folder the run owns (the bundle configs pass ``@bundle_root``); ``ckpt_dir`` by default.
    """

    def __init__(
        self,
        ckpt_dir: str,
        save_dict: dict[str, Any] | None = None,
        evaluator: Engine | None = None,
        best_saver: Any = None,
        filename: str = "checkpoint.pt",
        interval: int = 1,
        enabled: bool = True,
        lock_dir: str | None = None,
    ) -> None:
        self.path = Path(ckpt_dir) / filename
        self.save_dict = dict(save_dict or {})
        self.evaluator = evaluator
        self.best_saver = best_saver
        self.interval = interval
        self.enabled = enabled
        self.lock = FolderLock(lock_dir or self.path.parent)
        # taken before anything else of the run touches the folder, by the saving rank only (is_main_process reads
        # torchrun's RANK before the process group exists, so a rank > 0 does not try the lock even if it builds this
        # early)
        if self._saves():
            self.lock.acquire()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        if self.enabled:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)
        # released when training completes (or terminates); after an exception, when the process ends. (No
        # EXCEPTION_RAISED handler: with one attached, ignite would stop re-raising the error.)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.lock.release())

    def _saves(self) -> bool:
        return self.enabled and is_main_process()

    @staticmethod
    def _dataset(engine: Engine) -> Any:
        loader = getattr(engine, "data_loader", None) or getattr(engine.state, "dataloader", None)
        return getattr(loader, "dataset", None)

    def _remove_leftovers(self) -> None:
        """Delete temporary files of a write that was killed before its rename (see the module's policy)."""
        for leftover in self.path.parent.glob(f".{self.path.name}.partial-*"):
            logger.warning("removing %s, left by an interrupted checkpoint write", leftover)
            leftover.unlink(missing_ok=True)

    def _objects(self, engine: Engine) -> dict[str, Any]:
        objects = {k: self._unwrap(v) for k, v in self.save_dict.items() if v is not None}
        objects.setdefault("trainer", engine)
        if getattr(engine, "scaler", None) is not None:
            objects.setdefault("scaler", engine.scaler)
        engine_objects = getattr(engine, "checkpoint_objects", None)
        if callable(engine_objects):
            for name, obj in engine_objects().items():
                if obj is not None:
                    objects.setdefault(name, self._unwrap(obj))
        return objects

    @staticmethod
    def _unwrap(obj: Any) -> Any:
        return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj

    def save(self, engine: Engine) -> None:
        if not self._saves():
            return
        state = {name: obj.state_dict() for name, obj in self._objects(engine).items()}
        if self.evaluator is not None:
            state["evaluator_best"] = {
                "best_metric": float(self.evaluator.state.best_metric),
                "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
            }
        record = getattr(self.best_saver, "_key_metric_checkpoint", None)
        if record is not None:
            state["best_saver"] = _plain(record.state_dict())
        state["random"] = capture_random_state(self._dataset(engine))
        try:
            with atomic_path(self.path) as tmp:
                torch.save(state, tmp)
        except (OSError, RuntimeError) as e:
            free = shutil.disk_usage(self.path.parent).free
            if getattr(e, "errno", None) == errno.ENOSPC or "unexpected pos" in str(e) or free < (1 << 20):
                raise OSError(errno.ENOSPC, f"no space left on {self.path.parent} while writing {self.path.name} "
                              f"({free // (1 << 20)} MiB free); free some space and start the same command again "
                              "to resume from the last complete checkpoint") from None
            raise

    def load(self, engine: Engine) -> None:
        if engine.state.epoch > 0:
            return
        if self._saves():
            self._remove_leftovers()
        if not self.path.exists():
            return
        max_epochs = engine.state.max_epochs
        try:
            checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(checkpoint, dict) or "trainer" not in checkpoint:
                raise ValueError("not a checkpoint of this handler (no trainer state)")
            objects = {k: v for k, v in self._objects(engine).items() if k in checkpoint}
            Checkpoint.load_objects(to_load=objects, checkpoint=checkpoint)
        except Exception as e:  # noqa: BLE001 - any failure here means the file cannot be resumed from
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            reason = f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]
            raise ValueError(
                f"{self.path}: cannot resume from this checkpoint ({reason}); delete or move it away to start "
                "training afresh (model.pt, the best weights so far, is kept)"
            ) from e
        engine.state.max_epochs = max_epochs  # the command line may ask for more epochs than the first run did
        if self.evaluator is not None and "evaluator_best" in checkpoint:
            self.evaluator.state.best_metric = checkpoint["evaluator_best"]["best_metric"]
            self.evaluator.state.best_metric_epoch = checkpoint["evaluator_best"]["best_metric_epoch"]
        record = getattr(self.best_saver, "_key_metric_checkpoint", None)
        if record is not None and "best_saver" in checkpoint:
            record.load_state_dict(checkpoint["best_saver"])
        if "random" in checkpoint:
            restore_random_state(checkpoint["random"], self._dataset(engine))
        logger.info("resumed from %s at epoch %d, iteration %d", self.path, engine.state.epoch, engine.state.iteration)


def _plain(obj: Any) -> Any:
    """Containers of numbers and strings only (ignite's records hold named tuples, which ``weights_only`` refuses)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
