"""Issue 18 item 5: units and shapes as the user gave them.

CT super-resolution keeps the input's intensity range (the HU window is an internal normalisation, inverted without
clipping; values outside it bypass the network); a single-slice DICOM gives an output of its own shape; NIfTI-2 files
read like their NIfTI-1 copies; an empty prediction's HD95 is NaN in every report and the summary counts the cases
it left out. Bundles here are tiny, untrained copies with seeded random weights: no training, each test a few seconds.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from pipelines.bundle import workflow_configs
from tests.conftest import CT_SR_BUNDLE, LUNG_BUNDLE, TINY_LUNG, TINY_LUNG_TRAIN, TINY_SR, evaluate_bundle


def _with_random_weights(src: Path, dst: Path, overrides: dict, train_overrides: dict | None = None,
                         edit=None) -> Path:
    """``derive_bundle`` plus ``models/model.pt``: seeded random weights of its ``network_def`` (``edit`` may change
    the state dict)."""
    from monai.bundle import ConfigParser

    from pipelines.bundle import derive_bundle

    bundle = derive_bundle(src, dst, overrides, train_overrides)
    parser = ConfigParser()
    parser.read_config([str(p) for p in workflow_configs(bundle, "inference")])
    torch.manual_seed(0)
    state = parser.get_parsed_content("network_def").state_dict()
    if edit is not None:
        edit(state)
    (bundle / "models").mkdir()
    torch.save(state, bundle / "models" / "model.pt")
    return bundle


@pytest.fixture(scope="module")
def lung_bundle(tmp_path_factory) -> Path:
    return _with_random_weights(LUNG_BUNDLE, tmp_path_factory.mktemp("units") / "lung", TINY_LUNG, TINY_LUNG_TRAIN)


@pytest.fixture(scope="module")
def ct_sr_bundle(tmp_path_factory) -> Path:
    overrides, train_overrides = TINY_SR["ct"]
    return _with_random_weights(CT_SR_BUNDLE, tmp_path_factory.mktemp("units") / "ct_sr", overrides, train_overrides)


def _infer(bundle: Path, inputs: list, out: Path) -> list:
    from pipelines.inference import infer_volumes

    results = infer_volumes(bundle, [str(i) for i in inputs], out, overrides={"device": "$torch.device('cpu')"},
                            echo=lambda *a, **k: None)
    assert all(r.ok for r in results), [r.error for r in results]
    return results


# ---------------------------------------------------------------------------------------------- SR intensity range


class _NearestZ2(torch.nn.Module):
    """x2 nearest up-sampling along the last axis; records the range of every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((float(x.min()), float(x.max())))
        return x.repeat_interleave(2, dim=-1)


def test_passthrough_gives_the_network_the_window_and_adds_the_rest_back():
    from pipelines.transforms.sr import WindowPassthrough, sr_inferer

    rng = np.random.default_rng(0)
    x = rng.uniform(-0.8, 2.2, size=(1, 1, 6, 5, 4)).astype(np.float32)  # far outside [0, 1] on both sides
    net = _NearestZ2()
    out = WindowPassthrough(net, 0.0, 1.0, mode="nearest")(torch.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), np.repeat(x, 2, axis=-1), atol=1e-6)  # the input's whole range
    assert net.seen and all(0.0 <= lo and hi <= 1.0 for lo, hi in net.seen)  # the network saw the window only

    # the same through the bundle's sliding-window inferer (overlapping windows, Gaussian blending)
    net = _NearestZ2()
    inferer = sr_inferer((4, 4, 2), sw_batch_size=2, overlap=0.5, passthrough_window=(0.0, 1.0),
                         passthrough_mode="nearest")
    out = inferer(torch.from_numpy(x), net)
    np.testing.assert_allclose(out.numpy(), np.repeat(x, 2, axis=-1), atol=1e-5)
    assert all(0.0 <= lo and hi <= 1.0 for lo, hi in net.seen)
    # without the passthrough the network is given what the preprocessing gives it
    plain = _NearestZ2()
    sr_inferer((4, 4, 2), overlap=0.5)(torch.from_numpy(x), plain)
    assert max(hi for _, hi in plain.seen) > 2.0
    with pytest.raises(ValueError, match=r"low < high"):
        sr_inferer((4, 4, 2), passthrough_window=(1.0, 0.0))


