"""Synthetic chest CT in the exact LUNA16 layout: ``subset*/<seriesuid>.mhd|.raw``, ``annotations.csv``, lung masks.

Each scan is a thorax phantom in Hounsfield units: air (-1000) and the out-of-field-of-view value (-2000, as many
LUNA16 scans store it), subcutaneous fat (-100), soft tissue (40), ribs and spine (400-700), two lungs of parenchyma
(about -850) crossed by vessels (tubes of soft-tissue density) and 1-3 solid nodules (spheres of 4-30 mm with a soft
edge). Nodules and vessels share a density, so a network has to learn shape, not a threshold.

Geometry follows LUNA16's habits: int16 MetaImage, in-plane spacing 0.6-0.9 mm, slice spacing 1-2.5 mm, non-zero
origins, and some scans stored with a flipped direction matrix (z, or x and y). Flipping changes how the voxels are
stored, not where the anatomy is: the annotation's world coordinates mean the same place either way. Nodule
centres are chosen in voxel space and converted to world millimetres through SimpleITK, independently of
``pipelines.data.luna16``'s rasteriser, so tests can check one against the other.

Two sizes (:func:`scan_geometry`):

* ``"small"`` (the default): a field of view of ``fov_mm`` (100 mm) and ``length_mm`` (80 mm) of scan, a few hundred
  thousand voxels, for tests and the CPU demo.
* ``"full"``: LUNA16's real size, :data:`FULL`: 512 x 512 voxels in-plane at 0.6-0.78 mm (a 307-400 mm field of
  view), 300-400 mm of scan at 1-2.5 mm per slice, so 120-400 slices (LUNA16 has 95-764, median about 250). The
  anatomy scales with the field of view; vessels and nodules keep their sizes in millimetres (90 vessels a lung
  instead of 7 keep their share of the parenchyma). A scan of 400 slices peaks at about 1.4 GB of memory and 7 s
  of one core (the phantom is drawn in float32, its structures inside their bounding boxes, the noise in slabs);
  scans are written one at a time.

Every file is written under a temporary name beside its destination and renamed when complete (the ``.raw`` before
the ``.mhd`` that names it), so an interrupted run leaves no scan half-written.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.io import atomic_path

__all__ = ["FULL", "SIZES", "FullSize", "ScanGeometry", "SyntheticScan", "scan_geometry", "write_luna16"]

logger = logging.getLogger(__name__)

SLICE_SPACINGS = (1.0, 1.25, 1.5, 2.0, 2.5)
FLIPS = {"none": (1, 1, 1), "z": (1, 1, -1), "xy": (-1, -1, 1)}
SIZES = ("small", "full")
SMALL_FOV_MM, SMALL_LENGTH_MM = 100.0, 80.0
NOISE_SLAB = 16  # x-planes of noise drawn at a time (the same random stream as one draw of the whole volume)


@dataclass(frozen=True)
class FullSize:
    """The ``size="full"`` preset: LUNA16's real matrix, spacings and slice counts."""

    matrix: int = 512  # in-plane voxels (x and y)
    spacing_xy: tuple[float, float] = (0.6, 0.78)  # mm; 512 voxels span a 307-400 mm field of view
    length_mm: tuple[float, float] = (300.0, 400.0)  # scan length drawn per scan
    slices: tuple[int, int] = (120, 400)  # the slice count is clipped to this range
    # vessels per lung: their branches are longer in bigger lungs, and 90 keep the small scans' share of vessel voxels
    # in the parenchyma (about 1.2%; 7 do in the small scans)
    vessels_per_lung: int = 90


FULL = FullSize()


