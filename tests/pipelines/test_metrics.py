"""Segmentation metrics against values worked out by hand on small 2D and 3D masks (see each case's comment)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import IgniteMetricHandler, from_engine

from pipelines.metrics import (
    ALL_METRICS,
    BoundaryF1Metric,
    HD95Metric,
    MeanPixelAccuracyMetric,
    NSDMetric,
    PixelAccuracyMetric,
    compute_boundary_f1,
    compute_case_metrics,
    compute_mean_pixel_accuracy,
    compute_pixel_accuracy,
    segmentation_report,
)

NAN = float("nan")


def onehot(labelmap, num_classes: int) -> torch.Tensor:
    """(C, *spatial) float one-hot from an integer label map."""
    lm = torch.as_tensor(np.asarray(labelmap), dtype=torch.long)
    return torch.stack([(lm == c) for c in range(num_classes)]).float()


def box(shape, *slices) -> np.ndarray:
    """Binary label map (0/1) with ones in ``slices``."""
    m = np.zeros(shape, dtype=np.int64)
    m[tuple(slices)] = 1
    return m


def assert_close(actual, expected, rel=1e-5):
    """Element-wise approx equality where NaN equals NaN; ``None`` in ``expected`` means "not checked"."""
    if isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), (actual, expected)
        for a, e in zip(actual, expected):
            assert_close(a, e, rel)
        return
    if expected is None:
        return
    if math.isnan(expected):
        assert math.isnan(actual), f"expected NaN, got {actual}"
    else:
        assert actual == pytest.approx(expected, rel=rel, abs=1e-6)


# Cube pair shared by the 3D boundary tests: label [2:6]^3 in 8^3, prediction shifted one voxel along axis 0.
# Each cube has 64 - 8 = 56 boundary voxels (its 2x2x2 core is interior). Along axis 0 the prediction's far face
# (16 voxels, slice 6) lies s0 mm from the label's face (slice 5), and the label's near face (slice 2) lies s0 mm from
# the prediction's (slice 3); every other boundary voxel is at 0 mm, or 1 mm in-plane for the 4 face centres.
CUBE_LABEL = box((8, 8, 8), slice(2, 6), slice(2, 6), slice(2, 6))
CUBE_PRED = box((8, 8, 8), slice(3, 7), slice(2, 6), slice(2, 6))

# ----------------------------------------------------------------------------------------------------------------------
# overlap, confusion-matrix and case-level metrics

# Case 2D-A, 4x4, spacing (2.0, 0.5): label fg [0:2, 0:2], pred fg [0:2, 1:3] (shift of one column, 0.5 mm).
#   fg: TP 2, FP 2, FN 2 -> dice 4/8, iou 2/6, precision 2/4, recall 2/4.
#   bg: TP 10 (16 - union 6), FP 2, FN 2 -> dice 20/24, iou 10/14, precision = recall = 10/12.
#   pixel accuracy 12/16; mean pixel accuracy (1/2 + 5/6)/2 = 2/3; mean IoU (1/3 + 5/7)/2 = 11/21.
#   fg boundaries are the whole 2x2 squares; every voxel is within 0.5 mm of the other square ->
#   boundary F1 = surface Dice = 1 (tolerance 2 mm); HD95 = max(p95[0, 0, .5, .5], p95[.5, .5, 0, 0]) = 0.5 mm.
CASE_2D_A = dict(
    pred=onehot(box((4, 4), slice(0, 2), slice(1, 3)), 2),
    label=onehot(box((4, 4), slice(0, 2), slice(0, 2)), 2),
    spacing=(2.0, 0.5),
    expected={
        "dice": [5 / 6, 0.5],
        "iou": [5 / 7, 1 / 3],
        "precision": [5 / 6, 0.5],
        "recall": [5 / 6, 0.5],
        "boundary_f1": [None, 1.0],
        "hd95": [None, 0.5],
        "surface_dice": [None, 1.0],
        "pixel_accuracy": 0.75,
        "mean_pixel_accuracy": 2 / 3,
        "mean_iou": 11 / 21,
    },
)

# Case 3D-B, 2x3x3: label fg = slice 0 (9 voxels), pred fg = rows 0-1 of slice 0 (6) + voxel (1, 0, 0).
#   fg: TP 6, FP 1, FN 3, TN 8 -> dice 12/16, iou 6/10, precision 6/7, recall 6/9.
#   bg: label 9, pred 11, TP 8 -> dice 16/20, iou 8/12, precision 8/11, recall 8/9.
#   pixel accuracy (6 + 8)/18; mean pixel accuracy (2/3 + 8/9)/2 = 7/9; mean IoU (3/5 + 2/3)/2 = 19/30.
_pred_b = np.zeros((2, 3, 3), dtype=np.int64)
_pred_b[0, 0:2, :] = 1
_pred_b[1, 0, 0] = 1
CASE_3D_B = dict(
    pred=onehot(_pred_b, 2),
    label=onehot(box((2, 3, 3), slice(0, 1)), 2),
    spacing=(1.0, 1.0, 1.0),
    expected={
        "dice": [0.8, 0.75],
        "iou": [2 / 3, 0.6],
        "precision": [8 / 11, 6 / 7],
        "recall": [8 / 9, 2 / 3],
        "pixel_accuracy": 7 / 9,
        "mean_pixel_accuracy": 7 / 9,
        "mean_iou": 19 / 30,
    },
)

# Case 2D-C, three classes (3x4):      label          prediction
#                                     0 0 0 1        0 1 1 1
#                                     0 0 1 1        1 1 1 1
#                                     2 2 2 2        2 2 2 0
#   class 0: label 5, pred 2, TP 1 -> dice 2/7, iou 1/6, precision 1/2, recall 1/5
#   class 1: label 3, pred 7, TP 3 -> dice 6/10, iou 3/7, precision 3/7, recall 1
#   class 2: label 4, pred 3, TP 3 -> dice 6/7, iou 3/4, precision 1, recall 3/4
#   pixel accuracy 7/12; mean pixel accuracy (1/5 + 1 + 3/4)/3 = 0.65; mean IoU (1/6 + 3/7 + 3/4)/3 = 113/252.
CASE_2D_MULTICLASS = dict(
    pred=onehot([[0, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 0]], 3),
    label=onehot([[0, 0, 0, 1], [0, 0, 1, 1], [2, 2, 2, 2]], 3),
    spacing=(1.0, 1.0),
    expected={
        "dice": [2 / 7, 0.6, 6 / 7],
        "iou": [1 / 6, 3 / 7, 0.75],
        "precision": [0.5, 3 / 7, 1.0],
        "recall": [0.2, 1.0, 0.75],
        "pixel_accuracy": 7 / 12,
        "mean_pixel_accuracy": 0.65,
        "mean_iou": 113 / 252,
    },
)


@pytest.mark.parametrize(
    "case", [CASE_2D_A, CASE_3D_B, CASE_2D_MULTICLASS], ids=["2d-binary", "3d-binary", "2d-3class"]
)
def test_case_metrics_hand_values(case):
    metrics = tuple(case["expected"])
    out = compute_case_metrics(case["pred"], case["label"], case["spacing"], metrics=metrics)
    assert list(out) == list(metrics)
    for name, expected in case["expected"].items():
        assert_close(out[name], expected)


def test_batch_functions_match_case_values():
    pred = torch.stack([CASE_2D_MULTICLASS["pred"], CASE_2D_MULTICLASS["label"]])
    label = torch.stack([CASE_2D_MULTICLASS["label"], CASE_2D_MULTICLASS["label"]])
    assert_close(compute_pixel_accuracy(pred, label).tolist(), [7 / 12, 1.0])
    assert_close(compute_mean_pixel_accuracy(pred, label).tolist(), [0.65, 1.0])


def test_empty_mask_policy():
    # 3x3, classes (bg, a, b): label all background; prediction marks one pixel as class a; class b absent from both.
    #   bg: label 9, pred 8, TP 8 -> dice 16/17, iou 8/9, precision 1, recall 8/9.
    #   a (label empty, one false positive): dice = iou = boundary F1 = surface Dice = 0, precision 0, recall NaN.
    #   b (absent from both): every agreement score is empty_value; hd95 is NaN for a and b either way.
    #   mean pixel accuracy = recall of bg only = 8/9; mean IoU = (8/9 + 0)/2 (b left out) = 4/9.
    pred = onehot([[0, 0, 0], [0, 1, 0], [0, 0, 0]], 3)
    label = onehot(np.zeros((3, 3), dtype=np.int64), 3)
    out = compute_case_metrics(pred, label, (1.0, 1.0))
    assert_close(out["dice"], [16 / 17, 0.0, NAN])
    assert_close(out["iou"], [8 / 9, 0.0, NAN])
    assert_close(out["precision"], [1.0, 0.0, NAN])
    assert_close(out["recall"], [8 / 9, NAN, NAN])
    assert_close(out["boundary_f1"], [None, 0.0, NAN])
    assert_close(out["surface_dice"], [None, 0.0, NAN])
    assert_close(out["hd95"], [None, NAN, NAN])
    assert_close([out["pixel_accuracy"], out["mean_pixel_accuracy"], out["mean_iou"]], [8 / 9, 8 / 9, 4 / 9])

    ones = compute_case_metrics(pred, label, (1.0, 1.0), empty_value=1.0)
    for name in ("dice", "iou", "precision", "recall", "boundary_f1", "surface_dice"):
        assert ones[name][2] == 1.0, name
    assert_close(ones["recall"][1], NAN)  # one-sided 0/0 stays undefined
    assert_close(ones["hd95"][2], NAN)
    assert_close(ones["mean_iou"], 4 / 9)  # case means never include classes absent from both


# ----------------------------------------------------------------------------------------------------------------------
# distances in millimetres: boundary F1, surface Dice, HD95


def _squares_2d():
    # label fg [2:6, 2:6] in 10x10, pred shifted one row down: [3:7, 2:6]. Each 4x4 square has 12 boundary pixels.
    return (
        onehot(box((10, 10), slice(3, 7), slice(2, 6)), 2)[None],
        onehot(box((10, 10), slice(2, 6), slice(2, 6)), 2)[None],
    )


@pytest.mark.parametrize(
    "dims, spacing, tol, expected",
    [
        # 2D squares, spacing 1: every boundary pixel of one square is within 1 mm of the other's -> F1 = 1.
        (2, (1.0, 1.0), 1.0, 1.0),
        # 2D squares, 3 mm rows: the prediction's last row (4 px) is 3 mm from the label's; the 2 px of its first row
        # that sit inside the label are 1 mm (in-plane) from the label's side walls -> P = 8/12; R = 8/12 by
        # symmetry -> F1 = 2/3. Same voxels, only the spacing changed.
        (2, (3.0, 1.0), 1.0, 2 / 3),
        (2, (3.0, 1.0), 3.0, 1.0),  # a 3 mm tolerance matches them again
        # 3D cubes: far faces (16 of 56 boundary voxels) are s0 mm apart -> F1 = 1 at s0 = 1, 40/56 = 5/7 at s0 = 3.
        (3, (1.0, 1.0, 1.0), 1.5, 1.0),
        (3, (3.0, 1.0, 1.0), 1.5, 5 / 7),
    ],
)
def test_boundary_f1_and_surface_dice_follow_spacing(dims, spacing, tol, expected):
    if dims == 2:
        pred, label = _squares_2d()
    else:
        pred, label = onehot(CUBE_PRED, 2)[None], onehot(CUBE_LABEL, 2)[None]
    bf1 = compute_boundary_f1(pred, label, spacing=spacing, tolerance_mm=tol, include_background=False)
    assert bf1.shape == (1, 1)
    assert_close(bf1.item(), expected)
    # with P = R the surface Dice (matched of both boundaries over both boundaries) has the same value
    nsd = NSDMetric(tolerance_mm=tol, spacing=spacing)(pred, label)
    assert_close(nsd.item(), expected)


SLAB_PRED = (slice(3, 4), slice(1, 4), slice(1, 4))
SLAB_LABEL = (slice(1, 2), slice(1, 4), slice(1, 4))


@pytest.mark.parametrize(
    "pred_slices, label_slices, shape, spacing, expected_mm",
    [
        # 3D slabs 1x3x3 two slices apart along axis 0: every voxel's nearest surface voxel is straight across,
        # so all distances are 2 * s0.
        (SLAB_PRED, SLAB_LABEL, (6, 5, 5), (2.5, 0.8, 0.8), 5.0),
        (SLAB_PRED, SLAB_LABEL, (6, 5, 5), (1.0, 0.8, 0.8), 2.0),
        # 3D cubes shifted by 1 along axis 0 (s0 = 3): distances 36 x 0, 4 x 1, 16 x 3 per direction -> p95 = 3 mm.
        ((slice(3, 7), *(slice(2, 6),) * 2), (slice(2, 6),) * 3, (8, 8, 8), (3.0, 1.0, 1.0), 3.0),
        # 2D: 1x3 segments three rows apart with 0.5 mm rows -> 1.5 mm.
        ((slice(4, 5), slice(1, 4)), (slice(1, 2), slice(1, 4)), (6, 5), (0.5, 1.0), 1.5),
    ],
)
def test_hd95_offset_times_spacing(pred_slices, label_slices, shape, spacing, expected_mm):
    pred, label = onehot(box(shape, *pred_slices), 2), onehot(box(shape, *label_slices), 2)
    out = compute_case_metrics(pred, label, spacing, metrics=("hd95",))
    assert_close(out["hd95"][1], expected_mm)


def test_per_case_spacing_list_in_a_batch():
    pred = torch.stack([onehot(CUBE_PRED, 2)] * 2)
    label = torch.stack([onehot(CUBE_LABEL, 2)] * 2)
    spacings = [(3.0, 1.0, 1.0), (1.0, 1.0, 1.0)]
    bf1 = compute_boundary_f1(pred, label, spacing=spacings, tolerance_mm=1.5, include_background=False)
    assert_close(bf1[:, 0].tolist(), [5 / 7, 1.0])
    hd = HD95Metric()(pred, label, spacing=spacings)
    assert_close(hd[:, 0].tolist(), [3.0, 1.0])
    # a list of channel-first tensors (decollated batch) gets one spacing per item as well
    hd_list = HD95Metric()(list(pred), list(label), spacing=spacings)
    assert_close(hd_list[:, 0].tolist(), [3.0, 1.0])


# ----------------------------------------------------------------------------------------------------------------------
# cumulative metrics and an Ignite evaluator


def test_cumulative_boundary_f1_aggregates_over_calls():
    metric = BoundaryF1Metric(tolerance_mm=1.5, spacing=(3.0, 1.0, 1.0))
    pred, label = onehot(CUBE_PRED, 2)[None], onehot(CUBE_LABEL, 2)[None]
    metric(pred, label)  # 5/7 with the constructor's spacing
    metric(pred, label, spacing=(1.0, 1.0, 1.0))  # 1 with the call's spacing
    assert_close(metric.aggregate().item(), (5 / 7 + 1.0) / 2)
    assert metric.get_buffer().shape == (2, 1)
    metric.reset()
    assert metric.get_buffer() is None


def test_metrics_inside_supervised_evaluator():
    """IgniteMetricHandler wraps the custom metrics; spacing travels with the label as MetaTensor affine."""

    def item(spacing):
        affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
        return {
            "image": MetaTensor(onehot(CUBE_PRED, 2), affine=affine),  # the network is the identity: pred = image
            "label": MetaTensor(onehot(CUBE_LABEL, 2), affine=affine),
        }

    loader = DataLoader([item((3.0, 1.0, 1.0)), item((1.0, 1.0, 1.0))], batch_size=2, num_workers=0)
    take = from_engine(["pred", "label"])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=torch.nn.Identity(),
        key_val_metric={"bf1": IgniteMetricHandler(BoundaryF1Metric(tolerance_mm=1.5), output_transform=take)},
        additional_metrics={
            "hd95": IgniteMetricHandler(HD95Metric(), output_transform=take),
            "pixel_acc": IgniteMetricHandler(PixelAccuracyMetric(), output_transform=take),
            "mean_pixel_acc": IgniteMetricHandler(MeanPixelAccuracyMetric(), output_transform=take),
        },
    )
    evaluator.run()
    m = evaluator.state.metrics
    # cube pairs at s0 = 3 and 1: BF1 5/7 and 1; HD95 3 and 1 mm; 32 of 512 voxels disagree in both;
    # recall fg 48/64, bg 432/448 -> mean pixel accuracy (3/4 + 27/28)/2 = 6/7.
    assert_close(m["bf1"], (5 / 7 + 1.0) / 2)
    assert_close(m["hd95"], 2.0)
    assert_close(m["pixel_acc"], 480 / 512)
    assert_close(m["mean_pixel_acc"], 6 / 7)
    assert evaluator.state.metric_details["bf1"].shape == (2, 1)


# ----------------------------------------------------------------------------------------------------------------------
# report files


def test_segmentation_report_files(tmp_path):
    empty = onehot(np.zeros((4, 4), dtype=np.int64), 2)  # foreground absent from both -> fg dice NaN
    cases = [
        {"case": "a", "pred": CASE_2D_A["pred"], "label": CASE_2D_A["label"], "spacing": CASE_2D_A["spacing"]},
        {"case": "b", "pred": empty, "label": empty, "spacing": (1.0, 1.0)},
    ]
    metrics = ("dice", "hd95", "pixel_accuracy", "mean_iou")
    out_csv, out_json = tmp_path / "report" / "cases.csv", tmp_path / "report" / "summary.json"
    summary = segmentation_report(cases, ["background", "lesion"], out_csv, out_json, metrics=metrics)

    with open(out_csv, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["case", "class", *metrics]
    assert [r[:2] for r in rows[1:]] == [
        ["a", "background"], ["a", "lesion"], ["a", "all"], ["b", "background"], ["b", "lesion"], ["b", "all"],
    ]
    by_key = {(r[0], r[1]): dict(zip(rows[0], r)) for r in rows[1:]}
    assert float(by_key["a", "lesion"]["dice"]) == pytest.approx(0.5)
    assert float(by_key["a", "lesion"]["hd95"]) == pytest.approx(0.5)
    assert by_key["a", "lesion"]["pixel_accuracy"] == ""  # case metrics live on the "all" row
    assert float(by_key["a", "all"]["pixel_accuracy"]) == pytest.approx(0.75)
    assert float(by_key["a", "all"]["mean_iou"]) == pytest.approx(11 / 21)
    assert by_key["a", "all"]["dice"] == ""
    assert by_key["b", "lesion"]["dice"] == "nan"
    assert float(by_key["b", "background"]["dice"]) == 1.0

    data = json.loads(out_json.read_text())
    assert data == summary
    assert set(data) == {"n_cases", "class_names", "metrics", "settings", "empty_policy", "summary"}
    assert data["n_cases"] == 2 and data["class_names"] == ["background", "lesion"]
    assert set(data["summary"]) == set(metrics)
    assert set(data["summary"]["dice"]) == {"background", "lesion"}
    assert set(data["summary"]["mean_iou"]) == {"all"}
    lesion = data["summary"]["dice"]["lesion"]
    assert set(lesion) == {"mean", "std", "n", "nan_count", "inf_count"}
    assert lesion["mean"] == pytest.approx(0.5) and lesion["n"] == 1 and lesion["nan_count"] == 1
    background = data["summary"]["dice"]["background"]  # 5/6 and 1 -> mean 11/12, population std 1/12
    assert background["mean"] == pytest.approx(11 / 12) and background["std"] == pytest.approx(1 / 12)
    assert data["summary"]["hd95"]["lesion"]["nan_count"] == 1
    assert data["settings"]["empty_value"] is None
    assert sorted(p.name for p in out_csv.parent.iterdir()) == ["cases.csv", "summary.json"]  # no temporary left


def test_report_reads_metatensor_spacing_and_all_metrics(tmp_path):
    affine = torch.diag(torch.tensor([3.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    cases = [{"case": 7, "pred": onehot(CUBE_PRED, 2), "label": MetaTensor(onehot(CUBE_LABEL, 2), affine=affine)}]
    summary = segmentation_report(
        cases, ["bg", "fg"], tmp_path / "c.csv", tmp_path / "s.json", boundary_tolerance_mm=1.5
    )
    assert summary["metrics"] == list(ALL_METRICS)
    assert summary["summary"]["hd95"]["fg"]["mean"] == pytest.approx(3.0)
    assert summary["summary"]["boundary_f1"]["fg"]["mean"] == pytest.approx(5 / 7, rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# input checks


def test_rejects_bad_inputs(tmp_path):
    good = onehot(box((4, 4), slice(0, 2), slice(0, 2)), 2)
    with pytest.raises(ValueError, match="binarised"):
        compute_case_metrics(good * 0.5, good)
    with pytest.raises(ValueError, match="same shape"):
        compute_case_metrics(good, good[:, :3])
    with pytest.raises(ValueError, match="unknown metric"):
        compute_case_metrics(good, good, metrics=("dice", "f2"))
    with pytest.raises(ValueError, match="one per spatial axis"):
        compute_case_metrics(good, good, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="case 'x'.*class names"):
        segmentation_report(
            [{"case": "x", "pred": good, "label": good}], ["only-one"], tmp_path / "c.csv", tmp_path / "s.json"
        )


# ----------------------------------------------------------------------------------------------------------------------
# hand-drawn cases where the parts of a metric differ (precision != recall, percentile != max, imbalanced classes)


def _square_and_stray(stray_row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """10x10. Label: the square [2:6, 2:6] (12 boundary pixels). Prediction: the same square plus one stray pixel at
    (stray_row, 3), below the square's bottom row (row 5), so 13 predicted boundary pixels."""
    label = box((10, 10), slice(2, 6), slice(2, 6))
    pred = label.copy()
    pred[stray_row, 3] = 1
    return onehot(pred, 2)[None], onehot(label, 2)[None]


