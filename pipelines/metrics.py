"""Segmentation metrics: MONAI's where they exist, hand-written where MONAI has none, and their Ignite handlers.

The teaching repository of the U-Net family (RezaSaadatyar/Medical-Image-Processing) reports IoU, Dice/F1, pixel
accuracy, mean pixel accuracy, mIoU, boundary F1, precision and recall; this project adds HD95 and surface Dice
(normalised surface distance), both in millimetres. Where each one comes from:

======================  ===================================================  ================================
metric                  computed by                                          cumulative metric (evaluators)
======================  ===================================================  ================================
dice                    ``monai.metrics.compute_dice``                       ``monai.metrics.DiceMetric``
iou                     ``monai.metrics.compute_iou``                        ``monai.metrics.MeanIoU``
precision, recall       MONAI's ``get_confusion_matrix`` and its formulas    ``ConfusionMatrixMetric``
hd95                    ``compute_hausdorff_distance(percentile=95)``        :class:`HD95Metric` (MONAI's)
surface_dice            ``monai.metrics.compute_surface_dice``               :class:`NSDMetric` (MONAI's)
pixel_accuracy          hand-written: :func:`compute_pixel_accuracy`         :class:`PixelAccuracyMetric`
mean_pixel_accuracy     hand-written on MONAI's confusion matrix             :class:`MeanPixelAccuracyMetric`
mean_iou                mean over classes of MONAI's IoU                     ``monai.metrics.MeanIoU``
boundary_f1             hand-written: :func:`compute_boundary_f1`            :class:`BoundaryF1Metric`
======================  ===================================================  ================================

Inputs follow MONAI: binarised one-hot tensors, ``(B, C, *spatial)`` for the ``compute_*`` batch functions and the
cumulative metrics, ``(C, *spatial)`` for one case in :func:`compute_case_metrics` (and the per-case report,
:func:`pipelines.reports.segmentation.segmentation_report`, which scores with it); 2D and 3D. Channel 0 is background;
the report and :func:`compute_case_metrics` compute every channel.

This module computes; the files are written by :mod:`pipelines.reports` (``segmentation_report`` stays importable
from here). For evaluators: :class:`HD95` is the Ignite handler of :class:`HD95Metric` (see the empty-mask policy),
:func:`channel_output` selects one output channel for an Ignite metric (one TensorBoard scalar per BraTS region), and
:func:`pooled_scores` / :func:`per_class_means` / :func:`value_summary` reduce per-case values the way the reports do.

Spacing (millimetres per voxel along each spatial axis, in the array's axis order) may be a number (isotropic), a
sequence with one value per spatial axis, or, for a batch, a sequence with one such entry per case. ``None`` means
1 mm. The spacing-aware cumulative metrics take it, in this order, from the call's ``spacing=`` keyword, from their
constructor's ``spacing``, or from the label's ``MetaTensor.pixdim`` (geometry travels with the image), else 1 mm;
this matters because ``IgniteMetricHandler`` calls ``metric_fn(y_pred, y)`` without keywords.

Empty-mask policy (the same for every function here):

* A class absent from **both** prediction and label is 0/0 for every agreement score: ``dice``, ``iou``,
  ``precision``, ``recall``, ``boundary_f1`` and ``surface_dice`` are ``empty_value``, NaN by default (the nnU-Net
  convention: undefined, left out of means, counted as ``nan_count`` in the report summary). Pass
  ``empty_value=1.0`` for MONAI's ``ignore_empty=False`` convention (perfect agreement about absence).
* A class present on one side only scores 0 for ``dice``, ``iou``, ``boundary_f1`` and ``surface_dice``;
  ``precision`` is NaN when the prediction is empty (0/0) and ``recall`` is NaN when the label is empty (0/0),
  as in MONAI's confusion-matrix metrics.
* ``hd95`` is NaN whenever either side is empty (MONAI 1.6's behaviour), whatever ``empty_value`` is. Its
  cumulative :class:`HD95Metric` aggregates to NaN, not MONAI's 0.0, when every value is NaN, and
  :func:`left_out_cases` counts the cases its mean left out (the evaluators log and save that count beside it). Its
  handler :class:`HD95` puts that count in ``engine.state.metrics["<name>_left_out"]``, so that ``MetricsSaver``'s
  ``metrics.csv`` and the log say both; MONAI's ``HausdorffDistance`` handler reduces all-NaN to 0.0 and says nothing.
* ``mean_pixel_accuracy`` averages per-class recall over the classes present in the label; ``mean_iou`` averages IoU
  over the classes present in the label or the prediction (a class predicted but absent scores 0 and counts). Both
  are computed before ``empty_value`` is applied, so classes absent from both never enter these means.
  ``pixel_accuracy`` is always defined.

Differences from MONAI's cumulative metrics to keep in mind: ``DiceMetric``/``MeanIoU`` with their default
``ignore_empty=True`` give NaN whenever the label is empty (even for a false-positive prediction, which scores 0 here);
with ``ignore_empty=False`` they give 1.0 when both are empty (``empty_value=1.0`` here).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.handlers import IgniteMetricHandler
from monai.handlers.utils import from_engine
from monai.metrics import (
    CumulativeIterationMetric,
    HausdorffDistanceMetric,
    SurfaceDiceMetric,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)
from monai.metrics.confusion_matrix import compute_confusion_matrix_metric, get_confusion_matrix
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction
from scipy import ndimage

__all__ = [
    "PER_CLASS_METRICS",
    "CASE_METRICS",
    "ALL_METRICS",
    "compute_pixel_accuracy",
    "compute_mean_pixel_accuracy",
    "compute_boundary_f1",
    "compute_case_metrics",
    "value_summary",
    "pooled_scores",
    "per_class_means",
    "PixelAccuracyMetric",
    "MeanPixelAccuracyMetric",
    "BoundaryF1Metric",
    "HD95Metric",
    "NSDMetric",
    "left_out_cases",
    "HD95",
    "channel_output",
]

logger = logging.getLogger(__name__)

SpacingLike = float | Sequence[float] | Sequence[Sequence[float]] | np.ndarray | torch.Tensor | None

#: Metrics with one value per class (one CSV row per case and class).
PER_CLASS_METRICS: tuple[str, ...] = (
    "dice",
    "iou",
    "precision",
    "recall",
    "boundary_f1",
    "hd95",
    "surface_dice",
)
#: Metrics with one value per case (the CSV row whose class is ``"all"``).
CASE_METRICS: tuple[str, ...] = ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou")
ALL_METRICS: tuple[str, ...] = PER_CLASS_METRICS + CASE_METRICS

#: The pseudo-class name of the per-case rows in the CSV and the summary JSON.
CASE_ROW = "all"

_MONAI_EMPTY_WARNING = r"the (ground truth|prediction) of class"


# ----------------------------------------------------------------------------------------------------------------------
# input checks and spacing


def _as_onehot_pair(y_pred: Any, y: Any, *, batched: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Check that ``y_pred`` and ``y`` are binarised one-hot tensors of one shape; return them as tensors."""
    y_pred = y_pred.as_tensor() if isinstance(y_pred, MetaTensor) else torch.as_tensor(y_pred)
    y = y.as_tensor() if isinstance(y, MetaTensor) else torch.as_tensor(y)
    lead = "(B, C, *spatial)" if batched else "(C, *spatial)"
    ndims = (4, 5) if batched else (3, 4)
    if y_pred.shape != y.shape:
        raise ValueError(f"prediction and label must have the same shape {lead}, got {tuple(y_pred.shape)} and "
                         f"{tuple(y.shape)}.")
    if y_pred.ndim not in ndims:
        raise ValueError(f"expected one-hot tensors shaped {lead} with 2 or 3 spatial axes, got {tuple(y_pred.shape)}.")
    for name, t in (("prediction", y_pred), ("label", y)):
        if t.dtype != torch.bool and not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"the {name} must be binarised one-hot (values 0 and 1 only); apply argmax/threshold "
                             "and one-hot encoding first.")
    return y_pred, y


