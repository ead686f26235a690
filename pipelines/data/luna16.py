"""LUNA16 lung CT: MetaImage scans in ``subset*`` folders, nodules in ``annotations.csv``, optional lung masks.

Expected layout (https://luna16.grand-challenge.org/Data/)::

    LUNA16/
    ├── subset0/
    │   ├── 1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260.mhd
    │   ├── 1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260.raw
    │   └── ...
    ├── subset1/ ... subset9/
    ├── annotations.csv            seriesuid,coordX,coordY,coordZ,diameter_mm  (world mm, ITK/LPS axes)
    └── seg-lungs-LUNA16/          optional: <seriesuid>.mhd (+ .zraw), lung masks (3 left, 4 right, 5 trachea)

Policy for what a real download looks like:

- ``annotations.csv`` rows whose ``seriesuid`` has no scan on disk are **skipped and logged** (a single summary line):
  most users download a few subsets, while the CSV lists the nodules of all 888 scans.
- A missing ``annotations.csv``, a missing column, an unparsable row, a non-positive diameter, a MetaImage whose data
  file is missing or truncated, a seriesuid present in two subsets, or a nodule whose **centre lies outside its scan**
  is an **error** (``ValueError`` naming the file and the row): each means the masks would be silently wrong.
- A nodule whose centre is inside the scan but whose sphere crosses the border is clipped to the scan.
- Scans without annotations get an empty nodule mask (negatives for training).

Nodule masks are rasterised as spheres in world coordinates through each image's origin, spacing and direction
matrix, written once as ``<cache_dir>/nodule-masks/<seriesuid>.mha`` on the image's grid, and rebuilt when the
annotations or the image geometry change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.data.splits import split_by_hash
from pipelines.io.atomic import atomic_path, write_json_atomic
from pipelines.io.checks import read_image_information
from pipelines.io.geometry import geometry, index_to_world, voxel_to_world, world_to_index
from pipelines.io.tables import read_table

__all__ = [
    "Nodule",
    "find_scans",
    "read_annotations",
    "nodule_mask",
    "write_nodule_mask",
    "luna16_datalist",
    "ANNOTATION_COLUMNS",
]

logger = logging.getLogger(__name__)

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
LUNG_MASK_DIR = "seg-lungs-LUNA16"


@dataclass(frozen=True)
class Nodule:
    """One row of ``annotations.csv``: centre in world millimetres (ITK/LPS axes) and diameter in millimetres."""

    seriesuid: str
    center: tuple[float, float, float]
    diameter_mm: float
    row: int = 0  # line number in annotations.csv, for error messages


def find_scans(root: str | os.PathLike) -> dict[str, Path]:
    """Map seriesuid -> ``.mhd`` path for every scan in ``root/subset*/`` (or directly in ``root``).

    Raises ``ValueError`` if ``root`` does not exist, holds no scan, or a seriesuid appears twice.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: LUNA16 folder not found")
    files = sorted(root.glob("subset*/*.mhd")) or sorted(root.glob("*.mhd"))
    if not files:
        raise ValueError(f"{root}: no LUNA16 scans found (expected subset*/<seriesuid>.mhd)")
    scans: dict[str, Path] = {}
    for path in files:
        uid = path.name[: -len(".mhd")]
        if uid in scans:
            raise ValueError(f"{path}: seriesuid {uid} also found at {scans[uid]}")
        scans[uid] = path
    return scans


