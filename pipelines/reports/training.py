"""The training summary: the best validation metric, the last metrics, timing, and the learning curve as data.

:class:`TrainingSummary` is attached to the trainer. Each time the validation evaluator completes it records one row of
the **learning curve**, and when training completes it writes ``path`` (JSON, atomically, rank 0 only; a run that is
killed writes none)::

    {"bundle": ..., "key_metric_name": "val_mean_dice", "best_metric": 0.81, "best_metric_epoch": 14,
     "last_metrics": {"val_mean_dice": 0.80, ...}, "epochs": 18, "iterations": 288, "seconds": 412.5,
     "learning_curve": [
        {"epoch": 1, "iteration": 16, "wall_s": 23.1, "val_mean_dice": 0.12, "val_mean_dice/TC": 0.05,
         "val_mean_dice/WT": 0.25, "val_mean_dice/ET": 0.06, ...},
        ...]}

so that "Dice reached after t seconds" is read off the summary, not guessed. ``wall_s`` is the wall time since the
trainer started (validation included), ``epoch`` and ``iteration`` the trainer's; every scalar metric of the evaluator
is in the record, and every metric whose per-case values the evaluator keeps (MONAI's ``save_details``,
``engine.state.metric_details``) adds one value per class or region, ``"<metric>/<class>"``: the mean over the cases
where the class is defined (:func:`pipelines.metrics.per_class_means`, as ``TensorBoardClassMetrics`` logs it).
Undefined values (NaN) are ``null``.

The learning curve is the :class:`~pipelines.reports.base.CollectThenWrite` rows of the summary, collected on the
evaluator and written on the trainer. It survives a resumed run when the summary is in the checkpoint's ``save_dict``
(:meth:`TrainingSummary.state_dict`): the earlier records are kept and ``wall_s`` goes on from where it stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

from pipelines.metrics import per_class_means
from pipelines.reports.base import CollectThenWrite, Staging

__all__ = ["TrainingSummary"]


def _number(value: Any) -> float | int | None:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


class TrainingSummary(CollectThenWrite):
    """At the end of training, write the evaluator's best metric and its epoch, timing and the learning curve to JSON.

    Attach to the trainer (see the module docstring for the file). ``path`` is written atomically; ``extra`` adds
    fixed fields (the bundle name, say).

    Args:
        evaluator: the validation evaluator (``ValidationHandler``'s).
        path: the JSON file.
        extra: fixed fields of the summary.
        class_names: names of the channels of the per-case metric values: one list for every metric with that many
            channels (``["TC", "WT", "ET"]``), or ``{metric name: names}``. A metric with several channels and no
            names gets ``"<metric>/0"``, ``"<metric>/1"``...; one with a single unnamed channel adds nothing beside
            its scalar.
    """

    #: the clock of ``wall_s`` and ``seconds``
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, evaluator: Engine, path: str, extra: dict | None = None,
                 class_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__(gather=False)  # the evaluator's metrics are reduced over the ranks already
        self.evaluator = evaluator
        self.path = Path(path)
        self.extra = dict(extra or {})
        if isinstance(class_names, Mapping):
            self.class_names: Sequence[str] | Mapping[str, list[str]] | None = {
                str(k): [str(n) for n in v] for k, v in class_names.items()}
        else:
            self.class_names = None if class_names is None else [str(n) for n in class_names]
        self.trainer: Engine | None = None
        self._start = self.clock()
        self._offset = 0.0
        self._resumed = False

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self.started)
        self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def started(self, engine: Engine) -> None:
        self._start = self.clock()
        if not self._resumed:
            self.reset()
            self._offset = 0.0
        self._resumed = False

    def elapsed(self) -> float:
        """Seconds since training started (plus those of the run it resumed)."""
        return self._offset + self.clock() - self._start

    def _names(self, metric: str, channels: int) -> list[str] | None:
        names = self.class_names.get(metric) if isinstance(self.class_names, Mapping) else self.class_names
        if names is not None and len(names) == channels:
            return list(names)
        return [str(c) for c in range(channels)] if channels > 1 else None

    def rows_of(self, engine: Engine) -> list[dict[str, Any]]:
        """One record of the learning curve, from the evaluator that just completed (``engine``)."""
        trainer = self.trainer.state if self.trainer is not None else engine.state
        record: dict[str, Any] = {"epoch": int(trainer.epoch), "iteration": int(trainer.iteration),
                                  "wall_s": round(self.elapsed(), 3)}
        for name, value in (getattr(engine.state, "metrics", None) or {}).items():
            if isinstance(value, (int, float, np.floating, np.integer)):
                record[name] = _number(value)
        for name, values in (getattr(engine.state, "metric_details", None) or {}).items():
            try:
                means = per_class_means(values)
            except (TypeError, ValueError, RuntimeError):  # details that are not a (cases, classes) table
                continue
            for label, value in zip(self._names(name, len(means)) or [], means):
                record[f"{name}/{label}"] = _number(value)
        return [record]

    def write(self, rows: list, engine: Engine, staging: Staging) -> dict[str, Any]:
        state = self.evaluator.state
        metrics = {k: float(v) for k, v in (getattr(state, "metrics", None) or {}).items()
                   if isinstance(v, (int, float, np.floating))}
        summary = {
            **self.extra,
            "key_metric_name": getattr(state, "key_metric_name", None),
            "best_metric": float(getattr(state, "best_metric", float("nan"))),
            "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)),
            "last_metrics": metrics,
            "epochs": int(engine.state.epoch),
            "iterations": int(engine.state.iteration),
            "seconds": round(self.elapsed(), 1),
            "learning_curve": rows,
        }
        staging.json(self.path, summary)
        return summary

    def state_dict(self) -> dict[str, Any]:
        """The learning curve so far and the elapsed time, for a checkpoint (plain numbers, lists and strings)."""
        return {"learning_curve": [dict(r) for r in self.rows], "wall_s": float(self.elapsed())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the learning curve of a checkpointed run: its records are kept, its time is added."""
        self.rows = [dict(r) for r in state.get("learning_curve", [])]
        self._offset = float(state.get("wall_s", 0.0))
        self._start = self.clock()
        self._resumed = True