@pytest.mark.parametrize(
    "stray_row, spacing, tol, expected",
    [
        # stray pixel 3 rows below the square at 1 mm: 3 mm > 2 mm unmatched -> P = 12/13, R = 12/12,
        # F1 = 2PR / (P + R) = 24/25 (the arithmetic mean would be 25/26).
        (8, (1.0, 1.0), 2.0, 24 / 25),
        # same pixels, 0.5 mm rows: the stray pixel is 1.5 mm away -> matched, F1 = 1 (spacing must be used).
        (8, (0.5, 1.0), 2.0, 1.0),
        # same pixels, 0.5 mm columns only: still 3 mm (the row spacing is what counts) -> 24/25.
        (8, (1.0, 0.5), 2.0, 24 / 25),
        # stray pixel exactly 2 mm away: the tolerance is inclusive -> matched; at 1.9 mm it is not.
        (7, (1.0, 1.0), 2.0, 1.0),
        (7, (1.0, 1.0), 1.9, 24 / 25),
    ],
)
def test_boundary_f1_precision_differs_from_recall(stray_row, spacing, tol, expected):
    pred, label = _square_and_stray(stray_row)
    bf1 = compute_boundary_f1(pred, label, spacing=spacing, tolerance_mm=tol, include_background=False)
    assert_close(bf1.item(), expected)
    # prediction and label swapped: P and R swap, F1 (symmetric in P and R) stays the same
    assert_close(compute_boundary_f1(label, pred, spacing=spacing, tolerance_mm=tol, include_background=False).item(),
                 expected)
    # the cumulative metric and the per-case report agree (spacing given to the metric's constructor)
    assert_close(BoundaryF1Metric(tolerance_mm=tol, spacing=spacing)(pred, label).item(), expected)
    out = compute_case_metrics(pred[0], label[0], spacing, metrics=("boundary_f1",), boundary_tolerance_mm=tol)
    assert_close(out["boundary_f1"][1], expected)