def _spacing_entry(s: Any, spatial_dims: int, where: str) -> tuple[float, ...]:
    if isinstance(s, torch.Tensor):
        s = s.detach().cpu().numpy()
    arr = np.asarray(s, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, spatial_dims)
    if arr.size != spatial_dims:
        raise ValueError(f"spacing {where} has {arr.size} values, expected 1 or {spatial_dims} (one per spatial axis).")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"spacing {where} must be finite and positive, got {tuple(arr.tolist())}.")
    return tuple(float(v) for v in arr)


def _spacing_per_case(spacing: SpacingLike, batch_size: int, spatial_dims: int) -> list[tuple[float, ...]]:
    """Normalise any accepted spacing form to one tuple of ``spatial_dims`` floats per case (``None`` -> 1 mm)."""
    if spacing is None:
        return [(1.0,) * spatial_dims] * batch_size
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().numpy()
    per_case = isinstance(spacing, (list, tuple)) and len(spacing) > 0 and all(
        isinstance(s, (Sequence, np.ndarray, torch.Tensor)) for s in spacing
    )
    if isinstance(spacing, np.ndarray) and spacing.ndim == 2:
        per_case = True
    if per_case:
        if len(spacing) != batch_size:  # type: ignore[arg-type]
            n = len(spacing)  # type: ignore[arg-type]
            raise ValueError(f"a per-case spacing list needs one entry per case: got {n} for a batch of {batch_size}.")
        return [_spacing_entry(s, spatial_dims, f"of case {i}") for i, s in enumerate(spacing)]  # type: ignore
    one = _spacing_entry(spacing, spatial_dims, "")
    return [one] * batch_size


