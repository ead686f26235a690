"""A MONAI ``ImageReader`` on SimpleITK: MetaImage, NIfTI, NRRD and DICOM series with one geometry convention.

MONAI reads MetaImage (``.mhd``/``.mha``) and NRRD only through ``ITKReader``, which needs the ``itk`` package;
without it a ``.mhd`` file falls through to another reader and fails. SimpleITK is smaller, already a dependency, and
exposes the same image model (origin, spacing, direction in LPS), so this reader mirrors ``ITKReader``: data in
(x, y, z) index order, ``affine`` converted from LPS to RAS so that it agrees with ``NibabelReader``.
Upstream MONAI has no SimpleITK reader.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from monai.data import ImageReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.data.utils import orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = ["SimpleITKReader", "read_image_information", "SUFFIXES"]

SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".nrrd", ".nhdr", ".dcm")


def _first_line(error: Exception) -> str:
    lines = [ln.strip().removeprefix("sitk::ERROR:").strip() for ln in str(error).splitlines() if ln.strip()]
    # SimpleITK errors start with the C++ source location; the useful sentence is usually last
    useful = [ln for ln in lines if ln and not ln.startswith(("/", "Exception thrown"))] or lines
    return useful[-1] if useful else type(error).__name__


def _dicom_series_files(folder: Path, series_uid: str = "") -> list[str]:
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not uids:
        raise ValueError(f"{folder}: no DICOM series found in this folder")
    uid = series_uid or uids[0]
    if uid not in uids:
        raise ValueError(f"{folder}: DICOM series {uid!r} not found; the folder holds {list(uids)}")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))


def _raw_size_problem(path: Path) -> str | None:
    """For a MetaImage header with a separate uncompressed data file, say if the data file is missing or short."""
    if path.suffix.lower() != ".mhd":
        return None
    fields = {}
    for line in path.read_text(errors="replace").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip()
    data_file = fields.get("ElementDataFile", "")
    if not data_file or data_file == "LOCAL" or data_file.startswith("LIST") or "%" in data_file:
        return None
    raw = path.parent / data_file
    if not raw.exists():
        return f"its data file {raw.name} is missing"
    if fields.get("CompressedData", "False").lower() == "true":
        return None
    sizes = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
             "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_ULONG": 8, "MET_LONG": 8}
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        components = int(fields.get("ElementNumberOfChannels", "1"))
        expected = int(np.prod(dims)) * components * sizes[fields["ElementType"]]
    except (KeyError, ValueError):
        return None
    actual = raw.stat().st_size
    if actual < expected:
        return f"its data file {raw.name} is truncated ({actual} bytes, the header needs {expected})"
    return None


def read_image_information(path: str | os.PathLike) -> sitk.ImageFileReader:
    """Read only the header of ``path`` (cheap) and check that a MetaImage's data file is complete.

    Returns the ``sitk.ImageFileReader`` with the information loaded (``GetSize()``, ``GetSpacing()``...).
    Raises ``ValueError`` naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ValueError(f"{path}: not a readable image ({_first_line(e)})") from None
    problem = _raw_size_problem(path)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return reader


class SimpleITKReader(ImageReader):
    """Load MetaImage, NIfTI, NRRD files and DICOM series folders with SimpleITK, the way ``ITKReader`` does.

    The array is returned in (x, y, z) index order (channel last for vector images); the metadata holds
    ``affine``/``original_affine`` (RAS unless ``affine_lps_to_ras=False``), ``spacing`` and ``spatial_shape``.
    A directory is read as a DICOM series (the first series, or ``series_uid``).

    Args:
        channel_dim: channel dimension of the data, ``None`` for scalar images or channel-last vector images.
        series_uid: which DICOM series to read when a folder holds several.
        affine_lps_to_ras: convert the affine from ITK's LPS convention to RAS, as ``NibabelReader`` reports.
        dtype: cast the data to this numpy dtype (``None`` keeps the file's type).
    """

    def __init__(
        self,
        channel_dim: str | int | None = None,
        series_uid: str = "",
        affine_lps_to_ras: bool = True,
        dtype: np.dtype | str | None = None,
    ) -> None:
        super().__init__()
        self.channel_dim = float("nan") if channel_dim == "no_channel" else channel_dim
        self.series_uid = series_uid
        self.affine_lps_to_ras = affine_lps_to_ras
        self.dtype = dtype

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        for name in ensure_tuple(filename):
            name = str(name)
            if not (Path(name).is_dir() or name.lower().endswith(SUFFIXES)):
                return False
        return True

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs) -> list[sitk.Image] | sitk.Image:
        images = []
        names = ensure_tuple(data)
        for name in names:
            path = Path(name)
            try:
                if path.is_dir():
                    reader = sitk.ImageSeriesReader()
                    reader.SetFileNames(_dicom_series_files(path, self.series_uid))
                    images.append(reader.Execute())
                else:
                    read_image_information(path)
                    images.append(sitk.ReadImage(str(path)))
            except RuntimeError as e:
                raise ValueError(f"{path}: cannot read the image ({_first_line(e)})") from None
        return images if len(names) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        arrays: list[np.ndarray] = []
        compatible_meta: dict = {}
        for image in img if isinstance(img, (list, tuple)) else [img]:  # a sitk.Image is itself iterable
            data = sitk.GetArrayFromImage(image)  # (z, y, x[, c])
            data = data.T if image.GetNumberOfComponentsPerPixel() == 1 else np.moveaxis(data.T, 0, -1)
            if self.dtype is not None:
                data = data.astype(self.dtype, copy=False)
            arrays.append(data)
            header = {key: image.GetMetaData(key) for key in image.GetMetaDataKeys() if not key.startswith("ITK_")}
            header["spacing"] = np.asarray(image.GetSpacing())
            header[MetaKeys.ORIGINAL_AFFINE] = self.affine_of(image, self.affine_lps_to_ras)
            header[MetaKeys.SPACE] = SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS
            header[MetaKeys.AFFINE] = header[MetaKeys.ORIGINAL_AFFINE].copy()
            header[MetaKeys.SPATIAL_SHAPE] = np.asarray(image.GetSize())
            if self.channel_dim is None:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if data.ndim == image.GetDimension() else -1
            else:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = self.channel_dim
            _copy_compatible_dict(header, compatible_meta)
        return _stack_images(arrays, compatible_meta), compatible_meta

    @staticmethod
    def affine_of(image: sitk.Image, lps_to_ras: bool = True) -> np.ndarray:
        """The voxel-to-world affine of a SimpleITK image: ``direction @ diag(spacing)`` and the origin."""
        dims = image.GetDimension()
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dims, dims)
        affine = np.eye(dims + 1)
        affine[:dims, :dims] = direction @ np.diag(image.GetSpacing())
        affine[:dims, -1] = image.GetOrigin()
        return orientation_ras_lps(affine) if lps_to_ras else affine
