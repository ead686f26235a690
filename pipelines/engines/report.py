"""Evaluation reports on an evaluator: per-case metrics CSV and summary JSON, pixel-pooled scores, per-channel Dice.

:class:`SuperResolutionReport` does the same for super-resolution: the per-image (or per-volume) PSNR, SSIM and MSE
of the network and of the interpolation baseline that :class:`~pipelines.engines.gan.SuperResolutionEvaluator`
computed, one row per case in a CSV, with their means, and the network's gain over interpolation, in a JSON.

:class:`SegmentationReport` feeds every validated case to :func:`pipelines.metrics.segmentation_report` (per-case CSV,
summary JSON, both atomic) and can add the pixel-pooled scores that skin-lesion papers report (Dice/F1, Jaccard,
sensitivity, specificity, accuracy over all pixels of the test set). :func:`channel_output` selects one output channel
for an Ignite metric, so that each BraTS region (TC, WT, ET) gets its own scalar in TensorBoard.

:class:`HD95` is the Ignite handler of :class:`~pipelines.metrics.HD95Metric` (millimetres from the label's voxel
size): NaN, not MONAI's 0.0, when no case has an HD95 (every prediction empty), and the count of cases its mean
left out in ``engine.state.metrics["<name>_left_out"]``, so that ``MetricsSaver``'s ``metrics.csv`` and the log say
both. MONAI's ``HausdorffDistance`` handler reduces all-NaN to 0.0 and says nothing.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import logging

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import IgniteMetricHandler
from monai.handlers.utils import from_engine

from pipelines.io import atomic_path, write_json_atomic
from pipelines.metrics import HD95Metric, left_out_cases, segmentation_report

__all__ = ["HD95", "SegmentationReport", "SuperResolutionReport", "channel_output", "pooled_scores"]

logger = logging.getLogger(__name__)


class HD95(IgniteMetricHandler):
    """95th-percentile Hausdorff distance in mm as an Ignite metric, NaN-honest (see the module docstring).

    Args:
        include_background: score channel 0 too.
        spacing: fixed mm per voxel; ``None`` reads the label's ``MetaTensor.pixdim`` (else 1 mm).
        output_transform: engine output -> ``(y_pred, y)``; default ``from_engine(["pred", "label"])``.
        save_details: keep the per-case ``(N, C)`` values in ``engine.state.metric_details`` (``MetricsSaver``).
    """

    def __init__(self, include_background: bool = False, spacing=None, output_transform: Callable | None = None,
                 save_details: bool = True) -> None:
        super().__init__(metric_fn=HD95Metric(include_background=include_background, spacing=spacing),
                         output_transform=output_transform or from_engine(["pred", "label"]),
                         save_details=save_details)

    def completed(self, engine: Engine, name: str) -> None:
        super().completed(engine, name)
        buffer = self.metric_fn.get_buffer()
        cases = int(buffer.shape[0]) if isinstance(buffer, torch.Tensor) and buffer.ndim else 0
        left_out = left_out_cases(buffer) if cases else 0
        engine.state.metrics[f"{name}_left_out"] = left_out
        if left_out:
            logger.warning("%s: %d of %d case(s) left out of the mean: HD95 is undefined (NaN) where the prediction "
                           "or the label is empty%s", name, left_out, cases,
                           "; no case has one, so the mean is NaN" if left_out == cases else "")


def channel_output(index: int, pred_key: str = "pred", label_key: str = "label") -> Callable:
    """An Ignite ``output_transform`` giving ``([pred[index:index+1], ...], [label[index:index+1], ...])``."""

    def transform(output: Any) -> tuple[list, list]:
        items = output if isinstance(output, list) else [output]
        return ([i[pred_key][index : index + 1] for i in items], [i[label_key][index : index + 1] for i in items])

    return transform


def _safe(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def pooled_scores(tp: float, fp: float, tn: float, fn: float) -> dict[str, float | None]:
    """Dice (F1), Jaccard, sensitivity, specificity, precision and accuracy from pooled pixel counts."""
    return {
        "dice": _safe(2 * tp, 2 * tp + fp + fn),
        "jaccard": _safe(tp, tp + fp + fn),
        "sensitivity": _safe(tp, tp + fn),
        "specificity": _safe(tn, tn + fp),
        "precision": _safe(tp, tp + fp),
        "accuracy": _safe(tp + tn, tp + tn + fp + fn),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def _case_name(item: dict, key: str, index: int) -> str:
    value = item.get(key)
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    if value is None:
        meta = getattr(item.get("label"), "meta", {}) or {}
        value = meta.get("filename_or_obj")
        value = Path(str(value)).name if value else f"case{index:04d}"
    return str(value)


class SegmentationReport:
    """Write a per-case metrics CSV and a summary JSON when an evaluator completes.

    Each decollated output item must hold binarised ``pred`` and ``label`` tensors ``(C, *spatial)`` (one-hot, or
    overlapping region channels). To keep memory flat on large 3D data, each case is cropped to the bounding box of
    its prediction and label (plus ``margin``) before it is kept; Dice, IoU, precision, recall, HD95, surface Dice and
    boundary F1 do not change, so the crop is only applied when no pixel-level metric (accuracy) is requested.

    Args:
        output_dir: folder of ``<prefix>metrics.csv`` and ``<prefix>summary.json``.
        class_names: one name per channel.
        metrics: names from :data:`pipelines.metrics.ALL_METRICS`.
        case_key: item key naming the case (falls back to the label's file name).
        pooled: also add ``"pooled"`` scores per channel (counts over every pixel of every case) to the JSON.
        prefix: file name prefix.
        margin: voxels kept around the bounding box.
        enabled: ``False`` turns it off (non-zero ranks).
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], metrics: Sequence[str] = ("dice", "hd95"),
                 case_key: str = "case", pooled: bool = False, prefix: str = "", margin: int = 2,
                 enabled: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.metrics = tuple(metrics)
        self.case_key = case_key
        self.pooled = pooled
        self.prefix = prefix
        self.margin = margin
        self.enabled = enabled
        self.crop = not any(m in ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou") for m in self.metrics)
        self.cases: list[dict] = []
        self.counts = np.zeros((len(self.class_names), 4))
        self.summary: dict | None = None

    @property
    def csv_path(self) -> Path:
        return self.output_dir / f"{self.prefix}metrics.csv"

    @property
    def json_path(self) -> Path:
        return self.output_dir / f"{self.prefix}summary.json"

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.cases = []
        self.counts[:] = 0

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        outputs = output if isinstance(output, list) else [output]
        batch = engine.state.batch  # the evaluator's output holds image/label/pred only; names stay in the batch
        batch = batch if isinstance(batch, list) and len(batch) == len(outputs) else [{}] * len(outputs)
        for item, source in zip(outputs, batch):
            item = {**source, **item} if isinstance(source, dict) else item
            pred = torch.as_tensor(item["pred"]).detach().cpu() > 0.5
            label_t = item["label"]
            spacing = tuple(float(s) for s in label_t.pixdim) if hasattr(label_t, "pixdim") else None
            label = torch.as_tensor(label_t).detach().cpu() > 0.5
            if self.pooled:
                tp = (pred & label).flatten(1).sum(1)
                fp = (pred & ~label).flatten(1).sum(1)
                fn = (~pred & label).flatten(1).sum(1)
                tn = label[0].numel() - tp - fp - fn
                self.counts += torch.stack([tp, fp, tn, fn], 1).double().numpy()
            if self.crop:
                union = (pred | label).any(0)
                if union.any():
                    idx = torch.nonzero(union)
                    lo = (idx.min(0).values - self.margin).clamp(min=0)
                    hi = idx.max(0).values + self.margin + 1
                    region = (slice(None),) + tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
                    pred, label = pred[region], label[region]
                    # a crop that touches the border of the original keeps that border: no fake surface appears
            self.cases.append({"case": _case_name(item, self.case_key, len(self.cases)), "pred": pred.clone(),
                               "label": label.clone(), **({"spacing": spacing} if spacing else {})})

    def _write(self, engine: Engine) -> None:
        self.summary = segmentation_report(self.cases, self.class_names, self.csv_path, self.json_path,
                                           metrics=self.metrics)
        if self.pooled:
            self.summary["pooled"] = {name: pooled_scores(*self.counts[c].tolist())
                                      for c, name in enumerate(self.class_names)}
            clean = _nan_to_none(self.summary)
            write_json_atomic(self.json_path, clean)
        self.cases = []


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class SuperResolutionReport:
    """Per-case super-resolution metrics (network and interpolation baseline) as a CSV and a summary JSON.

    Attach to a :class:`~pipelines.engines.gan.SuperResolutionEvaluator` (or any evaluator whose metric handlers keep
    their per-case details, MONAI's default ``save_details=True``). At the end of each evaluation the per-case
    values of ``metrics`` are read from ``engine.state.metric_details`` (the same numbers the evaluator logs and
    averages), so the report and the logged metrics agree by construction. Files (written atomically):

    - ``<output_dir>/<prefix>metrics.csv``: ``case, val_psnr, val_ssim, val_mse, val_psnr_interp, ...``, one row per
      image or volume, in evaluation order;
    - ``<output_dir>/<prefix>summary.json``: ``{"cases": n, "metrics": {name: {"mean", "std", "median", "min",
      "max"}}, "gain": {"psnr": mean(val_psnr - val_psnr_interp), "ssim": ..., "mse": ...},
      "network_beats_interpolation": {"psnr": fraction of cases, ...}}``. Non-finite values (PSNR of a perfect
      prediction) are written as ``null``.

    Args:
        output_dir: folder of the two files.
        metrics: metric names of the evaluator; default the network's and the baseline's PSNR, SSIM and MSE.
        case_keys: batch keys naming a case, tried in order (``name`` for 2D images, ``seriesuid`` for LUNA16); the
            fallback is the file name in the HR image's metadata, then ``case<i>``.
        prefix: file name prefix.
        enabled: ``False`` turns it off (non-zero ranks).
    """

    DEFAULT_METRICS = ("val_psnr", "val_ssim", "val_mse", "val_psnr_interp", "val_ssim_interp", "val_mse_interp")

    def __init__(self, output_dir: str, metrics: Sequence[str] = DEFAULT_METRICS,
                 case_keys: Sequence[str] = ("name", "seriesuid", "case"), prefix: str = "",
                 enabled: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.metrics = tuple(metrics)
        self.case_keys = tuple(case_keys)
        self.prefix = prefix
        self.enabled = enabled
        self.cases: list[str] = []
        self.summary: dict | None = None

    @property
    def csv_path(self) -> Path:
        return self.output_dir / f"{self.prefix}metrics.csv"

    @property
    def json_path(self) -> Path:
        return self.output_dir / f"{self.prefix}summary.json"

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.cases = []

    def _name(self, item: dict, output: dict) -> str:
        for key in self.case_keys:
            value = item.get(key) if isinstance(item, dict) else None
            while isinstance(value, (list, tuple)) and value:
                value = value[0]
            if value is not None:
                return str(value)
        for source in (item, output):
            for key in ("hr", "label", "image"):
                meta = getattr(source.get(key) if isinstance(source, dict) else None, "meta", None) or {}
                if meta.get("filename_or_obj"):
                    value = meta["filename_or_obj"]
                    while isinstance(value, (list, tuple)) and value:
                        value = value[0]
                    return Path(str(value)).name
        return f"case{len(self.cases):04d}"

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        outputs = output if isinstance(output, list) else [output]
        batch = engine.state.batch
        if isinstance(batch, dict):  # not decollated
            size = len(outputs) if isinstance(output, list) else int(next(iter(output.values())).shape[0])
            items = [{k: (v[i] if isinstance(v, (list, tuple)) and len(v) == size else v) for k, v in batch.items()}
                     for i in range(size)]
            outputs = outputs * size if len(outputs) == 1 and size > 1 else outputs
        else:
            items = batch if isinstance(batch, list) and len(batch) == len(outputs) else [{}] * len(outputs)
        for item, out in zip(items, outputs):
            self.cases.append(self._name(item, out))

    def _write(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}) or {}
        columns: dict[str, list[float]] = {}
        for name in self.metrics:
            if name not in details:
                continue
            values = torch.as_tensor(details[name]).detach().float().cpu()
            values = values.reshape(values.shape[0], -1).mean(1) if values.ndim > 1 else values.reshape(-1)
            columns[name] = [float(v) for v in values]
        n = max((len(v) for v in columns.values()), default=0)
        cases = self.cases[:n] + [f"case{i:04d}" for i in range(len(self.cases), n)]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.csv_path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["case", *columns])
            for i, case in enumerate(cases):
                writer.writerow([case, *(_fmt(columns[k][i]) for k in columns)])
        stats = {name: _stats(values) for name, values in columns.items()}
        gain, beats = {}, {}
        for base in ("psnr", "ssim", "mse"):
            net, interp = columns.get(f"val_{base}"), columns.get(f"val_{base}_interp")
            if net is None or interp is None:
                continue
            diff = np.asarray(net, dtype=np.float64) - np.asarray(interp, dtype=np.float64)
            finite = diff[np.isfinite(diff)]
            gain[base] = float(finite.mean()) if finite.size else None
            better = diff < 0 if base == "mse" else diff > 0
            beats[base] = float(better.mean()) if diff.size else None
        self.summary = _nan_to_none({"cases": n, "metrics": stats, "gain": gain,
                                     "network_beats_interpolation": beats, "case_names": cases})
        write_json_atomic(self.json_path, self.summary)


def _fmt(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    if not finite.size:
        return {"mean": None, "std": None, "median": None, "min": None, "max": None, "non_finite": int(array.size)}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "median": float(np.median(finite)),
            "min": float(finite.min()), "max": float(finite.max()), "non_finite": int(array.size - finite.size)}
