"""No silently wrong output: every broken input is refused with one line naming the file, and nothing is written for it.

The checks live in :mod:`pipelines.io.checks` and serve training preflight and inference alike; these tests run them
through ``pipelines infer`` (the path a user takes with their own scans) and through ``preflight_datalist``.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipelines.data.preflight import preflight_datalist
from pipelines.inference import infer_volumes, output_stems
from pipelines.io import dicom_series, read_image_information
from pipelines.synth.dicom import write_dicom_series


def _phantom(shape=(40, 40, 24)) -> np.ndarray:
    """Air around a soft-tissue box: int16 HU, (x, y, z)."""
    x = np.full(shape, -1000, dtype=np.int16)
    x[6:-6, 6:-6, 4:-4] = 40
    return x


def _nifti(path: Path, data: np.ndarray | None = None, zooms=(1.5, 1.5, 2.0)) -> Path:
    data = _phantom() if data is None else data
    affine = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _run(bundle: Path, inputs: list, out: Path, **kwargs) -> tuple[list, list[str]]:
    lines: list[str] = []
    results = infer_volumes(bundle, [str(p) for p in inputs], out, echo=lines.append, **kwargs)
    return results, lines


def _written(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def _error_of(results, path: Path) -> str:
    errors = [r.error for r in results if not r.ok and str(path) in r.input]
    assert errors, [(r.input, r.error) for r in results]
    return errors[0]


# ---- files whose header lies about their size -------------------------------------------------------------------


def test_a_nifti_gz_cut_in_half_is_refused_and_the_good_input_still_runs(trained_lung_bundle, tmp_path):
    good = _nifti(tmp_path / "good.nii.gz")
    whole = _nifti(tmp_path / "whole.nii.gz").read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    results, _ = _run(trained_lung_bundle, [cut, good], out)
    error = _error_of(results, cut)
    assert error.startswith(f"{cut}: ") and "truncated" in error and "\n" not in error
    assert _written(out) == ["good_seg.nii.gz"]  # nothing for the bad input, the good one written


def test_a_tiny_gzip_declaring_a_huge_volume_is_refused_from_its_header(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(np.float32)
    header.set_zooms((1.0, 1.0, 1.0))
    path = tmp_path / "bomb.nii.gz"
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 600  # header, extension flag, a few voxels
    path.write_bytes(gzip.compress(raw))
    assert path.stat().st_size < 2048
    start = time.time()
    with pytest.raises(ValueError, match=rf"^{path}: truncated \(\d+ bytes of image data, the header declares "
                                         rf"{352 + 4 * 1024 ** 3}\)"):
        read_image_information(path)
    assert time.time() - start < 5  # streamed to its end, never allocated


def test_an_uncompressed_nifti_shorter_than_its_header_is_refused(tmp_path):
    path = _nifti(tmp_path / "short.nii")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"^{path}: truncated"):
        read_image_information(path)


# ---- geometry that SimpleITK would silently "repair" ------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, float("nan"), -1.0, float("inf")])
def test_a_nifti_voxel_size_of_zero_or_nan_is_refused(tmp_path, bad):
    """The header's bytes patched by hand (nibabel would repair pixdim on save): pixdim[2] sits at byte 84."""
    raw = bytearray(gzip.decompress(_nifti(tmp_path / "zooms.nii.gz").read_bytes()))
    raw[84:88] = np.float32(bad).tobytes()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ValueError, match=rf"^{broken}: voxel size .* is not positive and finite"):
        read_image_information(broken)
    plain = sitk.ReadImage(str(broken)) if np.isfinite(bad) and bad >= 0 else None  # what SimpleITK alone would do
    assert plain is None or plain.GetSpacing()[1] > 0  # it "repairs" the size: hence the check


