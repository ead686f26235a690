"""Loading volumes with one reader for every 3D format, so that geometry is read the same way everywhere."""

from __future__ import annotations

from monai.transforms import LoadImaged

from pipelines.io.readers import SimpleITKReader

__all__ = ["LoadVolumed", "first_path"]


class LoadVolumed(LoadImaged):
    """``LoadImaged`` that reads MetaImage, NIfTI, NRRD and DICOM series folders with :class:`SimpleITKReader`.

    Passing ``reader=SimpleITKReader()`` to ``LoadImaged`` makes MONAI try every registered reader in turn when one
    fails, which buries the real error (a truncated ``.raw``, say) under five unrelated tracebacks. Registering the
    reader for automatic selection instead makes it the first choice for its suffixes and lets its error through.
    Other files (PNG, JPEG, NumPy) still go to MONAI's default readers.
    """

    def __init__(self, keys, *args, image_only: bool = True, ensure_channel_first: bool = True, **kwargs) -> None:
        super().__init__(keys, None, *args, image_only=image_only, ensure_channel_first=ensure_channel_first, **kwargs)
        self.register(SimpleITKReader())


def first_path(value) -> str:
    """The first path of a data value: ``"a.nii"``, ``["a.nii", "b.nii"]`` or a collated ``[["a.nii"]]`` ->
    ``"a.nii"``."""
    while isinstance(value, (list, tuple)):
        value = value[0]
    return str(value)
