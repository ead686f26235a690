"""The segmentation report: a per-case metrics CSV and a summary JSON, from a list of cases or from an evaluator.

:func:`segmentation_report` scores every case with :func:`pipelines.metrics.compute_case_metrics` and writes, both
files published together (:func:`pipelines.reports.base.publish_together`):

- ``metrics.csv``: ``case, class, <metrics>``: one row per case and class (per-class metrics), and one whose class is
  ``"all"`` (the case metrics: pixel accuracy, mean pixel accuracy, mean IoU); undefined values are ``nan``;
- ``summary.json``: ``{"n_cases", "class_names", "metrics", "settings", "empty_policy", "summary"}``, where
  ``summary[metric][class]`` is ``{"mean", "std", "n", "nan_count", "inf_count"}`` over the finite values.

:class:`SegmentationReport` is its Ignite handler (:class:`~pipelines.reports.base.CollectThenWrite`): each validated
case is kept, cropped to the bounding box of its prediction and label, and the report is written when the evaluator
completes, with the pixel-pooled scores that skin-lesion papers report when asked (``pooled``,
:func:`pipelines.metrics.pooled_scores`).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine

from pipelines.metrics import (
    ALL_METRICS,
    CASE_METRICS,
    CASE_ROW,
    PER_CLASS_METRICS,
    compute_case_metrics,
    pooled_scores,
    value_summary,
)
from pipelines.reports.base import CollectThenWrite, Staging, nan_to_none, publish_together

__all__ = ["segmentation_report", "SegmentationReport"]


def segmentation_report(
    cases: Iterable[Mapping[str, Any]],
    class_names: Sequence[str],
    out_csv: str | os.PathLike,
    out_json: str | os.PathLike,
    *,
    metrics: Sequence[str] = ALL_METRICS,
    boundary_tolerance_mm: float = 2.0,
    surface_tolerance_mm: float = 2.0,
    empty_value: float = float("nan"),
    staging: Staging | None = None,
) -> dict[str, Any]:
    """Score every case, write a per-case CSV and a summary JSON (published together), return the summary.

    CSV: columns ``case, class, <metrics in the order given>``. Each case has one row per class (per-class metrics
    filled, case metrics empty) and one row whose class is ``"all"`` (case metrics filled, per-class metrics empty).
    Undefined values are written ``nan``.

    JSON: ``{"n_cases", "class_names", "metrics", "settings", "empty_policy", "summary"}`` where
    ``summary[metric][class]`` (class ``"all"`` for case metrics) is ``{"mean", "std", "n", "nan_count",
    "inf_count"}``: mean and population standard deviation over the finite values (``null`` when there are none),
    ``n`` the number of finite values.

    Args:
        cases: dicts ``{"case": id, "pred": (C, *spatial), "label": (C, *spatial), "spacing": tuple (optional)}``
            with binarised one-hot tensors; a missing spacing is read from a ``MetaTensor`` label, else 1 mm.
        class_names: one name per channel, background first.
        out_csv: path of the per-case CSV.
        out_json: path of the summary JSON.
        metrics: names from :data:`pipelines.metrics.ALL_METRICS`.
        boundary_tolerance_mm: tolerance of ``boundary_f1``.
        surface_tolerance_mm: tolerance of ``surface_dice``.
        empty_value: score of a class absent from both prediction and label (NaN by default).
        staging: an open :class:`~pipelines.reports.base.Staging` the two files join (a handler's); ``None``
            publishes them when this returns.
    """
    metrics = tuple(metrics)
    class_names = [str(c) for c in class_names]
    if CASE_ROW in class_names:
        raise ValueError(f"class name {CASE_ROW!r} is reserved for the per-case rows.")
    per_class = [m for m in metrics if m in PER_CLASS_METRICS]
    per_case = [m for m in metrics if m in CASE_METRICS]

    rows: list[list[Any]] = []
    collected: dict[str, dict[str, list[float]]] = {m: {} for m in metrics}
    n_cases = 0
    for i, item in enumerate(cases):
        missing = [k for k in ("case", "pred", "label") if k not in item]
        if missing:
            raise ValueError(f"case #{i} lacks key(s) {missing}; expected 'case', 'pred', 'label' (and 'spacing').")
        case_id = str(item["case"])
        try:
            values = compute_case_metrics(
                item["pred"],
                item["label"],
                item.get("spacing"),
                metrics=metrics,
                boundary_tolerance_mm=boundary_tolerance_mm,
                surface_tolerance_mm=surface_tolerance_mm,
                empty_value=empty_value,
            )
        except ValueError as e:
            raise ValueError(f"case {case_id!r}: {e}") from e
        n_channels = torch.as_tensor(item["pred"]).shape[0]
        if n_channels != len(class_names):
            raise ValueError(
                f"case {case_id!r} has {n_channels} channels but {len(class_names)} class names were given."
            )
        n_cases += 1
        for c, name in enumerate(class_names):
            row: list[Any] = [case_id, name]
            for m in metrics:
                if m in per_class:
                    v = float(values[m][c])
                    collected[m].setdefault(name, []).append(v)
                    row.append(repr(v))
                else:
                    row.append("")
            rows.append(row)
        row = [case_id, CASE_ROW]
        for m in metrics:
            if m in per_case:
                v = float(values[m])
                collected[m].setdefault(CASE_ROW, []).append(v)
                row.append(repr(v))
            else:
                row.append("")
        rows.append(row)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "class", *metrics])
    writer.writerows(rows)
    summary = {
        "n_cases": n_cases,
        "class_names": class_names,
        "metrics": list(metrics),
        "settings": {
            "boundary_tolerance_mm": boundary_tolerance_mm,
            "surface_tolerance_mm": surface_tolerance_mm,
            "hd_percentile": 95,
            "empty_value": None if math.isnan(empty_value) else empty_value,
        },
        "empty_policy": "class absent from both prediction and label -> empty_value (null = NaN, excluded from means "
        "and counted in nan_count); hd95 is NaN when either side is empty",
        "summary": {
            m: {
                name: value_summary(collected[m].get(name, []))
                for name in (class_names if m in per_class else [CASE_ROW])
            }
            for m in metrics
        },
    }
    with publish_together(staging) as files:
        files.json(out_json, summary, allow_nan=False)  # staged first: renamed last, when the CSV is in place
        files.text(out_csv, buffer.getvalue())
    return summary


def _case_name(item: dict, key: str, index: int) -> str:
    value = item.get(key)
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    if value is None:
        meta = getattr(item.get("label"), "meta", {}) or {}
        value = meta.get("filename_or_obj")
        value = Path(str(value)).name if value else f"case{index:04d}"
    return str(value)


class SegmentationReport(CollectThenWrite):
    """Write a per-case metrics CSV and a summary JSON (:func:`segmentation_report`) when an evaluator completes.

    Each decollated output item must hold binarised ``pred`` and ``label`` tensors ``(C, *spatial)`` (one-hot, or
    overlapping region channels). To keep memory flat on large 3D data, each case is cropped to the bounding box of
    its prediction and label (plus ``margin``) before it is kept; Dice, IoU, precision, recall, HD95, surface Dice and
    boundary F1 do not change, so the crop is only applied when no pixel-level metric (accuracy) is requested. Under
    ``torch.distributed`` the cases of every rank are gathered and rank 0 writes (attach it on every rank).

    Args:
        output_dir: folder of ``<prefix>metrics.csv`` and ``<prefix>summary.json``.
        class_names: one name per channel.
        metrics: names from :data:`pipelines.metrics.ALL_METRICS`.
        case_key: item key naming the case (falls back to the label's file name).
        pooled: also add ``"pooled"`` scores per channel (counts over every pixel of every case) to the JSON.
        prefix: file name prefix.
        margin: voxels kept around the bounding box.
        enabled: ``False`` turns it off.
        gather: gather the cases of every rank (see :class:`~pipelines.reports.base.CollectThenWrite`).
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], metrics: Sequence[str] = ("dice", "hd95"),
                 case_key: str = "case", pooled: bool = False, prefix: str = "", margin: int = 2,
                 enabled: bool = True, gather: bool = True) -> None:
        super().__init__(gather=gather, enabled=enabled)
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.metrics = tuple(metrics)
        self.case_key = case_key
        self.pooled = pooled
        self.prefix = prefix
        self.margin = margin
        self.crop = not any(m in ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou") for m in self.metrics)

    @property
    def csv_path(self) -> Path:
        return self.output_dir / f"{self.prefix}metrics.csv"

    @property
    def json_path(self) -> Path:
        return self.output_dir / f"{self.prefix}summary.json"

    def rows_of(self, engine: Engine) -> list[dict]:
        output: Any = engine.state.output
        outputs = output if isinstance(output, list) else [output]
        batch: Any = engine.state.batch  # the evaluator's output holds image/label/pred only; names stay in the batch
        batch = batch if isinstance(batch, list) and len(batch) == len(outputs) else [{}] * len(outputs)
        rows: list[dict] = []
        for item, source in zip(outputs, batch):
            item = {**source, **item} if isinstance(source, dict) else item
            pred = torch.as_tensor(item["pred"]).detach().cpu() > 0.5
            label_t = item["label"]
            spacing = tuple(float(s) for s in label_t.pixdim) if hasattr(label_t, "pixdim") else None
            label = torch.as_tensor(label_t).detach().cpu() > 0.5
            row: dict[str, Any] = {"case": _case_name(item, self.case_key, len(self.rows) + len(rows))}
            if self.pooled:
                tp = (pred & label).flatten(1).sum(1)
                fp = (pred & ~label).flatten(1).sum(1)
                fn = (~pred & label).flatten(1).sum(1)
                tn = label[0].numel() - tp - fp - fn
                row["counts"] = torch.stack([tp, fp, tn, fn], 1).double().numpy()
            if self.crop:
                union = (pred | label).any(0)
                if union.any():
                    idx = torch.nonzero(union)
                    lo = (idx.min(0).values - self.margin).clamp(min=0)
                    hi = idx.max(0).values + self.margin + 1
                    region = (slice(None),) + tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
                    pred, label = pred[region], label[region]
                    # a crop that touches the border of the original keeps that border: no fake surface appears
            row.update({"pred": pred.clone(), "label": label.clone(), **({"spacing": spacing} if spacing else {})})
            rows.append(row)
        return rows

    def write(self, rows: list, engine: Engine, staging: Staging) -> dict:
        summary = segmentation_report(rows, self.class_names, self.csv_path, self.json_path, metrics=self.metrics,
                                      staging=staging)
        if self.pooled:
            counts = np.zeros((len(self.class_names), 4))
            for row in rows:
                counts += row["counts"]
            summary["pooled"] = {name: pooled_scores(*counts[c].tolist()) for c, name in enumerate(self.class_names)}
            summary = nan_to_none(summary)
            staging.json(self.json_path, summary)  # the same temporary file, rewritten before it is published
        return summary
