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

__all__ = ["SyntheticCase", "write_brats", "case_name", "CONTRAST"]

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


def _smooth_noise(shape, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed at scale ``sigma`` voxels (drawn at a coarser grid, then zoomed)."""
    factor = max(1, int(sigma // 2))
    coarse = [int(np.ceil(n / factor)) + 1 for n in shape]
    noise = ndimage.gaussian_filter(rng.normal(size=coarse), sigma / factor, mode="wrap")
    if factor > 1:
        noise = ndimage.zoom(noise, [n / c for n, c in zip(shape, coarse)], order=1, grid_mode=True, mode="grid-wrap")
    noise = noise[tuple(slice(0, n) for n in shape)]
    return noise / max(float(noise.std()), 1e-6)


def _phantom(shape, rng: np.random.Generator, skull: bool):
    """Return (intensity (4, x, y, z) float32, compartments uint8 (x, y, z): 0 bg, 1 NCR, 2 ED, 3 ET, brain mask)."""
    nx, ny, nz = shape
    X, Y, Z = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    semi = np.array([0.40 * nx, 0.44 * ny, 0.40 * nz]) * rng.uniform(0.95, 1.05, size=3)
    wobble = 0.04 * _smooth_noise(shape, rng, 6.0)
    r_brain = np.sqrt((X / semi[0]) ** 2 + (Y / semi[1]) ** 2 + (Z / semi[2]) ** 2) + wobble
    brain = r_brain <= 1.0
    tissue = np.zeros(shape, dtype=np.uint8)  # 0 bg, 1 wm, 2 gm, 3 csf, 4 skull
    tissue[brain] = 2
    tissue[r_brain <= 0.82 + 0.05 * _smooth_noise(shape, rng, 3.0)] = 1
    tissue[~brain] = 0
    for side in (-1, 1):  # lateral ventricles: elongated ellipsoids either side of the midline
        c = np.array([side * 0.12 * nx, 0.02 * ny, 0.08 * nz])
        s = np.array([0.06 * nx, 0.22 * ny, 0.09 * nz]) * rng.uniform(0.85, 1.15, size=3)
        tissue[((X - c[0]) / s[0]) ** 2 + ((Y - c[1]) / s[1]) ** 2 + ((Z - c[2]) / s[2]) ** 2 <= 1.0] = 3
    if skull:
        tissue[(r_brain > 1.06) & (r_brain <= 1.16)] = 4

    # tumour: centre inside one hemisphere, away from the brain surface; three nested irregular compartments
    size = min(shape)
    r_ed = rng.uniform(0.2, 0.28) * size
    r_tc = r_ed * rng.uniform(0.55, 0.75)
    r_nc = r_tc * rng.uniform(0.45, 0.65)
    side = rng.choice([-1, 1])
    centre = np.array([side * rng.uniform(0.15, 0.35) * nx, rng.uniform(-0.2, 0.2) * ny, rng.uniform(-0.15, 0.15) * nz])
    stretch = rng.uniform(0.8, 1.25, size=3)
    dist = np.sqrt(((X - centre[0]) / stretch[0]) ** 2 + ((Y - centre[1]) / stretch[1]) ** 2
                   + ((Z - centre[2]) / stretch[2]) ** 2)
    compartments = np.zeros(shape, dtype=np.uint8)
    oedema = (dist + 0.18 * r_ed * _smooth_noise(shape, rng, 3.0) <= r_ed) & brain
    core = (dist + 0.15 * r_tc * _smooth_noise(shape, rng, 2.0) <= r_tc) & brain
    necrosis = (dist + 0.2 * r_nc * _smooth_noise(shape, rng, 2.0) <= r_nc) & core
    compartments[oedema] = 2
    compartments[core] = 3
    compartments[necrosis] = 1

    names = {1: "wm", 2: "gm", 3: "csf", 4: "skull"}
    image = np.zeros((4, *shape), dtype=np.float32)
    for value, name in names.items():
        image[:, tissue == value] = np.asarray(CONTRAST[name], dtype=np.float32)[:, None]
    for value, name in ((2, "oedema"), (3, "enhancing"), (1, "necrosis")):
        image[:, compartments == value] = np.asarray(CONTRAST[name], dtype=np.float32)[:, None]
    foreground = tissue > 0
    for c in range(4):
        channel = ndimage.gaussian_filter(image[c], 0.6)
        bias = np.exp(0.08 * _smooth_noise(shape, rng, 12.0))
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
    shape: tuple[int, int, int] = (64, 64, 48),
    skull: bool = False,
    first_index: int = 0,
) -> list[SyntheticCase]:
    """Write ``cases`` synthetic BraTS cases under ``out`` and return what was written.

    Args:
        out: data set root; one folder per case is created in it.
        cases: number of cases.
        naming: ``"2021"`` (``<case>_t1ce.nii.gz``..., labels 0, 1, 2, 4) or ``"2023"`` (``<case>-t1c.nii.gz``...,
            labels 0, 1, 2, 3).
        seed: random seed; the same seed writes the same data set.
        shape: voxels along x, y, z at 1 mm (BraTS is 240 x 240 x 155; the default is small for speed).
        skull: draw a skull ring (BraTS data is skull-stripped, so off by default).
        first_index: number of the first case (its name).
    """
    if naming not in CONVENTIONS:
        raise ValueError(f"naming must be one of {sorted(CONVENTIONS)}, got {naming!r}")
    conv = CONVENTIONS[naming]
    out = Path(out)
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    origin = (0.0, -float(shape[1] - 1), 0.0)  # LPS origin as BraTS ships it (NIfTI affine diag(-1, -1, 1))
    written = []
    for i in range(cases):
        name = case_name(first_index + i, naming)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        image, compartments, _ = _phantom(shape, rng, skull)
        label = np.zeros(shape, dtype=np.uint8)
        label[compartments == 1] = conv.ncr
        label[compartments == 2] = conv.ed
        label[compartments == 3] = conv.et
        arrays = [np.round(image[c]).astype(np.int16) for c in range(len(CHANNELS))] + [label]
        for tag, array in zip((*conv.modalities, conv.label), arrays):
            itk = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
            itk.SetSpacing((1.0, 1.0, 1.0))
            itk.SetOrigin(origin)
            itk.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
            with atomic_path(folder / conv.filename(name, tag)) as tmp:
                sitk.WriteImage(itk, str(tmp), True)
        voxels = {"NCR": int((compartments == 1).sum()), "ED": int((compartments == 2).sum()),
                  "ET": int((compartments == 3).sum())}
        written.append(SyntheticCase(name, folder, naming, shape, voxels))
        logger.info("synth brats: %d/%d %s %s", i + 1, cases, name, voxels)
    return written