@dataclass(frozen=True)
class ScanGeometry:
    """Voxel grid of one scan: ``shape`` (x, y, z) voxels, ``spacing`` mm, ``fov_mm`` the in-plane field of view."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    fov_mm: float


@dataclass
class SyntheticScan:
    """What the writer put on disk for one scan (for tests and demos)."""

    seriesuid: str
    path: Path
    flip: str
    spacing: tuple[float, float, float]
    nodules: list[dict] = field(default_factory=list)  # {"center_world", "center_index", "diameter_mm"}


def scan_geometry(rng: np.random.Generator, size: str = "small", fov_mm: float | None = None,
                  length_mm: float | None = None) -> ScanGeometry:
    """Draw one scan's grid; ``size="small"`` uses ``fov_mm`` and ``length_mm``, ``"full"`` the :data:`FULL` preset."""
    if size == "small":
        fov = SMALL_FOV_MM if fov_mm is None else fov_mm
        length = SMALL_LENGTH_MM if length_mm is None else length_mm
        s_xy = float(rng.uniform(0.6, 0.9))
        s_z = float(rng.choice(SLICE_SPACINGS))
        n_xy = int(round(fov / s_xy))
        return ScanGeometry((n_xy, n_xy, max(int(round(length / s_z)), 8)), (s_xy, s_xy, s_z), fov)
    if size == "full":
        if fov_mm is not None or length_mm is not None:
            raise ValueError("write_luna16: fov_mm and length_mm apply to size='small' only; size='full' draws "
                             "them per scan from LUNA16's ranges (pipelines.synth.luna16.FULL)")
        s_xy = float(rng.uniform(*FULL.spacing_xy))
        s_z = float(rng.choice(SLICE_SPACINGS))
        n_z = int(np.clip(round(float(rng.uniform(*FULL.length_mm)) / s_z), *FULL.slices))
        return ScanGeometry((FULL.matrix, FULL.matrix, n_z), (s_xy, s_xy, s_z), FULL.matrix * s_xy)
    raise ValueError(f"write_luna16: size must be one of {list(SIZES)}, got {size!r}")


def _box(axes, center, half) -> tuple[slice, ...]:
    """Index slices of the grid points within ``half`` (+ one voxel) of ``center`` along each axis (maybe empty)."""
    box = []
    for a, c, h in zip(axes, center, half):
        step = abs(float(a[1] - a[0])) if len(a) > 1 else 1.0
        inside = np.flatnonzero(np.abs(a - c) <= h + step)
        box.append(slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0))
    return tuple(box)


def _grid(axes, box) -> list[np.ndarray]:
    """The 1D coordinates of ``box`` shaped to broadcast against each other (no meshgrid is built)."""
    return [a[s].reshape([-1 if k == i else 1 for k in range(3)]) for i, (a, s) in enumerate(zip(axes, box))]


