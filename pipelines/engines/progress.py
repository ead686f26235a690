"""Progress bars with an ETA for every long step, drawn only where someone watches: a terminal, and not ``--quiet``.

:func:`show_progress` is the one decision, used by every step: bars are drawn when the stream (``sys.stderr``, where
tqdm writes) is a terminal, this is rank 0 of a distributed run, and neither ``quiet=True`` (``--quiet`` of
``python -m pipelines infer`` / ``preprocess``) nor the environment variable ``PIPELINES_QUIET=1`` asks for quiet.
CI logs, pipes, ``pytest`` and ``nohup`` runs therefore get exactly the log lines they got before.

Where the decision is used:

* training and evaluation (``train.json``, ``evaluate.json``): :class:`ProgressBars`, a handler that attaches
  Ignite's own ``ProgressBar`` (tqdm) to the trainer (iterations of the epoch, and the epochs of the run) and to the
  evaluators (cases), with ``"enabled": "@show_progress"``; the config item ``show_progress`` is this function
  (``{"_target_": "pipelines.engines.progress.show_progress"}``), so ``--show_progress False`` on the
  ``monai.bundle run`` command line turns the bars off, and ``StatsHandler``'s ``iteration_log`` is
  ``"$not @show_progress"``: one log line per iteration only where there is no bar (epoch lines always remain);
* the sliding window of ``inference.json`` and of ``python -m pipelines infer`` (MONAI's own ``progress`` flag, a
  tqdm bar over the windows of each volume);
* the disk cache's preprocessing (:func:`pipelines.data.disk_cache.preprocess_cases`, a tqdm bar over the cases).

Upstream lacks: Ignite's ``ProgressBar`` draws wherever it is attached (tqdm's ``disable=None`` checks only the
stream, not a quiet switch or the rank), starts its epoch bar at 1 after a resume (so its ETA counts the resumed
epochs as done in no time) and lets log records written while a bar is shown break its line; :class:`ProgressBars`
adds the switch, the resumed start and tqdm's ``logging_redirect_tqdm`` while its engine runs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

from pipelines.distributed import is_main_process

__all__ = ["QUIET_ENV", "BAR_FORMAT", "ProgressBars", "quiet_requested", "show_progress"]

#: environment variable that silences every progress bar (``1``, ``true``, ``yes``, ``on``)
QUIET_ENV = "PIPELINES_QUIET"

#: Ignite's default format plus the rate: ``train [3/300]: [12/50]  24%|██, loss=0.41 [00:10<00:31, 1.2it/s]``
#: (elapsed < remaining: the ETA)
BAR_FORMAT = "{desc}[{n_fmt}/{total_fmt}] {percentage:3.0f}%|{bar}{postfix} [{elapsed}<{remaining}, {rate_fmt}]"


def quiet_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether :data:`QUIET_ENV` asks for quiet (any value but empty, ``0``, ``false``, ``no``, ``off``)."""
    value = (os.environ if environ is None else environ).get(QUIET_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def show_progress(stream: IO | None = None, quiet: bool | None = None,
                  environ: Mapping[str, str] | None = None) -> bool:
    """Whether to draw progress bars: ``stream`` (default ``sys.stderr``) is a terminal, this is rank 0, and quiet is
    not asked for (``quiet``, or :data:`QUIET_ENV` when ``quiet`` is ``None``)."""
    environ = os.environ if environ is None else environ
    if quiet if quiet is not None else quiet_requested(environ):
        return False
    if not is_main_process(environ):  # torchrun's RANK before the process group exists
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class _Bar(ProgressBar):
    """Ignite's ``ProgressBar``, opened with its description already followed by ``": "`` (Ignite adds it only at its
    first update, which for an epoch bar is an epoch later) and, for a bar over epochs opened by :meth:`open` at the
    first ``EPOCH_STARTED``, at the epochs already done: Ignite opens it at the first event it counts, at 1, so after a
    resume its rate and ETA would count the resumed epochs as done in no time."""

    start = 1  # Ignite's: the bar opens at the first event it counts

    def _reset(self, pbar_total: int | None) -> None:
        kwargs = dict(self.tqdm_kwargs)
        desc = kwargs.pop("desc", "")
        self.pbar = self.pbar_cls(total=pbar_total, leave=self.persist, bar_format=self.bar_format,
                                  initial=self.start, desc=f"{desc}: " if desc else "", **kwargs)

    def open(self, engine: Engine) -> None:
        if self.pbar is None:
            self.start = max(int(engine.state.epoch) - 1, 0)  # at EPOCH_STARTED the epoch is counted already
            self._reset(engine.state.max_epochs)


class _LoggingThroughTqdm:
    """``tqdm.contrib.logging.logging_redirect_tqdm`` from an engine's ``STARTED`` to its ``COMPLETED``, once however
    many engines (trainer, evaluator) nest: log records are written above the bars instead of through them."""

    depth = 0
    context: Any = None

    @classmethod
    def enter(cls, engine: Engine) -> None:
        if cls.depth == 0:
            from tqdm.contrib.logging import logging_redirect_tqdm

            # the root logger and every logger with handlers of its own (MONAI's StatsHandler logger does not
            # propagate: it writes to stdout itself)
            loggers = [logging.root] + [lg for lg in logging.root.manager.loggerDict.values()
                                        if isinstance(lg, logging.Logger) and lg.handlers]
            cls.context = logging_redirect_tqdm(loggers=loggers)
            cls.context.__enter__()
        cls.depth += 1

    @classmethod
    def exit(cls, engine: Engine) -> None:
        cls.depth = max(cls.depth - 1, 0)
        if cls.depth == 0 and cls.context is not None:
            cls.context.__exit__(None, None, None)
            cls.context = None


class ProgressBars:
    """Ignite ``ProgressBar``\\ s on an engine, when :func:`show_progress` says so (else nothing is attached).

    On a trainer (``epochs=True``, the engine runs several epochs): a bar over the iterations of each epoch
    (``train [3/300]: [12/50] ... [00:10<00:31]``, cleared at the epoch's end) and one over the epochs of the run
    (kept), both with the elapsed time and the ETA. On an evaluator (``epochs=False``): one bar over its cases,
    cleared when it completes. ``output_keys`` shows those values of the first item of the engine's output (the loss)
    after the bar. Put it first in a handler list, so that the iteration bar is cleared at the epoch's end before a
    ``ValidationHandler`` draws the evaluator's bar in its place.

    Args:
        enabled: ``None``: :func:`show_progress` for ``file``; ``True``/``False`` forces it (tests, overrides).
        desc: the bar's label (``train``, ``validation``, ``evaluate``).
        epochs: also a bar over the epochs (when the engine runs more than one).
        output_keys: output values shown after the bar, e.g. ``["loss"]``.
        file: the stream (default ``sys.stderr``).
    """

    def __init__(self, enabled: bool | None = None, desc: str = "train", epochs: bool = True,
                 output_keys: Sequence[str] = (), file: IO | None = None) -> None:
        from pipelines.bundle import config_bool

        # `--show_progress false` on monai.bundle's command line arrives as the string "false"
        self.enabled = show_progress(file) if enabled is None else config_bool(enabled, "progress bars: enabled")
        self.desc = desc
        self.epochs = epochs
        self.output_keys = tuple(output_keys)
        self.file = file
        self.bars: list[ProgressBar] = []

    def _output(self, output: Any) -> dict:
        item = output[0] if isinstance(output, list) and output else output
        if not isinstance(item, Mapping):
            return {}
        values = {}
        for key in self.output_keys:
            value = item.get(key)
            if value is not None:
                try:
                    values[key] = float(value)
                except (TypeError, ValueError):  # a tensor of several values: not for a bar
                    continue
        return values

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        kwargs = {"desc": self.desc, "file": self.file, "dynamic_ncols": True}
        iterations = _Bar(persist=False, bar_format=BAR_FORMAT, **kwargs)
        iterations.attach(engine, output_transform=self._output if self.output_keys else None,
                          closing_event_name=Events.EPOCH_COMPLETED if self.epochs else Events.COMPLETED)
        self.bars = [iterations]
        if self.epochs:
            engine.add_event_handler(Events.STARTED, self._attach_epoch_bar, kwargs)
        engine.add_event_handler(Events.STARTED, _LoggingThroughTqdm.enter)
        engine.add_event_handler(Events.COMPLETED, _LoggingThroughTqdm.exit)

    def _attach_epoch_bar(self, engine: Engine, kwargs: dict) -> None:
        """At ``STARTED``, when ``max_epochs`` is known: the bar over the epochs, for a run of more than one."""
        if len(self.bars) > 1 or (engine.state.max_epochs or 0) <= 1:
            return
        epochs = _Bar(persist=True, bar_format=BAR_FORMAT, **{**kwargs, "desc": f"{self.desc} epochs"})
        # opened at EPOCH_STARTED, before the iteration bar's first event: the epoch bar is the upper line
        engine.add_event_handler(Events.EPOCH_STARTED, epochs.open)
        epochs.attach(engine, event_name=Events.EPOCH_COMPLETED, closing_event_name=Events.COMPLETED)
        self.bars.append(epochs)
