"""Handlers that MONAI lacks: image slices in TensorBoard, the learning rate, and a JSON summary of a run.

MONAI's ``TensorBoardImageHandler`` writes a 3D volume as an animated GIF of its last axis and cannot put the CT,
the label and the prediction side by side (nor LR | SR | HR for super-resolution, where the images differ in size);
``TensorBoardStatsHandler`` does not log the learning rate.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from pipelines.io import write_json_atomic

__all__ = ["TensorBoardSlices", "TensorBoardTriplets", "LearningRateLogger", "TrainingSummary", "overlay_panels",
           "triplet_panel"]


def _first_item(output: Any) -> dict | None:
    if isinstance(output, list) and output:
        output = output[0]
    return output if isinstance(output, dict) else None


def _as_labels(x: torch.Tensor) -> np.ndarray:
    """(C, *spatial) one-hot/probabilities or (1, *spatial) labels -> integer label map (*spatial)."""
    x = torch.as_tensor(x).detach().float().cpu()
    return (x.argmax(0) if x.shape[0] > 1 else (x[0] > 0.5 if x.max() <= 1 else x[0])).numpy().astype(np.int64)


def overlay_panels(image: np.ndarray, label: np.ndarray | None, pred: np.ndarray | None) -> np.ndarray:
    """Three RGB panels side by side: the image, the image with the label (red), with the prediction (green)."""
    lo, hi = np.percentile(image, (0.5, 99.5))
    gray = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    panels = [np.stack([gray] * 3)]
    for mask, channel in ((label, 0), (pred, 1)):
        rgb = np.stack([gray] * 3) * 0.7
        if mask is not None:
            rgb[channel][mask > 0] = 1.0
        panels.append(rgb)
    return np.concatenate(panels, axis=2)  # (3, H, 3W)


class _EpochPanel:
    """One image panel per epoch: ``_capture`` builds ``self._panel`` from an iteration's output (the first that
    has what it needs), and it is written to TensorBoard at the epoch's end."""

    writer: Any
    tag: str
    _panel: np.ndarray | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._capture)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._panel = None

    def _capture(self, engine: Engine) -> None:
        raise NotImplementedError

    def _write(self, engine: Engine) -> None:
        if self._panel is not None:
            self.writer.add_image(self.tag, self._panel, engine.state.epoch, dataformats="CHW")
            self.writer.flush()


class TensorBoardSlices(_EpochPanel):
    """Log one slice of the first validation case per epoch as CT | label | prediction panels.

    For 3D data the axial slice (last axis) with the largest label area is shown, or the middle slice when the label
    is empty; 2D data is shown as is. Attach to an evaluator; the step is the evaluator's epoch (the trainer's epoch
    when run by ``ValidationHandler``).

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``.
        tag: TensorBoard tag.
        image_key, label_key, pred_key: keys of the decollated engine output.
        channel: image channel to show.
    """

    def __init__(self, summary_writer, tag: str = "val/slices", image_key: str = "image", label_key: str = "label",
                 pred_key: str = "pred", channel: int = 0) -> None:
        self.writer = summary_writer
        self.tag = tag
        self.keys = (image_key, label_key, pred_key)
        self.channel = channel
        self._panel: np.ndarray | None = None

    def _capture(self, engine: Engine) -> None:
        if self._panel is not None:
            return
        item = _first_item(engine.state.output)
        if item is None or self.keys[0] not in item:
            return
        image = torch.as_tensor(item[self.keys[0]]).detach().float().cpu()[self.channel].numpy()
        label = _as_labels(item[self.keys[1]]) if self.keys[1] in item else None
        pred = _as_labels(item[self.keys[2]]) if self.keys[2] in item else None
        if image.ndim == 3:
            area = label.reshape(-1, label.shape[-1]).sum(0) if label is not None else np.zeros(image.shape[-1])
            z = int(area.argmax()) if area.max() > 0 else image.shape[-1] // 2
            image, label, pred = (a[..., z] if a is not None else None for a in (image, label, pred))
        # RAS arrays are (x, y): transpose and flip so that anterior is up, as radiologists view axial slices
        image, label, pred = (np.flipud(a.T).copy() if a is not None else None for a in (image, label, pred))
        self._panel = overlay_panels(image, label, pred)