def _mhd(folder: Path, name: str, data_file: str, **fields) -> Path:
    header = {"ObjectType": "Image", "NDims": "3", "DimSize": "8 8 4", "ElementType": "MET_SHORT",
              "ElementSpacing": "1 1 2", "Offset": "0 0 0", "TransformMatrix": "1 0 0 0 1 0 0 0 1", **fields,
              "ElementDataFile": data_file}
    path = folder / name
    path.write_text("".join(f"{k} = {v}\n" for k, v in header.items()))
    return path


@pytest.mark.parametrize("spacing", ["1 0 2", "1 nan 2", "1 -1 2"])
def test_a_metaimage_voxel_size_of_zero_or_nan_is_refused(tmp_path, spacing):
    (tmp_path / "a.raw").write_bytes(b"\0" * 8 * 8 * 4 * 2)
    path = _mhd(tmp_path, "a.mhd", "a.raw", ElementSpacing=spacing)
    with pytest.raises(ValueError, match=rf"^{path}: voxel size \(ElementSpacing\) '{spacing}' is not positive"):
        read_image_information(path)


def test_a_sheared_direction_matrix_is_refused(tmp_path):
    (tmp_path / "a.raw").write_bytes(b"\0" * 8 * 8 * 4 * 2)
    path = _mhd(tmp_path, "a.mhd", "a.raw", TransformMatrix="1 0 0 0.5 1 0 0 0 1")
    with pytest.raises(ValueError, match=rf"^{path}: the direction matrix .* is not orthonormal"):
        read_image_information(path)


@pytest.mark.parametrize("data_file", ["/etc/passwd", "../outside.raw", "sub/../../outside.raw"])
def test_a_metaimage_data_file_outside_its_folder_is_never_read(tmp_path, data_file):
    inner = tmp_path / "scans"
    inner.mkdir()
    (tmp_path / "outside.raw").write_bytes(b"\1" * 8 * 8 * 4 * 2)
    path = _mhd(inner, "evil.mhd", data_file)
    with pytest.raises(ValueError, match=rf"^{path}: its data file '{data_file}' lies outside the header's folder"):
        read_image_information(path)


def test_a_metaimage_in_a_subfolder_of_its_header_is_read(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.raw").write_bytes(np.arange(256, dtype=np.int16).tobytes())
    info = read_image_information(_mhd(tmp_path, "a.mhd", "data/a.raw"))
    assert info.GetSize() == (8, 8, 4) and info.GetSpacing() == (1.0, 1.0, 2.0)


def test_nrrd_spacing_of_zero_is_refused(tmp_path):
    path = tmp_path / "a.nrrd"
    data = np.zeros((4, 8, 8), dtype=np.int16)
    path.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 4\nspacings: 1 0 2\nencoding: raw\n"
                     b"endian: little\n\n" + data.tobytes())
    with pytest.raises(ValueError, match=rf"^{path}: voxel size \(spacings\)"):
        read_image_information(path)


def test_the_same_checks_run_in_training_preflight(tmp_path):
    """One module serves both: a file refused by inference is refused by preflight with the same words."""
    (tmp_path / "a.raw").write_bytes(b"\0" * 8 * 8 * 4 * 2)
    evil = _mhd(tmp_path, "evil.mhd", "/etc/passwd")
    good = _nifti(tmp_path / "good.nii.gz")
    with pytest.raises(ValueError) as info:
        preflight_datalist({"training": [{"image": str(evil), "label": str(good)}]}, check_grids=False)
    assert f"{evil}: its data file '/etc/passwd' lies outside the header's folder" in str(info.value)


# ---- DICOM series ---------------------------------------------------------------------------------------------


def _ct_volume(slices: int = 12) -> np.ndarray:
    vol = np.full((slices, 32, 32), -1000, dtype=np.int16)
    vol[:, 6:26, 6:26] = 40
    return vol


