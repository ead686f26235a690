"""The suffix table and its predicates (:mod:`pipelines.io.formats`), and the grid geometry
(:mod:`pipelines.io.geometry`) against hand-worked affines and SimpleITK's own point mapping."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.data.volumes import is_dicom_folder, volume_name
from pipelines.io import formats
from pipelines.io.formats import (
    IMAGE_SUFFIXES,
    OUTPUT_FORMATS,
    VOLUME_SUFFIXES,
    has_suffix,
    is_2d_image,
    is_dicom_file,
    is_metaimage,
    is_nifti,
    is_nrrd,
    is_photo,
    is_volume_name,
    strip_suffix,
    suffix_of,
)
from pipelines.io.geometry import (
    affine_of,
    geometry,
    grid_differences,
    grid_of_affine,
    index_to_world,
    voxel_to_world,
    world_to_index,
)

# ------------------------------------------------------------------------------------------------------ suffixes


def test_the_tables_hold_every_format_once():
    assert set(VOLUME_SUFFIXES) == {".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr"}
    assert set(formats.READER_SUFFIXES) == set(VOLUME_SUFFIXES) | {".dcm"}
    assert set(formats.PHOTO_SUFFIXES) == {".jpg", ".jpeg", ".png"}
    assert set(formats.IMAGE_2D_SUFFIXES) == {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
    assert len(IMAGE_SUFFIXES) == len(set(IMAGE_SUFFIXES)) == 13
    assert OUTPUT_FORMATS == {"dicom-seg": ".dcm", "nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha"}


@pytest.mark.parametrize("name, suffix", [
    ("a/B.NII.GZ", ".nii.gz"), ("x.nii", ".nii"), ("scan.mhd", ".mhd"), ("s.MHA", ".mha"), ("v.nhdr", ".nhdr"),
    ("slice.dcm", ".dcm"), ("photo.JPEG", ".jpeg"), ("t.tiff", ".tiff"),
    ("x.gz", ""), ("notes.txt", ""), ("dicom_folder", ""), ("x.nii.gz.bak", ""),
])
def test_suffix_of_matches_the_longest_entry_in_any_case(name, suffix):
    assert suffix_of(name) == suffix
    assert has_suffix(name, IMAGE_SUFFIXES) is bool(suffix)


@pytest.mark.parametrize("name, nifti, meta, nrrd, volume, photo, image_2d", [
    ("a.nii.gz", True, False, False, True, False, False),
    ("a.NII", True, False, False, True, False, False),
    ("a.mhd", False, True, False, True, False, False),
    ("a.mha", False, True, False, True, False, False),
    ("a.nrrd", False, False, True, True, False, False),
    ("a.dcm", False, False, False, False, False, False),
    ("a.jpg", False, False, False, False, True, True),
    ("a.PNG", False, False, False, False, True, True),
    ("a.bmp", False, False, False, False, False, True),
    ("a.tif", False, False, False, False, False, True),
    ("a.nii.gz.tmp", False, False, False, False, False, False),
])
def test_predicates(name, nifti, meta, nrrd, volume, photo, image_2d):
    assert (is_nifti(name), is_metaimage(name), is_nrrd(name), is_volume_name(name), is_photo(name),
            is_2d_image(name)) == (nifti, meta, nrrd, volume, photo, image_2d)


def test_strip_suffix_keeps_the_names_own_case():
    assert strip_suffix("a/Case_01.Nii.Gz") == "Case_01"
    assert strip_suffix("ISIC_0001.jpg") == "ISIC_0001"
    assert strip_suffix("dicom_folder") == "dicom_folder"
    assert strip_suffix("ISIC_0001.jpg", VOLUME_SUFFIXES) == "ISIC_0001.jpg"  # only the given table
    assert volume_name("site/scan.mhd") == "scan" and volume_name("site/img.png") == "img.png"


def _with_marker(path, marker=b"DICM"):
    path.write_bytes(b"\0" * 128 + marker + b"\0" * 16)
    return path


def test_dicom_files_are_found_by_suffix_or_by_their_marker(tmp_path):
    (tmp_path / "empty.DCM").write_bytes(b"")
    assert is_dicom_file(tmp_path / "empty.DCM")  # the suffix is enough
    assert is_dicom_file(_with_marker(tmp_path / "IM0001"))
    assert is_dicom_file(_with_marker(tmp_path / "1.2.840.113619.2.55.3.604"))  # a UID name: suffix ".604"
    assert is_dicom_file(_with_marker(tmp_path / "slice.IMA"))
    assert not is_dicom_file(_with_marker(tmp_path / "x.png"))  # a known image format is never read
    assert not is_dicom_file(_with_marker(tmp_path / "other", b"DICX"))
    (tmp_path / "short").write_bytes(b"\0" * 64)
    assert not is_dicom_file(tmp_path / "short")
    assert not is_dicom_file(tmp_path)  # a folder
    assert not is_dicom_file(tmp_path / "absent")  # unreadable


def test_a_folder_of_uid_named_slices_is_a_dicom_folder(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    _with_marker(series / "1.3.12.2.1107.5.1.4.1")
    assert is_dicom_folder(series)
    other = tmp_path / "volumes"
    other.mkdir()
    _with_marker(other / "scan.nii")  # a NIfTI is not opened for a marker
    (other / "README").write_text("x" * 200)
    assert not is_dicom_folder(other) and not is_dicom_folder(other / "README")


def test_the_cli_takes_its_format_choices_from_the_table_and_imports_nothing_heavy():
    code = ("import sys, pipelines.io.formats; print(sorted(m for m in ('SimpleITK', 'monai', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
    from pipelines.__main__ import build_parser

    infer = build_parser()._subparsers._group_actions[0].choices["infer"]
    assert next(a.choices for a in infer._actions if a.dest == "format") == list(OUTPUT_FORMATS)


# ------------------------------------------------------------------------------------------------------ geometry


def _image(spacing=(0.5, 2.0, 3.0), origin=(10.0, -20.0, 30.0), direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)):
    image = sitk.Image(4, 5, 6, sitk.sitkInt16)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection([float(d) for d in direction])
    return image


def test_voxel_to_world_on_a_hand_case():
    affine = voxel_to_world((0.5, 2.0, 3.0), (10.0, -20.0, 30.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    np.testing.assert_array_equal(affine, [[-0.5, 0, 0, 10], [0, 2, 0, -20], [0, 0, 3, 30], [0, 0, 0, 1]])
    # RAS, as MONAI and nibabel report it: the first two rows negated
    np.testing.assert_array_equal(affine_of(_image()), [[0.5, 0, 0, -10], [0, -2, 0, 20], [0, 0, 3, 30],
                                                        [0, 0, 0, 1]])
    np.testing.assert_array_equal(affine_of(_image(), lps_to_ras=False), affine)


def test_points_map_as_simpleitk_maps_them():
    theta = np.deg2rad(30)
    rotation = [np.cos(theta), -np.sin(theta), 0, np.sin(theta), np.cos(theta), 0, 0, 0, 1]
    image = _image(direction=rotation)
    affine = affine_of(image, lps_to_ras=False)
    index = np.array([[0, 0, 0], [1.5, 2.0, 3.25], [3, 4, 5]])
    expected = np.array([image.TransformContinuousIndexToPhysicalPoint(list(i)) for i in index])
    np.testing.assert_allclose(index_to_world(affine, index), expected, atol=1e-12)
    np.testing.assert_allclose(index_to_world(affine, index[1]), expected[1], atol=1e-12)  # one point
    np.testing.assert_allclose(world_to_index(affine, expected), index, atol=1e-12)
    spacing, direction, origin = grid_of_affine(affine)
    np.testing.assert_allclose(spacing, [0.5, 2.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(direction.ravel(), rotation, atol=1e-12)
    np.testing.assert_allclose(origin, [10.0, -20.0, 30.0], atol=1e-12)


def test_geometry_and_grid_differences():
    grid = geometry(_image())
    assert grid["size"] == (4, 5, 6)
    np.testing.assert_array_equal(grid["spacing"], [0.5, 2.0, 3.0])
    assert grid_differences(grid, geometry(_image())) == []
    assert grid_differences(grid, geometry(_image(origin=(10.0005, -20.0, 30.0)))) == []  # within 1e-3 mm
    moved = geometry(_image(spacing=(0.5, 2.0, 2.5), origin=(11.0, -20.0, 30.0), direction=(1, 0, 0, 0, 1, 0,
                                                                                            0, 0, 1)))
    assert grid_differences(grid, moved) == ["spacing [0.5, 2.0, 2.5] != [0.5, 2.0, 3.0]",
                                             "origin [11.0, -20.0, 30.0] != [10.0, -20.0, 30.0]", "direction differs"]
    flat = geometry(sitk.Image(4, 5, sitk.sitkInt16))
    assert grid_differences(grid, flat) == ["2D != 3D"]
    bigger = dict(grid, size=(4, 5, 7))
    assert grid_differences(grid, bigger) == ["size [4, 5, 7] != [4, 5, 6]"]
