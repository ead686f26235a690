"""Synthetic dermoscopy in the exact ISIC 2018 Task 3 layout, with the real class imbalance.

Writes::

    out/
    ├── ISIC2018_Task3_Training_Input/ISIC_0024306.jpg ...      RGB JPEG, 64 x 48 by default (the real ones: 600 x 450)
    ├── ISIC2018_Task3_Training_Input/LICENSE.txt               (as in the download; the data layer ignores it)
    └── ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
                                                                image,MEL,NV,...  one-hot "1.0"/"0.0"

Each image is skin (a beige background with shading and noise) with one lesion whose colour, border and texture depend
on the class, loosely after the dermoscopic clues: melanoma dark, irregular and multi-coloured; nevus brown, round and
even; basal cell carcinoma pink with red vessels; actinic keratosis red and scaly; benign keratosis tan with dark
dots; dermatofibroma small with a pale centre; vascular lesions red-purple lobules. Colours, size, position and
orientation are jittered so that the classes overlap a little: a small network separates them in a few epochs, but not
from the first batch. Class frequencies follow ISIC 2018 (NV 67 %, MEL 11 %, BKL 11 %, BCC 5 %, AKIEC 3 %, VASC 1.4 %,
DF 1.1 %) with a floor of ``min_per_class`` images so that a stratified 3-way split has every class in every split.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.io import atomic_path

__all__ = ["ISIC_FREQUENCIES", "LesionStyle", "ISIC_STYLES", "paint_lesion", "class_sizes", "write_isic_cls"]

# fraction of the 10015 ISIC 2018 Task 3 training images in each class
ISIC_FREQUENCIES = {"MEL": 0.1111, "NV": 0.6695, "BCC": 0.0513, "AKIEC": 0.0327, "BKL": 0.1097, "DF": 0.0115,
                    "VASC": 0.0142}


@dataclass(frozen=True)
class LesionStyle:
    """How one class looks: RGB colour (0-255), relative radius, border irregularity (0 round .. 0.4 ragged) and a
    texture, one of ``none``, ``blotches``, ``vessels``, ``scale``, ``dots``, ``ring``, ``lobules``."""

    color: tuple[int, int, int]
    radius: float
    irregularity: float
    texture: str
    background: tuple[int, int, int] = (225, 185, 155)


ISIC_STYLES = {
    "MEL": LesionStyle((70, 40, 30), 0.36, 0.35, "blotches"),
    "NV": LesionStyle((150, 95, 60), 0.28, 0.04, "none"),
    "BCC": LesionStyle((215, 140, 150), 0.30, 0.12, "vessels"),
    "AKIEC": LesionStyle((195, 85, 75), 0.30, 0.20, "scale"),
    "BKL": LesionStyle((175, 135, 85), 0.32, 0.10, "dots"),
    "DF": LesionStyle((140, 95, 75), 0.20, 0.05, "ring"),
    "VASC": LesionStyle((160, 25, 70), 0.22, 0.06, "lobules"),
}


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int = 4) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.random((cells + 1, cells + 1))
    y = np.linspace(0, cells, h)
    x = np.linspace(0, cells, w)
    y0, x0 = np.minimum(y.astype(int), cells - 1), np.minimum(x.astype(int), cells - 1)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    c = coarse
    return ((1 - fy) * (1 - fx) * c[y0][:, x0] + fy * (1 - fx) * c[y0 + 1][:, x0]
            + (1 - fy) * fx * c[y0][:, x0 + 1] + fy * fx * c[y0 + 1][:, x0 + 1])


def paint_lesion(rng: np.random.Generator, size: tuple[int, int], style: LesionStyle, *,
                 color_jitter: float = 12.0, grayscale: bool = False) -> np.ndarray:
    """One ``(H, W, 3)`` uint8 image of a lesion of ``style`` on its background; ``size`` is ``(width, height)``."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    scale = min(w, h)
    background = np.array(style.background, np.float32) + rng.normal(0, 8, 3)
    image = np.broadcast_to(background, (h, w, 3)).copy()
    image *= (0.85 + 0.3 * _smooth_noise(rng, h, w))[..., None]  # uneven illumination
    cy = h / 2 + rng.uniform(-0.12, 0.12) * h
    cx = w / 2 + rng.uniform(-0.12, 0.12) * w
    radius = style.radius * scale * rng.uniform(0.8, 1.25)
    angle = np.arctan2(yy - cy, xx - cx)
    ratio, rot = rng.uniform(0.75, 1.0), rng.uniform(0, np.pi)
    border = np.ones_like(angle)
    for k in range(2, 7):  # ragged border: a random Fourier series of the angle
        border += style.irregularity * rng.normal(0, 1) / k * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    du = (xx - cx) * np.cos(rot) + (yy - cy) * np.sin(rot)
    dv = (-(xx - cx) * np.sin(rot) + (yy - cy) * np.cos(rot)) / ratio
    r = np.sqrt(du ** 2 + dv ** 2) / (radius * np.clip(border, 0.4, 1.8))
    mask = np.clip((1.0 - r) * 4.0, 0.0, 1.0)  # soft edge
    color = np.array(style.color, np.float32) + rng.normal(0, color_jitter, 3)
    lesion = np.broadcast_to(color, (h, w, 3)).copy()
    lesion *= (0.9 + 0.2 * _smooth_noise(rng, h, w, 6))[..., None]
    texture = style.texture
    if texture == "blotches":  # melanoma: black and blue-grey areas
        for tone in ((25, 20, 20), (90, 100, 120)):
            lesion = np.where((_smooth_noise(rng, h, w, 5) > 0.6)[..., None], np.array(tone, np.float32), lesion)
    elif texture == "vessels":  # arborising red vessels
        for _ in range(3):
            a, b = rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3) * scale
            line = np.abs((xx - cx) * np.sin(a) - (yy - cy) * np.cos(a) - b) < max(1.0, scale / 40)
            lesion[line] = (170, 20, 30)
    elif texture == "scale":  # rough white scale
        lesion = np.where((rng.random((h, w)) > 0.8)[..., None], np.array((235, 225, 215), np.float32), lesion)
    elif texture == "dots":  # dark dots and pseudocysts
        lesion = np.where((rng.random((h, w)) > 0.93)[..., None], np.array((60, 45, 35), np.float32), lesion)
    elif texture == "ring":  # pale central patch
        lesion = np.where((r < 0.45)[..., None], np.array((225, 210, 200), np.float32), lesion)
    elif texture == "lobules":  # red lagoons separated by pale septa
        lesion *= (0.7 + 0.3 * (np.sin(xx * 6 / scale * np.pi) * np.sin(yy * 6 / scale * np.pi) > 0))[..., None]
    image = image * (1 - mask[..., None]) + lesion * mask[..., None]
    image += rng.normal(0, 4, image.shape)
    if grayscale:
        image = np.repeat(image.mean(-1, keepdims=True), 3, axis=-1)
    return np.clip(image, 0, 255).astype(np.uint8)