def test_ct_sr_window_is_inverted_without_clipping(tmp_path):
    from pipelines.transforms.sr import ct_sr_infer_transforms, ct_sr_postprocessing

    hu = np.array([-2000, -1000, -300, 40, 400, 700, 1500, 3000], dtype=np.int16).reshape(2, 2, 2)
    nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.0, 1.0])), tmp_path / "range.nii.gz")
    data = ct_sr_infer_transforms()({"image": str(tmp_path / "range.nii.gz")})
    image = data["image"]
    # RAS already: the array is the file's, mapped linearly (HU + 1000) / 1400, nothing clipped
    np.testing.assert_allclose(image[0].numpy(), (hu.astype(np.float64) + 1000.0) / 1400.0, atol=1e-6)
    data["pred"] = image.as_tensor().repeat_interleave(2, dim=-1)  # the identity at x2 along z
    ct_sr_postprocessing(tmp_path / "out", scale=(1, 1, 2))(data)
    out = np.asanyarray(nib.load(tmp_path / "out" / "range_sr.nii.gz").dataobj)
    np.testing.assert_array_equal(out, np.repeat(hu, 2, axis=-1))  # -2000 and 3000 HU come back


def test_bone_at_1500_hu_comes_out_near_1500_hu_through_the_ct_sr_bundle(ct_sr_bundle, tmp_path):
    from monai.bundle import ConfigParser

    from pipelines.transforms.sr import WindowPassthroughInferer

    parser = ConfigParser()
    parser.read_config([str(p) for p in workflow_configs(ct_sr_bundle, "inference")])
    inferer = parser.get_parsed_content("inferer")  # the network sees the window it was trained on
    assert isinstance(inferer, WindowPassthroughInferer) and inferer.passthrough_window == (0.0, 1.0)
    hu = np.full((24, 24, 8), -1000, dtype=np.int16)
    hu[3:21, 3:21, :] = 40  # soft tissue
    hu[8:16, 8:16, 2:6] = 1500  # a bone block
    hu[:2] = -2000  # outside the field of view
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-10.0, -10.0, -10.0)
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "bone.nii.gz")
    _infer(ct_sr_bundle, [tmp_path / "bone.nii.gz"], tmp_path / "out")
    out = np.asanyarray(nib.load(tmp_path / "out" / "bone_sr.nii.gz").dataobj).astype(np.float64)
    assert out.shape == (24, 24, 16)
    bone = out[10:14, 10:14, 6:10]  # the block's interior, away from its interpolated edges
    assert abs(bone.mean() - 1500.0) < 30 and bone.min() > 1400, (bone.mean(), bone.min())
    assert abs(out[0, 10, 4:12].mean() + 2000.0) < 30  # below the window too
    assert abs(out[5, 5, 4:12].mean() - 40.0) < 30


# ------------------------------------------------------------------------------------------ single-slice DICOM


def test_single_slice_dicom_gives_an_output_of_its_shape_and_geometry(lung_bundle, tmp_path):
    from pipelines.synth.dicom import write_dicom_series

    rng = np.random.default_rng(1)
    slices = rng.integers(-1000, 400, size=(1, 14, 12)).astype(np.int16)  # (z, y, x): one slice of 12 x 14
    write_dicom_series(tmp_path / "dicom_slice", slices, spacing=(0.7, 0.9, 1.5), origin=(-30.0, -40.0, 12.0))
    nib.save(nib.Nifti1Image(slices.transpose(2, 1, 0).copy(), np.diag([0.7, 0.9, 1.5, 1.0])),
             tmp_path / "nifti_slice.nii.gz")
    _infer(lung_bundle, [tmp_path / "dicom_slice", tmp_path / "nifti_slice.nii.gz"], tmp_path / "out")

    dicom_out = sitk.ReadImage(str(tmp_path / "out" / "dicom_slice_seg.nii.gz"))
    assert dicom_out.GetDimension() == 3 and dicom_out.GetSize() == (12, 14, 1)  # not a 2D (12, 14) image
    np.testing.assert_allclose(dicom_out.GetSpacing()[:2], (0.7, 0.9), atol=1e-5)
    np.testing.assert_allclose(dicom_out.GetOrigin(), (-30.0, -40.0, 12.0), atol=1e-4)  # LPS, as written
    nifti_out = nib.load(tmp_path / "out" / "nifti_slice_seg.nii.gz")
    assert nifti_out.shape == (12, 14, 1)
    np.testing.assert_allclose(nifti_out.affine, np.diag([0.7, 0.9, 1.5, 1.0]), atol=1e-5)
    assert set(np.unique(np.asanyarray(nifti_out.dataobj)).tolist()) <= {0, 1}


