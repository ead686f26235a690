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

__all__ = ["VOLUME_SUFFIXES", "is_volume_file", "is_dicom_folder", "dicom_items", "list_volumes", "volume_name"]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr")
_SKIP_DIRS = {"seg-lungs-LUNA16"}


def is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(VOLUME_SUFFIXES) and "_seg." not in name


def is_dicom_folder(path: Path) -> bool:
    """A folder holding DICOM files (``*.dcm``, or extension-less files with the ``DICM`` marker at byte 128)."""
    if not path.is_dir():
        return False
    for child in path.iterdir():
        if child.is_file():
            if child.suffix.lower() == ".dcm":
                return True
            if child.suffix == "":
                with child.open("rb") as f:
                    f.seek(128)
                    if f.read(4) == b"DICM":
                        return True
    return False


def volume_name(path: str | os.PathLike) -> str:
    """The name of a volume without its image extension: ``a/b.nii.gz`` -> ``b``, ``a/dicom_folder`` -> ``dicom_folder``."""
    path = Path(path)
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def dicom_items(folder: Path) -> list[dict]:
    """One item per DICOM series of ``folder``: ``{"image": folder}`` for one series, with ``series_uid`` for several."""
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
        if not root.name.lower().endswith(VOLUME_SUFFIXES):
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