def test_a_folder_with_two_series_gives_one_output_per_series_named_by_uid(trained_lung_bundle, tmp_path):
    folder = tmp_path / "two_series"
    write_dicom_series(folder, _ct_volume(), series_uid="1.2.826.0.1.3680043.10.1.1", prefix="A")
    write_dicom_series(folder, _ct_volume(10), series_uid="1.2.826.0.1.3680043.10.1.2", prefix="B", series_number=2)
    out = tmp_path / "out"
    results, _ = _run(trained_lung_bundle, [folder], out)
    assert all(r.ok for r in results), [r.error for r in results]
    assert _written(out) == ["two_series_1.2.826.0.1.3680043.10.1.1_seg.nii.gz",
                             "two_series_1.2.826.0.1.3680043.10.1.2_seg.nii.gz"]
    sizes = {name: sitk.ReadImage(str(out / name)).GetSize()[2] for name in _written(out)}
    assert sorted(sizes.values()) == [10, 12]  # each output is its own series, slice for slice
    only, _ = _run(trained_lung_bundle, [folder], tmp_path / "one", series="1.2.826.0.1.3680043.10.1.2")
    assert [r.ok for r in only] == [True] and _written(tmp_path / "one") == [
        "two_series_1.2.826.0.1.3680043.10.1.2_seg.nii.gz"]


def test_a_dicom_series_with_an_unreadable_slice_is_refused(tmp_path):
    folder = tmp_path / "series"
    paths = write_dicom_series(folder, _ct_volume())
    paths[5].write_bytes(paths[5].read_bytes()[:400])  # cut inside the header
    with pytest.raises(ValueError, match=rf"^{paths[5]}: "):
        dicom_series(folder)


def test_a_dicom_slice_with_truncated_pixel_data_is_refused(tmp_path):
    folder = tmp_path / "series"
    paths = write_dicom_series(folder, _ct_volume())
    paths[3].write_bytes(paths[3].read_bytes()[:-300])
    with pytest.raises(ValueError, match=rf"^{paths[3]}: "):
        dicom_series(folder)


def test_a_missing_slice_is_an_uneven_spacing_error_naming_the_gap(trained_lung_bundle, tmp_path):
    folder = tmp_path / "gap"
    z = [-50.0 + 1.5 * k for k in range(12)]
    del z[6]  # the slice at -41.0 mm is missing: a 3.0 mm gap between -42.5 and -39.5
    paths = write_dicom_series(folder, _ct_volume(11), positions=z)
    with pytest.raises(ValueError, match=rf"^{folder}: series .*: uneven slice spacing: a gap of 3.000 mm between "
                                         rf"{paths[5].name} and {paths[6].name} where the other slices are 1.500 mm"):
        dicom_series(folder)
    out = tmp_path / "out"
    results, _ = _run(trained_lung_bundle, [folder], out)
    assert not results[0].ok and "uneven slice spacing" in results[0].error and _written(out) == []


def test_an_even_synthetic_series_reads_with_its_geometry(tmp_path):
    folder = tmp_path / "ok"
    write_dicom_series(folder, _ct_volume(), spacing=(0.7, 0.8, 1.25), origin=(-10.0, -20.0, 30.0))
    (series,) = dicom_series(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    image = reader.Execute()
    assert image.GetSize() == (32, 32, 12)
    np.testing.assert_allclose(image.GetSpacing(), (0.7, 0.8, 1.25), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), (-10.0, -20.0, 30.0), atol=1e-6)


# ---- outputs that cannot collide ------------------------------------------------------------------------------


def test_inputs_of_one_name_in_two_folders_get_two_outputs(trained_lung_bundle, tmp_path):
    a = tmp_path / "siteA"
    b = tmp_path / "siteB"
    a.mkdir(), b.mkdir()
    data_a = _phantom()
    data_b = _phantom()
    data_b[10:30, 10:30, 8:16] = 300
    _nifti(a / "case.nii.gz", data_a)
    _nifti(b / "case.nii.gz", data_b, zooms=(1.0, 1.0, 2.5))
    out = tmp_path / "out"
    results, lines = _run(trained_lung_bundle, [a / "case.nii.gz", b / "case.nii.gz", a / "case.nii.gz"], out)
    assert [r.ok for r in results] == [True, True]  # the repeated input is run once
    assert any("given more than once" in line for line in lines)
    assert _written(out) == ["siteA_case_seg.nii.gz", "siteB_case_seg.nii.gz"]
    # each output overlays its own input (different spacing), so neither overwrote the other
    assert sitk.ReadImage(str(out / "siteB_case_seg.nii.gz")).GetSpacing() == (1.0, 1.0, 2.5)
    assert sitk.ReadImage(str(out / "siteA_case_seg.nii.gz")).GetSpacing() == (1.5, 1.5, 2.0)