def test_writer_drops_only_the_channel_axis():
    from pipelines.io import AtomicNibabelWriter

    for shape, written in (((1, 5, 6, 1), (5, 6, 1)), ((1, 5, 6), (5, 6)), ((1, 1, 1, 1), (1, 1, 1)),
                           ((3, 5, 6, 4), (5, 6, 4, 3))):
        writer = AtomicNibabelWriter()
        writer.set_data_array(torch.zeros(shape), channel_dim=0)
        assert tuple(writer.data_obj.shape) == written, shape


# ------------------------------------------------------------------------------------------------------- NIfTI-2


@pytest.fixture()
def nifti_pair(tmp_path) -> tuple[np.ndarray, np.ndarray, Path, Path]:
    rng = np.random.default_rng(2)
    data = rng.normal(0.0, 300.0, size=(14, 12, 9)).astype(np.float32)
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, -1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.5, 2.0, 2.5])
    affine[:3, 3] = (10.0, -20.0, 30.0)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "scan_n1.nii.gz")
    nib.save(nib.Nifti2Image(data, affine), tmp_path / "scan_n2.nii.gz")
    assert nib.load(tmp_path / "scan_n2.nii.gz").header["sizeof_hdr"] == 540  # really NIfTI-2
    return data, affine, tmp_path / "scan_n1.nii.gz", tmp_path / "scan_n2.nii.gz"


def test_nifti2_reads_like_its_nifti1_copy(nifti_pair):
    from pipelines.io import read_image_information
    from pipelines.transforms.io import LoadVolumed

    data, affine, n1, n2 = nifti_pair
    with pytest.raises(RuntimeError):  # what this replaces: SimpleITK alone cannot read it
        sitk.ReadImage(str(n2))
    one, two = read_image_information(n1), read_image_information(n2)
    assert two.GetSize() == one.GetSize() == (14, 12, 9)
    assert two.GetDimension() == 3 and two.GetNumberOfComponents() == 1 and two.GetPixelID() == one.GetPixelID()
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(two, getter)(), getattr(one, getter)(), atol=1e-5, err_msg=getter)
    load = LoadVolumed("image")
    for path in (n1, n2):
        image = load({"image": str(path)})["image"]
        assert image.shape == (1, 14, 12, 9)
        np.testing.assert_array_equal(image[0].numpy(), data)
        np.testing.assert_allclose(image.affine.numpy(), affine, atol=1e-5)
        np.testing.assert_allclose(image.meta["spacing"], (1.5, 2.0, 2.5), atol=1e-6)


