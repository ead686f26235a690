"""``pipelines infer --format dicom-seg|nifti|nrrd|mha --statistics --preview``: a DICOM SEG on the source slices, the
same mask as the NIfTI prediction, per-label statistics equal to NumPy's counts, a three-plane preview.

The bundle is the tiny lung bundle with a 1x1x1 convolution as its network whose weights make the prediction a
threshold of the windowed intensity (HU > -300 after the bundle's resampling and its inverse), so that it is not
empty and known without training. The input is a synthetic CT series whose files are written head first (file order
is the reverse of the slice order), with a bright sphere (the "nodule") and a bright block off-centre."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from pipelines.bundle import derive_bundle
from pipelines.clinical_outputs import ClinicalOutputs, bundle_labels
from pipelines.inference import infer_volumes
from pipelines.io import dicom_series
from pipelines.io.dicom_seg import (LOCAL_SCHEME, Algorithm, check_on_source_grid, dicom_segmentation,
                                    read_source_headers, segment_codes)
from pipelines.reports.case_statistics import case_statistics
from pipelines.reports.preview import COLOURS, focus_index, preview_planes
from pipelines.synth.dicom import write_dicom_series
from tests.conftest import LUNG_BUNDLE, REPO

SPACING = (0.8, 0.8, 1.5)  # x, y, z mm
ORIGIN = (-20.0, -30.0, -50.0)  # LPS of the first voxel of the lowest slice
SHAPE = (14, 40, 48)  # z, y, x
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
CONV = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1}


def _volume() -> np.ndarray:
    """(z ascending, y, x) int16 HU: noisy lung background, a sphere of 100 HU, a 50 HU block at the far corner."""
    rng = np.random.default_rng(7)
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    volume = rng.normal(-800.0, 30.0, SHAPE)
    volume[((z - 6) * 1.5) ** 2 + ((y - 22) * 0.8) ** 2 + ((x - 18) * 0.8) ** 2 < 8.0 ** 2] = 100.0
    volume[:, 30:, 36:] = 50.0
    return volume.astype(np.int16)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The tiny lung bundle whose network is a 1x1x1 convolution: logit 1 = 20 * (windowed intensity - 0.5)."""
    root = derive_bundle(LUNG_BUNDLE, tmp_path_factory.mktemp("bundles") / "lung_threshold",
                         {"pixdim": [2.0, 2.0, 3.0], "patch_size": [32, 32, 16], "sw_batch_size": 2,
                          "num_workers": 0, "network_def": CONV})
    conv = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 20.0]).view(2, 1, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, -10.0]))
    (root / "models").mkdir(exist_ok=True)
    torch.save(conv.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """The series (files head first) and the same volume as a NIfTI file."""
    folder = tmp_path_factory.mktemp("clinical")
    volume = _volume()
    z = [ORIGIN[2] + k * SPACING[2] for k in range(SHAPE[0])]
    write_dicom_series(folder / "chest", volume[::-1], spacing=SPACING, origin=ORIGIN, positions=z[::-1])
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    sitk.WriteImage(image, str(folder / "chest_copy.nii.gz"))
    return {"series": folder / "chest", "nifti": folder / "chest_copy.nii.gz", "volume": volume}


@pytest.fixture(scope="module")
def reference(bundle, inputs, tmp_path_factory) -> dict:
    """Today's behaviour (no --format): NIfTI predictions of the series and the NIfTI copy, as (x, y, z) arrays."""
    out = tmp_path_factory.mktemp("reference")
    results = infer_volumes(bundle, [str(inputs["series"]), str(inputs["nifti"])], out, echo=lambda s: None)
    assert [r.error for r in results] == [None, None]
    assert sorted(p.name for p in out.iterdir()) == ["chest_copy_seg.nii.gz", "chest_seg.nii.gz"]
    series_nii = nib.load(str(out / "chest_seg.nii.gz"))
    # the NIfTI's own geometry, read independently: RAS affine of an LPS-identity series
    np.testing.assert_allclose(series_nii.affine, [[-0.8, 0, 0, 20.0], [0, -0.8, 0, 30.0], [0, 0, 1.5, -50.0],
                                                   [0, 0, 0, 1]], atol=1e-4)
    pred = np.asarray(series_nii.dataobj)
    assert pred.shape == SHAPE[::-1] and set(np.unique(pred)) == {0, 1} and pred.sum() > 1000  # not empty
    return {"series": pred, "nifti": np.asarray(nib.load(str(out / "chest_copy_seg.nii.gz")).dataobj),
            "folder": out}


@pytest.fixture(scope="module")
def cli_run(bundle, inputs, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """``python -m pipelines infer ... --format dicom-seg --statistics --preview`` on the series and the NIfTI file."""
    out = tmp_path_factory.mktemp("cli") / "predictions"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "infer", str(bundle), str(inputs["series"]), str(inputs["nifti"]),
         "--output", str(out), "--device", "cpu", "--format", "dicom-seg", "--statistics", "--preview"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    return proc, out


def test_dicom_seg_is_only_for_dicom_series_and_the_other_input_fails_with_one_line(cli_run, inputs):
    proc, out = cli_run
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if "error:" in line]
    assert errors == [f"[2/2] error: {inputs['nifti']}: --format dicom-seg needs a DICOM series folder as input, "
                      "this is a .nii.gz file (use --format nifti, nrrd or mha for it)"]
    assert "infer: 1 written, 1 failed" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["chest_preview.png", "chest_seg.dcm", "chest_statistics.json",
                                                     "inference_summary.json"]
    summary = json.loads((out / "inference_summary.json").read_text())
    assert [r["output"] for r in summary["inputs"]] == [str(out / "chest_seg.dcm"), None]


def test_dicom_seg_frames_land_on_the_source_slices_and_equal_the_nifti_prediction(cli_run, inputs, reference):
    import highdicom as hd

    _, out = cli_run
    sources = {}
    for path in inputs["series"].iterdir():
        ds = pydicom.dcmread(str(path))
        sources[ds.SOPInstanceUID] = ds
    first = next(iter(sources.values()))
    seg = pydicom.dcmread(str(out / "chest_seg.dcm"))
    assert seg.SOPClassUID == SEG_STORAGE and seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.PatientID == first.PatientID
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        == set(sources)

    (segment,) = seg.SegmentSequence
    assert segment.SegmentNumber == 1 and segment.SegmentLabel == "nodule"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"  # SNOMED CT: nodule
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    metadata = json.loads((LUNG_BUNDLE / "configs" / "metadata.json").read_text())
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (metadata["name"], metadata["version"])

    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] \
        == [float(v) for v in first.ImageOrientationPatient]
    np.testing.assert_allclose([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
                               [float(v) for v in first.PixelSpacing])
    # every frame: on its source slice, and equal to that slice of the NIfTI prediction, found by world position
    nii = reference["series"]
    inverse = np.linalg.inv(np.array([[-0.8, 0, 0, 20.0], [0, -0.8, 0, 30.0], [0, 0, 1.5, -50.0], [0, 0, 0, 1]]))
    frames = seg.pixel_array
    covered = []
    for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        assert position == [float(v) for v in sources[uid].ImagePositionPatient]
        x, y, z = position
        k = int(round((inverse @ [-x, -y, z, 1.0])[2]))
        np.testing.assert_array_equal(frames[i], nii[:, :, k].T)  # rows = y, columns = x
        covered.append(k)
    # frames without any label are left out; every slice that has one is there, once
    assert sorted(covered) == [k for k in range(nii.shape[2]) if nii[:, :, k].any()]

    # highdicom reads the same mask back, slice by source instance
    by_position = sorted(sources, key=lambda u: float(sources[u].ImagePositionPatient[2]))
    masks = hd.seg.segread(str(out / "chest_seg.dcm")).get_pixels_by_source_instance(
        by_position, combine_segments=True)
    np.testing.assert_array_equal(masks, nii.T)


def test_statistics_equal_numpy_counts_of_the_written_nifti(cli_run, inputs, reference):
    _, out = cli_run
    stats = json.loads((out / "chest_statistics.json").read_text())
    pred = reference["series"].T  # (z, y, x) like the volume
    inside = pred == 1
    assert stats["input"] == str(inputs["series"])
    assert stats["spacing_mm"] == pytest.approx(list(SPACING)) and stats["shape"] == list(SHAPE[::-1])  # x, y, z
    (nodule,) = stats["labels"]
    assert (nodule["label"], nodule["name"], nodule["voxel_count"]) == (1, "nodule", int(inside.sum()))
    assert nodule["volume_ml"] == pytest.approx(inside.sum() * 0.8 * 0.8 * 1.5 / 1000.0, rel=1e-9)
    assert nodule["mean_intensity"] == pytest.approx(float(inputs["volume"][inside].mean()), rel=1e-9)


def test_preview_has_three_panels_that_differ_and_show_the_outline(cli_run):
    _, out = cli_run
    picture = np.asarray(Image.open(out / "chest_preview.png").convert("RGB")).astype(int)
    assert picture.shape == (256, 768, 3)
    panels = [picture[:, i * 256:(i + 1) * 256] for i in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(panels[a] - panels[b]).mean() > 5, (a, b)
    red = np.array([int(COLOURS[0][i:i + 2], 16) for i in (1, 3, 5)])  # the first label's outline colour
    for panel in panels:  # every plane passes through the sphere, so its outline is in each
        assert (np.abs(panel - red).sum(-1) < 60).sum() > 20


@pytest.mark.parametrize("output_format, suffix", [("nrrd", ".nrrd"), ("mha", ".mha")])
def test_image_formats_hold_the_nifti_prediction_in_its_geometry(bundle, inputs, reference, output_format, suffix,
                                                                  tmp_path):
    results = infer_volumes(bundle, [str(inputs["nifti"])], tmp_path, echo=lambda s: None,
                            output_format=output_format, statistics=True,
                            overrides={"label_names": {"1": "mass"}})  # as --set 'label_names={"1": "mass"}'
    assert results[0].error is None and results[0].output == str(tmp_path / f"chest_copy_seg{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"chest_copy_seg{suffix}", "chest_copy_statistics.json"]
    stats = json.loads((tmp_path / "chest_copy_statistics.json").read_text())
    assert [(r["label"], r["name"], r["voxel_count"]) for r in stats["labels"]] == [
        (1, "mass", int((reference["nifti"] == 1).sum()))]
    written = sitk.ReadImage(results[0].output)
    nifti = sitk.ReadImage(str(reference["folder"] / "chest_copy_seg.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), reference["nifti"].T)
    np.testing.assert_allclose(written.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), SPACING, atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), nifti.GetDirection(), atol=1e-6)


def test_a_prediction_off_the_series_grid_is_refused(inputs):
    files = dicom_series(inputs["series"])[0].files
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    image = reader.Execute()
    headers = read_source_headers(files)
    check_on_source_grid(image, headers, "pred.nii.gz")  # the series' own grid passes
    shifted = sitk.Image(image)
    shifted.SetOrigin((ORIGIN[0], ORIGIN[1], ORIGIN[2] + SPACING[2]))
    with pytest.raises(ValueError, match=r"^pred.nii.gz: slice 0 starts at .* not on the series' grid$"):
        check_on_source_grid(shifted, headers, "pred.nii.gz")
    flipped = sitk.Image(image)
    flipped.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    with pytest.raises(ValueError, match=r"^pred.nii.gz: row/column directions"):
        check_on_source_grid(flipped, headers, "pred.nii.gz")
    with pytest.raises(ValueError, match=r"^pred.nii.gz: 48x40x13 voxels, not one slice per file"):
        check_on_source_grid(image[:, :, 1:], headers, "pred.nii.gz")


def test_an_empty_prediction_keeps_every_frame_and_unnamed_values_are_refused(inputs):
    headers = read_source_headers(dicom_series(inputs["series"])[0].files)
    empty = np.zeros(SHAPE, dtype=np.uint8)
    seg = dicom_segmentation(empty, headers, {1: "nodule"}, Algorithm("b", "1"))
    assert seg.NumberOfFrames == SHAPE[0] and not seg.pixel_array.any()
    labels = empty.copy()
    labels[3, 4, 5] = 2
    with pytest.raises(ValueError, match=r"label value\(s\) \[2\] of the prediction have no segment"):
        dicom_segmentation(labels, headers, {1: "nodule"}, Algorithm("b", "1"))
    # two labels: segment numbers 1 and 2 in ascending label value, frame i on headers' slice order
    labels[7, 0, 0] = 4
    seg = dicom_segmentation(labels, headers, {2: "core", 4: "edema"}, Algorithm("b", "1"))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["core", "edema"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == LOCAL_SCHEME
    frames = {(int(g.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
               g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
              for g in seg.PerFrameFunctionalGroupsSequence}
    assert frames == {(1, headers[3].SOPInstanceUID), (2, headers[7].SOPInstanceUID)}


def test_label_names_from_the_metadata_or_the_config():
    lung = json.loads((LUNG_BUNDLE / "configs" / "metadata.json").read_text())
    assert bundle_labels(lung) == ({1: "nodule"}, None)
    isic = json.loads((REPO / "bundles" / "isic_skin_frcunet_segmentation" / "configs" / "metadata.json").read_text())
    assert bundle_labels(isic) == ({}, "lesion")
    brats = json.loads((REPO / "bundles" / "brats_mri_frcunet_segmentation" / "configs" / "metadata.json").read_text())
    assert bundle_labels(brats) == ({}, None)  # region channels, written as BraTS labels: names from label_names
    assert bundle_labels(brats, {"1": "NCR", "2": "ED", "4": "ET"}) == ({1: "NCR", 2: "ED", 4: "ET"}, None)
    with pytest.raises(ValueError, match="label_names must map label values to names"):
        bundle_labels(lung, {"one": "nodule"})
    single = ClinicalOutputs(single_label="lesion")
    assert single.case_labels(np.array([0, 255])) == {255: "lesion"}  # a 0/255 PNG mask
    assert single.case_labels(np.array([0])) == {1: "lesion"}
    assert ClinicalOutputs(labels={1: "nodule"}).case_labels(np.array([0, 1, 3])) == {1: "nodule", 3: "label 3"}
    assert segment_codes("Nodule")[1].value == "27925004"
    assert segment_codes("TC")[1].scheme_designator == LOCAL_SCHEME
    with pytest.raises(ValueError, match="--format must be one of dicom-seg"):
        ClinicalOutputs(output_format="png")


def test_case_statistics_by_hand():
    prediction = np.zeros((2, 2, 2), dtype=np.uint8)
    prediction[0, 0, 0] = prediction[0, 0, 1] = 1
    prediction[1, 1, 1] = 3
    image = np.arange(8, dtype=np.int16).reshape(2, 2, 2)  # values 0..7 in C order
    stats = case_statistics(prediction, [image], (1.0, 2.0, 3.0), {1: "a", 2: "b"})
    assert stats["voxel_volume_mm3"] == 6.0
    assert stats["labels"] == [
        {"label": 1, "name": "a", "voxel_count": 2, "volume_ml": 0.012, "mean_intensity": 0.5},
        {"label": 2, "name": "b", "voxel_count": 0, "volume_ml": 0.0, "mean_intensity": None},
        {"label": 3, "name": "label 3", "voxel_count": 1, "volume_ml": 0.006, "mean_intensity": 7.0},
    ]
    two = case_statistics(prediction, [image, 10 * image], (1.0, 2.0, 3.0), {})
    assert two["labels"][0]["mean_intensity"] == [0.5, 5.0]
    flat = case_statistics(prediction[0], [image[0]], (0.5, 0.5), {})
    assert flat["labels"][0] == {"label": 1, "name": "label 1", "voxel_count": 2, "area_mm2": 0.5,
                                 "mean_intensity": 0.5}
    with pytest.raises(ValueError, match="differs from the prediction's"):
        case_statistics(prediction, [image[0]], (1.0, 2.0, 3.0), {})


def test_focus_is_the_centroid_of_the_largest_component():
    mask = np.zeros((5, 6, 7), dtype=np.uint8)
    mask[0, 0, 0] = 1  # one voxel
    mask[2:5, 3:5, 4:7] = 2  # 18 voxels: centroid (3, 3.5, 5), rounded half to even: (3, 4, 5)
    assert focus_index(mask) == (3, 4, 5)
    assert focus_index(np.zeros((5, 6, 7))) == (2, 3, 3)
    diagonal = np.zeros((4, 4, 4), dtype=bool)
    diagonal[[0, 1, 2], [0, 1, 2], [0, 1, 2]] = True  # 26-connected: one component of 3
    diagonal[3, 0, 2] = diagonal[3, 0, 3] = True  # 2 voxels, touching no other
    assert focus_index(diagonal) == (1, 1, 1)


@pytest.mark.parametrize("flip_x", [False, True])
def test_preview_planes_are_in_the_radiological_convention(flip_x):
    """A marker at the patient's right, anterior, head corner: left, top in the axial plane; left, top in the
    coronal; top, left (anterior) in the sagittal one, whichever way the file stores the x axis."""
    array = np.zeros((6, 8, 10), dtype=np.float32)  # z, y, x
    x = 9 if flip_x else 0  # the patient's right: index 0 in LPS, the last index when x runs to the right
    array[5, 0, x] = 1000.0  # head (S), anterior (y = 0 in LPS)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 2.0, 3.0))
    if flip_x:
        image.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    labels = sitk.GetImageFromArray((array > 0).astype(np.uint8))
    labels.CopyInformation(image)
    axial, coronal, sagittal = preview_planes(image, labels)
    assert (axial["index"], coronal["index"], sagittal["index"]) == (5, 0, 0)
    assert axial["image"][0, 0] == 1000 and axial["image"].shape == (8, 10) and axial["pixel_mm"] == (2.0, 1.0)
    assert coronal["image"][0, 0] == 1000 and coronal["image"].shape == (6, 10) and coronal["pixel_mm"] == (3.0, 1.0)
    assert sagittal["image"][0, 0] == 1000 and sagittal["image"].shape == (6, 8)
    assert sagittal["pixel_mm"] == (3.0, 2.0)
    assert sagittal["labels"][0, 0] == 1 and sagittal["labels"].sum() == 1
