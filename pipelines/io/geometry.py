"""Grid geometry: size, spacing, origin and direction of an image, its voxel-to-world affine, and grid comparisons.

One convention, ITK's (SimpleITK's): a voxel index ``i`` (x, y, z order) lies at the world point (LPS, mm)

    ``world = origin + direction @ diag(spacing) @ i``

which is the affine :func:`voxel_to_world` builds. MONAI and nibabel speak RAS: :func:`affine_of` turns it with MONAI's
``orientation_ras_lps`` (the first two axes flipped); :func:`grid_of_affine` goes back from an affine to spacing,
direction and origin (ITK's reading of a NIfTI header: the direction is the affine's normalised columns).

:func:`geometry` reads the grid of a ``sitk.ImageFileReader`` (header loaded), a ``sitk.Image`` or
:class:`~pipelines.io.checks.NiftiHeaderInformation`; :func:`grid_differences` says how two grids differ, one
phrase per property. Upstream: SimpleITK maps single points (``TransformIndexToPhysicalPoint``) and MONAI keeps an
affine per tensor, but neither compares two grids or maps arrays of points of a header it has not read as an image.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from monai.data.utils import orientation_ras_lps

__all__ = [
    "Grid",
    "geometry",
    "grid_differences",
    "voxel_to_world",
    "affine_of",
    "grid_of_affine",
    "index_to_world",
    "world_to_index",
]


class Grid(Protocol):
    """What :func:`geometry` reads: SimpleITK's image and image-file-reader interface."""

    def GetSize(self) -> Any: ...  # noqa: N802, E704 - SimpleITK's names

    def GetSpacing(self) -> Any: ...  # noqa: N802, E704

    def GetOrigin(self) -> Any: ...  # noqa: N802, E704

    def GetDirection(self) -> Any: ...  # noqa: N802, E704


def geometry(info: Grid) -> dict[str, Any]:
    """``{"size": tuple of int, "spacing", "origin", "direction" (flat, row-major): float64 arrays}`` of ``info``."""
    return {
        "size": tuple(int(s) for s in info.GetSize()),
        "spacing": np.asarray(info.GetSpacing(), dtype=np.float64),
        "origin": np.asarray(info.GetOrigin(), dtype=np.float64),
        "direction": np.asarray(info.GetDirection(), dtype=np.float64),
    }


def grid_differences(reference: dict, other: dict, *, atol_mm: float = 1e-3, atol_dir: float = 1e-4) -> list[str]:
    """How grid ``other`` differs from ``reference`` (both from :func:`geometry`), one phrase per property (size,
    spacing, origin within ``atol_mm``, direction within ``atol_dir``); empty when they are the same. Grids of
    different dimensions give the one phrase ``"2D != 3D"``."""
    if len(other["size"]) != len(reference["size"]):
        return [f"{len(other['size'])}D != {len(reference['size'])}D"]
    problems = []
    if tuple(other["size"]) != tuple(reference["size"]):
        problems.append(f"size {list(other['size'])} != {list(reference['size'])}")
    spacing, ref_spacing = np.asarray(other["spacing"]), np.asarray(reference["spacing"])
    if not np.allclose(spacing, ref_spacing, atol=atol_mm):
        problems.append(f"spacing {spacing.round(4).tolist()} != {ref_spacing.round(4).tolist()}")
    origin, ref_origin = np.asarray(other["origin"]), np.asarray(reference["origin"])
    if not np.allclose(origin, ref_origin, atol=atol_mm):
        problems.append(f"origin {origin.round(3).tolist()} != {ref_origin.round(3).tolist()}")
    if not np.allclose(np.asarray(other["direction"]), np.asarray(reference["direction"]), atol=atol_dir):
        problems.append("direction differs")
    return problems


def voxel_to_world(spacing: Any, origin: Any, direction: Any) -> np.ndarray:
    """The ``(d + 1, d + 1)`` affine (ITK's LPS world) of a grid: ``direction @ diag(spacing)`` and the origin.
    ``direction`` is ``d x d`` or flat (row-major, as SimpleITK gives it)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    dims = spacing.size
    affine = np.eye(dims + 1)
    affine[:dims, :dims] = np.asarray(direction, dtype=np.float64).reshape(dims, dims) @ np.diag(spacing)
    affine[:dims, -1] = np.asarray(origin, dtype=np.float64)
    return affine


def affine_of(image: Grid, lps_to_ras: bool = True) -> np.ndarray:
    """The voxel-to-world affine of a SimpleITK image (or reader): RAS as MONAI and nibabel report it, or ITK's LPS
    with ``lps_to_ras=False``."""
    affine = voxel_to_world(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return np.asarray(orientation_ras_lps(affine)) if lps_to_ras else affine


def grid_of_affine(affine: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(spacing, direction (d x d), origin)`` of an LPS voxel-to-world affine: the spacing is the length of each
    column, the direction the columns normalised (a zero column keeps its zeros), the origin the last column."""
    affine = np.asarray(affine, dtype=np.float64)
    dims = affine.shape[0] - 1
    linear = affine[:dims, :dims]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / np.where(spacing > 0, spacing, 1.0)
    return spacing, direction, affine[:dims, -1].copy()


def index_to_world(affine: np.ndarray, index: Any) -> np.ndarray:
    """World points of voxel indices: ``index`` is ``(d,)`` or ``(n, d)`` (x, y, z order, fractional allowed)."""
    index = np.asarray(index, dtype=np.float64)
    dims = affine.shape[0] - 1
    return index @ affine[:dims, :dims].T + affine[:dims, -1]


def world_to_index(affine: np.ndarray, points: Any) -> np.ndarray:
    """Continuous voxel indices of world points (the inverse of :func:`index_to_world`)."""
    points = np.asarray(points, dtype=np.float64)
    dims = affine.shape[0] - 1
    return (points - affine[:dims, -1]) @ np.linalg.inv(affine[:dims, :dims]).T
