"""Synthetic dermoscopy in the exact ISIC 2018 Task 1 layout: JPEG images and 0/255 PNG masks.

Each image is skin-like texture (a random skin tone, smooth blotches, fine grain and a dark dermoscope vignette)
with one lesion: an irregular blob (a radius that varies with angle by a few random harmonics) darker and browner
than the skin, with darker globules inside and a soft border, optionally crossed by hairs (thin dark curves, which
also cross the lesion, as in real images). The mask is the blob's outline, without hairs. Sizes vary, mostly 3:4
landscape as ISIC's, small by default for speed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from pipelines.data.isic import input_dir, mask_dir, mask_name
from pipelines.io import atomic_path

__all__ = ["SyntheticImage", "write_isic_seg"]

logger = logging.getLogger(__name__)


@dataclass
class SyntheticImage:
    """What the writer put on disk for one image."""

    name: str
    image: Path
    mask: Path
    size: tuple[int, int]  # (width, height)
    lesion_fraction: float


def _smooth(shape, rng: np.random.Generator, sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
    return noise / max(float(noise.std()), 1e-6)


def _draw(width: int, height: int, rng: np.random.Generator, hairs: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return (RGB uint8 (H, W, 3), mask bool (H, W))."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    skin = np.array([rng.uniform(190, 235), rng.uniform(140, 185), rng.uniform(115, 160)])
    rgb = np.ones((height, width, 3)) * skin
    rgb *= (1 + 0.05 * _smooth((height, width), rng, max(width, height) / 12))[..., None]
    rgb += rng.normal(0, 4, size=rgb.shape)

    # lesion: polar blob with a few harmonics
    cx = width * rng.uniform(0.35, 0.65)
    cy = height * rng.uniform(0.35, 0.65)
    r0 = min(width, height) * rng.uniform(0.15, 0.32)
    theta = np.arctan2(yy - cy, xx - cx)
    radius = np.full_like(theta, r0)
    for k in range(2, 7):
        radius += r0 * rng.uniform(0.0, 0.12) / (k / 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius *= 1 + 0.04 * _smooth((height, width), rng, 3)
    dist = np.hypot((xx - cx) / rng.uniform(0.85, 1.15), yy - cy)
    mask = dist <= radius
    edge = 1 / (1 + np.exp((dist - radius) / max(r0 * 0.06, 0.7)))  # soft border
    brown = np.array([rng.uniform(95, 150), rng.uniform(55, 95), rng.uniform(35, 70)])
    inner = brown * (1 + 0.12 * _smooth((height, width), rng, r0 / 5))[..., None]
    globules = ndimage.gaussian_filter((rng.uniform(size=(height, width)) > 0.985).astype(float), 1.2) * 6
    inner = inner * (1 - np.clip(globules, 0, 0.5))[..., None]
    rgb = rgb * (1 - edge[..., None]) + inner * edge[..., None]

    vignette = np.hypot((xx - width / 2) / (width / 2), (yy - height / 2) / (height / 2))
    rgb *= np.clip(1.15 - 0.35 * vignette**2, 0.3, 1)[..., None]
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if hairs:
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(0, 7))):
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            angle = rng.uniform(0, 2 * np.pi)
            points = []
            for _step in range(12):
                points.append((x, y))
                angle += rng.normal(0, 0.15)
                x += np.cos(angle) * max(width, height) / 14
                y += np.sin(angle) * max(width, height) / 14
            shade = int(rng.uniform(20, 60))
            draw.line(points, fill=(shade, shade // 2 + 10, shade // 3 + 5), width=max(1, int(rng.integers(1, 3))))
    return np.asarray(image), mask


def write_isic_seg(
    out: str | os.PathLike,
    *,
    cases: int = 8,
    seed: int = 0,
    height: tuple[int, int] = (96, 144),
    hairs: bool = True,
    split: str = "Training",
) -> list[SyntheticImage]:
    """Write ``cases`` synthetic images and masks in the ISIC 2018 Task 1 layout under ``out``.

    Args:
        out: data set root (``ISIC2018_Task1-2_<split>_Input/`` and ``ISIC2018_Task1_<split>_GroundTruth/``).
        cases: number of images.
        seed: random seed; the same seed writes the same data set.
        height: range of image heights in pixels; widths follow a 4:3, 3:2 or 1:1 aspect (mostly 4:3).
        hairs: draw hairs over skin and lesion.
        split: ``Training``, ``Validation`` or ``Test`` folder names.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    images, masks = input_dir(out, split), mask_dir(out, split)
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(cases):
        h = int(rng.integers(height[0], height[1] + 1))
        w = int(round(h * float(rng.choice([4 / 3, 4 / 3, 4 / 3, 3 / 2, 1.0]))))
        rgb, mask = _draw(w, h, rng, hairs)
        name = f"ISIC_{i:07d}"
        image_path, mask_path = images / f"{name}.jpg", masks / mask_name(name)
        with atomic_path(image_path) as tmp:
            Image.fromarray(rgb).save(tmp, format="JPEG", quality=92)
        with atomic_path(mask_path) as tmp:
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")
        written.append(SyntheticImage(name, image_path, mask_path, (w, h), float(mask.mean())))
        logger.info("synth isic-seg: %d/%d %s %dx%d lesion %.0f%%", i + 1, cases, name, w, h, 100 * mask.mean())
    return written