def _meta_spacing(x: Any, batch_size: int, spatial_dims: int) -> list[tuple[float, ...]] | None:
    """Spacing from a ``MetaTensor``'s affine (``pixdim``), or ``None`` when ``x`` carries none."""
    if not isinstance(x, MetaTensor):
        return None
    pixdim = x.pixdim
    entries = list(pixdim) if isinstance(pixdim, (list, tuple)) else [pixdim] * batch_size
    if len(entries) != batch_size:
        return None
    out = []
    for p in entries:
        p = np.asarray(p.detach().cpu() if isinstance(p, torch.Tensor) else p, dtype=np.float64).reshape(-1)
        if p.size < spatial_dims:
            return None
        out.append(_spacing_entry(p[:spatial_dims], spatial_dims, "from MetaTensor.pixdim"))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# hand-written metrics (MONAI has no pixel accuracy, mean pixel accuracy or boundary F1)


def compute_pixel_accuracy(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of voxels whose predicted one-hot vector equals the label's (all channels agree).

    Hand-written: MONAI's ``ConfusionMatrixMetric("accuracy")`` is a per-channel binary accuracy, not this. For
    mutually exclusive one-hot channels this is ``sum_c TP_c / N``, the usual pixel accuracy.

    Args:
        y_pred: binarised one-hot prediction, ``(B, C, *spatial)``.
        y: binarised one-hot label, same shape.

    Returns:
        ``(B,)`` float64 tensor, always defined.
    """
    y_pred, y = _as_onehot_pair(y_pred, y, batched=True)
    agree = (y_pred.bool() == y.bool()).all(dim=1)
    return agree.flatten(1).double().mean(dim=1)


def _per_class_recall(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` recall TP / (TP + FN) from MONAI's confusion matrix; NaN where the class is absent from the label."""
    cm = get_confusion_matrix(y_pred.float(), y.float(), include_background=True)
    return compute_confusion_matrix_metric("recall", cm)


def compute_mean_pixel_accuracy(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean pixel accuracy: per-class recall averaged over the classes present in the label, background included.

    Hand-written on MONAI's confusion matrix (MONAI has no metric by this name). Classes absent from the label
    (recall 0/0) are left out of the mean; NaN if no class is present.

    Args:
        y_pred: binarised one-hot prediction, ``(B, C, *spatial)``.
        y: binarised one-hot label, same shape.

    Returns:
        ``(B,)`` float tensor.
    """
    y_pred, y = _as_onehot_pair(y_pred, y, batched=True)
    return torch.nanmean(_per_class_recall(y_pred, y), dim=1)


def _bbox_slices(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    coords = np.argwhere(mask)
    lo = np.maximum(coords.min(axis=0) - margin, 0)
    hi = np.minimum(coords.max(axis=0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: ``mask XOR erode(mask)`` with face connectivity; the image edge counts as outside."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _boundary_f1_single(
    pred: np.ndarray, label: np.ndarray, spacing: tuple[float, ...], tolerance_mm: float, empty_value: float
) -> float:
    pred_any, label_any = bool(pred.any()), bool(label.any())
    if not pred_any and not label_any:
        return float(empty_value)
    if not pred_any or not label_any:
        return 0.0
    # crop to the union plus one voxel: exact, since every boundary voxel (and so every nearest one) lies inside
    crop = _bbox_slices(pred | label, margin=1)
    bp, bl = _boundary(pred[crop]), _boundary(label[crop])
    dist_to_label = ndimage.distance_transform_edt(~bl, sampling=spacing)
    dist_to_pred = ndimage.distance_transform_edt(~bp, sampling=spacing)
    precision = float(np.mean(dist_to_label[bp] <= tolerance_mm))
    recall = float(np.mean(dist_to_pred[bl] <= tolerance_mm))
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def compute_boundary_f1(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    spacing: SpacingLike = None,
    tolerance_mm: float = 2.0,
    include_background: bool = True,
    empty_value: float = float("nan"),
) -> torch.Tensor:
    """Boundary F1 score (BF score, Csurka et al. 2013) with a tolerance in millimetres.

    Hand-written: MONAI has no boundary F1 (``SurfaceDiceMetric`` pools both directions' matched boundary voxels into
    one ratio instead of taking the harmonic mean of boundary precision and recall). Boundaries are
    ``mask XOR erode(mask)`` (face connectivity, the image edge counts as outside, as in MONAI's ``get_mask_edges``).
    A predicted boundary voxel is matched when a label boundary voxel lies within ``tolerance_mm`` (Euclidean
    distance transform with ``sampling=spacing``, so anisotropic voxels are measured in mm), and vice versa:
    precision = matched predicted / predicted boundary voxels, recall = matched label / label boundary voxels,
    F1 = 2PR / (P + R) (0 when P + R = 0). The design note's "2 pixels" default is 2 mm here (2 voxels at 1 mm).

    Args:
        y_pred: binarised one-hot prediction, ``(B, C, *spatial)``.
        y: binarised one-hot label, same shape.
        spacing: mm per voxel: a number, one value per spatial axis, or one such entry per case; ``None`` = 1 mm.
        tolerance_mm: matching distance in mm (inclusive).
        include_background: whether channel 0 is scored.
        empty_value: score when a class is absent from both (default NaN); one side empty scores 0.

    Returns:
        ``(B, C)`` float64 tensor (``C - 1`` columns without background).
    """
    y_pred, y = _as_onehot_pair(y_pred, y, batched=True)
    if not include_background:
        y_pred, y = y_pred[:, 1:], y[:, 1:]
    if tolerance_mm < 0 or not math.isfinite(tolerance_mm):
        raise ValueError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm}.")
    batch, channels = y_pred.shape[:2]
    spacings = _spacing_per_case(spacing, batch, y_pred.ndim - 2)
    p_np = y_pred.detach().cpu().numpy().astype(bool)
    y_np = y.detach().cpu().numpy().astype(bool)
    out = torch.empty((batch, channels), dtype=torch.float64)
    for b, c in np.ndindex(batch, channels):
        out[b, c] = _boundary_f1_single(p_np[b, c], y_np[b, c], spacings[b], tolerance_mm, empty_value)
    return out.to(y_pred.device)


# ----------------------------------------------------------------------------------------------------------------------
# one case, every metric


def compute_case_metrics(
    pred: torch.Tensor,
    label: torch.Tensor,
    spacing: SpacingLike = None,
    *,
    metrics: Sequence[str] = ALL_METRICS,
    boundary_tolerance_mm: float = 2.0,
    surface_tolerance_mm: float = 2.0,
    empty_value: float = float("nan"),
) -> dict[str, Any]:
    """All requested metrics for one case, every channel (background included).

    Args:
        pred: binarised one-hot prediction of one case, ``(C, *spatial)`` (2D or 3D).
        label: binarised one-hot label, same shape.
        spacing: mm per voxel, a number or one value per spatial axis; ``None`` takes ``label.pixdim`` when the label
            is a ``MetaTensor``, else 1 mm.
        metrics: names from :data:`ALL_METRICS`.
        boundary_tolerance_mm: tolerance of ``boundary_f1``.
        surface_tolerance_mm: tolerance of ``surface_dice`` (every class).
        empty_value: score of a class absent from both prediction and label (see the module's empty-mask policy).

    Returns:
        ``{name: value}``: a list of ``C`` floats for the names in :data:`PER_CLASS_METRICS`, a float for those in
        :data:`CASE_METRICS`. Distances (``hd95``) are in the spacing's unit (mm).
    """
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(ALL_METRICS)}.")
    raw_label = label
    pred, label = _as_onehot_pair(pred, label, batched=False)
    p, y = pred[None].double(), label[None].double()  # float64: exact-looking report values
    channels, spatial_dims = p.shape[1], p.ndim - 2
    if spacing is None:
        spacing_b = _meta_spacing(raw_label, 1, spatial_dims) or _spacing_per_case(None, 1, spatial_dims)
    else:
        spacing_b = _spacing_per_case(spacing, 1, spatial_dims)

    cm = get_confusion_matrix(p, y, include_background=True).double()  # (1, C, 4): tp, fp, tn, fn
    tp, fp, fn = cm[0, :, 0], cm[0, :, 1], cm[0, :, 3]
    both_empty = (tp + fp + fn) == 0

    def fill_empty(v: torch.Tensor) -> torch.Tensor:
        v = v.double().clone()
        v[both_empty] = empty_value
        return v

    out: dict[str, Any] = {}
    iou_raw = compute_iou(p, y, include_background=True, ignore_empty=False)[0].double()
    iou_raw[both_empty] = float("nan")  # 0/0: not part of mean_iou
    recall_raw = compute_confusion_matrix_metric("recall", cm)[0].double()
    if "dice" in metrics:
        out["dice"] = fill_empty(compute_dice(p, y, include_background=True, ignore_empty=False)[0]).tolist()
    if "iou" in metrics:
        out["iou"] = fill_empty(iou_raw).tolist()
    if "precision" in metrics:
        out["precision"] = fill_empty(compute_confusion_matrix_metric("precision", cm)[0]).tolist()
    if "recall" in metrics:
        out["recall"] = fill_empty(recall_raw).tolist()
    if "boundary_f1" in metrics:
        out["boundary_f1"] = compute_boundary_f1(
            p, y, spacing=spacing_b, tolerance_mm=boundary_tolerance_mm, empty_value=empty_value
        )[0].tolist()
    with warnings.catch_warnings():  # empty classes are handled by the documented policy; MONAI's warning is noise
        warnings.filterwarnings("ignore", message=_MONAI_EMPTY_WARNING)
        if "hd95" in metrics:
            hd = compute_hausdorff_distance(p, y, include_background=True, percentile=95.0, spacing=spacing_b)
            out["hd95"] = hd[0].double().tolist()
        if "surface_dice" in metrics:
            nsd = compute_surface_dice(
                p, y, [float(surface_tolerance_mm)] * channels, include_background=True, spacing=spacing_b
            )
            out["surface_dice"] = fill_empty(nsd[0]).tolist()
    if "pixel_accuracy" in metrics:
        out["pixel_accuracy"] = float(compute_pixel_accuracy(p, y)[0])
    if "mean_pixel_accuracy" in metrics:
        out["mean_pixel_accuracy"] = float(torch.nanmean(recall_raw))
    if "mean_iou" in metrics:
        out["mean_iou"] = float(torch.nanmean(iou_raw))
    return {m: out[m] for m in metrics}


# ----------------------------------------------------------------------------------------------------------------------
# summaries of per-case values (the reports in pipelines.reports write them)


def value_summary(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n", "nan_count", "inf_count"}`` of ``values``: mean and population standard deviation over
    the finite values (``None`` when there are none), ``n`` their count."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "n": int(finite.size),
        "nan_count": int(np.isnan(arr).sum()),
        "inf_count": int(np.isinf(arr).sum()),
    }


def _safe(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def pooled_scores(tp: float, fp: float, tn: float, fn: float) -> dict[str, float | None]:
    """Dice (F1), Jaccard, sensitivity, specificity, precision and accuracy from pooled pixel counts (``None`` for
    0/0), with the counts."""
    return {
        "dice": _safe(2 * tp, 2 * tp + fp + fn),
        "jaccard": _safe(tp, tp + fp + fn),
        "sensitivity": _safe(tp, tp + fn),
        "specificity": _safe(tn, tn + fp),
        "precision": _safe(tp, tp + fp),
        "accuracy": _safe(tp + tn, tp + tn + fp + fn),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def per_class_means(details: Any) -> list[float]:
    """The mean over cases of each class of a metric's per-case values ``(cases, classes)`` (MONAI's
    ``engine.state.metric_details[name]``; any other shape is read as ``(cases, -1)``), cases where the class is
    undefined (NaN: an empty ground truth under MONAI's ``ignore_empty``) left out, as MONAI's
    ``reduction="mean_batch"`` does; NaN for a class undefined in every case."""
    table = np.asarray(torch.as_tensor(details).detach().float().cpu().numpy(), dtype=np.float64)
    table = table.reshape(table.shape[0], -1) if table.ndim != 2 else table
    means = []
    for column in table.T:
        defined = column[np.isfinite(column)]
        means.append(float(defined.mean()) if defined.size else float("nan"))
    return means


# ----------------------------------------------------------------------------------------------------------------------
# cumulative metrics for MONAI/Ignite evaluators


class _SpacingAware:
    """Mixin: per-call spacing from ``spacing=`` > constructor ``spacing`` > the label's ``MetaTensor.pixdim`` > 1 mm.

    Also splits a per-case spacing list when the inputs are lists of channel-first tensors (MONAI's default
    ``_compute_list`` would hand the whole list to every item).
    """

    spacing: SpacingLike = None

    def _compute_list(self, y_pred: Any, y: Any = None, **kwargs: Any) -> torch.Tensor:
        spacing = kwargs.pop("spacing", None)
        n = len(y_pred)
        per_item: list[Any] = [None] * n
        if spacing is not None:
            per_item = list(_spacing_per_case(spacing, n, y_pred[0].ndim - 1))
        ret = [
            self._compute_tensor(p.detach()[None], t.detach()[None], spacing=s, **kwargs)  # type: ignore
            for p, t, s in zip(y_pred, y, per_item)
        ]
        return torch.cat(ret, dim=0)

    def _resolve_spacing(self, y_pred: torch.Tensor, y: torch.Tensor, spacing: SpacingLike) -> list[tuple[float, ...]]:
        batch, spatial_dims = y_pred.shape[0], y_pred.ndim - 2
        if spacing is None:
            spacing = self.spacing
        if spacing is None:
            found = _meta_spacing(y, batch, spatial_dims) or _meta_spacing(y_pred, batch, spatial_dims)
            if found is not None:
                return found
        return _spacing_per_case(spacing, batch, spatial_dims)


class _ReducedMetric(CumulativeIterationMetric):
    """Cumulative metric whose buffer is ``(B, C)`` and whose aggregate is MONAI's NaN-aware reduction."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False) -> None:
        super().__init__()
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered ``(N, C)`` values, ignoring NaN (``"mean"``: over classes, then over cases)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor; call the metric on some data first.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class PixelAccuracyMetric(_ReducedMetric):
    """Cumulative pixel accuracy (hand-written, see :func:`compute_pixel_accuracy`); buffer ``(N, 1)``.

    Args:
        reduction: MONAI reduction of the buffered per-case values (``"mean"``: mean over cases).
        get_not_nans: whether ``aggregate`` also returns the count of non-NaN values.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore
        return compute_pixel_accuracy(y_pred, y)[:, None]


class MeanPixelAccuracyMetric(_ReducedMetric):
    """Cumulative mean pixel accuracy (hand-written on MONAI's confusion matrix); buffer ``(N, C)`` per-class recall.

    The buffer holds per-class recall (background included, NaN for classes absent from the label), so
    ``reduction="mean"`` gives each case's mean pixel accuracy averaged over cases, and ``"mean_batch"`` the
    per-class accuracy averaged over cases.

    Args:
        reduction: MONAI reduction of the buffer.
        get_not_nans: whether ``aggregate`` also returns the count of non-NaN values.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore
        y_pred, y = _as_onehot_pair(y_pred, y, batched=True)
        return _per_class_recall(y_pred, y)


class BoundaryF1Metric(_SpacingAware, _ReducedMetric):
    """Cumulative boundary F1 with a tolerance in mm (hand-written, see :func:`compute_boundary_f1`); buffer ``(N, C)``.

    Args:
        tolerance_mm: matching distance in mm.
        include_background: whether channel 0 is scored (default ``False``, like MONAI's surface-distance metrics).
        spacing: fixed mm per voxel for every case; ``None`` reads ``MetaTensor.pixdim`` of the label, else 1 mm.
            A call's ``spacing=`` keyword overrides both.
        empty_value: score when a class is absent from both (default NaN, left out of the reduction).
        reduction: MONAI reduction of the buffer.
        get_not_nans: whether ``aggregate`` also returns the count of non-NaN values.
    """

    def __init__(
        self,
        tolerance_mm: float = 2.0,
        include_background: bool = False,
        spacing: SpacingLike = None,
        empty_value: float = float("nan"),
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.tolerance_mm = tolerance_mm
        self.include_background = include_background
        self.spacing = spacing
        self.empty_value = empty_value

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore
        spacing = self._resolve_spacing(y_pred, y, kwargs.get("spacing"))
        return compute_boundary_f1(
            y_pred,
            y,
            spacing=spacing,
            tolerance_mm=self.tolerance_mm,
            include_background=self.include_background,
            empty_value=self.empty_value,
        )


def left_out_cases(buffer: torch.Tensor | np.ndarray) -> int:
    """How many cases (rows of a cumulative metric's ``(N, C)`` buffer) are NaN in every class: the cases MONAI's
    NaN-ignoring mean over classes then cases leaves out entirely (e.g. HD95 of an empty prediction)."""
    data = torch.as_tensor(buffer).detach().float()
    if data.ndim == 0 or data.numel() == 0:
        return 0
    data = data.reshape(data.shape[0], -1)
    return int(torch.isnan(data).all(dim=1).sum())


class HD95Metric(_SpacingAware, HausdorffDistanceMetric):
    """MONAI's ``HausdorffDistanceMetric(percentile=95)`` that finds its spacing itself (mm); buffer ``(N, C)``.

    NaN when either side of a class is empty (MONAI's behaviour, left out of the reduction). Unlike MONAI's, the
    aggregate is NaN where every value is NaN (MONAI's ``do_metric_reduction`` gives 0.0 there, a perfect-looking
    distance for a case whose prediction is empty); :func:`left_out_cases` counts the cases the mean left out.

    Args:
        include_background: whether channel 0 is scored (MONAI's default ``False``).
        spacing: fixed mm per voxel; ``None`` reads ``MetaTensor.pixdim`` of the label, else 1 mm. A call's
            ``spacing=`` keyword overrides both.
        reduction: MONAI reduction of the buffer.
        get_not_nans: whether ``aggregate`` also returns the count of non-NaN values.
    """

    def __init__(
        self,
        include_background: bool = False,
        spacing: SpacingLike = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(
            include_background=include_background, percentile=95.0, reduction=reduction, get_not_nans=get_not_nans
        )
        self.spacing = spacing

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore
        kwargs["spacing"] = self._resolve_spacing(y_pred, y, kwargs.get("spacing"))
        return super()._compute_tensor(y_pred, y, **kwargs)

    def aggregate(  # type: ignore[override]
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """MONAI's NaN-ignoring reduction of the buffer, NaN (not 0.0) where no value entered it."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        f = torch.where(not_nans > 0, f, torch.full_like(f, float("nan")))
        return (f, not_nans) if self.get_not_nans else f


class NSDMetric(_SpacingAware, SurfaceDiceMetric):
    """MONAI's ``SurfaceDiceMetric`` with one tolerance in mm for every class and self-found spacing; buffer ``(N, C)``.

    NaN when a class is absent from both sides, 0 when from one (MONAI's behaviour).

    Args:
        tolerance_mm: acceptable boundary deviation in mm, one number for all classes or one per scored class.
        include_background: whether channel 0 is scored (MONAI's default ``False``).
        spacing: fixed mm per voxel; ``None`` reads ``MetaTensor.pixdim`` of the label, else 1 mm. A call's
            ``spacing=`` keyword overrides both.
        reduction: MONAI reduction of the buffer.
        get_not_nans: whether ``aggregate`` also returns the count of non-NaN values.
    """

    def __init__(
        self,
        tolerance_mm: float | Sequence[float] = 2.0,
        include_background: bool = False,
        spacing: SpacingLike = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(
            class_thresholds=[], include_background=include_background, reduction=reduction, get_not_nans=get_not_nans
        )
        self.tolerance_mm = tolerance_mm
        self.spacing = spacing

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore
        n_scored = y_pred.shape[1] - (0 if self.include_background else 1)
        if isinstance(self.tolerance_mm, (int, float)):
            self.class_thresholds = [float(self.tolerance_mm)] * n_scored
        else:
            self.class_thresholds = [float(t) for t in self.tolerance_mm]
        kwargs["spacing"] = self._resolve_spacing(y_pred, y, kwargs.get("spacing"))
        return super()._compute_tensor(y_pred, y, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Ignite handlers and output transforms


class HD95(IgniteMetricHandler):
    """95th-percentile Hausdorff distance in mm as an Ignite metric (:class:`HD95Metric`), NaN-honest: NaN, not
    MONAI's 0.0, when no case has an HD95 (every prediction empty), and the count of cases its mean left out in
    ``engine.state.metrics["<name>_left_out"]``, logged as a warning.

    Args:
        include_background: score channel 0 too.
        spacing: fixed mm per voxel; ``None`` reads the label's ``MetaTensor.pixdim`` (else 1 mm).
        output_transform: engine output -> ``(y_pred, y)``; default ``from_engine(["pred", "label"])``.
        save_details: keep the per-case ``(N, C)`` values in ``engine.state.metric_details`` (``MetricsSaver``).
    """

    def __init__(self, include_background: bool = False, spacing: SpacingLike = None,
                 output_transform: Callable | None = None, save_details: bool = True) -> None:
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


#: names that moved to :mod:`pipelines.reports` and stay importable from here (old import paths, bundle configs)
_MOVED_TO_REPORTS = {"segmentation_report": "pipelines.reports.segmentation"}


def __getattr__(name: str) -> Any:
    # a lazy re-export: pipelines.reports.segmentation imports this module, so it cannot be imported at the top
    if name in _MOVED_TO_REPORTS:
        import importlib

        return getattr(importlib.import_module(_MOVED_TO_REPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