def _phantom(shape, spacing, rng: np.random.Generator, dtype=np.float64, vessels: int = 7):
    """Return (hu int16 array (x, y, z), lung label array, list of nodules in mm relative to the grid centre).

    Coordinates are 1D arrays broadcast against each other, each structure is drawn inside its bounding box and the
    noise slab by slab: the same values, the same random stream and the same order as full meshgrids would give,
    in a fraction of the memory (``dtype`` float32 halves it again, for full-size scans).
    """
    nx, ny, nz = shape
    sx, sy, sz = spacing
    x = (np.arange(nx) - (nx - 1) / 2) * sx
    y = (np.arange(ny) - (ny - 1) / 2) * sy
    z = (np.arange(nz) - (nz - 1) / 2) * sz
    axes = (x, y, z)
    X, Y, Z = _grid(axes, (slice(None),) * 3)
    wx, wy, lz = nx * sx / 2, ny * sy / 2, nz * sz / 2

    hu = np.full(shape, -1000.0, dtype=dtype)
    body_r = np.sqrt((X / (0.88 * wx)) ** 2 + (Y / (0.72 * wy)) ** 2)  # (nx, ny, 1): the body is a prism along z
    np.copyto(hu, -100.0, where=body_r <= 1.0)  # fat
    np.copyto(hu, 40.0, where=body_r <= 0.93)  # soft tissue
    # ribs: rings of bone under the fat, every ~22 mm along z, posterior and lateral
    ring = (body_r > 0.84) & (body_r < 0.9) & (Y > -0.45 * wy)
    np.copyto(hu, 650.0, where=ring & (np.mod(Z - rng.uniform(0, 22), 22.0) < 7.0))
    spine_c = (0.0, 0.5 * wy)
    spine = ((X - spine_c[0]) ** 2 + (Y - spine_c[1]) ** 2) <= (0.12 * wx) ** 2
    np.copyto(hu, 400.0, where=spine)
    np.copyto(hu, 700.0, where=spine & (((X - spine_c[0]) ** 2 + (Y - spine_c[1]) ** 2) >= (0.09 * wx) ** 2))

    lung_label = np.zeros(shape, dtype=np.uint8)
    lungs = []
    for side, label in ((1, 3), (-1, 4)):  # +x is the patient's left in LPS: left lung 3, right lung 4
        center = (side * 0.4 * wx * rng.uniform(0.95, 1.05), -0.05 * wy, rng.uniform(-0.05, 0.05) * lz)
        semi = (0.3 * wx * rng.uniform(0.95, 1.05), 0.5 * wy * rng.uniform(0.95, 1.05), 0.44 * lz * 2)
        box = _box(axes, center, semi)
        inside = sum(((c - c0) / s) ** 2 for c, c0, s in zip(_grid(axes, box), center, semi)) <= 1.0
        region = hu[box]
        region[inside] = -850.0 + rng.normal(0, 15, size=int(inside.sum()))
        lung_label[box][inside] = label
        lungs.append((center, semi))
    lung_mask = lung_label > 0

    def tube(p0, p1, radius):
        lo = np.minimum(p0, p1) - radius - 1
        hi = np.maximum(p0, p1) + radius + 1
        sel = tuple(slice(max(int(np.searchsorted(a, lo_)), 0), int(np.searchsorted(a, h)))
                    for a, lo_, h in zip(axes, lo, hi))
        P = np.stack(np.broadcast_arrays(*_grid(axes, sel)), axis=-1)
        d = p1 - p0
        t = np.clip(((P - p0) @ d) / max(d @ d, 1e-9), 0, 1)
        dist = np.linalg.norm(P - (p0 + t[..., None] * d), axis=-1)
        region = hu[sel]
        vessel = (dist <= radius) & lung_mask[sel]
        region[vessel] = 40.0 + rng.normal(0, 10, size=int(vessel.sum()))

    for center, semi in lungs:  # vessels: branches fanning out from the hilum
        hilum = np.array([center[0] - np.sign(center[0]) * 0.5 * semi[0], center[1], center[2]])
        for _ in range(vessels):
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
        box = _box(axes, pos, (r + 2.0,) * 3)  # the shell below lies inside; outside it the edge weight is 0
        bx, by, bz = _grid(axes, box)
        dist = np.sqrt((bx - pos[0]) ** 2 + (by - pos[1]) ** 2 + (bz - pos[2]) ** 2)
        edge = 1.0 / (1.0 + np.exp((dist - r) / 0.4))  # soft partial-volume edge
        shell = dist <= r + 2.0
        region = hu[box]
        region[shell] = (region[shell] * (1 - edge[shell])
                         + (30.0 + rng.normal(0, 15, size=int(shell.sum()))) * edge[shell])
        nodules.append({"center_mm": pos.tolist(), "diameter_mm": diameter})

    for i in range(0, nx, NOISE_SLAB):  # slabs along x, the slowest axis: the stream of one normal(size=shape) draw
        hu[i:i + NOISE_SLAB] += rng.normal(0, 20, size=hu[i:i + NOISE_SLAB].shape)
    # outside the circular reconstruction field of view, as many LUNA16 scans store it
    np.copyto(hu, -2000.0, where=(X / wx) ** 2 + (Y / wy) ** 2 > 1.0)
    np.round(hu, out=hu)
    np.clip(hu, -3024, 3071, out=hu)
    return hu.astype(np.int16), lung_label, nodules


def _seriesuid(rng: np.random.Generator) -> str:
    digits = "".join(str(d) for d in rng.integers(0, 10, size=30))
    return f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{int(digits[0]) or 1}{digits[1:]}"