def test_output_stems_are_unique_or_an_error_before_anything_runs(tmp_path):
    items = [{"image": str(tmp_path / "x" / "a" / "case.nii.gz")}, {"image": str(tmp_path / "y" / "a" / "case.nii")}]
    assert output_stems(items) == ["x_a_case", "y_a_case"]
    assert output_stems([{"image": "/d/one.mhd"}, {"image": "/d/two.mhd"}]) == ["one", "two"]
    # two different inputs whose derived names meet: refused, naming both
    clash = [{"image": str(tmp_path / "a_b" / "c.nii.gz")}, {"image": str(tmp_path / "a" / "b_c.nii.gz")},
             {"image": str(tmp_path / "b_c.nii.gz")}]
    with pytest.raises(ValueError, match="would both be written as"):
        output_stems(clash[:1] + [{"image": str(tmp_path / "a_b" / "c.nii")}])
    assert len(set(output_stems(clash))) == 3


# ---- bundles that must not run code or crash ------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _cli(bundle: Path, inputs: list, out: Path, *extra: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run([sys.executable, "-m", "pipelines", "infer", str(bundle), *map(str, inputs),
                           "--output", str(out), *extra], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_pickle_model_is_refused_with_one_line_and_never_runs(trained_lung_bundle, tmp_path):
    weights = tmp_path / "model.pt"
    torch.save({"model": _Evil()}, weights)
    proc = _cli(trained_lung_bundle, [_nifti(tmp_path / "a.nii.gz")], tmp_path / "out", "--weights", str(weights),
                cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {weights}: not a plain weights file"), proc.stderr
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []  # no staging left either


def test_a_network_that_is_not_a_module_or_a_broken_config_exit_2(trained_lung_bundle, tmp_path, capsys):
    """The first case as a user runs it (a process and its exit status); the other two through the same ``main`` in
    process (the exit status is ``main``'s return value), which spares two interpreter start-ups."""
    from pipelines.__main__ import main

    image = _nifti(tmp_path / "a.nii.gz")
    not_module = _cli(trained_lung_bundle, [image], tmp_path / "o1", "--set",
                      'network_def={"_target_": "collections.OrderedDict"}', cwd=tmp_path)
    assert not_module.returncode == 2
    assert not_module.stderr.strip().count("\n") == 0 and "not a torch.nn.Module" in not_module.stderr
    infer = ["infer", str(trained_lung_bundle), str(image)]
    capsys.readouterr()
    assert main([*infer, "--output", str(tmp_path / "o2"), "--set",
                 'network_def={"_target_": "networks.EDU", "spatial_dims": 3}']) == 2
    broken = capsys.readouterr().err
    assert broken.strip().count("\n") == 0 and "cannot build 'network_def'" in broken, broken
    assert main([*infer, "--output", str(tmp_path / "o3"), "--set", "features=[8, 8, 16, 32, 64]"]) == 2
    mismatch = capsys.readouterr().err
    assert re.fullmatch(rf"error: {re.escape(str(trained_lung_bundle / 'models' / 'model.pt'))}: does not fit the "
                        r"network: '[\w.]+' is \([\d, ]+\) in the file, \([\d, ]+\) in the network \(was the network "
                        r"or one of its settings changed after these weights were trained\?\)\n", mismatch), mismatch


# ---- CSV tables -----------------------------------------------------------------------------------------------


def test_annotations_with_a_duplicated_column_are_refused(tmp_path):
    from pipelines.data.luna16 import read_annotations

    path = tmp_path / "annotations.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm,diameter_mm\n1.2.3,1,2,3,9.5,3.0\n")
    with pytest.raises(ValueError, match=rf"^{path}: column\(s\) diameter_mm appear more than once"):
        read_annotations(path)


