"""The collect-then-write base of every report handler: rows collected per iteration, written once at the end.

An evaluator run gives one report. :class:`CollectThenWrite`, attached to the engine, empties its rows when a run
starts (``EPOCH_STARTED``), adds the rows of each iteration (``ITERATION_COMPLETED``, :meth:`~CollectThenWrite.rows_of`)
and, when the run ends (``EPOCH_COMPLETED``):

1. gathers the rows of every ``torch.distributed`` rank, in rank order (``gather=True``, the default: each rank
   evaluates its own share of the cases, as MONAI's metric handlers gather their per-case details; every rank must
   then have the handler attached, since the gather is a collective call);
2. on rank 0 alone (:func:`pipelines.distributed.is_main_process`) calls :meth:`~CollectThenWrite.write` with a
   :class:`Staging`: every file of the report is written to a temporary name beside its own
   (:func:`pipelines.io.atomic.atomic_path`), and all of them are renamed when ``write`` returns, none when it raises
   (the temporary files are removed, an earlier report is left as it was). A reader never sees half a report, nor a
   new CSV beside an old summary. The file staged first is renamed last: stage the one readers wait for first.

Subclasses: :class:`~pipelines.reports.segmentation.SegmentationReport`,
:class:`~pipelines.reports.super_resolution.SuperResolutionReport`,
:class:`~pipelines.reports.classification.ClassificationReport` and ``PredictionWriter``, and
:class:`~pipelines.reports.training.TrainingSummary` (its rows are the validations of a training run).

Upstream, MONAI's ``MetricsSaver`` writes the values and per-case details its metric handlers computed, one file at a
time; it cannot keep rows a report builds itself (cropped masks, file names, probabilities), nor publish several files
together.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch.distributed as dist
from ignite.engine import Engine, Events

from pipelines.distributed import is_main_process, world_size
from pipelines.io.atomic import atomic_path

__all__ = ["CollectThenWrite", "Staging", "publish_together", "gather_rows", "nan_to_none"]


class Staging:
    """The files of one report while it is written: each at a temporary name, renamed by :func:`publish_together`.

    :meth:`path` gives the temporary path of a final one (the same path when asked twice, so a file can be rewritten
    before it is published); :meth:`text` and :meth:`json` write through it. ``published`` lists the final paths.
    """

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self._temporary: dict[Path, Path] = {}

    def path(self, final: str | os.PathLike) -> Path:
        final = Path(final)
        if final not in self._temporary:
            self._temporary[final] = self._stack.enter_context(atomic_path(final))
        return self._temporary[final]

    def text(self, final: str | os.PathLike, text: str) -> Path:
        with open(self.path(final), "w", encoding="utf-8", newline="") as f:
            f.write(text)
        return Path(final)

    def json(self, final: str | os.PathLike, obj: Any, allow_nan: bool = True) -> Path:
        """``obj`` as indented JSON (``allow_nan=False``: a NaN is an error instead of the non-standard ``NaN``)."""
        return self.text(final, json.dumps(obj, indent=2, allow_nan=allow_nan) + "\n")

    @property
    def published(self) -> list[Path]:
        return list(self._temporary)


@contextlib.contextmanager
def publish_together(staging: Staging | None = None) -> Iterator[Staging]:
    """A :class:`Staging` whose files are all renamed onto their names when the block completes, none if it raises.

    Given an open ``staging`` (a writer called by a handler that stages other files too), its files join it and are
    published with the handler's."""
    if staging is not None:
        yield staging
        return
    with contextlib.ExitStack() as stack:
        yield Staging(stack)


def nan_to_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (in nested dicts and lists) replaced by ``None``: JSON has no NaN."""
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def gather_rows(rows: list) -> list:
    """``rows`` of every rank, rank 0's first (``torch.distributed.all_gather_object``); ``rows`` itself in one
    process. A collective call: every rank must make it."""
    ranks = world_size()
    if ranks == 1:
        return list(rows)
    parts: list = [None] * ranks
    dist.all_gather_object(parts, list(rows))
    return [row for part in parts for row in part]


class CollectThenWrite:
    """An Ignite handler that collects rows during a run and writes them once at its end (see the module docstring).

    Subclasses implement :meth:`rows_of` (the rows of one iteration) and :meth:`write` (the files, through the
    :class:`Staging` it is given; its return value is kept as ``self.summary``), and may extend :meth:`published`
    (what follows the files: a log line, TensorBoard).

    Args:
        gather: gather the rows of every rank before rank 0 writes (a collective call: attach on every rank).
        enabled: ``False`` attaches nothing.
    """

    def __init__(self, *, gather: bool = True, enabled: bool = True) -> None:
        self.gather = bool(gather)
        self.enabled = bool(enabled)
        self.rows: list = []
        self.summary: Any = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows = []

    def collect(self, engine: Engine) -> None:
        self.rows.extend(self.rows_of(engine))

    def rows_of(self, engine: Engine) -> Iterable[Any]:
        """The rows of the iteration that just completed (``engine.state.output``, ``engine.state.batch``)."""
        raise NotImplementedError

    def write(self, rows: list, engine: Engine, staging: Staging) -> Any:
        """Write the report of ``rows`` (every rank's) through ``staging``; return its summary."""
        raise NotImplementedError

    def published(self, rows: list, engine: Engine) -> None:
        """After the files are in place (rank 0): nothing by default."""

    def __call__(self, engine: Engine) -> None:
        rows = gather_rows(self.rows) if self.gather else list(self.rows)
        self.rows = []  # written once: a second end of run without new rows writes an empty report, not these again
        if not is_main_process():
            return
        with publish_together() as staging:
            summary = self.write(rows, engine, staging)
        self.summary = summary
        self.published(rows, engine)