def _image(array_xyz: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    return image


def _write_metaimage(image: sitk.Image, path: Path, compress: bool) -> None:
    """Write ``path`` (.mhd) and its data file (.raw, or .zraw when compressed) atomically.

    ``atomic_path`` does not fit a two-file format: the header names its data file, so both are written under their
    final names in a temporary folder beside ``path`` and moved into place, the data file first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        sitk.WriteImage(image, str(staging / path.name), compress)
        data = path.with_suffix(".zraw" if compress else ".raw").name
        os.replace(staging / data, path.parent / data)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_scan(out: Path, index: int, cases: int, rng: np.random.Generator, geometry: ScanGeometry, subsets: int,
                flip_fraction: float, dtype, vessels: int) -> tuple[SyntheticScan, list[list[str]]]:
    """Draw, write and forget one scan (its arrays are freed on return: memory does not grow with the case count)."""
    shape, spacing, fov_mm = geometry.shape, geometry.spacing, geometry.fov_mm
    hu, lungs, nodules = _phantom(shape, spacing, rng, dtype, vessels)
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
    del hu, stored_hu
    uid = _seriesuid(rng)
    path = out / f"subset{index % max(subsets, 1)}" / f"{uid}.mhd"
    _write_metaimage(image, path, False)  # .mhd header + .raw data, uncompressed, as LUNA16 ships
    _write_metaimage(_image(stored_lungs, spacing, origin, direction), out / "seg-lungs-LUNA16" / f"{uid}.mhd",
                     True)  # .zraw, as LUNA16 ships
    scan = SyntheticScan(uid, path, flip, spacing)
    rows = []
    for nodule in nodules:
        canonical = (np.asarray(nodule["center_mm"]) + extent / 2) / np.asarray(spacing)
        stored = np.where(signs < 0, np.asarray(shape) - 1 - canonical, canonical)
        world = image.TransformContinuousIndexToPhysicalPoint(stored.tolist())
        scan.nodules.append({"center_world": list(world), "center_index": stored.tolist(),
                             "diameter_mm": nodule["diameter_mm"]})
        rows.append([uid, *[f"{c:.7f}" for c in world], f"{nodule['diameter_mm']:.7f}"])
    logger.info("synth luna16: %d/%d %s (%s voxels, spacing %s, flip %s, %d nodule(s))",
                index + 1, cases, path.name, "x".join(map(str, shape)),
                "x".join(f"{s:.2f}" for s in spacing), flip, len(nodules))
    return scan, rows


def write_luna16(
    out: str | os.PathLike,
    *,
    cases: int = 6,
    seed: int = 0,
    fov_mm: float | None = None,
    length_mm: float | None = None,
    subsets: int = 2,
    flip_fraction: float = 0.4,
    size: str = "small",
) -> list[SyntheticScan]:
    """Write ``cases`` synthetic scans in the LUNA16 layout under ``out`` and return what was written.

    Args:
        out: dataset root; ``subset<i>/``, ``annotations.csv`` and ``seg-lungs-LUNA16/`` are created in it.
        cases: number of scans.
        seed: random seed; the same seed writes the same data set.
        fov_mm: ``size="small"`` only: in-plane field of view in millimetres (default 100; the voxel count follows
            from the spacing).
        length_mm: ``size="small"`` only: scan length along z in millimetres (default 80).
        subsets: number of ``subset*`` folders the scans are spread over.
        flip_fraction: fraction of scans stored with a flipped direction matrix.
        size: ``"small"`` (a few hundred thousand voxels a scan) or ``"full"`` (LUNA16's real size: 512 x 512 x
            120-400 voxels, see :data:`FULL`); see :func:`scan_geometry`.
    """
    if size not in SIZES:
        raise ValueError(f"write_luna16: size must be one of {list(SIZES)}, got {size!r}")
    scan_geometry(np.random.default_rng(0), size, fov_mm, length_mm)  # bad settings fail before anything is written
    out = Path(out)
    rng = np.random.default_rng(seed)
    (out / "seg-lungs-LUNA16").mkdir(parents=True, exist_ok=True)
    # float64 and 7 vessels a lung keep the small data sets as they always were
    dtype, vessels = (np.float32, FULL.vessels_per_lung) if size == "full" else (np.float64, 7)
    written: list[SyntheticScan] = []
    rows = []
    for i in range(cases):
        scan, scan_rows = _write_scan(out, i, cases, rng, scan_geometry(rng, size, fov_mm, length_mm), subsets,
                                      flip_fraction, dtype, vessels)
        written.append(scan)
        rows.extend(scan_rows)
    with atomic_path(out / "annotations.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
        writer.writerows(rows)
    return written
