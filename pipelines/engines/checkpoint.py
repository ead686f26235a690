"""Resumable training: one ``checkpoint.pt`` rewritten atomically at every epoch end, loaded at start if present.

MONAI's ``CheckpointSaver`` names files by epoch and ``CheckpointLoader`` needs a fixed path chosen before the run,
so "start again with the same command and carry on" needs glue that upstream does not have. This handler keeps
everything needed to continue (network, optimiser, scheduler, grad scaler, the trainer's epoch and iteration, the
evaluator's best metric, and the best-model saver's record so a worse epoch cannot overwrite ``model.pt``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

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
            engine's grad scaler are added, so a bundle config needs no reference back to its own trainer.
        evaluator: the validation evaluator; its best metric and epoch are kept.
        best_saver: the evaluator's ``CheckpointSaver(save_key_metric=True)``; its record of the best score is kept.
        filename: checkpoint file name.
        interval: save every this many epochs.
        enabled: ``False`` turns the handler off (non-zero ranks in distributed training).
    """

    def __init__(
        self,
        ckpt_dir: str,
        save_dict: dict[str, Any],
        evaluator: Engine | None = None,
        best_saver: Any = None,
        filename: str = "checkpoint.pt",
        interval: int = 1,
        enabled: bool = True,
    ) -> None:
        self.path = Path(ckpt_dir) / filename
        self.save_dict = dict(save_dict)
        self.evaluator = evaluator
        self.best_saver = best_saver
        self.interval = interval
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        if self.enabled:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)

    def _objects(self, engine: Engine) -> dict[str, Any]:
        objects = {k: self._unwrap(v) for k, v in self.save_dict.items() if v is not None}
        objects.setdefault("trainer", engine)
        if getattr(engine, "scaler", None) is not None:
            objects.setdefault("scaler", engine.scaler)
        return objects

    @staticmethod
    def _unwrap(obj: Any) -> Any:
        return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj

    def save(self, engine: Engine) -> None:
        state = {name: obj.state_dict() for name, obj in self._objects(engine).items()}
        if self.evaluator is not None:
            state["evaluator_best"] = {
                "best_metric": float(self.evaluator.state.best_metric),
                "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
            }
        record = getattr(self.best_saver, "_key_metric_checkpoint", None)
        if record is not None:
            state["best_saver"] = record.state_dict()
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def load(self, engine: Engine) -> None:
        if not self.path.exists() or engine.state.epoch > 0:
            return
        checkpoint = torch.load(self.path, map_location="cpu", weights_only=False)
        max_epochs = engine.state.max_epochs
        objects = {k: v for k, v in self._objects(engine).items() if k in checkpoint}
        Checkpoint.load_objects(to_load=objects, checkpoint=checkpoint)
        engine.state.max_epochs = max_epochs  # the command line may ask for more epochs than the first run did
        if self.evaluator is not None and "evaluator_best" in checkpoint:
            self.evaluator.state.best_metric = checkpoint["evaluator_best"]["best_metric"]
            self.evaluator.state.best_metric_epoch = checkpoint["evaluator_best"]["best_metric_epoch"]
        record = getattr(self.best_saver, "_key_metric_checkpoint", None)
        if record is not None and "best_saver" in checkpoint:
            record.load_state_dict(checkpoint["best_saver"])
        logger.info("resumed from %s at epoch %d, iteration %d", self.path, engine.state.epoch, engine.state.iteration)
