"""Synthetic breast ultrasound (B-mode) in the BUSI layout: grayscale PNGs in class folders with ``_mask.png`` files.

Layout (as Dataset_BUSI_with_GT)::

    out/
    ├── benign/      benign (1).png, benign (1)_mask.png, benign (2).png, ...
    ├── malignant/   malignant (1).png, malignant (1)_mask.png, ...
    └── normal/      normal (1).png, normal (1)_mask.png (empty mask), ...

Each image is made the way a scanner forms one, coarsely: a map of mean backscatter (echogenicity) is sampled by a
complex Gaussian scatterer field, blurred by an anisotropic point-spread function (finer along the beam than across
it) and envelope-detected, which gives Rayleigh-distributed, fully developed speckle; specular reflectors are added
coherently; the result is log-compressed to a 40-50 dB dynamic range and shown inside a sector (fan) field of view
with a black background.

The echogenicity map has a bright skin line, hypoechoic subcutaneous fat, brighter textured glandular tissue and a
striated pectoral muscle, with wavy layer boundaries, thin bright fibres (Cooper's ligaments) crossing fat and
gland, and depth attenuation. Benign and malignant images hold one hypoechoic lesion (mask = its outline): benign
ones are smooth ovals wider than tall with a thin bright capsule strongest where the beam meets it head-on, and
posterior acoustic enhancement; malignant ones are irregular and spiculated, taller than wide, heterogeneous, with
an echogenic halo and posterior shadowing. The thin fibres, capsules, striations and the speckle grain (about 1-2
pixels) are the detail a x4 super-resolution network has to recover.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pipelines.io import atomic_path

__all__ = ["ULTRASOUND_CLASSES", "write_ultrasound", "draw_ultrasound"]

logger = logging.getLogger(__name__)

ULTRASOUND_CLASSES = ("benign", "malignant", "normal")
_CLASS_CYCLE = ("benign", "malignant", "benign", "normal")  # about BUSI's mix (437 / 210 / 133)


def _smooth_noise(shape, rng: np.random.Generator, sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _waves(theta: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth lateral undulation (in depth fraction) as a sum of a few sinusoids of the beam angle."""
    out = np.zeros_like(theta)
    for k in (2, 3, 5):
        out += amplitude / k * np.sin(k * 3.0 * theta + rng.uniform(0, 2 * np.pi))
    return out


