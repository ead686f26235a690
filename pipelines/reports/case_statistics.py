"""Per-case label statistics of a prediction: voxel count, volume and the input's mean intensity inside each label.

``case_statistics(prediction, images, spacing, labels)`` gives, for each foreground label (the bundle's named labels,
also when the prediction holds none of them, and any other value the prediction holds), in ascending label value::

    {"label": 1, "name": "nodule", "voxel_count": 412, "volume_ml": 0.24720, "mean_intensity": -87.3}

``volume_ml`` is ``voxel_count`` times the input's voxel volume (the product of its spacing, mm^3) / 1000; a 2D input
gets ``area_mm2`` instead. ``mean_intensity`` is the mean of the input's stored values (Hounsfield units for CT, after
the DICOM rescale) over the label's voxels, ``null`` for an empty label; for an input of several images or channels
(the BraTS modalities, an RGB image) it is a list, one mean per channel. :func:`write_case_statistics` writes it as
JSON, atomically. MONAI has no such per-label summary (its ``LabelStatsSumm`` runs on data sets, not one case).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.io.atomic import write_json_atomic

__all__ = ["case_statistics", "write_case_statistics"]


def case_statistics(prediction: np.ndarray, images: Sequence[np.ndarray], spacing: Sequence[float],
                    labels: Mapping[int, str]) -> dict[str, Any]:
    """The statistics of one case.

    Args:
        prediction: the label map (any spatial layout).
        images: the input's channels, each of ``prediction``'s shape, in the same voxel order.
        spacing: the input's voxel size in mm, one value per spatial axis.
        labels: label value -> name of the labels to report even when absent (background 0 is never reported).
            A value the prediction holds that ``labels`` does not name is reported as ``"label <value>"``.
    """
    prediction = np.asarray(prediction)
    for channel in images:
        if np.shape(channel) != prediction.shape:
            raise ValueError(f"the input's shape {np.shape(channel)} differs from the prediction's {prediction.shape}")
    spacing = [float(s) for s in spacing]
    if len(spacing) != prediction.ndim:
        raise ValueError(f"{len(spacing)} spacing values for a {prediction.ndim}D prediction")
    voxel = float(np.prod(spacing))
    values, counts = np.unique(prediction, return_counts=True)
    present = {int(v): int(c) for v, c in zip(values.tolist(), counts.tolist()) if v != 0}
    names = {int(k): str(v) for k, v in labels.items() if int(k) != 0}
    records = []
    for value in sorted(set(names) | set(present)):
        count = present.get(value, 0)
        record: dict[str, Any] = {"label": value, "name": names.get(value, f"label {value}"), "voxel_count": count}
        if prediction.ndim == 2:
            record["area_mm2"] = count * voxel
        else:
            record["volume_ml"] = count * voxel / 1000.0
        inside = prediction == value
        means = [float(np.asarray(channel, dtype=np.float64)[inside].mean()) if count else None for channel in images]
        record["mean_intensity"] = means[0] if len(means) == 1 else means
        records.append(record)
    return {"spacing_mm": spacing, "voxel_volume_mm3": voxel, "shape": list(prediction.shape), "labels": records}


def write_case_statistics(path: str | os.PathLike, statistics: Mapping[str, Any]) -> Path:
    """Write ``statistics`` (:func:`case_statistics`, plus any fields the caller adds) to ``path`` as JSON."""
    return write_json_atomic(Path(path), dict(statistics))
