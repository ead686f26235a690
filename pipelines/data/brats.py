"""BraTS glioma MRI: one folder per case with four co-registered modalities and a label map.

Two naming conventions are in use on disk; the one of a data set is detected from its files::

    BraTS 2018-2021 ("2021")                        BraTS 2023 ("2023")
    BraTS2021/                                      BraTS2023-GLI/
    ├── BraTS2021_00000/                            ├── BraTS-GLI-00000-000/
    │   ├── BraTS2021_00000_t1.nii.gz               │   ├── BraTS-GLI-00000-000-t1n.nii.gz
    │   ├── BraTS2021_00000_t1ce.nii.gz             │   ├── BraTS-GLI-00000-000-t1c.nii.gz
    │   ├── BraTS2021_00000_t2.nii.gz               │   ├── BraTS-GLI-00000-000-t2w.nii.gz
    │   ├── BraTS2021_00000_flair.nii.gz            │   ├── BraTS-GLI-00000-000-t2f.nii.gz
    │   └── BraTS2021_00000_seg.nii.gz              │   └── BraTS-GLI-00000-000-seg.nii.gz
    └── ...                                         └── ...

    labels: 0 background, 1 necrotic/non-enhancing   labels: 0 background, 1 necrotic core (NCR),
            tumour core, 2 peritumoral oedema,              2 oedema (ED), 3 enhancing tumour (ET)
            4 enhancing tumour (ET)

``.nii`` files are accepted as well as ``.nii.gz``. The label file is optional for inference (validation and test
cases ship without it).

**Channel order** (the network input, everywhere in this project, as MONAI's ``brats_mri_segmentation`` bundle):
``0 T1c`` (T1 post-contrast: ``t1ce`` / ``t1c``), ``1 T1`` (``t1`` / ``t1n``), ``2 T2`` (``t2`` / ``t2w``),
``3 FLAIR`` (``flair`` / ``t2f``).

**Regions** (the network output, three overlapping sigmoid channels, see
:class:`pipelines.transforms.brats.LabelToRegionsd`): ``0 TC`` tumour core = NCR ∪ ET, ``1 WT`` whole tumour =
NCR ∪ ED ∪ ET, ``2 ET`` enhancing tumour (label 4 in 2018-2021, 3 in 2023).

Errors (``ValueError`` naming the case and the file): a missing modality, modalities or label not sharing one grid
(size, spacing, origin, direction from the SimpleITK headers), a label value outside the convention, a data set that
mixes the two conventions, a folder with no case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.data.splits import split_by_hash
from pipelines.io.checks import read_image_information
from pipelines.io.formats import NIFTI_SUFFIXES
from pipelines.io.geometry import geometry, grid_differences

__all__ = [
    "BraTSConvention",
    "CONVENTIONS",
    "CHANNELS",
    "REGIONS",
    "detect_convention",
    "find_cases",
    "brats_case",
    "brats_cases",
    "brats_datalist",
    "check_grids",
    "check_label_values",
    "label_values",
]

#: network input channels, in order
CHANNELS: tuple[str, ...] = ("T1c", "T1", "T2", "FLAIR")
#: network output channels (overlapping regions), in order
REGIONS: tuple[str, ...] = ("TC", "WT", "ET")


@dataclass(frozen=True)
class BraTSConvention:
    """File naming and label values of one BraTS release family."""

    name: str
    separator: str  # between the case id and the modality
    modalities: tuple[str, str, str, str]  # file tags in the order of CHANNELS
    label: str
    ncr: int
    ed: int
    et: int

    @property
    def labels(self) -> tuple[int, ...]:
        return (0, self.ncr, self.ed, self.et)

    def filename(self, case: str, tag: str, suffix: str = ".nii.gz") -> str:
        return f"{case}{self.separator}{tag}{suffix}"


CONVENTIONS: dict[str, BraTSConvention] = {
    "2021": BraTSConvention("2021", "_", ("t1ce", "t1", "t2", "flair"), "seg", ncr=1, ed=2, et=4),
    "2023": BraTSConvention("2023", "-", ("t1c", "t1n", "t2w", "t2f"), "seg", ncr=1, ed=2, et=3),
}


def _find_file(folder: Path, name_without_suffix: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        path = folder / f"{name_without_suffix}{suffix}"
        if path.is_file():
            return path
    return None


def detect_convention(case_dir: str | os.PathLike) -> str:
    """``"2021"`` or ``"2023"``: the convention whose modality files are present in ``case_dir``.

    The convention with more of its four modality files present wins; ``ValueError`` if neither has any.
    """
    case_dir = Path(case_dir)
    case = case_dir.name
    found = {
        name: sum(_find_file(case_dir, f"{case}{c.separator}{tag}") is not None for tag in c.modalities)
        for name, c in CONVENTIONS.items()
    }
    best = max(found, key=found.get)
    if found[best] == 0:
        expected = " or ".join(f"{CONVENTIONS[n].filename(case, CONVENTIONS[n].modalities[0])}" for n in CONVENTIONS)
        raise ValueError(f"case {case}: {case_dir} holds no BraTS modality file (expected e.g. {expected})")
    return best


def _is_case_dir(path: Path) -> bool:
    return path.is_dir() and any(
        _find_file(path, f"{path.name}{c.separator}{c.modalities[0]}") is not None
        or _find_file(path, f"{path.name}{c.separator}{c.label}") is not None
        for c in CONVENTIONS.values()
    )


def find_cases(root: str | os.PathLike) -> list[Path]:
    """The case folders of a data set: ``root`` itself when it is one case, else its sub-folders that are cases.

    A sub-folder counts as a case when it holds ``<folder name>_t1ce``/``-t1c`` or a ``seg`` file of either
    convention. ``ValueError`` if ``root`` is missing or holds no case.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: BraTS folder not found")
    if _is_case_dir(root):
        return [root]
    cases = sorted(p for p in root.iterdir() if not p.name.startswith(".") and _is_case_dir(p))
    if not cases:
        raise ValueError(
            f"{root}: no BraTS case folder found (expected <case>/<case>_t1ce.nii.gz ... (2018-2021) or "
            f"<case>/<case>-t1c.nii.gz ... (2023))"
        )
    return cases


