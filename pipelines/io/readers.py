"""A MONAI ``ImageReader`` on SimpleITK: MetaImage, NIfTI, NRRD and DICOM series with one geometry convention.

MONAI reads MetaImage (``.mhd``/``.mha``) and NRRD only through ``ITKReader``, which needs the ``itk`` package;
without it a ``.mhd`` file falls through to another reader and fails. SimpleITK is smaller, already a dependency, and
exposes the same image model (origin, spacing, direction in LPS), so this reader mirrors ``ITKReader``: data in
(x, y, z) index order, ``affine`` converted from LPS to RAS so that it agrees with ``NibabelReader``.
Upstream MONAI has no SimpleITK reader.

NIfTI-2 files (``sizeof_hdr`` 540: large images, some FSL/Connectome tools) are read by MONAI's ``NibabelReader``
inside this reader, since SimpleITK 2.5 cannot read them; the array and ``affine`` are the same as for the NIfTI-1
copy of the image, and the metadata has the same keys.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import SimpleITK as sitk
from monai.config import PathLike
from monai.data import ImageReader, NibabelReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.data.utils import orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from pipelines.io.checks import ImageInformation, dicom_series, first_line, is_nifti2, read_image_information
from pipelines.io.formats import READER_SUFFIXES, has_suffix, is_nifti
from pipelines.io.geometry import affine_of

__all__ = ["SimpleITKReader", "read_image_information", "read_voxels", "count_nonfinite", "is_floating",
           "SELECTED_SERIES"]

#: SimpleITK pixel types that can hold NaN / Inf
_FLOAT_TYPES = {sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64}


#: the DICOM series :class:`SimpleITKReader` reads from a folder that holds several, when it was built without one:
#: ``pipelines infer`` sets it for each input it expanded from such a folder (MONAI's ``LoadImage`` passes no
#: per-item reader arguments, so the choice travels beside the item; a context variable keeps it per thread)
SELECTED_SERIES: contextvars.ContextVar[str] = contextvars.ContextVar("selected_dicom_series", default="")


def read_voxels(path: str | os.PathLike) -> np.ndarray:
    """The voxels of ``path``: nibabel for NIfTI (ITK's NIfTI reader turns NaN into 0, hiding them; MONAI's loader,
    nibabel, would not), SimpleITK otherwise."""
    if is_nifti(path):
        import nibabel as nib

        return np.asanyarray(cast("nib.Nifti1Image", nib.load(str(path))).dataobj)  # NIfTI-1 or -2
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def is_floating(info: ImageInformation) -> bool:
    """Whether the header ``info`` (:func:`read_image_information`) declares floating-point voxels, the only kind
    that can hold NaN or Inf."""
    return info.GetPixelID() in _FLOAT_TYPES


def count_nonfinite(voxels: np.ndarray) -> tuple[int, int]:
    """``(NaN count, Inf count)`` of ``voxels`` (:func:`read_voxels`; read them only where :func:`is_floating`)."""
    if np.isfinite(voxels).all():
        return 0, 0
    return int(np.isnan(voxels).sum()), int(np.isinf(voxels).sum())


class SimpleITKReader(ImageReader):
    """Load MetaImage, NIfTI, NRRD files and DICOM series folders with SimpleITK, the way ``ITKReader`` does.

    The array is returned in (x, y, z) index order (channel last for vector images); the metadata holds
    ``affine``/``original_affine`` (RAS unless ``affine_lps_to_ras=False``), ``spacing`` and ``spatial_shape``.
    A directory is read as a DICOM series (the first series, or ``series_uid``). A NIfTI-2 file is read by MONAI's
    ``NibabelReader`` (SimpleITK cannot) into the same array order and metadata keys.

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
        self._nibabel = NibabelReader(channel_dim=channel_dim, squeeze_non_spatial_dims=True)

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        for name in ensure_tuple(filename):
            name = str(name)
            if not (Path(name).is_dir() or has_suffix(name, READER_SUFFIXES)):
                return False
        return True

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> list[sitk.Image] | sitk.Image:
        images = []
        names = ensure_tuple(data)
        for name in names:
            path = Path(name)
            try:
                if path.is_dir():
                    series = dicom_series(path, self.series_uid or SELECTED_SERIES.get())
                    if len(series) > 1:
                        raise ValueError(
                            f"{path}: holds {len(series)} DICOM series ({', '.join(s.uid for s in series)}); choose "
                            "one (pipelines infer --series UID), or give the folder to pipelines infer, which writes "
                            "one output per series")
                    reader = sitk.ImageSeriesReader()
                    reader.SetFileNames(list(series[0].files))
                    images.append(reader.Execute())
                else:
                    read_image_information(path)
                    if is_nifti2(path):
                        images.append(self._nibabel.read(str(path)))
                    else:
                        images.append(sitk.ReadImage(str(path)))
            except RuntimeError as e:
                raise ValueError(f"{path}: cannot read the image ({first_line(e)})") from None
        return images if len(names) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        arrays: list[np.ndarray] = []
        compatible_meta: dict = {}
        for image in img if isinstance(img, (list, tuple)) else [img]:  # a sitk.Image is itself iterable
            if not isinstance(image, sitk.Image):  # a NIfTI-2 file, read by nibabel
                data, header = self._nibabel_data(image)
                arrays.append(data)
                _copy_compatible_dict(header, compatible_meta)
                continue
            data = sitk.GetArrayFromImage(image)  # (z, y, x[, c])
            data = data.T if image.GetNumberOfComponentsPerPixel() == 1 else np.moveaxis(data.T, 0, -1)
            if self.dtype is not None:
                data = data.astype(self.dtype, copy=False)
            arrays.append(data)
            header = {key: image.GetMetaData(key) for key in image.GetMetaDataKeys() if not key.startswith("ITK_")}
            header["spacing"] = np.asarray(image.GetSpacing())
            header[MetaKeys.ORIGINAL_AFFINE] = affine_of(image, self.affine_lps_to_ras)
            header[MetaKeys.SPACE] = SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS
            header[MetaKeys.AFFINE] = header[MetaKeys.ORIGINAL_AFFINE].copy()
            header[MetaKeys.SPATIAL_SHAPE] = np.asarray(image.GetSize())
            if self.channel_dim is None:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if data.ndim == image.GetDimension() else -1
            else:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = self.channel_dim
            _copy_compatible_dict(header, compatible_meta)
        return _stack_images(arrays, compatible_meta), compatible_meta

    def _nibabel_data(self, image) -> tuple[np.ndarray, dict]:
        """Array and metadata of a nibabel image through ``NibabelReader.get_data``, with this reader's keys."""
        self._nibabel.filenames = (image.get_filename(),)
        data, meta = self._nibabel.get_data(image)
        if self.dtype is not None:
            data = data.astype(self.dtype, copy=False)
        spatial = int(len(meta[MetaKeys.SPATIAL_SHAPE]))
        affine = np.asarray(meta[MetaKeys.ORIGINAL_AFFINE], dtype=np.float64)
        header = {key: value for key, value in meta.items() if key != "as_closest_canonical"}
        header["spacing"] = np.asarray(image.header.get_zooms()[:spatial], dtype=np.float64)
        header[MetaKeys.ORIGINAL_AFFINE] = affine if self.affine_lps_to_ras else orientation_ras_lps(affine)
        header[MetaKeys.SPACE] = SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS
        header[MetaKeys.AFFINE] = header[MetaKeys.ORIGINAL_AFFINE].copy()
        return data, header
