"""``python -m pipelines infer``: every 3D format, outputs in the input's geometry, bad inputs reported and skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
import SimpleITK as sitk

from pipelines.data.volumes import list_volumes, volume_name
from pipelines.inference import BundleInferer, infer_volumes
from pipelines.inferers import ChannelsLast

DICOM_SERIES = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


@pytest.fixture(scope="module")
def inputs(luna16_tiny, tmp_path_factory) -> dict[str, Path]:
    """One volume per format: flipped MetaImage, NIfTI, NRRD, a real DICOM series, and a corrupt file."""
    _, scans = luna16_tiny
    folder = tmp_path_factory.mktemp("inputs")
    flipped = next(s for s in scans if s.flip != "none")
    other = next(s for s in scans if s is not flipped)
    image = sitk.ReadImage(str(other.path))
    sitk.WriteImage(image, str(folder / "scan_a.nii.gz"))
    sitk.WriteImage(image, str(folder / "scan_b.nrrd"))
    shutil.copytree(DICOM_SERIES, folder / "dicom_ct")
    (folder / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    return {"mhd": flipped.path, "nifti": folder / "scan_a.nii.gz", "nrrd": folder / "scan_b.nrrd",
            "dicom": folder / "dicom_ct", "corrupt": folder / "corrupt.nii.gz"}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def test_cli_writes_every_format_in_its_geometry_and_reports_the_bad_input(trained_lung_bundle, inputs, tmp_path):
    out = tmp_path / "predictions"
    order = ["mhd", "corrupt", "nifti", "nrrd", "dicom"]
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "infer", str(trained_lung_bundle), *[str(inputs[k]) for k in order],
         "--output", str(out)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # something failed, and the exit code says so
    assert f"error: {inputs['corrupt']}: " in proc.stdout
    assert "infer: 4 written, 1 failed" in proc.stdout
    for key in ("mhd", "nifti", "nrrd", "dicom"):
        pred_path = out / f"{volume_name(inputs[key])}_seg.nii.gz"
        assert pred_path.exists(), proc.stdout
        if key == "dicom":
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(inputs[key])))
            source = reader.Execute()
        else:
            source = sitk.ReadImage(str(inputs[key]))
        assert _same_geometry(source, sitk.ReadImage(str(pred_path))), key
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{volume_name(inputs[k])}_seg.nii.gz"
                                                             for k in ("mhd", "nifti", "nrrd", "dicom")),
                                                           "inference_summary.json"])


def test_missing_input_and_missing_weights(trained_lung_bundle, tmp_path):
    results = infer_volumes(trained_lung_bundle, [str(tmp_path / "nope.nii.gz")], tmp_path / "out", echo=lambda s: None)
    assert len(results) == 1 and not results[0].ok
    assert results[0].error == f"{tmp_path / 'nope.nii.gz'}: no such file or folder"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "infer", str(trained_lung_bundle), str(tmp_path),
         "--output", str(tmp_path / "out"), "--weights", str(tmp_path / "missing.pt")],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert f"error: {tmp_path / 'missing.pt'}: trained weights not found" in proc.stderr


def test_an_interrupted_write_leaves_no_file(trained_lung_bundle, inputs, tmp_path, monkeypatch):
    import nibabel

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(nibabel, "save", fail)
    results = infer_volumes(trained_lung_bundle, [str(inputs["nifti"])], tmp_path, echo=lambda s: None)
    assert not results[0].ok and "disk full" in results[0].error
    assert list(tmp_path.iterdir()) == []


def test_list_volumes(inputs, luna16_tiny):
    root, scans = luna16_tiny
    listed = [Path(v["image"]) for v in list_volumes(root)]
    assert sorted(listed) == sorted(s.path for s in scans)  # lung masks are not inputs
    folder = inputs["nifti"].parent
    names = {Path(v["image"]).name for v in list_volumes(folder)}
    assert names == {"scan_a.nii.gz", "scan_b.nrrd", "dicom_ct", "corrupt.nii.gz"}
    assert volume_name("a/b/scan.nii.gz") == "scan" and volume_name("x/1.2.3.mhd") == "1.2.3"
    empty = folder / "empty"
    empty.mkdir(exist_ok=True)
    with pytest.raises(ValueError, match="no volumes found"):
        list_volumes(empty)


def test_channels_last_is_on_for_the_fast_path_only(trained_lung_bundle, tmp_path):
    assert not BundleInferer(trained_lung_bundle, tmp_path / "a", precision="fp32").channels_last
    fast = BundleInferer(trained_lung_bundle, tmp_path / "b", precision="bf16")
    assert fast.channels_last and isinstance(fast.network, ChannelsLast)
    assert not BundleInferer(trained_lung_bundle, tmp_path / "c", precision="bf16", channels_last=False).channels_last
    assert BundleInferer(trained_lung_bundle, tmp_path / "d", precision="fp32", channels_last=True).channels_last


def test_bf16_and_tta_inference_keep_geometry_and_agree_with_fp32(trained_lung_bundle, inputs, tmp_path):
    results = {}
    for name, kwargs in {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"}, "tta": {"tta": True}}.items():
        out = infer_volumes(trained_lung_bundle, [str(inputs["mhd"])], tmp_path / name, echo=lambda s: None, **kwargs)
        assert out[0].ok, out[0].error
        image = sitk.ReadImage(out[0].output)
        assert _same_geometry(sitk.ReadImage(str(inputs["mhd"])), image)
        results[name] = sitk.GetArrayFromImage(image)
    agreement = np.mean(results["fp32"] == results["bf16"])
    assert agreement > 0.99, f"bf16 changed {1 - agreement:.2%} of the voxels"
    with pytest.raises(ValueError, match="precision must be"):
        infer_volumes(trained_lung_bundle, [], tmp_path / "x", precision="fp8")


def test_cli_fast_path_flags(trained_lung_bundle, inputs, tmp_path, capsys, monkeypatch):
    """``python -m pipelines infer --precision bf16 [--channels-last off]`` reach the engine and write predictions."""
    import pipelines.__main__ as cli
    import pipelines.inference as inference

    seen = []
    original = inference.BundleInferer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append((self.precision, self.channels_last))

    monkeypatch.setattr(inference.BundleInferer, "__init__", spy)
    for flag, expected in (([], True), (["--channels-last", "off"], False)):
        out = tmp_path / f"cl_{expected}"
        code = cli.main(["infer", str(trained_lung_bundle), str(inputs["mhd"]), "--output", str(out),
                         "--precision", "bf16", *flag])
        assert code == 0, capsys.readouterr()
        assert seen[-1] == ("bf16", expected)
        assert len(list(out.glob("*_seg.nii.gz"))) == 1
