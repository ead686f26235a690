"""Volumes to run inference on: single files, folders of files, DICOM series folders, or a LUNA16 tree.

Accepted inputs::

    scan.nii.gz | scan.nii | scan.mhd | scan.mha | scan.nrrd   one volume
    dicom_series/                                          a folder of DICOM slices: one volume per series
                                                           (``{"image": folder, "series_uid": UID}`` when it
                                                           holds several)
    folder/                                                every volume below it (recursively); DICOM folders
                                                           count as one volume each; LUNA16 ``seg-lungs-LUNA16``
                                                           masks and files named ``*_seg.*`` are left out
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.io.formats import VOLUME_SUFFIXES, is_dicom_file, is_volume_name, strip_suffix

__all__ = ["is_volume_file", "is_dicom_folder", "dicom_items", "list_volumes", "volume_name"]

_SKIP_DIRS = {"seg-lungs-LUNA16"}


def is_volume_file(path: Path) -> bool:
    """A NIfTI, MetaImage or NRRD file that is not a segmentation (``*_seg.*``)."""
    return path.is_file() and is_volume_name(path) and "_seg." not in path.name.lower()


def is_dicom_folder(path: Path) -> bool:
    """A folder holding a DICOM file (:func:`pipelines.io.formats.is_dicom_file`)."""
    return path.is_dir() and any(child.is_file() and is_dicom_file(child) for child in path.iterdir())


def volume_name(path: str | os.PathLike) -> str:
    """The name of a volume without its image extension: ``a/b.nii.gz`` -> ``b``, ``a/dicom_folder`` ->
    ``dicom_folder``."""
    return strip_suffix(path, VOLUME_SUFFIXES)


def dicom_items(folder: Path) -> list[dict]:
    """One item per DICOM series of ``folder``: ``{"image": folder}`` for one series, with ``series_uid`` for
    several."""
    import SimpleITK as sitk

    uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if len(uids) <= 1:
        return [{"image": str(folder)}]
    return [{"image": str(folder), "series_uid": uid} for uid in sorted(uids)]


def list_volumes(root: str | os.PathLike) -> list[dict]:
    """Every volume at or below ``root`` as ``[{"image": path}, ...]``, sorted. Raises ``ValueError`` if none."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"{root}: no such file or folder")
    if root.is_file():
        if not is_volume_name(root):
            raise ValueError(f"{root}: not a volume file (expected one of {', '.join(VOLUME_SUFFIXES)})")
        return [{"image": str(root)}]
    if is_dicom_folder(root):
        return dicom_items(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        here = Path(dirpath)
        if here != root and is_dicom_folder(here):
            found.append(here)
            dirnames[:] = []
            continue
        found.extend(p for p in (here / f for f in filenames) if is_volume_file(p))
    if not found:
        raise ValueError(f"{root}: no volumes found (looked for {', '.join(VOLUME_SUFFIXES)} and DICOM series folders)")
    return [item for p in sorted(found) for item in (dicom_items(p) if p.is_dir() else [{"image": str(p)}])]
