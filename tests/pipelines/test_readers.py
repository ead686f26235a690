"""SimpleITKReader / LoadVolumed: geometry equal to SimpleITK's and nibabel's, every format, clear errors."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pydicom.data
import pytest
import SimpleITK as sitk
from monai.transforms import LoadImage

from pipelines.io import SimpleITKReader
from pipelines.transforms import LoadVolumed

NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"
DICOM_SERIES = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _image(direction) -> sitk.Image:
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)  # (z, y, x)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-100.0, 20.0, -300.0))
    image.SetDirection(direction)
    return image


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (1, 0, 0, 0, 1, 0, 0, 0, -1),
                                       (-1, 0, 0, 0, -1, 0, 0, 0, 1), (0, 1, 0, 1, 0, 0, 0, 0, 1)])
@pytest.mark.parametrize("suffix", [".mhd", ".mha", ".nrrd", ".nii.gz"])
def test_affine_maps_voxels_to_the_same_world_points_as_simpleitk(tmp_path, direction, suffix):
    image = _image(direction)
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(path))
    loaded = LoadImage(reader=SimpleITKReader(), image_only=True)(str(path))
    assert tuple(loaded.shape) == image.GetSize()  # (x, y, z) index order like ITKReader
    affine = loaded.affine.numpy()
    for index in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
        assert np.allclose(affine @ [*index, 1], [*(LPS_TO_RAS @ lps), 1], atol=1e-4)
        assert float(loaded[index]) == sitk.GetArrayFromImage(image)[index[::-1]]


@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz"])
def test_real_nifti_agrees_with_nibabel(name):
    path = NIBABEL_DATA / name
    ours = LoadVolumed("image", ensure_channel_first=False)({"image": str(path)})["image"]
    theirs = nibabel.load(str(path))
    assert tuple(ours.shape) == theirs.shape
    assert np.allclose(ours.affine.numpy(), theirs.affine, atol=1e-3)
    assert np.allclose(ours.numpy(), np.asanyarray(theirs.dataobj), atol=1e-4)


def test_real_dicom_series_folder():
    data = LoadVolumed("image")({"image": str(DICOM_SERIES)})
    image = data["image"]
    assert image.shape == (1, 16, 16, 5)
    assert np.allclose(image.pixdim[:3].numpy(), (0.488281, 0.488281, 2.5), atol=1e-4)


def test_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    with pytest.raises(Exception) as info:
        LoadVolumed("image")({"image": str(broken)})
    cause = info.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert str(broken) in str(cause) and "not a readable image" in str(cause)
    with pytest.raises(ValueError, match="file not found"):
        SimpleITKReader().read(str(tmp_path / "missing.mhd"))
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(ValueError, match="no DICOM series found"):
        SimpleITKReader().read(str(empty))