def test_every_bad_annotation_row_is_listed_in_one_error(tmp_path):
    from pipelines.data.luna16 import read_annotations

    path = tmp_path / "annotations.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n"
                    "1.2.3,1,2,3,9.5\n"  # line 2: good
                    "1.2.3,1,2,x,5\n"  # line 3: not a number
                    "1.2.3,1,2,3,-5\n"  # line 4: negative diameter
                    "1.2.3,1,2,3\n"  # line 5: a field short
                    ",1,2,3,4\n"  # line 6: no series
                    "1.2.4,1,2,3,nan\n")  # line 7: NaN
    with pytest.raises(ValueError) as info:
        read_annotations(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 5 bad row(s)")
    for line in (3, 4, 5, 6, 7):
        assert f"line {line}: " in message
    assert "line 2: " not in message


def test_isic_ground_truth_lists_every_bad_row(tmp_path):
    from pipelines.data.isic_cls import ISIC_CLASSES, read_isic_ground_truth

    path = tmp_path / "gt.csv"
    head = "image," + ",".join(ISIC_CLASSES) + "\n"
    one_hot = ",".join(["1.0"] + ["0.0"] * (len(ISIC_CLASSES) - 1))
    path.write_text(head + f"ISIC_1,{one_hot}\nISIC_2,{one_hot.replace('1.0', '0.0', 1)}\nISIC_1,{one_hot}\n"
                    f"ISIC_3,x{one_hot[3:]}\n")
    with pytest.raises(ValueError) as info:
        read_isic_ground_truth(path)
    assert str(info.value).startswith(f"{path}: 3 bad row(s)")
    assert "line 3 (ISIC_2): the class columns must be one-hot" in str(info.value)
    assert "line 4: image ISIC_1 is listed again (first on line 2)" in str(info.value)
    assert "line 5 (ISIC_3): class values must be numbers" in str(info.value)
    path.write_text("image,MEL,MEL," + ",".join(ISIC_CLASSES[1:]) + "\n")
    with pytest.raises(ValueError, match="column\\(s\\) MEL appear more than once"):
        read_isic_ground_truth(path)


# ---- the super-resolution bundles check their datalist too ------------------------------------------------------


def test_ct_sr_training_lists_every_bad_scan_before_it_starts(tmp_path, luna16_tiny):
    import shutil

    from monai.bundle import ConfigWorkflow

    from tests.conftest import REPO

    data = tmp_path / "LUNA16"
    shutil.copytree(luna16_tiny[0], data)
    scans = sorted(data.glob("subset*/*.mhd"))
    bad = scans[:2]
    raw = bad[0].with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])  # truncated data file
    header = bad[1].read_text().splitlines()
    header = [("ElementSpacing = 0 " + " ".join(line.split()[3:])) if line.startswith("ElementSpacing") else line
              for line in header]  # x voxel size 0
    bad[1].write_text("\n".join(header) + "\n")
    bundle = REPO / "bundles" / "ct_se_esrgan_superresolution"
    workflow = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), workflow_type="train",
                              meta_file=str(bundle / "configs" / "metadata.json"), bundle_root=str(tmp_path / "b"),
                              dataset_dir=str(data), num_workers=0)
    workflow.initialize()
    with pytest.raises((ValueError, RuntimeError)) as info:  # MONAI wraps the component's ValueError
        workflow.parser.get_parsed_content("datalist")
    cause = info.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    message = str(cause)
    assert message.startswith("preflight: 2 problem(s) in 2 of 4 datalist item(s)")
    assert f"{bad[0]}: its data file {raw.name} is truncated" in message
    assert f"{bad[1]}: voxel size (ElementSpacing)" in message