def triplet_panel(
    lr: torch.Tensor,
    sr: torch.Tensor,
    hr: torch.Tensor,
    slice_axis: int = 0,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    channel: int = 0,
) -> np.ndarray:
    """LR | SR | HR side by side as one ``(3, H, 3W)`` RGB float image in [0, 1].

    ``lr``, ``sr`` and ``hr`` are channel-first ``(C, *spatial)`` images of one item; ``lr`` is up-sampled to the HR
    size by nearest neighbour so its pixels show as blocks. Three channels are shown in colour, otherwise
    ``channel`` in grey. For 3D the middle slice across spatial axis ``slice_axis`` is taken (default 0, the first
    in-plane axis, so the shown plane contains the last axis, the slice axis that slice-axis super-resolution
    up-samples), transposed so that the last axis runs vertically, upwards. All three panels share ``value_range``
    (``None``: the HR image's 0.5-99.5 percentile window).
    """
    hr = torch.as_tensor(hr).detach().float().cpu()
    sr = torch.as_tensor(sr).detach().float().cpu()
    lr = torch.as_tensor(lr).detach().float().cpu()
    size = tuple(hr.shape[1:])
    if tuple(sr.shape[1:]) != size:
        raise ValueError(f"SR shape {tuple(sr.shape)} differs from HR shape {tuple(hr.shape)}.")
    lr = torch.nn.functional.interpolate(lr[None], size=size, mode="nearest")[0]
    panels = []
    for image in (lr, sr, hr):
        image = image.numpy()
        image = image if image.shape[0] == 3 else image[channel : channel + 1]
        if image.ndim == 4:  # (C, H, W, D): middle plane across `slice_axis`, last axis upwards
            image = np.take(image, image.shape[1 + slice_axis] // 2, axis=1 + slice_axis)
            image = np.flip(np.swapaxes(image, 1, 2), axis=1)
        panels.append(image)
    if value_range is None:
        lo, hi = np.percentile(panels[2], (0.5, 99.5))
    else:
        lo, hi = value_range
    panel = np.concatenate(panels, axis=2)
    panel = np.clip((panel - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    if panel.shape[0] == 1:
        panel = np.repeat(panel, 3, axis=0)
    return np.ascontiguousarray(panel, dtype=np.float32)


class TensorBoardTriplets(_EpochPanel):
    """Write LR (nearest up-sampled) | SR | HR of the first item of each epoch as one TensorBoard image.

    For 3D data the shown plane contains the slice axis (see :func:`triplet_panel`), so the gain in slice-axis
    resolution is visible. Attach to the super-resolution evaluator (its output keys ``"image"``, ``"pred"``,
    ``"label"``, the defaults) or to the trainer with ``lr_key="lr", hr_key="hr"``. The step is the engine's epoch
    (the trainer's epoch when run by ``ValidationHandler``). Rank zero only through the writer passed in
    (:func:`pipelines.engines.tensorboard.rank_zero_summary_writer`).

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``.
        tag: TensorBoard tag.
        lr_key, sr_key, hr_key: keys of the (decollated) engine output.
        slice_axis: for 3D, the spatial axis cut at its middle.
        value_range: display window shared by the three panels; ``None`` for the HR percentile window.
        channel: channel shown when the images do not have 3 channels.
    """

    def __init__(
        self,
        summary_writer,
        tag: str = "val/lr_sr_hr",
        lr_key: str = "image",
        sr_key: str = "pred",
        hr_key: str = "label",
        slice_axis: int = 0,
        value_range: tuple[float, float] | None = (0.0, 1.0),
        channel: int = 0,
    ) -> None:
        self.writer = summary_writer
        self.tag = tag
        self.keys = (lr_key, sr_key, hr_key)
        self.slice_axis = slice_axis
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        self.channel = channel
        self._panel: np.ndarray | None = None

    def _capture(self, engine: Engine) -> None:
        if self._panel is not None:
            return
        output = engine.state.output
        if isinstance(output, dict):  # not decollated: take the first item of the batch
            if not all(k in output for k in self.keys):
                return
            lr, sr, hr = (output[k][0] for k in self.keys)
        else:
            item = _first_item(output)
            if item is None or not all(k in item for k in self.keys):
                return
            lr, sr, hr = (item[k] for k in self.keys)
        self._panel = triplet_panel(lr, sr, hr, self.slice_axis, self.value_range, self.channel)



class LearningRateLogger:
    """Write the learning rate of each optimiser parameter group to TensorBoard, at the step that used it.

    ``every="epoch"`` logs at ``EPOCH_STARTED`` with the epoch number as the step: the rate the whole epoch trains
    with (an epoch-level ``LrScheduleHandler`` steps at ``EPOCH_COMPLETED``, after it). ``every="iteration"`` logs at
    ``ITERATION_STARTED`` with the iteration number, for schedulers stepped every iteration. Logging at
    ``EPOCH_COMPLETED``, as before, recorded the rate of the *next* epoch under this one's step (a 1-epoch cosine run
    trained at 1e-4 showed 1e-6).
    """

    def __init__(self, summary_writer, optimizer: torch.optim.Optimizer, tag: str = "train/lr",
                 every: str = "epoch") -> None:
        if every not in ("epoch", "iteration"):
            raise ValueError(f"every must be 'epoch' or 'iteration', got {every!r}")
        self.writer = summary_writer
        self.optimizer = optimizer
        self.tag = tag
        self.every = every

    def attach(self, engine: Engine) -> None:
        event = Events.EPOCH_STARTED if self.every == "epoch" else Events.ITERATION_STARTED
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        step = engine.state.epoch if self.every == "epoch" else engine.state.iteration
        for i, group in enumerate(self.optimizer.param_groups):
            tag = self.tag if i == 0 else f"{self.tag}_{i}"
            self.writer.add_scalar(tag, group["lr"], step)


class TrainingSummary:
    """At the end of training, write the evaluator's best metric and its epoch (and timing) to a JSON file.

    Attach to the trainer. ``path`` is written atomically; ``extra`` adds fixed fields (the bundle name, say).
    """

    def __init__(self, evaluator: Engine, path: str, extra: dict | None = None) -> None:
        self.evaluator = evaluator
        self.path = Path(path)
        self.extra = dict(extra or {})
        self._start = time.time()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: setattr(self, "_start", time.time()))
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        state = self.evaluator.state
        metrics = {k: float(v) for k, v in (getattr(state, "metrics", None) or {}).items()
                   if isinstance(v, (int, float, np.floating))}
        write_json_atomic(self.path, {
            **self.extra,
            "key_metric_name": getattr(state, "key_metric_name", None),
            "best_metric": float(getattr(state, "best_metric", float("nan"))),
            "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)),
            "last_metrics": metrics,
            "epochs": int(engine.state.epoch),
            "iterations": int(engine.state.iteration),
            "seconds": round(time.time() - self._start, 1),
        })
