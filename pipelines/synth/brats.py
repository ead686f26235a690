"""Synthetic glioma MRI in the exact BraTS layout: one folder per case, four modalities and a label map.

Each case is a skull-stripped brain phantom, as BraTS ships its data: an ellipsoidal brain with a cortical grey-matter
shell over white matter, two lateral ventricles of CSF, and one tumour made of three nested, irregular compartments
(smooth random perturbations of their distance fields): oedema around an enhancing rim around a necrotic core.
Their contrast differs by modality the way it does in real scans (arbitrary units, relative to white matter):

===============  =====  =====  =====  =====
tissue           T1c    T1     T2     FLAIR
===============  =====  =====  =====  =====
white matter     1.00   1.00   0.45   0.55
grey matter      0.72   0.70   0.65   0.70
CSF              0.20   0.20   1.60   0.15   (suppressed on FLAIR)
oedema           0.58   0.55   1.20   1.30   (bright on T2 and FLAIR)
enhancing rim    1.70   0.60   0.90   1.00   (bright on T1c only)
necrotic core    0.25   0.30   1.40   0.90   (dark on T1c, bright on T2)
skull (option)   0.90   0.90   0.50   0.60
===============  =====  =====  =====  =====

A smooth multiplicative bias field, Gaussian noise, a per-modality gain and a slight blur make each modality look
acquired rather than painted, so no single channel separates every region by a threshold: TC and ET need T1c, WT
needs FLAIR or T2.

Two sizes (:data:`SIZES`): ``"small"`` (the default, 64 x 64 x 48 voxels or any ``shape``; the brain fills the grid)
and ``"full"``, BraTS's real 240 x 240 x 155 grid with an adult brain in it (about 140 x 170 x 125 mm) and every
structure scaled with the head: ventricles, tumour position and radii are fractions of the head box, the smooth
perturbations (cortex, tumour margins, bias field) are three times wider. Oedema radii are 22-34 mm (whole tumours of
roughly 40-170 cm^3, as most BraTS cases); the small cases' tumours fill a larger share of their brain. A full case
peaks near 1.2 GB of memory, and cases are written one at a time.

Geometry follows BraTS: 1 mm isotropic voxels, NIfTI files whose affine is LPS-aligned as BraTS ships them
(ITK direction identity, origin ``(0, -(ny - 1), 0)``, i.e. the NIfTI affine ``diag(-1, -1, 1)`` with ``239`` in
the y translation for 240 x 240 x 155), int16 modalities and uint8 labels in the chosen naming's convention.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipelines.data.brats import CHANNELS, CONVENTIONS
from pipelines.io import atomic_path

__all__ = ["SIZES", "BratsSize", "SyntheticCase", "write_brats", "case_name", "CONTRAST"]

logger = logging.getLogger(__name__)

#: tissue -> intensity per channel (T1c, T1, T2, FLAIR), relative to white matter
CONTRAST: dict[str, tuple[float, float, float, float]] = {
    "wm": (1.00, 1.00, 0.45, 0.55),
    "gm": (0.72, 0.70, 0.65, 0.70),
    "csf": (0.20, 0.20, 1.60, 0.15),
    "oedema": (0.58, 0.55, 1.20, 1.30),
    "enhancing": (1.70, 0.60, 0.90, 1.00),
    "necrosis": (0.25, 0.30, 1.40, 0.90),
    "skull": (0.90, 0.90, 0.50, 0.60),
}


@dataclass(frozen=True)
class BratsSize:
    """A size preset: the voxel grid, the box the head's proportions are fractions of, the perturbations' scale."""

    shape: tuple[int, int, int]
    head: tuple[float, float, float] | None = None  # None: the grid itself (the brain fills it)
    feature_scale: float = 1.0  # multiplies the smooth-noise widths in voxels
    oedema_radius: tuple[float, float] = (0.2, 0.28)  # fraction of the head box's smallest side


#: ``full``: brain semi-axes 0.40/0.44/0.40 of the head box, i.e. about 70 x 86 x 62 mm, as an adult brain, and
#: oedema radii of 22-34 mm: whole tumours of roughly 40-170 cm^3 where most BraTS cases lie (the small cases' tumours
#: fill a larger share of their brain, to be learnt from few voxels)
SIZES: dict[str, BratsSize] = {
    "small": BratsSize((64, 64, 48)),
    "full": BratsSize((240, 240, 155), head=(175.0, 195.0, 155.0), feature_scale=3.0, oedema_radius=(0.14, 0.22)),
}


@dataclass
class SyntheticCase:
    """What the writer put on disk for one case (for tests and demos)."""

    case: str
    folder: Path
    convention: str
    shape: tuple[int, int, int]
    voxels: dict[str, int] = field(default_factory=dict)  # label compartment -> voxel count


def case_name(index: int, naming: str) -> str:
    """``BraTS2021_00007`` (2018-2021 naming) or ``BraTS-GLI-00007-000`` (2023 naming)."""
    return f"BraTS2021_{index:05d}" if naming == "2021" else f"BraTS-GLI-{index:05d}-000"


def _upsample_linear(noise: np.ndarray, shape) -> np.ndarray:
    """``ndimage.zoom(noise, shape / noise.shape, order=1, grid_mode=True, mode="grid-wrap")`` as three matrix products.

    Linear interpolation is separable, so each axis is one (out x in) matrix of two weights a row: about ten times
    faster than ``ndimage.zoom`` on 240 x 240 x 155 voxels (scipy has no separable path for it), equal to 1e-14,
    not to the bit.
    """
    mats = []
    for n, c in zip(shape, noise.shape):
        u = (np.arange(n) + 0.5) * (c / n) - 0.5  # grid_mode: voxel edges, not centres, map onto each other
        i0 = np.floor(u).astype(np.int64)
        w = u - i0
        mat = np.zeros((n, c))
        np.add.at(mat, (np.arange(n), i0 % c), 1 - w)  # grid-wrap: periodic
        np.add.at(mat, (np.arange(n), (i0 + 1) % c), w)
        mats.append(mat)
    out = np.matmul(mats[1], noise @ mats[2].T)  # z, then y: (cx, ny, nz)
    return (mats[0] @ out.reshape(out.shape[0], -1)).reshape(tuple(shape))


def _smooth_noise(shape, rng: np.random.Generator, sigma: float, exact: bool = True) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed at scale ``sigma`` voxels (drawn at a coarser grid, then zoomed).

    ``exact``: zoom with ``ndimage.zoom``, as the small data sets always have (they stay byte-identical); otherwise
    with :func:`_upsample_linear`, the same interpolation ten times faster.
    """
    factor = max(1, int(sigma // 2))
    coarse = [int(np.ceil(n / factor)) + 1 for n in shape]
    noise = ndimage.gaussian_filter(rng.normal(size=coarse), sigma / factor, mode="wrap")
    if factor > 1 and exact:
        noise = ndimage.zoom(noise, [n / c for n, c in zip(shape, coarse)], order=1, grid_mode=True, mode="grid-wrap")
    elif factor > 1:
        noise = _upsample_linear(noise, shape)
    noise = noise[tuple(slice(0, n) for n in shape)]
    return noise / max(float(noise.std()), 1e-6)


def _phantom(shape, rng: np.random.Generator, skull: bool, head=None, scale: float = 1.0,
             oedema_radius: tuple[float, float] = (0.2, 0.28)):
    """Return (intensity (4, x, y, z) float32, compartments uint8 (x, y, z): 0 bg, 1 NCR, 2 ED, 3 ET, brain mask).

    ``head``: the box (x, y, z voxels) the anatomy's proportions are fractions of (default: ``shape``), centred in the
    grid; ``scale`` multiplies the widths of the smooth perturbations (``scale=1``, the small preset, zooms them with
    ``ndimage.zoom`` as it always has); ``oedema_radius``: its range, as fractions of the head box's smallest side.
    Coordinates are 1D arrays broadcast against each other (the values of a meshgrid, without its memory).
    """

    def noise(sigma: float) -> np.ndarray:
        return _smooth_noise(shape, rng, sigma, exact=scale == 1.0)

    nx, ny, nz = shape if head is None else head
    X, Y, Z = (np.reshape(np.arange(n) - (n - 1) / 2, [-1 if k == i else 1 for k in range(3)])
               for i, n in enumerate(shape))
    semi = np.array([0.40 * nx, 0.44 * ny, 0.40 * nz]) * rng.uniform(0.95, 1.05, size=3)
    wobble = 0.04 * noise(6.0 * scale)
    r_brain = np.sqrt((X / semi[0]) ** 2 + (Y / semi[1]) ** 2 + (Z / semi[2]) ** 2) + wobble
    brain = r_brain <= 1.0
    tissue = np.zeros(shape, dtype=np.uint8)  # 0 bg, 1 wm, 2 gm, 3 csf, 4 skull
    tissue[brain] = 2
    tissue[r_brain <= 0.82 + 0.05 * noise(3.0 * scale)] = 1
    tissue[~brain] = 0
    for side in (-1, 1):  # lateral ventricles: elongated ellipsoids either side of the midline
        c = np.array([side * 0.12 * nx, 0.02 * ny, 0.08 * nz])
        s = np.array([0.06 * nx, 0.22 * ny, 0.09 * nz]) * rng.uniform(0.85, 1.15, size=3)
        tissue[((X - c[0]) / s[0]) ** 2 + ((Y - c[1]) / s[1]) ** 2 + ((Z - c[2]) / s[2]) ** 2 <= 1.0] = 3
    if skull:
        tissue[(r_brain > 1.06) & (r_brain <= 1.16)] = 4

    # tumour: centre inside one hemisphere, away from the brain surface; three nested irregular compartments
    size = min(nx, ny, nz)
    r_ed = rng.uniform(*oedema_radius) * size
    r_tc = r_ed * rng.uniform(0.55, 0.75)
    r_nc = r_tc * rng.uniform(0.45, 0.65)
    side = rng.choice([-1, 1])
    centre = np.array([side * rng.uniform(0.15, 0.35) * nx, rng.uniform(-0.2, 0.2) * ny, rng.uniform(-0.15, 0.15) * nz])
    stretch = rng.uniform(0.8, 1.25, size=3)
    dist = np.sqrt(((X - centre[0]) / stretch[0]) ** 2 + ((Y - centre[1]) / stretch[1]) ** 2
                   + ((Z - centre[2]) / stretch[2]) ** 2)
    compartments = np.zeros(shape, dtype=np.uint8)
    oedema = (dist + 0.18 * r_ed * noise(3.0 * scale) <= r_ed) & brain
    core = (dist + 0.15 * r_tc * noise(2.0 * scale) <= r_tc) & brain
    necrosis = (dist + 0.2 * r_nc * noise(2.0 * scale) <= r_nc) & core
    compartments[oedema] = 2
    compartments[core] = 3
    compartments[necrosis] = 1

    # one class a voxel (its tissue, the tumour over it) looked up in a table of the classes' contrasts
    classes = tissue.copy()  # 0 background, 1 wm, 2 gm, 3 csf, 4 skull
    for value, cls in ((2, 5), (3, 6), (1, 7)):  # oedema, enhancing, necrosis
        classes[compartments == value] = cls
    table = np.zeros((4, 8), dtype=np.float32)
    for cls, name in enumerate(("wm", "gm", "csf", "skull", "oedema", "enhancing", "necrosis"), start=1):
        table[:, cls] = CONTRAST[name]
    image = table[:, classes]  # (4, x, y, z) float32
    foreground = tissue > 0
    for c in range(4):
        channel = ndimage.gaussian_filter(image[c], 0.6)
        bias = np.exp(0.08 * noise(12.0 * scale))
        channel = channel * bias * rng.uniform(0.8, 1.2) + rng.normal(0, 0.05, size=shape)
        channel = np.where(foreground, np.clip(channel, 0.01, None), 0.0)  # skull-stripped: zero outside
        image[c] = channel * 400.0
    return image, compartments, brain


def write_brats(
    out: str | os.PathLike,
    *,
    cases: int = 8,
    naming: str = "2021",
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    skull: bool = False,
    first_index: int = 0,
    size: str = "small",
) -> list[SyntheticCase]:
    """Write ``cases`` synthetic BraTS cases under ``out`` and return what was written.

    Args:
        out: data set root; one folder per case is created in it.
        cases: number of cases.
        naming: ``"2021"`` (``<case>_t1ce.nii.gz``..., labels 0, 1, 2, 4) or ``"2023"`` (``<case>-t1c.nii.gz``...,
            labels 0, 1, 2, 3).
        seed: random seed; the same seed writes the same data set.
        shape: ``size="small"`` only: voxels along x, y, z at 1 mm (default 64 x 64 x 48, small for speed; the brain
            fills the grid).
        skull: draw a skull ring (BraTS data is skull-stripped, so off by default).
        first_index: number of the first case (its name).
        size: ``"small"`` or ``"full"`` (BraTS's 240 x 240 x 155 with an adult-sized brain in it): :data:`SIZES`.
    """
    if naming not in CONVENTIONS:
        raise ValueError(f"naming must be one of {sorted(CONVENTIONS)}, got {naming!r}")
    if size not in SIZES:
        raise ValueError(f"write_brats: size must be one of {list(SIZES)}, got {size!r}")
    if size != "small" and shape is not None:
        raise ValueError(f"write_brats: shape applies to size='small' only; size={size!r} is "
                         f"{'x'.join(map(str, SIZES[size].shape))}")
    preset = SIZES[size]
    conv = CONVENTIONS[naming]
    out = Path(out)
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in (preset.shape if shape is None else shape))
    origin = (0.0, -float(shape[1] - 1), 0.0)  # LPS origin as BraTS ships it (NIfTI affine diag(-1, -1, 1))
    written = []
    for i in range(cases):
        name = case_name(first_index + i, naming)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        voxels = _write_case(folder, name, conv, origin, shape, rng, skull, preset)
        written.append(SyntheticCase(name, folder, naming, shape, voxels))
        logger.info("synth brats: %d/%d %s %s", i + 1, cases, name, voxels)
    return written


def _write_case(folder: Path, name: str, conv, origin, shape, rng: np.random.Generator, skull: bool,
                preset: BratsSize) -> dict[str, int]:
    """Draw and write one case's four modalities and label map; its arrays are freed on return (memory does not grow
    with the case count). Returns the voxel count of each label compartment."""
    image, compartments, _ = _phantom(shape, rng, skull, preset.head, preset.feature_scale, preset.oedema_radius)
    label = np.zeros(compartments.shape, dtype=np.uint8)
    label[compartments == 1] = conv.ncr
    label[compartments == 2] = conv.ed
    label[compartments == 3] = conv.et
    for c, tag in enumerate((*conv.modalities, conv.label)):
        array = label if c == len(CHANNELS) else np.round(image[c]).astype(np.int16)
        itk = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        itk.SetSpacing((1.0, 1.0, 1.0))
        itk.SetOrigin(origin)
        itk.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        with atomic_path(folder / conv.filename(name, tag)) as tmp:
            sitk.WriteImage(itk, str(tmp), True)
    return {"NCR": int((compartments == 1).sum()), "ED": int((compartments == 2).sum()),
            "ET": int((compartments == 3).sum())}