def _geometry(path: Path) -> dict:
    info = read_image_information(path)
    if info.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D volume, got {info.GetDimension()} dimensions")
    return geometry(info)


def check_grids(case: str, files: list[Path], *, atol_mm: float = 1e-3, atol_dir: float = 1e-4) -> None:
    """Raise ``ValueError`` unless every file in ``files`` has the size, spacing, origin and direction of the first."""
    reference = _geometry(files[0])
    for path in files[1:]:
        problems = grid_differences(reference, _geometry(path), atol_mm=atol_mm, atol_dir=atol_dir)
        if problems:
            raise ValueError(
                f"case {case}: {path} is not on the grid of {files[0].name} ({'; '.join(problems)}); "
                "BraTS modalities and label must be co-registered on one grid"
            )


def check_label_values(case: str, path: Path, convention: BraTSConvention) -> np.ndarray:
    """Read the label map and raise ``ValueError`` if it holds a value outside ``convention.labels``."""
    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as e:
        raise ValueError(f"case {case}: {path} cannot be read ({str(e).strip().splitlines()[0]})") from None
    values = np.unique(array)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise ValueError(f"case {case}: {path} holds non-integer label values {values[:5].tolist()}")
    bad = sorted(set(values.astype(np.int64).tolist()) - set(convention.labels))
    if bad:
        hint = ""
        other = [c for c in CONVENTIONS.values() if c is not convention and set(values.tolist()) <= set(c.labels)]
        if other:
            hint = f" (they fit the BraTS {other[0].name} convention; were the files renamed?)"
        raise ValueError(
            f"case {case}: {path} holds label value(s) {bad} outside the BraTS {convention.name} convention "
            f"{list(convention.labels)}{hint}"
        )
    return values