def class_sizes(total: int, frequencies: dict[str, float], min_per_class: int) -> dict[str, int]:
    """Images per class: ``round(total * frequency)`` raised to ``min_per_class``; the largest class absorbs the
    difference so that the sizes add up to ``total``."""
    sizes = {name: max(min_per_class, int(round(total * f))) for name, f in frequencies.items()}
    largest = max(frequencies, key=frequencies.get)
    sizes[largest] += total - sum(sizes.values())
    if sizes[largest] < min_per_class:
        raise ValueError(f"{total} images cannot give every one of {len(sizes)} classes {min_per_class} images")
    return sizes


def write_isic_cls(
    out: str | os.PathLike,
    *,
    images: int = 200,
    seed: int = 0,
    size: tuple[int, int] = (64, 48),
    min_per_class: int = 6,
    first_id: int = 24306,
) -> list[dict]:
    """Write a synthetic ISIC 2018 Task 3 data set to ``out``; return ``[{"id", "label", "class", "path"}]``.

    Args:
        out: the data set root (created).
        images: total number of images.
        seed: random seed: the same seed writes the same data.
        size: image ``(width, height)``; 4 : 3 as the real 600 x 450.
        min_per_class: floor on the images of each class (6 gives every class 1+ image in each split at 6 : 1 : 3).
        first_id: the first ``ISIC_<id>`` number (the real ones start at 0024306).
    """
    from pipelines.data.isic_cls import GROUND_TRUTH_CSV, GROUND_TRUTH_DIR, INPUT_DIR, ISIC_CLASSES

    out = Path(out)
    image_dir = out / INPUT_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = class_sizes(images, ISIC_FREQUENCIES, min_per_class)
    labels = np.concatenate([np.full(sizes[name], i) for i, name in enumerate(ISIC_CLASSES)])
    rng.shuffle(labels)
    written = []
    for n, label in enumerate(labels):
        name = ISIC_CLASSES[int(label)]
        image_id = f"ISIC_{first_id + n:07d}"
        pixels = paint_lesion(rng, size, ISIC_STYLES[name])
        path = image_dir / f"{image_id}.jpg"
        with atomic_path(path) as tmp:
            Image.fromarray(pixels, "RGB").save(tmp, format="JPEG", quality=92)
        written.append({"id": image_id, "label": int(label), "class": name, "path": path})
    (image_dir / "LICENSE.txt").write_text("Synthetic images written by pipelines.synth.isic_cls (CC0).\n")
    csv_path = out / GROUND_TRUTH_DIR / GROUND_TRUTH_CSV
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *ISIC_CLASSES])
        for item in written:
            writer.writerow([item["id"], *("1.0" if k == item["label"] else "0.0" for k in range(len(ISIC_CLASSES)))])
    return written