def test_hd95_is_the_95th_percentile_with_anisotropic_spacing():
    """10x20, spacing (0.5, 1.0) mm. Label: row 2, columns 0-19 (a 1-pixel line: every pixel is surface). Prediction:
    row 3, columns 0-19, plus one stray pixel at (8, 10).
      label -> prediction: 20 distances of 1 row = 0.5 mm.
      prediction -> label: 20 x 0.5 mm and the stray pixel's 6 rows = 3.0 mm; the 95th percentile of these 21 values
      is the 20th smallest (0.95 * 20 = 19, no interpolation) = 0.5 mm.
    HD95 = 0.5 mm; the plain Hausdorff distance (percentile 100) would be 3.0 mm, without spacing 1.0."""
    label = box((10, 20), slice(2, 3), slice(0, 20))
    pred = box((10, 20), slice(3, 4), slice(0, 20))
    pred[8, 10] = 1
    p, y = onehot(pred, 2), onehot(label, 2)
    assert_close(compute_case_metrics(p, y, (0.5, 1.0), metrics=("hd95",))["hd95"][1], 0.5)
    assert_close(compute_case_metrics(p, y, (1.0, 0.5), metrics=("hd95",))["hd95"][1], 1.0)  # rows at 1 mm
    assert_close(HD95Metric(spacing=(0.5, 1.0))(p[None], y[None]).item(), 0.5)
    affine = torch.diag(torch.tensor([0.5, 1.0, 1.0, 1.0], dtype=torch.float64))  # spacing from the label's pixdim
    assert_close(HD95Metric()(p[None], MetaTensor(y[None], affine=affine)).item(), 0.5)