def draw_ultrasound(height: int, width: int, rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One B-mode-like image: ``(uint8 (H, W) image, bool (H, W) lesion mask)``; ``kind`` is a BUSI class name."""
    if kind not in ULTRASOUND_CLASSES:
        raise ValueError(f"kind must be one of {ULTRASOUND_CLASSES}, got {kind!r}")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)

    # sector field of view: apex above the image, beam angle theta (0 = straight down), radius r from the apex
    ax = width / 2 + rng.uniform(-0.03, 0.03) * width
    ay = -rng.uniform(0.2, 0.45) * height
    r = np.hypot(xx - ax, yy - ay)
    theta = np.arctan2(xx - ax, yy - ay)
    half_angle = min(rng.uniform(0.5, 0.7), float(np.arctan2(width / 2 - 1, -ay + 2)) * 0.98)
    r0 = -ay + rng.uniform(0.01, 0.04) * height
    r1 = (height - 1 - ay) * rng.uniform(0.95, 0.995)
    fov = (np.abs(theta) <= half_angle) & (r >= r0) & (r <= r1)
    depth = np.clip((r - r0) / (r1 - r0), 0, 1)
    depth_px = r - r0
    pixels_per_depth = r1 - r0

    # layers (depth fractions with wavy boundaries)
    skin_end = 0.035 + 0.01 * rng.uniform()
    fat_end = rng.uniform(0.18, 0.3) + _waves(theta, rng, 0.05)
    gland_end = rng.uniform(0.62, 0.78) + _waves(theta, rng, 0.06)
    texture = _smooth_noise((height, width), rng, 2.5)
    level = np.where(depth < skin_end, 6.0, 0.0)  # echogenicity in dB relative to glandular tissue
    fat = (depth >= skin_end) & (depth < fat_end)
    gland = (depth >= fat_end) & (depth < gland_end)
    muscle = depth >= gland_end
    level[fat] = (-13.0 + 2.0 * texture)[fat]
    level[gland] = (3.0 * _smooth_noise((height, width), rng, 1.5))[gland]
    striation_period = rng.uniform(4.0, 7.0)
    stripes = 0.5 + 0.5 * np.cos(2 * np.pi * (depth_px - 2.0 * np.sin(2 * theta)) / striation_period)
    level[muscle] = (-9.0 + 9.0 * stripes**6)[muscle]

    # specular reflectors (coherent amplitude, added after speckle): interfaces and fibres, about 1 pixel thick
    specular = np.zeros((height, width))
    for boundary, strength in ((fat_end, 0.8), (gland_end, 1.0)):
        specular += strength * np.exp(-0.5 * ((depth - boundary) * pixels_per_depth / 0.7) ** 2)
    for _ in range(int(rng.integers(5, 10))):  # Cooper's ligaments: thin curved bright lines in fat and gland
        base = rng.uniform(skin_end + 0.03, 0.7)
        curve = base + rng.uniform(0.02, 0.08) * np.sin(rng.uniform(2, 6) * theta + rng.uniform(0, 2 * np.pi)) \
            + rng.uniform(-0.3, 0.3) * theta
        span = (theta > rng.uniform(-half_angle, 0)) & (theta < rng.uniform(0, half_angle))
        specular += rng.uniform(0.5, 1.0) * span * np.exp(-0.5 * ((depth - curve) * pixels_per_depth / 0.6) ** 2)

    # lesion
    mask = np.zeros((height, width), dtype=bool)
    if kind != "normal":
        malignant = kind == "malignant"
        cd = rng.uniform(0.35, 0.6)
        ct = rng.uniform(-0.5, 0.5) * half_angle
        cx = ax + (r0 + cd * pixels_per_depth) * np.sin(ct)
        cy = ay + (r0 + cd * pixels_per_depth) * np.cos(ct)
        size = min(height, width) * rng.uniform(0.08, 0.16)
        aspect = rng.uniform(0.7, 1.0) if malignant else rng.uniform(1.3, 1.9)  # width / height
        phi = np.arctan2(yy - cy, xx - cx)
        radius = np.full_like(phi, size)
        for k in range(2, 6):
            radius += size * rng.uniform(0.0, 0.12 if malignant else 0.04) * np.cos(k * phi + rng.uniform(0, 6.3))
        if malignant:  # spiculations
            radius += size * rng.uniform(0.06, 0.15) * np.maximum(
                np.cos(int(rng.integers(9, 16)) * phi + rng.uniform(0, 6.3)), 0) ** 3
        dist = np.hypot((xx - cx) / np.sqrt(aspect), (yy - cy) * np.sqrt(aspect))
        mask = (dist <= radius) & fov
        inside = rng.uniform(-18, -12) + 3.0 * texture if malignant else rng.uniform(-26, -16)
        level = np.where(mask, inside, level)
        specular = np.where(dist <= radius + 1.0, 0.0, specular)  # fibres and interfaces stop at the lesion
        # posterior enhancement (benign) or shadowing (malignant) in the lesion's beam, fading with depth
        lesion_theta = theta[mask]
        t_lo, t_hi = float(lesion_theta.min()), float(lesion_theta.max())
        behind = (theta > t_lo) & (theta < t_hi) & ~mask & (r > np.hypot(cx - ax, cy - ay))
        edge = np.minimum(theta - t_lo, t_hi - theta) / max(t_hi - t_lo, 1e-6)
        gain_db = rng.uniform(-12, -7) if malignant else rng.uniform(3, 6)
        change = gain_db * np.clip(edge * 6, 0, 1) * np.exp(-np.clip(depth - cd, 0, None) * 2.0)
        level = np.where(behind, level + change, level)
        # specular border, strongest where the boundary faces the beam (top and bottom)
        ring = np.exp(-0.5 * ((dist - radius) / (0.6 if not malignant else 1.5)) ** 2)
        facing = np.abs(np.cos(phi - (np.pi / 2 - theta)))
        specular += (0.6 if malignant else 1.4) * ring * (0.3 + 0.7 * facing**2)

    # attenuation (partly compensated by time-gain control)
    echo = 10 ** ((level - rng.uniform(3, 8) * depth) / 10)  # power
    specular = specular * np.exp(-0.5 * depth)

    # speckle: complex Gaussian scatterers weighted by sqrt(echogenicity), PSF blur, envelope (Rayleigh)
    psf = (rng.uniform(0.5, 0.7), rng.uniform(0.9, 1.3))  # (axial = rows, lateral = columns) in pixels
    field = np.sqrt(echo) * (rng.normal(size=echo.shape) + 1j * rng.normal(size=echo.shape))
    blurred = ndimage.gaussian_filter(field.real, psf) + 1j * ndimage.gaussian_filter(field.imag, psf)
    gain = np.sqrt(1.0 / (4 * np.pi * psf[0] * psf[1]))  # std of the filtered field per unit echogenicity
    envelope = np.abs(blurred) / gain + 2.5 * specular

    # log compression to a 40-50 dB dynamic range, the brightest tissue near white
    db = 20 * np.log10(np.maximum(envelope, 1e-9) / np.percentile(envelope[fov], 99.7))
    dynamic_range = rng.uniform(40, 50)
    image = np.clip(1 + db / dynamic_range, 0, 1) ** 1.5 * 255
    image += rng.normal(0, 1.0, size=image.shape)  # electronic noise
    image = np.where(fov, np.clip(image, 0, 255), 0)
    return np.round(image).astype(np.uint8), mask


def write_ultrasound(
    out_dir: str | os.PathLike,
    n_images: int = 24,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
) -> list[Path]:
    """Write ``n_images`` synthetic B-mode images and masks in the BUSI layout under ``out_dir``; return the images.

    Classes cycle benign, malignant, benign, normal; files are ``<class>/<class> (<k>).png`` and
    ``<class>/<class> (<k>)_mask.png`` (0/255, empty for normal), numbered from 1 per class. Image ``i`` depends
    only on ``(seed, i)``, so the same seed writes the same files.

    Args:
        out_dir: data set root (class folders are created in it).
        n_images: number of images.
        size: ``(height, width)`` in pixels.
        seed: random seed.
    """
    out = Path(out_dir)
    height, width = (int(s) for s in size)
    if height < 16 or width < 16:
        raise ValueError(f"size must be at least 16 x 16 pixels, got {size!r}")
    counts = dict.fromkeys(ULTRASOUND_CLASSES, 0)
    written: list[Path] = []
    for i in range(n_images):
        kind = _CLASS_CYCLE[i % len(_CLASS_CYCLE)]
        counts[kind] += 1
        rng = np.random.default_rng([seed, i])
        image, mask = draw_ultrasound(height, width, rng, kind)
        name = f"{kind} ({counts[kind]})"
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        image_path = folder / f"{name}.png"
        with atomic_path(image_path) as tmp:
            Image.fromarray(image, mode="L").save(tmp, format="PNG")
        with atomic_path(folder / f"{name}_mask.png") as tmp:
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")
        written.append(image_path)
        logger.info("synth ultrasound: %d/%d %s/%s.png %dx%d lesion %.1f%%", i + 1, n_images, kind, name, width,
                    height, 100 * mask.mean())
    return written
