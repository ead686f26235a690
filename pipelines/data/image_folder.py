"""Class-per-folder image data sets (Kvasir, COVID19-CT, MedNIST-like): the folder name is the class.

Expected layout::

    kvasir-dataset/                      COVID19-CT/
    ├── dyed-lifted-polyps/              ├── CT_COVID/
    │   ├── 0a1b....jpg                  │   ├── 2020.01.24.919183-p27-132.png
    │   └── ...                          │   └── ...   (349 images)
    ├── dyed-resection-margins/          └── CT_NonCOVID/
    ├── esophagitis/                         ├── 0.jpg
    ├── normal-cecum/                        └── ...   (397 images)
    ├── normal-pylorus/
    ├── normal-z-line/
    ├── polyps/
    └── ulcerative-colitis/               (Kvasir v1: 8 classes x 500 JPEGs)

Classes are the sub-folders that hold at least one image, in sorted order (label i is ``classes[i]``), unless the
caller names them. Files whose extension is not an image's (``.txt``, ``.DS_Store``, ...) are ignored; hidden files and
folders are ignored. Sub-folders inside a class folder are searched too (some downloads nest one level deeper).

Errors (``ValueError`` naming the folder or file): a missing root, no class folder with images, a named class without
a folder, an unreadable image (with ``verify=True``), a class with no image in a split (with ``strict=True``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from pipelines.data.classification import SPLITS, class_counts, relative, stratified_split, verify_image
from pipelines.io.formats import IMAGE_2D_SUFFIXES, is_2d_image

__all__ = ["find_class_folders", "list_images", "image_folder_datalist", "image_list"]

logger = logging.getLogger(__name__)


def list_images(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (sorted, hidden files and folders skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: image folder not found")
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in folder.glob(pattern)
        if p.is_file() and is_2d_image(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def find_class_folders(root: str | os.PathLike) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that hold at least one image."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: image-folder data set not found")
    classes = [d.name for d in sorted(root.iterdir())
               if d.is_dir() and not d.name.startswith(".") and list_images(d)]
    if not classes:
        raise ValueError(f"{root}: no class folder with images (expected {root}/<class>/<image>.jpg|png)")
    return classes


def image_folder_datalist(
    root: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    fractions: tuple[float, float, float] = (0.6, 0.15, 0.25),
    seed: int = 123,
    verify: bool = True,
    strict: bool = True,
) -> dict:
    """Validate a class-per-folder data set and return ``{"classes", "training", "validation", "test"}``.

    Each item is ``{"image": absolute path, "label": index in classes, "id": "<class>/<file>"}``.

    Args:
        root: the folder of class folders.
        classes: class names in label order (default: the sorted folder names). Naming them fixes the label order
            across data set versions, and a named class without a folder is an error.
        fractions: training, validation, test fractions (COVID19-CT's 0.6 / 0.15 / 0.25 by default; Kvasir's
            2-fold protocol is ``(0.5, 0.0, 0.5)`` and again with another seed).
        seed: seed of the stratified split (123, as the reference code).
        verify: check every image with PIL's ``verify()`` first.
        strict: raise (default) rather than warn when a class has no image in a split.
    """
    root = Path(root)
    found = find_class_folders(root)
    if classes is None:
        classes = found
    else:
        classes = list(classes)
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            raise ValueError(f"{root}: no folder for class(es) {', '.join(missing)} (found {', '.join(found)})")
        ignored = sorted(set(found) - set(classes))
        if ignored:
            logger.info("%s: folders %s are not among the named classes and are skipped", root, ", ".join(ignored))
    items = []
    for label, name in enumerate(classes):
        for path in list_images(root / name):
            if verify:
                verify_image(path)
            items.append({"image": str(path.resolve()), "label": label, "id": relative(path, root)})
    splits = stratified_split(items, classes, fractions=fractions, seed=seed, strict=strict)
    logger.info("%s: %s", root, ", ".join(
        f"{s} {len(splits[s])} ({dict(zip(classes, class_counts(splits[s], len(classes))))})" for s in SPLITS))
    return {"classes": list(classes), **splits}


def image_list(folder: str | os.PathLike) -> list[dict]:
    """Inference datalist: ``[{"image": path, "id": path relative to folder}]`` for every image under ``folder``.

    ``folder`` may also be a single image file. Raises ``ValueError`` when there is no image.
    """
    folder = Path(folder)
    if folder.is_file():
        return [{"image": str(folder.resolve()), "id": folder.name}]
    files = list_images(folder)
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_2D_SUFFIXES)}) found")
    return [{"image": str(p.resolve()), "id": relative(p, folder)} for p in files]

