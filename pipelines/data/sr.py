"""Super-resolution data sets: high-resolution images only; the low-resolution inputs are made by degradation.

Two layouts are supported:

- **2D images (ultrasound)**: every PNG/JPEG under a folder, at any depth. Real ultrasound sets nest images in class
  folders and ship segmentation masks beside them (BUSI: ``benign/benign (1).png`` with ``benign (1)_mask.png`` and
  ``benign (1)_mask_1.png``); masks are skipped, classes are ignored::

      Dataset_BUSI_with_GT/
      ├── benign/      benign (1).png, benign (1)_mask.png, ...
      ├── malignant/   malignant (1).png, malignant (1)_mask.png, ...
      └── normal/      normal (1).png, normal (1)_mask.png, ...

- **3D CT**: the LUNA16 layout (``subset*/<seriesuid>.mhd``, see :mod:`pipelines.data.luna16`); annotations are not
  needed.

Items are ``{"hr": path, ...}``; the split is a deterministic hash split (:func:`~pipelines.data.splits.split_by_hash`)
that stays stable when files are added.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pipelines.data.classification import relative
from pipelines.data.image_folder import list_images
from pipelines.data.luna16 import find_scans
from pipelines.data.splits import split_by_hash
from pipelines.io.formats import PHOTO_SUFFIXES, is_photo

__all__ = ["is_mask_file", "list_sr_images", "image_folder_sr_datalist", "sr_images",
           "ct_sr_datalist"]

_MASK = re.compile(r"_(mask|seg|segmentation)(_\d+)?$", re.IGNORECASE)


def is_mask_file(path: str | os.PathLike) -> bool:
    """A segmentation mask by its name: ``x_mask.png``, ``x_mask_1.png`` (BUSI), ``x_segmentation.png`` (ISIC)..."""
    return bool(_MASK.search(Path(path).stem))


def list_sr_images(folder: str | os.PathLike) -> list[Path]:
    """PNG/JPEG images under ``folder`` (recursively, sorted), masks and hidden files left out.

    Raises ``ValueError`` naming the folder when it is missing or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: image folder not found")
    files = [p for p in list_images(folder) if is_photo(p) and not is_mask_file(p)]
    if not files:
        raise ValueError(f"{folder}: no PNG/JPEG images found at any depth ({', '.join(PHOTO_SUFFIXES)}; "
                         "*_mask.png files are skipped)")
    return files


def image_folder_sr_datalist(root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> dict[str, list]:
    """``{"training": [{"hr": path, "name": id}, ...], "validation": [...]}`` for every image under ``root``.

    ``name`` is the path relative to ``root`` (``benign/benign (1).png``), which is also the split key.
    """
    root = Path(root)
    items = [{"hr": str(p.resolve()), "name": relative(p, root)} for p in list_sr_images(root)]
    training, validation = split_by_hash(items, key="name", val_fraction=val_fraction, seed=seed)
    return {"training": training, "validation": validation}


def sr_images(path: str | os.PathLike) -> list[dict]:
    """Inference inputs: one image file or every image under a folder, as ``[{"image": path, "name": stem}]``.

    Masks are left out. ``ValueError`` when ``path`` does not exist, is not a PNG/JPEG, or holds no image.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if path.is_file():
        if not is_photo(path):
            raise ValueError(f"{path}: not a PNG/JPEG image (expected one of {', '.join(PHOTO_SUFFIXES)})")
        files = [path]
    else:
        files = list_sr_images(path)
    return [{"image": str(p), "name": p.stem} for p in files]


def ct_sr_datalist(dataset_dir: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> dict[str, list]:
    """``{"training": [{"hr": scan.mhd, "seriesuid": uid}, ...], "validation": [...]}`` over a LUNA16 folder.

    Scans are found by :func:`~pipelines.data.luna16.find_scans` (``ValueError`` naming the folder when it is
    missing or holds no scan); the split is by a hash of the seriesuid.
    """
    scans = find_scans(dataset_dir)
    items = [{"hr": str(path), "seriesuid": uid} for uid, path in scans.items()]
    training, validation = split_by_hash(items, key="seriesuid", val_fraction=val_fraction, seed=seed)
    return {"training": training, "validation": validation}