def brats_case(
    case_dir: str | os.PathLike,
    *,
    convention: str | None = None,
    require_label: bool = True,
    check_labels: bool = True,
    check_geometry: bool = True,
    validate: bool = True,
) -> dict:
    """Validate one case folder and return its datalist item.

    The item is ``{"image": [T1c, T1, T2, FLAIR paths], "label": seg path (when present), "case": folder name,
    "convention": "2021" | "2023", "reference": the T1c path}``. ``reference`` is the file whose geometry an
    inference output copies. ``validate=False`` checks nothing and raises for nothing: a missing file is listed
    at the path the naming convention gives it, for :func:`pipelines.data.preflight.check_datalist` to report.
    """
    case_dir = Path(case_dir)
    case = case_dir.name
    name = convention or detect_convention(case_dir)
    if name not in CONVENTIONS:
        raise ValueError(f"unknown BraTS convention {name!r}; choose from {sorted(CONVENTIONS)}")
    conv = CONVENTIONS[name]
    images: list[Path] = []
    for channel, tag in zip(CHANNELS, conv.modalities):
        path = _find_file(case_dir, f"{case}{conv.separator}{tag}")
        if path is None and not validate:
            path = case_dir / conv.filename(case, tag)
        if path is None:
            raise ValueError(
                f"case {case}: missing modality {channel}: {case_dir / conv.filename(case, tag)} not found "
                f"(BraTS {name} naming)"
            )
        images.append(path)
    label = _find_file(case_dir, f"{case}{conv.separator}{conv.label}")
    if label is None and require_label and not validate:
        label = case_dir / conv.filename(case, conv.label)
    if label is None and require_label:
        raise ValueError(f"case {case}: label {case_dir / conv.filename(case, conv.label)} not found")
    if check_geometry and validate:
        check_grids(case, images + ([label] if label is not None else []))
    if label is not None and check_labels and validate:
        check_label_values(case, label, conv)
    item = {"image": [str(p) for p in images], "case": case, "convention": name, "reference": str(images[0])}
    if label is not None:
        item["label"] = str(label)
    return item


def _one_convention(root: Path, items: list[dict]) -> None:
    names = sorted({i["convention"] for i in items})
    if len(names) > 1:
        example = {n: next(i["case"] for i in items if i["convention"] == n) for n in names}
        raise ValueError(
            f"{root}: the data set mixes BraTS naming conventions {names} (e.g. case {example[names[0]]} and case "
            f"{example[names[1]]}); their label values differ, so rename the files to one convention"
        )


def brats_datalist(
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    check_labels: bool = True,
    validate: bool = True,
) -> dict[str, list[dict]]:
    """Validate a BraTS folder and return an MSD-style datalist ``{"training": [...], "validation": [...]}``.

    Items are those of :func:`brats_case` (with a label). The convention is detected per case and must be the same
    for the whole data set. The split is by a hash of the case name and ``seed``. ``check_labels`` reads every label
    map to check its values (a few seconds per hundred cases); turn it off for speed once a data set is known good.
    ``validate=False`` lists the cases without opening a file (see :func:`brats_case`); the training bundle then
    checks them all at once with :func:`pipelines.data.preflight.check_datalist` and :func:`label_values`, so one
    bad case is reported with every other one (or skipped) instead of stopping at the first.
    """
    root = Path(root)
    items = [brats_case(c, check_labels=check_labels, validate=validate) for c in find_cases(root)]
    _one_convention(root, items)
    training, validation = split_by_hash(items, key="case", val_fraction=val_fraction, seed=seed)
    return {"training": training, "validation": validation}


def label_values(item: dict) -> tuple[int, ...]:
    """The label values the convention of datalist ``item`` allows (``label_values`` of the preflight check)."""
    return CONVENTIONS[item["convention"]].labels


def brats_cases(root: str | os.PathLike) -> list[dict]:
    """Every case at or below ``root`` (one case folder, or a folder of them) for inference; labels not needed.

    Returns the items of :func:`brats_case` without their label. ``ValueError`` as in :func:`find_cases` and
    :func:`brats_case` (missing modality, grid mismatch, mixed conventions).
    """
    root = Path(root)
    items = [brats_case(c, require_label=False, check_labels=False) for c in find_cases(root)]
    _one_convention(root, items)
    for item in items:
        item.pop("label", None)  # inference never reads it; an unread path would only confuse batch collation
    return items