def read_annotations(path: str | os.PathLike) -> dict[str, list[Nodule]]:
    """Read ``annotations.csv`` into seriesuid -> nodules, validating the header and every row."""
    path = Path(path)
    nodules: dict[str, list[Nodule]] = {}
    rows, problems = read_table(path, ANNOTATION_COLUMNS, "annotations file")
    for line, row in rows:
        try:
            center = (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"]))
            diameter = float(row["diameter_mm"])
        except ValueError:
            problems.add(line, f"cannot parse coordinates or diameter in {row}")
            continue
        if not np.all(np.isfinite(center)) or not np.isfinite(diameter) or diameter <= 0:
            problems.add(line, f"coordinates must be finite and diameter_mm > 0, got {row}")
            continue
        uid = row["seriesuid"]
        if not uid:
            problems.add(line, "empty seriesuid")
            continue
        nodules.setdefault(uid, []).append(Nodule(uid, center, diameter, line))
    problems.raise_if_any()
    return nodules


def nodule_mask(geometry: dict, nodules: list[Nodule], *, source: str = "") -> np.ndarray:
    """Rasterise ``nodules`` as spheres on the grid ``geometry`` (size, spacing, origin, direction as SimpleITK gives).

    Returns a ``uint8`` array in SimpleITK's (z, y, x) order, 1 inside any nodule. A voxel is inside when its centre's
    world position is within ``diameter_mm / 2`` of the nodule centre. Raises ``ValueError`` if a nodule's centre lies
    outside the image (``source`` names the scan in the message).
    """
    size = np.asarray(geometry["size"], dtype=int)
    affine = voxel_to_world(geometry["spacing"], geometry["origin"], geometry["direction"])
    to_index = np.linalg.inv(affine[:3, :3])
    mask = np.zeros(size[::-1], dtype=np.uint8)
    for nodule in nodules:
        center_index = world_to_index(affine, nodule.center)
        if np.any(center_index < -0.5) or np.any(center_index > size - 0.5):
            raise ValueError(
                f"{source}: nodule on line {nodule.row} of annotations.csv at world {nodule.center} mm lies outside "
                f"the scan (voxel index {np.round(center_index, 1).tolist()}, image size {size.tolist()})"
            )
        radius = nodule.diameter_mm / 2
        # index-space half-extent of the sphere's bounding box, for any direction matrix
        half = np.abs(to_index) @ np.full(3, radius)
        lo = np.maximum(np.floor(center_index - half).astype(int), 0)
        hi = np.minimum(np.ceil(center_index + half).astype(int) + 1, size)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")  # x, y, z
        world = index_to_world(affine, np.stack([g.ravel() for g in grids], axis=1))  # (voxels, 3)
        inside = (np.sum((world - np.asarray(nodule.center)) ** 2, axis=1) <= radius**2).reshape(grids[0].shape)
        region = mask[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        region |= inside.transpose(2, 1, 0).astype(np.uint8)
    return mask


def write_nodule_mask(scan: Path, nodules: list[Nodule], out: Path) -> Path:
    """Write the nodule mask of ``scan`` to ``out`` (``.mha``) on the scan's grid, unless an identical one exists."""
    info = read_image_information(scan)
    grid = {k: np.asarray(v).tolist() for k, v in geometry(info).items()}  # JSON-able, for the stamp's key
    if info.GetDimension() != 3:
        raise ValueError(f"{scan}: expected a 3D scan, got {info.GetDimension()} dimensions")
    key = hashlib.sha256(
        json.dumps({"geometry": grid, "nodules": [asdict(n) | {"row": 0} for n in nodules]}).encode()
    ).hexdigest()
    stamp = out.with_suffix(".json")
    if out.exists() and stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        return out
    mask = sitk.GetImageFromArray(nodule_mask(grid, nodules, source=str(scan)))
    mask.SetSpacing(grid["spacing"])
    mask.SetOrigin(grid["origin"])
    mask.SetDirection(grid["direction"])
    with atomic_path(out) as tmp:
        sitk.WriteImage(mask, str(tmp), True)
    write_json_atomic(stamp, {"key": key, "scan": str(scan), "nodules": len(nodules)})
    return out


def _scan_readable(scan: Path) -> bool:
    try:
        return read_image_information(scan).GetDimension() == 3
    except ValueError:
        return False


def luna16_datalist(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    annotated_only: bool = False,
    validate: bool = True,
) -> dict[str, list[dict]]:
    """Validate a LUNA16 folder and return an MSD-style datalist ``{"training": [...], "validation": [...]}``.

    Each item is ``{"image": <scan .mhd>, "label": <nodule mask .mha>, "seriesuid": ..., "nodules": n}`` plus
    ``"lung"`` when ``seg-lungs-LUNA16/<seriesuid>.mhd`` exists. The split is by a hash of the seriesuid and ``seed``:
    deterministic, and stable when scans are added. ``annotated_only`` drops scans without nodules.
    ``validate=False``: a scan whose header cannot be read (truncated ``.raw``, not 3D...) is listed anyway, its
    mask not written, for :func:`pipelines.data.preflight.check_datalist` to report with every other bad input
    (annotation errors still raise: they concern the CSV, not one input).
    """
    root = Path(root)
    scans = find_scans(root)
    annotations = read_annotations(root / "annotations.csv")
    unknown = sorted(set(annotations) - set(scans))
    if unknown:
        rows = sum(len(annotations[u]) for u in unknown)
        logger.info(
            "%s: skipped %d annotation row(s) of %d seriesuid(s) that have no scan in %s (a partial download?)",
            root / "annotations.csv", rows, len(unknown), root,
        )
    mask_dir = Path(cache_dir) / "nodule-masks"
    items = []
    for uid, scan in scans.items():
        nodules = annotations.get(uid, [])
        if annotated_only and not nodules:
            continue
        label = mask_dir / f"{uid}.mha"
        if validate or _scan_readable(scan):
            label = write_nodule_mask(scan, nodules, label)
        item = {
            "image": str(scan),
            "label": str(label),
            "seriesuid": uid,
            "nodules": len(nodules),
        }
        lung = root / LUNG_MASK_DIR / f"{uid}.mhd"
        if lung.exists():
            item["lung"] = str(lung)
        items.append(item)
    if not items:
        raise ValueError(f"{root}: no scan left to use (annotated_only={annotated_only})")
    training, validation = split_by_hash(items, key="seriesuid", val_fraction=val_fraction, seed=seed)
    return {"training": training, "validation": validation}