def test_pixel_accuracy_and_mean_pixel_accuracy_on_an_imbalanced_case():
    """10x10 with one foreground pixel, predicted all background; a third class is absent from both. Pixel accuracy
    99/100, but mean pixel accuracy (per-class recall averaged over the classes present in the label: bg 99/99,
    fg 0/1; the absent class's 0/0 is left out, not counted as 0) = 1/2; mean IoU = (99/100 + 0)/2."""
    label = np.zeros((10, 10), dtype=np.int64)
    label[4, 7] = 1
    p, y = onehot(np.zeros((10, 10), dtype=np.int64), 3), onehot(label, 3)
    out = compute_case_metrics(p, y, metrics=("pixel_accuracy", "mean_pixel_accuracy", "mean_iou"))
    assert_close([out["pixel_accuracy"], out["mean_pixel_accuracy"], out["mean_iou"]], [0.99, 0.5, 0.495])
    assert_close(compute_pixel_accuracy(p[None], y[None]).item(), 0.99)
    assert_close(compute_mean_pixel_accuracy(p[None], y[None]).item(), 0.5)
    metric = MeanPixelAccuracyMetric()
    metric(p[None], y[None])
    assert_close(metric.get_buffer()[0].tolist(), [1.0, 0.0, NAN])
    assert_close(metric.aggregate().item(), 0.5)