def test_nifti2_through_pipelines_infer_equals_the_nifti1_run(lung_bundle, nifti_pair, tmp_path):
    from pipelines.__main__ import main

    _, affine, n1, n2 = nifti_pair
    code = main(["infer", str(lung_bundle), str(n1), str(n2), "--output", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0
    one = nib.load(tmp_path / "out" / "scan_n1_seg.nii.gz")
    two = nib.load(tmp_path / "out" / "scan_n2_seg.nii.gz")
    assert two.shape == one.shape == (14, 12, 9)
    np.testing.assert_array_equal(np.asanyarray(two.dataobj), np.asanyarray(one.dataobj))
    np.testing.assert_allclose(two.affine, affine, atol=1e-4)
    np.testing.assert_allclose(one.affine, affine, atol=1e-4)


# --------------------------------------------------------------------------------------------- HD95 of nothing


def _case(pred_voxels: list, label_voxels: list, spacing=(1.0, 1.0, 2.0)) -> dict:
    pred, label = torch.zeros(2, 6, 6, 8), torch.zeros(2, 6, 6, 8)
    for v in pred_voxels:
        pred[(1, *v)] = 1
    for v in label_voxels:
        label[(1, *v)] = 1
    pred[0], label[0] = 1 - pred[1], 1 - label[1]
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return {"pred": MetaTensor(pred, affine=affine), "label": MetaTensor(label, affine=affine)}


def _run_hd95(cases: list[dict]) -> dict:
    from ignite.engine import Engine

    from pipelines.engines.report import HD95

    engine = Engine(lambda e, batch: batch)
    HD95().attach(engine, "val_hd95")
    engine.run([[c] for c in cases], max_epochs=1)
    return engine.state.metrics


def test_hd95_of_empty_predictions_is_nan_and_counted():
    # one voxel each, 3 slices apart at 2 mm: HD95 = 6 mm (hand-worked)
    found = _case([(2, 2, 2)], [(2, 2, 5)])
    empty = _case([], [(2, 2, 5)])
    metrics = _run_hd95([found, empty, empty])
    assert metrics["val_hd95"] == pytest.approx(6.0) and metrics["val_hd95_left_out"] == 2
    metrics = _run_hd95([empty, empty])
    assert math.isnan(metrics["val_hd95"]) and metrics["val_hd95_left_out"] == 2  # MONAI's reduction says 0.0
    metrics = _run_hd95([found])
    assert metrics["val_hd95"] == pytest.approx(6.0) and metrics["val_hd95_left_out"] == 0


def test_left_out_cases_are_those_nan_in_every_class():
    from pipelines.metrics import left_out_cases

    nan = float("nan")  # an infinite value is not left out of MONAI's mean (it makes it infinite)
    assert left_out_cases(torch.tensor([[nan, 1.0], [nan, nan], [2.0, 3.0], [float("inf"), nan], [nan, nan]])) == 2
    assert left_out_cases(torch.zeros(0, 2)) == 0 and left_out_cases(np.array([[1.0], [nan]])) == 1


def test_the_segmentation_report_summary_leaves_an_empty_prediction_out_and_says_so(tmp_path):
    from pipelines.metrics import segmentation_report

    cases = [{"case": "found", **_case([(2, 2, 2)], [(2, 2, 5)])}, {"case": "empty", **_case([], [(2, 2, 5)])}]
    summary = segmentation_report(cases, ["background", "nodule"], tmp_path / "m.csv", tmp_path / "s.json",
                                  metrics=("hd95",))
    assert summary["summary"]["hd95"]["nodule"] == {"mean": pytest.approx(6.0), "std": 0.0, "n": 1, "nan_count": 1,
                                                    "inf_count": 0}
    rows = {(r["case"], r["class"]): r["hd95"] for r in csv.DictReader((tmp_path / "m.csv").open())}
    assert rows[("empty", "nodule")] == "nan" and float(rows[("found", "nodule")]) == pytest.approx(6.0)
    only_empty = segmentation_report(cases[1:], ["background", "nodule"], tmp_path / "m2.csv", tmp_path / "s2.json",
                                     metrics=("hd95",))
    assert only_empty["summary"]["hd95"]["nodule"]["mean"] is None  # null in the JSON, never 0.0
    assert json.loads((tmp_path / "s2.json").read_text())["summary"]["hd95"]["nodule"]["nan_count"] == 1


def test_lung_evaluation_of_empty_predictions_reports_nan_and_the_cases_left_out(tmp_path, luna16_tiny):
    def background_only(state: dict) -> None:  # the head always says background: every prediction is empty
        state["head.weight"].zero_()
        state["head.bias"].copy_(torch.tensor([10.0, -10.0]))

    bundle = _with_random_weights(LUNG_BUNDLE, tmp_path / "lung_empty", TINY_LUNG, TINY_LUNG_TRAIN,
                                  edit=background_only)
    out = evaluate_bundle(bundle, luna16_tiny[0], tmp_path / "eval", eval_all=True)
    metrics = dict(row for row in csv.reader((out / "metrics.csv").open()) if row)
    per_scan = list(csv.DictReader((out / "val_hd95_raw.csv").open()))
    assert len(per_scan) == len(luna16_tiny[1]) == 4 and all(r["mean"] == "nan" for r in per_scan)
    assert metrics["val_hd95"] == "nan"  # was 0.0: MONAI's reduction of nothing
    assert int(metrics["val_hd95_left_out"]) == 4
