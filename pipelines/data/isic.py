"""ISIC 2018 skin lesion segmentation (Task 1): dermoscopic JPEG images and binary PNG masks.

Expected layout (https://challenge.isic-archive.com/data/#2018), as unpacked from the challenge's zip files::

    ISIC2018/
    ├── ISIC2018_Task1-2_Training_Input/
    │   ├── ISIC_0000000.jpg
    │   ├── ISIC_0000001.jpg
    │   └── ...                              (also ATTRIBUTION.txt, LICENSE.txt: ignored)
    └── ISIC2018_Task1_Training_GroundTruth/
        ├── ISIC_0000000_segmentation.png    8-bit, 0 background, 255 lesion, same size as the image
        └── ...

The ``Validation`` and ``Test`` splits use the same names with ``Validation``/``Test`` for ``Training``
(``split=...``). Images come in many sizes (542 x 718 to 4499 x 6748 pixels, mostly 3:4 landscape).

Errors (``ValueError`` naming the file): an image without its mask, a mask without its image, a mask whose size
differs from its image's, an unreadable image or mask, a folder without images.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from pipelines.data.splits import split_by_hash
from pipelines.io.formats import PHOTO_SUFFIXES, is_photo

__all__ = ["input_dir", "mask_dir", "mask_name", "image_size", "isic_seg_datalist", "isic_images"]

MASK_SUFFIX = "_segmentation.png"


def input_dir(root: str | os.PathLike, split: str = "Training") -> Path:
    return Path(root) / f"ISIC2018_Task1-2_{split}_Input"


def mask_dir(root: str | os.PathLike, split: str = "Training") -> Path:
    return Path(root) / f"ISIC2018_Task1_{split}_GroundTruth"


def mask_name(image_id: str) -> str:
    """``ISIC_0000000`` -> ``ISIC_0000000_segmentation.png``."""
    return f"{image_id}{MASK_SUFFIX}"


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image from its header; ``ValueError`` naming the file if it is not a readable image."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:  # verify() leaves the file unusable: reopen for the size and a full decode
            image.load()
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL's ways of saying 'broken'
        raise ValueError(f"{path}: not a readable image ({e})") from None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_photo(p)
                  and not p.name.startswith(".") and not p.name.endswith(MASK_SUFFIX))


def isic_seg_datalist(
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    split: str = "Training",
    check_images: bool = True,
    validate: bool = True,
) -> dict[str, list[dict]]:
    """Validate an ISIC 2018 Task 1 folder and return ``{"training": [...], "validation": [...]}``.

    Items are ``{"image": jpg path, "label": mask path, "name": "ISIC_<id>", "source": jpg path}``. The split is by a
    hash of the image id and ``seed``. ``check_images`` decodes every image and mask once and compares their sizes
    (a few ms per image); turn it off for speed once a data set is known good. ``validate=False`` opens no file and
    raises for no missing mask (an image without one is listed with the mask path it should have): the training
    bundle checks every item at once with :func:`pipelines.data.preflight.check_datalist` instead.
    """
    images_root, masks_root = input_dir(root, split), mask_dir(root, split)
    for folder in (images_root, masks_root):
        if not folder.is_dir():
            raise ValueError(f"{folder}: folder not found (expected the ISIC 2018 Task 1 layout under {root})")
    images = _images_in(images_root)
    if not images:
        raise ValueError(f"{images_root}: no images found (expected ISIC_<id>.jpg)")
    ids = {p.stem for p in images}
    orphans = sorted(p for p in masks_root.glob(f"*{MASK_SUFFIX}") if p.name[: -len(MASK_SUFFIX)] not in ids)
    if orphans and validate:
        raise ValueError(f"{orphans[0]}: mask without an image ({images_root / (orphans[0].name[:-len(MASK_SUFFIX)])}"
                         f".jpg not found; {len(orphans)} such mask(s))")
    items = []
    for path in images:
        mask = masks_root / mask_name(path.stem)
        if not mask.is_file() and validate:
            raise ValueError(f"{path}: image without a mask ({mask} not found)")
        if check_images and validate:
            size, mask_size = image_size(path), image_size(mask)
            if size != mask_size:
                raise ValueError(f"{mask}: mask is {mask_size[0]}x{mask_size[1]} pixels but its image {path.name} "
                                 f"is {size[0]}x{size[1]}")
        items.append({"image": str(path), "label": str(mask), "name": path.stem, "source": str(path)})
    training, validation = split_by_hash(items, key="name", val_fraction=val_fraction, seed=seed)
    return {"training": training, "validation": validation}


def isic_images(root: str | os.PathLike) -> list[dict]:
    """Images to segment: one image file, a folder of images, or an ISIC root (its ``*_Input`` folders).

    Returns ``[{"image": path, "name": stem, "source": path}, ...]`` sorted; masks (``*_segmentation.png``) are left
    out. ``ValueError`` if nothing is found.
    """
    root = Path(root)
    if not root.exists():
        raise ValueError(f"{root}: no such file or folder")
    if root.is_file():
        if not is_photo(root):
            raise ValueError(f"{root}: not an image file (expected one of {', '.join(PHOTO_SUFFIXES)})")
        files = [root]
    else:
        inputs = sorted(p for p in root.glob("ISIC2018_Task1-2_*_Input") if p.is_dir())
        files = [p for folder in inputs for p in _images_in(folder)] if inputs else _images_in(root)
    if not files:
        raise ValueError(f"{root}: no images found (looked for {', '.join(PHOTO_SUFFIXES)})")
    return [{"image": str(p), "name": p.stem, "source": str(p)} for p in files]
