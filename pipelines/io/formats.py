"""The file suffixes of every image format the project reads or writes, and the predicates on them: one table.

======================  ===========================================  ===============================================
table                   suffixes                                     read or written by
======================  ===========================================  ===============================================
``NIFTI_SUFFIXES``      ``.nii.gz`` ``.nii``                         NIfTI-1/2 (nibabel, SimpleITK); BraTS cases
``METAIMAGE_SUFFIXES``  ``.mhd`` ``.mha``                            MetaImage (SimpleITK); LUNA16 scans
``NRRD_SUFFIXES``       ``.nrrd`` ``.nhdr``                          NRRD (SimpleITK)
``VOLUME_SUFFIXES``     the three above                              ``pipelines infer`` inputs, volume names
``DICOM_SUFFIX``        ``.dcm``                                     DICOM slices and Segmentations
``READER_SUFFIXES``     volumes and ``.dcm``                         :class:`~pipelines.io.readers.SimpleITKReader`
``PHOTO_SUFFIXES``      ``.jpg`` ``.jpeg`` ``.png``                  ISIC photographs, super-resolution images
``IMAGE_2D_SUFFIXES``   photographs and ``.bmp`` ``.tif`` ``.tiff``  image-folder classification data
``IMAGE_SUFFIXES``      every suffix above                           the stem of an output's name
``OUTPUT_FORMATS``      ``--format`` -> ``.dcm``, ``.nii.gz``, ...   ``pipelines infer --format``
======================  ===========================================  ===============================================

Every predicate compares without regard to case and looks at the name only, except :func:`is_dicom_file`, which
reads the ``DICM`` marker of a file without a known suffix. This module imports nothing heavy, so the CLI's argument
parser can take its choices from it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "NIFTI_SUFFIXES",
    "METAIMAGE_SUFFIXES",
    "NRRD_SUFFIXES",
    "VOLUME_SUFFIXES",
    "DICOM_SUFFIX",
    "READER_SUFFIXES",
    "PHOTO_SUFFIXES",
    "IMAGE_2D_SUFFIXES",
    "IMAGE_SUFFIXES",
    "OUTPUT_FORMATS",
    "suffix_of",
    "has_suffix",
    "strip_suffix",
    "is_nifti",
    "is_metaimage",
    "is_nrrd",
    "is_volume_name",
    "is_photo",
    "is_2d_image",
    "is_dicom_file",
]

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
METAIMAGE_SUFFIXES: tuple[str, ...] = (".mhd", ".mha")
NRRD_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr")
VOLUME_SUFFIXES: tuple[str, ...] = NIFTI_SUFFIXES + METAIMAGE_SUFFIXES + NRRD_SUFFIXES
DICOM_SUFFIX = ".dcm"
READER_SUFFIXES: tuple[str, ...] = VOLUME_SUFFIXES + (DICOM_SUFFIX,)
PHOTO_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
IMAGE_2D_SUFFIXES: tuple[str, ...] = PHOTO_SUFFIXES + (".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES: tuple[str, ...] = READER_SUFFIXES + IMAGE_2D_SUFFIXES

#: ``pipelines infer --format`` -> the prediction file's suffix
OUTPUT_FORMATS: dict[str, str] = {"dicom-seg": DICOM_SUFFIX, "nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha"}

#: the DICOM preamble is 128 bytes, then the four-byte marker
_DICOM_MARKER_OFFSET = 128


def _name(path: str | os.PathLike) -> str:
    return Path(path).name.lower()


def suffix_of(path: str | os.PathLike, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> str:
    """The entry of ``suffixes`` that ``path``'s name ends with, in lower case (the longest when several do,
    ``.nii.gz`` before a ``.gz``); ``""`` when none does."""
    name = _name(path)
    return next((s for s in sorted(suffixes, key=len, reverse=True) if name.endswith(s)), "")


def has_suffix(path: str | os.PathLike, suffixes: Iterable[str]) -> bool:
    """Whether ``path``'s name ends with one of ``suffixes``."""
    return bool(suffix_of(path, suffixes))


def strip_suffix(name: str | os.PathLike, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> str:
    """The file name of ``name`` without the entry of ``suffixes`` it ends with (``a/b.nii.gz`` -> ``b``), in the
    name's own case; the whole name when it ends with none (``dicom_folder`` -> ``dicom_folder``)."""
    text = Path(name).name
    return text[: len(text) - len(suffix_of(text, suffixes))]


def is_nifti(path: str | os.PathLike) -> bool:
    return has_suffix(path, NIFTI_SUFFIXES)


def is_metaimage(path: str | os.PathLike) -> bool:
    return has_suffix(path, METAIMAGE_SUFFIXES)


def is_nrrd(path: str | os.PathLike) -> bool:
    return has_suffix(path, NRRD_SUFFIXES)


def is_volume_name(path: str | os.PathLike) -> bool:
    """Whether the name is that of a NIfTI, MetaImage or NRRD volume (the file system is not asked)."""
    return has_suffix(path, VOLUME_SUFFIXES)


def is_photo(path: str | os.PathLike) -> bool:
    """A JPEG or PNG name."""
    return has_suffix(path, PHOTO_SUFFIXES)


def is_2d_image(path: str | os.PathLike) -> bool:
    """A JPEG, PNG, BMP or TIFF name."""
    return has_suffix(path, IMAGE_2D_SUFFIXES)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file: named ``*.dcm``, or (any other name but a known image format's: scanners
    write ``IM0001``, ``*.IMA`` or SOP-instance-UID names) a file with the ``DICM`` marker after the 128-byte
    preamble. An unreadable file is not one."""
    if has_suffix(path, (DICOM_SUFFIX,)):
        return True
    if has_suffix(path, IMAGE_SUFFIXES):
        return False
    try:
        with open(path, "rb") as f:
            f.seek(_DICOM_MARKER_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False
