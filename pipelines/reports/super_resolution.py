"""The super-resolution report: per-case PSNR, SSIM and MSE of the network and of interpolation, and their summary.

:class:`SuperResolutionReport` (a :class:`~pipelines.reports.base.CollectThenWrite`) names each case as the evaluator
runs and, at its end, reads the per-case values that :class:`~pipelines.engines.gan.SuperResolutionEvaluator`'s
metric handlers kept (``engine.state.metric_details``, gathered over the ranks by MONAI), so the report and the logged
metrics agree by construction. Both files are published together.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine

from pipelines.reports.base import CollectThenWrite, Staging, nan_to_none

__all__ = ["SuperResolutionReport"]


class SuperResolutionReport(CollectThenWrite):
    """Per-case super-resolution metrics (network and interpolation baseline) as a CSV and a summary JSON.

    Attach to a :class:`~pipelines.engines.gan.SuperResolutionEvaluator` (or any evaluator whose metric handlers keep
    their per-case details, MONAI's default ``save_details=True``). At the end of each evaluation the per-case
    values of ``metrics`` are read from ``engine.state.metric_details`` (the same numbers the evaluator logs and
    averages). Files:

    - ``<output_dir>/<prefix>metrics.csv``: ``case, val_psnr, val_ssim, val_mse, val_psnr_interp, ...``, one row per
      image or volume, in evaluation order;
    - ``<output_dir>/<prefix>summary.json``: ``{"cases": n, "metrics": {name: {"mean", "std", "median", "min",
      "max"}}, "gain": {"psnr": mean(val_psnr - val_psnr_interp), "ssim": ..., "mse": ...},
      "network_beats_interpolation": {"psnr": fraction of cases, ...}}``. Non-finite values (PSNR of a perfect
      prediction) are written as ``null``.

    Under ``torchrun`` the case names of every rank are gathered in rank order, as MONAI gathers the details, and rank
    0 writes (attach it on every rank).

    Args:
        output_dir: folder of the two files.
        metrics: metric names of the evaluator; default the network's and the baseline's PSNR, SSIM and MSE.
        case_keys: batch keys naming a case, tried in order (``name`` for 2D images, ``seriesuid`` for LUNA16); the
            fallback is the file name in the HR image's metadata, then ``case<i>``.
        prefix: file name prefix.
        enabled: ``False`` turns it off.
        gather: gather the case names of every rank (see :class:`~pipelines.reports.base.CollectThenWrite`).
    """

    DEFAULT_METRICS = ("val_psnr", "val_ssim", "val_mse", "val_psnr_interp", "val_ssim_interp", "val_mse_interp")

    def __init__(self, output_dir: str, metrics: Sequence[str] = DEFAULT_METRICS,
                 case_keys: Sequence[str] = ("name", "seriesuid", "case"), prefix: str = "",
                 enabled: bool = True, gather: bool = True) -> None:
        super().__init__(gather=gather, enabled=enabled)
        self.output_dir = Path(output_dir)
        self.metrics = tuple(metrics)
        self.case_keys = tuple(case_keys)
        self.prefix = prefix

    @property
    def csv_path(self) -> Path:
        return self.output_dir / f"{self.prefix}metrics.csv"

    @property
    def json_path(self) -> Path:
        return self.output_dir / f"{self.prefix}summary.json"

    def _name(self, item: dict, output: dict, index: int) -> str:
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
        return f"case{index:04d}"

    def rows_of(self, engine: Engine) -> list[str]:
        output: Any = engine.state.output
        outputs = output if isinstance(output, list) else [output]
        batch: Any = engine.state.batch
        items: list
        if isinstance(batch, dict):  # not decollated
            size = len(outputs) if isinstance(output, list) else int(next(iter(output.values())).shape[0])
            items = [{k: (v[i] if isinstance(v, (list, tuple)) and len(v) == size else v) for k, v in batch.items()}
                     for i in range(size)]
            outputs = outputs * size if len(outputs) == 1 and size > 1 else outputs
        else:
            items = batch if isinstance(batch, list) and len(batch) == len(outputs) else [{}] * len(outputs)
        return [self._name(item, out, len(self.rows) + i) for i, (item, out) in enumerate(zip(items, outputs))]

    def write(self, rows: list, engine: Engine, staging: Staging) -> dict:
        details = getattr(engine.state, "metric_details", {}) or {}
        columns: dict[str, list[float]] = {}
        for name in self.metrics:
            if name not in details:
                continue
            values = torch.as_tensor(details[name]).detach().float().cpu()
            values = values.reshape(values.shape[0], -1).mean(1) if values.ndim > 1 else values.reshape(-1)
            columns[name] = [float(v) for v in values]
        n = max((len(v) for v in columns.values()), default=0)
        cases = rows[:n] + [f"case{i:04d}" for i in range(len(rows), n)]
        buffer = io.StringIO()
        writer = csv.writer(buffer)
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
        summary = nan_to_none({"cases": n, "metrics": stats, "gain": gain, "network_beats_interpolation": beats,
                               "case_names": cases})
        staging.json(self.json_path, summary)
        staging.text(self.csv_path, buffer.getvalue())
        return summary


def _fmt(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    if not finite.size:
        return {"mean": None, "std": None, "median": None, "min": None, "max": None, "non_finite": int(array.size)}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "median": float(np.median(finite)),
            "min": float(finite.min()), "max": float(finite.max()), "non_finite": int(array.size - finite.size)}
