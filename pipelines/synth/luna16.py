"""Synthetic chest CT in the exact LUNA16 layout: ``subset*/<seriesuid>.mhd|.raw``, ``annotations.csv``, lung masks.

Each scan is a small thorax phantom in Hounsfield units: air (-1000) and the out-of-field-of-view value (-2000, as
many LUNA16 scans store it), subcutaneous fat (-100), soft tissue (40), ribs and spine (400-700), two lungs of
parenchyma (about -850) crossed by vessels (tubes of soft-tissue density) and 1-3 solid nodules (spheres of 4-30 mm
with a soft edge). Nodules and vessels share a density, so a network has to learn shape, not a threshold.

Geometry follows LUNA16's habits: int16 MetaImage, in-plane spacing 0.6-0.9 mm, slice spacing 1-2.5 mm, non-zero
origins, and some scans stored with a flipped direction matrix (z, or x and y). Flipping changes how the voxels are
stored, not where the anatomy is: the annotation's world coordinates mean the same place either way. Nodule
centres are chosen in voxel space and converted to world millimetres through SimpleITK, independently of
``pipelines.data.luna16``'s rasteriser, so tests can check one against the other.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.io import atomic_path

__all__ = ["SyntheticScan", "write_luna16"]

logger = logging.getLogger(__name__)

SLICE_SPACINGS = (1.0, 1.25, 1.5, 2.0, 2.5)
FLIPS = {"none": (1, 1, 1), "z": (1, 1, -1), "xy": (-1, -1, 1)}


@dataclass
class SyntheticScan:
    """What the writer put on disk for one scan (for tests and demos)."""

    seriesuid: str
    path: Path
    flip: str
    spacing: tuple[float, float, float]
    nodules: list[dict] = field(default_factory=list)  # {"center_world", "center_index", "diameter_mm"}


def _ellipsoid(coords: list[np.ndarray], center, semi) -> np.ndarray:
    return sum(((c - c0) / s) ** 2 for c, c0, s in zip(coords, center, semi))


def _phantom(shape, spacing, rng: np.random.Generator):
    """Return (hu int16 array (x, y, z), lung label array, list of nodules in mm relative to the grid centre)."""
    nx, ny, nz = shape
    sx, sy, sz = spacing
    x = (np.arange(nx) - (nx - 1) / 2) * sx
    y = (np.arange(ny) - (ny - 1) / 2) * sy
    z = (np.arange(nz) - (nz - 1) / 2) * sz
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    wx, wy, lz = nx * sx / 2, ny * sy / 2, nz * sz / 2

    hu = np.full(shape, -1000.0)
    body_r = np.sqrt((X / (0.88 * wx)) ** 2 + (Y / (0.72 * wy)) ** 2)
    hu[body_r <= 1.0] = -100.0  # fat
    hu[body_r <= 0.93] = 40.0  # soft tissue
    # ribs: rings of bone under the fat, every ~22 mm along z, posterior and lateral
    rib = (body_r > 0.84) & (body_r < 0.9) & (np.mod(Z - rng.uniform(0, 22), 22.0) < 7.0) & (Y > -0.45 * wy)
    hu[rib] = 650.0
    spine_c = (0.0, 0.5 * wy)
    spine = ((X - spine_c[0]) ** 2 + (Y - spine_c[1]) ** 2) <= (0.12 * wx) ** 2
    hu[spine] = 400.0
    hu[spine & (((X - spine_c[0]) ** 2 + (Y - spine_c[1]) ** 2) >= (0.09 * wx) ** 2)] = 700.0

    lung_label = np.zeros(shape, dtype=np.uint8)
    lungs = []
    for side, label in ((1, 3), (-1, 4)):  # +x is the patient's left in LPS: left lung 3, right lung 4
        center = (side * 0.4 * wx * rng.uniform(0.95, 1.05), -0.05 * wy, rng.uniform(-0.05, 0.05) * lz)
        semi = (0.3 * wx * rng.uniform(0.95, 1.05), 0.5 * wy * rng.uniform(0.95, 1.05), 0.44 * lz * 2)
        inside = _ellipsoid([X, Y, Z], center, semi) <= 1.0
        hu[inside] = -850.0 + rng.normal(0, 15, size=int(inside.sum()))
        lung_label[inside] = label
        lungs.append((center, semi))
    lung_mask = lung_label > 0

    def tube(p0, p1, radius):
        lo = np.minimum(p0, p1) - radius - 1
        hi = np.maximum(p0, p1) + radius + 1
        sel = [slice(max(int(np.searchsorted(a, l)), 0), int(np.searchsorted(a, h))) for a, l, h in zip((x, y, z), lo, hi)]
        P = np.stack([X[tuple(sel)], Y[tuple(sel)], Z[tuple(sel)]], axis=-1)
        d = p1 - p0
        t = np.clip(((P - p0) @ d) / max(d @ d, 1e-9), 0, 1)
        dist = np.linalg.norm(P - (p0 + t[..., None] * d), axis=-1)
        region = hu[tuple(sel)]
        vessel = (dist <= radius) & lung_mask[tuple(sel)]
        region[vessel] = 40.0 + rng.normal(0, 10, size=int(vessel.sum()))

    for center, semi in lungs:  # vessels: branches fanning out from the hilum
        hilum = np.array([center[0] - np.sign(center[0]) * 0.5 * semi[0], center[1], center[2]])
        for _ in range(7):
            direction = rng.normal(size=3)
            direction[0] = np.sign(center[0]) * abs(direction[0])
            direction /= np.linalg.norm(direction)
            length = rng.uniform(0.6, 1.0) * min(semi) * 1.6
            tube(hilum, hilum + direction * length, rng.uniform(0.8, 1.8))

    nodules = []
    for _ in range(int(rng.integers(1, 4))):
        center, semi = lungs[int(rng.integers(0, 2))]
        max_d = min(30.0, 1.6 * min(semi))
        diameter = float(np.exp(rng.uniform(np.log(4.0), np.log(max_d))))
        r = diameter / 2
        # centre inside the lung, at least half a radius away from its wall
        for _attempt in range(100):
            u = rng.uniform(-1, 1, size=3)
            if np.sum(u**2) <= 1:
                break
        pos = np.asarray(center) + u * np.maximum(np.asarray(semi) - r * 0.5, 0.0)
        dist = np.sqrt((X - pos[0]) ** 2 + (Y - pos[1]) ** 2 + (Z - pos[2]) ** 2)
        edge = 1.0 / (1.0 + np.exp((dist - r) / 0.4))  # soft partial-volume edge
        shell = dist <= r + 2.0
        hu[shell] = hu[shell] * (1 - edge[shell]) + (30.0 + rng.normal(0, 15, size=int(shell.sum()))) * edge[shell]
        nodules.append({"center_mm": pos.tolist(), "diameter_mm": diameter})

    hu += rng.normal(0, 20, size=shape)
    # outside the circular reconstruction field of view, as many LUNA16 scans store it
    fov = (X / wx) ** 2 + (Y / wy) ** 2 > 1.0
    hu[fov] = -2000.0
    return np.clip(np.round(hu), -3024, 3071).astype(np.int16), lung_label, nodules


def _seriesuid(rng: np.random.Generator) -> str:
    digits = "".join(str(d) for d in rng.integers(0, 10, size=30))
    return f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{int(digits[0]) or 1}{digits[1:]}"


def _image(array_xyz: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    return image


def write_luna16(
    out: str | os.PathLike,
    *,
    cases: int = 6,
    seed: int = 0,
    fov_mm: float = 100.0,
    length_mm: float = 80.0,
    subsets: int = 2,
    flip_fraction: float = 0.4,
) -> list[SyntheticScan]:
    """Write ``cases`` synthetic scans in the LUNA16 layout under ``out`` and return what was written.

    Args:
        out: dataset root; ``subset<i>/``, ``annotations.csv`` and ``seg-lungs-LUNA16/`` are created in it.
        cases: number of scans.
        seed: random seed; the same seed writes the same data set.
        fov_mm: in-plane field of view in millimetres (the voxel count follows from the spacing).
        length_mm: scan length along z in millimetres.
        subsets: number of ``subset*`` folders the scans are spread over.
        flip_fraction: fraction of scans stored with a flipped direction matrix.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    (out / "seg-lungs-LUNA16").mkdir(parents=True, exist_ok=True)
    written: list[SyntheticScan] = []
    rows = []
    for i in range(cases):
        s_xy = float(rng.uniform(0.6, 0.9))
        s_z = float(rng.choice(SLICE_SPACINGS))
        spacing = (s_xy, s_xy, s_z)
        shape = (int(round(fov_mm / s_xy)), int(round(fov_mm / s_xy)), max(int(round(length_mm / s_z)), 8))
        hu, lungs, nodules = _phantom(shape, spacing, rng)
        flip = "none" if rng.uniform() >= flip_fraction else str(rng.choice(["z", "xy"]))
        signs = np.asarray(FLIPS[flip], dtype=np.float64)
        # canonical grid: index (0,0,0) at corner_world; a flipped axis stores the voxels in reverse order and moves
        # the origin to the other end, so every voxel keeps its world position
        corner = np.array([-fov_mm / 2 + rng.uniform(-30, 30), -fov_mm / 2 + rng.uniform(-30, 30),
                           -rng.uniform(100, 350)])
        extent = (np.asarray(shape) - 1) * np.asarray(spacing)
        origin = np.where(signs < 0, corner + extent, corner)
        direction = np.diag(signs).ravel()
        flip_axes = tuple(a for a in range(3) if signs[a] < 0)
        stored_hu = np.flip(hu, axis=flip_axes) if flip_axes else hu
        stored_lungs = np.flip(lungs, axis=flip_axes) if flip_axes else lungs
        image = _image(stored_hu, spacing, origin, direction)
        uid = _seriesuid(rng)
        path = out / f"subset{i % max(subsets, 1)}" / f"{uid}.mhd"
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path))  # .mhd header + .raw data, uncompressed, as LUNA16 ships
        sitk.WriteImage(_image(stored_lungs, spacing, origin, direction),
                        str(out / "seg-lungs-LUNA16" / f"{uid}.mhd"), True)  # .zraw, as LUNA16 ships
        scan = SyntheticScan(uid, path, flip, spacing)
        for nodule in nodules:
            canonical = (np.asarray(nodule["center_mm"]) + extent / 2) / np.asarray(spacing)
            stored = np.where(signs < 0, np.asarray(shape) - 1 - canonical, canonical)
            world = image.TransformContinuousIndexToPhysicalPoint(stored.tolist())
            scan.nodules.append({"center_world": list(world), "center_index": stored.tolist(),
                                 "diameter_mm": nodule["diameter_mm"]})
            rows.append([uid, *[f"{c:.7f}" for c in world], f"{nodule['diameter_mm']:.7f}"])
        written.append(scan)
        logger.info("synth luna16: %d/%d %s (%s voxels, spacing %s, flip %s, %d nodule(s))",
                    i + 1, cases, path.name, "x".join(map(str, shape)),
                    "x".join(f"{s:.2f}" for s in spacing), flip, len(nodules))
    with atomic_path(out / "annotations.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
        writer.writerows(rows)
    return written

