"""ISIC 2018 Task 3 (HAM10000): dermoscopy JPEGs and a CSV of one-hot diagnoses over seven classes.

Expected layout (https://challenge.isic-archive.com/data/#2018, "Task 3 Training Data" and "Ground Truth")::

    ISIC2018/
    ├── ISIC2018_Task3_Training_Input/
    │   ├── ISIC_0024306.jpg          600 x 450 RGB
    │   ├── ISIC_0024307.jpg
    │   ├── ...                       10015 images
    │   ├── ATTRIBUTION.txt           (ignored, like any file that is not an image)
    │   └── LICENSE.txt
    └── ISIC2018_Task3_Training_GroundTruth/
        └── ISIC2018_Task3_Training_GroundTruth.csv
              image,MEL,NV,BCC,AKIEC,BKL,DF,VASC
              ISIC_0024306,0.0,1.0,0.0,0.0,0.0,0.0,0.0
              ...

Class balance of the 10015 images: NV 67 %, MEL 11 %, BKL 11 %, BCC 5 %, AKIEC 3 %, VASC 1.4 %, DF 1.1 %.

Policy:

- A missing folder or CSV, a CSV without the ``image`` column or one of the seven class columns, a row whose class
  values are not one-hot (exactly one 1, the rest 0), a duplicated image id, or a row that names an image not on disk
  is an **error** (``ValueError`` naming the CSV, its line and the image): each would silently change the labels.
- Images on disk that the CSV does not list are **skipped and logged** (one summary line).
- With ``verify=True`` (default) every listed image is checked with PIL's ``verify()`` (header and structure, no full
  decode: about 10 s for the 10015 images); an unreadable image is an error naming the file.
- The split is stratified per class with a fixed seed (:func:`pipelines.data.classification.stratified_split`),
  6 : 1 : 3 by default as in the reference code, which tests on 3001 images.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipelines.data.classification import SPLITS, class_counts, stratified_split, verify_image
from pipelines.io.formats import is_photo
from pipelines.io.tables import read_table

__all__ = [
    "ISIC_CLASSES",
    "ISIC_CLASS_DESCRIPTIONS",
    "INPUT_DIR",
    "GROUND_TRUTH_DIR",
    "GROUND_TRUTH_CSV",
    "read_isic_ground_truth",
    "isic2018_datalist",
]

logger = logging.getLogger(__name__)

ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ISIC_CLASS_DESCRIPTIONS = {
    "MEL": "melanoma",
    "NV": "melanocytic nevus",
    "BCC": "basal cell carcinoma",
    "AKIEC": "actinic keratosis / Bowen's disease (intraepithelial carcinoma)",
    "BKL": "benign keratosis (solar lentigo / seborrheic keratosis / lichen planus-like keratosis)",
    "DF": "dermatofibroma",
    "VASC": "vascular lesion",
}
INPUT_DIR = "ISIC2018_Task3_Training_Input"
GROUND_TRUTH_DIR = "ISIC2018_Task3_Training_GroundTruth"
GROUND_TRUTH_CSV = "ISIC2018_Task3_Training_GroundTruth.csv"


def read_isic_ground_truth(csv_path: str | os.PathLike) -> list[tuple[str, int, int]]:
    """Read the ground-truth CSV: a list of ``(image id, label index in ISIC_CLASSES, CSV line number)``.

    Raises ``ValueError`` naming the file and line for a missing column, a value that is not a number, a row that is
    not one-hot, or an image id listed twice.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"{csv_path}: ground-truth CSV not found (expected {GROUND_TRUTH_DIR}/{GROUND_TRUTH_CSV})")
    rows: list[tuple[str, int, int]] = []
    seen: dict[str, int] = {}
    table, problems = read_table(csv_path, ("image", *ISIC_CLASSES), "ground-truth CSV")
    for line, row in table:
        image = row["image"]
        if not image:
            problems.add(line, "empty image id")
            continue
        try:
            values = [float(row[c]) for c in ISIC_CLASSES]
        except ValueError:
            problems.add(line, f"class values must be numbers, got {[row[c] for c in ISIC_CLASSES]}", image)
            continue
        ones = [i for i, v in enumerate(values) if v == 1.0]
        if len(ones) != 1 or any(v not in (0.0, 1.0) for v in values):
            problems.add(line, "the class columns must be one-hot (exactly one 1.0, the rest 0.0), got "
                               f"{dict(zip(ISIC_CLASSES, values))}", image)
            continue
        if image in seen:
            problems.add(line, f"image {image} is listed again (first on line {seen[image]})")
            continue
        seen[image] = line
        rows.append((image, ones[0], line))
    problems.raise_if_any()
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    return rows


def isic2018_datalist(
    root: str | os.PathLike,
    *,
    fractions: tuple[float, float, float] = (0.6, 0.1, 0.3),
    seed: int = 123,
    verify: bool = True,
    strict: bool = True,
    validate: bool = True,
) -> dict:
    """Validate an ISIC 2018 Task 3 folder and return ``{"classes", "training", "validation", "test"}``.

    Each item is ``{"image": absolute path, "label": index in ISIC_CLASSES, "id": "ISIC_0024306"}``.

    Args:
        root: the folder that holds ``ISIC2018_Task3_Training_Input/`` and ``ISIC2018_Task3_Training_GroundTruth/``.
        fractions: training, validation, test fractions (the reference code's 6 : 1 : 3 by default).
        seed: seed of the stratified split (123, as the reference code).
        verify: check every image with PIL's ``verify()`` first.
        strict: raise (default) rather than warn when a class has no image in a split.
        validate: ``False`` opens no image and lists an image missing from the folder at its expected ``.jpg`` path
            (no ``verify``): the training bundle checks every item at once with
            :func:`pipelines.data.preflight.check_datalist` instead.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: ISIC 2018 folder not found")
    image_dir = root / INPUT_DIR
    if not image_dir.is_dir():
        raise ValueError(f"{root}: no {INPUT_DIR}/ folder (expected the ISIC 2018 Task 3 layout)")
    csv_path = root / GROUND_TRUTH_DIR / GROUND_TRUTH_CSV
    rows = read_isic_ground_truth(csv_path)
    on_disk = {p.stem: p for p in image_dir.iterdir() if is_photo(p)}
    items = []
    for image, label, line in rows:
        path = on_disk.get(image)
        if path is None and not validate:
            path = image_dir / f"{image}.jpg"
        if path is None:
            raise ValueError(f"{csv_path}, line {line}: image {image} is not in {image_dir} "
                             f"(expected {image_dir / (image + '.jpg')})")
        if verify and validate:
            verify_image(path)
        items.append({"image": str(path.resolve()), "label": label, "id": image})
    unlisted = len(on_disk) - len(items)
    if unlisted:
        logger.info("ISIC 2018: %d image(s) in %s are not in the ground-truth CSV and are skipped", unlisted, image_dir)
    splits = stratified_split(items, ISIC_CLASSES, fractions=fractions, seed=seed, strict=strict)
    logger.info("ISIC 2018: %s", ", ".join(
        f"{s} {len(splits[s])} ({dict(zip(ISIC_CLASSES, class_counts(splits[s], len(ISIC_CLASSES))))})"
        for s in SPLITS))
    return {"classes": list(ISIC_CLASSES), **splits}
