"""Check a training datalist before the first epoch: every bad input reported at once, not one crash in epoch 37.

:func:`check_datalist` reads the *headers* of every file an item names (SimpleITK, through
:func:`pipelines.io.read_image_information`) and reads arrays only where a header cannot answer:

======================================  ===========================================  ================================
input                                   how it is found                              what happens
======================================  ===========================================  ================================
a path that does not exist              ``Path.exists``                              problem
unreadable / corrupt file               SimpleITK header read fails                  problem
truncated MetaImage ``.raw``            data file shorter than the header needs      problem
truncated NIfTI, NRRD, MetaImage        file size, or the streamed decompressed      problem
                                        length, vs. the header's
bad voxel size, direction, data file    :mod:`pipelines.io.checks` (every header     problem
outside the header's folder             check is shared with inference)
4D (or 2D) where 3D is expected         header dimension (``expect_dims``)           problem
wrong channel count (RGB vs grey...)    header components (``expect_channels``)      problem
image and label on different grids      header size, spacing, origin, direction      problem
NaN / Inf intensities                   array read, **floating-point files only**    problem (``check_finite``)
                                        (an integer file cannot hold them)
label value outside the convention      array read of the label (``label_values``)   problem
empty label map (all background)        same read                                    **warning, item kept**
======================================  ===========================================  ================================

Empty label maps are kept on purpose: scans without a lesion are legitimate negatives (most LUNA16 scans have no
nodule, some ISIC or BraTS crops have none), and dropping them would bias training. They are logged as one warning.

Policies: ``"fail"`` (default) raises one ``ValueError`` listing every problem, one line each, each naming its file,
before any training starts. ``"skip"`` drops the items with a problem, logs one line each and (with ``output_dir``)
writes the lines to ``<output_dir>/skipped_inputs.txt`` atomically (rewritten on every run, empty when nothing was
skipped, so it never describes an older run). A split left empty by skipping is an error under both policies.

Cost: header reads are milliseconds per file. The finite check reads floating-point arrays only (LUNA16 CT is
int16, ISIC images are 8-bit: nothing is read); the label check reads label maps, which are small. Both can be
turned off (``check_finite=False``, ``label_values=None``) for a data set known to be good.

:func:`~pipelines.io.checks.ensure_writable` (re-exported here, where the bundle configs name it) checks at start that
the output folders can be written, rather than failing at the end of the first epoch when the first checkpoint is
saved. Reading, header checks and grid comparisons are :mod:`pipelines.io`'s; this module only applies them to a
datalist.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.distributed import is_main_process
from pipelines.io.atomic import write_text_atomic
from pipelines.io.checks import ensure_writable, read_image_information
from pipelines.io.geometry import geometry, grid_differences
from pipelines.io.readers import count_nonfinite, is_floating, read_voxels

__all__ = [
    "POLICIES",
    "SKIPPED_FILE",
    "check_datalist",
    "preflight_datalist",
    "ensure_writable",
]

logger = logging.getLogger(__name__)

POLICIES = ("fail", "skip")
SKIPPED_FILE = "skipped_inputs.txt"

def _per_key(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, Mapping) else value


def _paths(value: Any) -> list[str] | None:
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [str(v) for v in value]
    return None


def _item_name(item: Mapping, index: int) -> str:
    for key in ("case", "name", "seriesuid", "id"):
        if key in item:
            return f"item {index} ({item[key]})"
    return f"item {index}"


def _inspect(
    items: Sequence[Mapping],
    keys: Sequence[str],
    *,
    expect_dims: int | Mapping[str, int] | None,
    expect_channels: int | Mapping[str, int] | None,
    label_values: Sequence[int] | Callable[[Mapping], Sequence[int]] | None,
    check_finite: bool,
    check_grids: bool | str,
    label_key: str,
) -> tuple[list, list[str], list[str]]:
    """(kept items, problem lines, warning lines) without applying a policy."""
    kept, problems, warnings = [], [], []
    for index, item in enumerate(items):
        found: list[str] = []
        reference: tuple[str, dict] | None = None
        for key in keys:
            if key not in item:
                found.append(f"{_item_name(item, index)}: no {key!r} entry")
                continue
            paths = _paths(item[key])
            if paths is None:
                found.append(f"{_item_name(item, index)}: {key!r} is {item[key]!r}, not a file path")
                continue
            dims, channels = _per_key(expect_dims, key), _per_key(expect_channels, key)
            for path in paths:
                try:
                    info = read_image_information(path)
                except ValueError as e:
                    found.append(str(e) if str(path) in str(e) else f"{path}: {e}")
                    continue
                if dims is not None and info.GetDimension() != dims:
                    hint = " (a time series or several volumes in one file?)" if info.GetDimension() > dims else ""
                    found.append(f"{path}: {info.GetDimension()}D image, expected {dims}D{hint}")
                    continue
                if channels is not None and info.GetNumberOfComponents() != channels:
                    kind = {1: "grey", 3: "RGB", 4: "RGBA"}
                    have = info.GetNumberOfComponents()
                    found.append(f"{path}: {have} channel(s) ({kind.get(have, 'per pixel')}), expected {channels}"
                                 f" ({kind.get(channels, 'per pixel')})")
                    continue
                grid = geometry(info)
                if check_grids and reference is not None:
                    diff = grid_differences(reference[1], grid)
                    if check_grids == "size":  # photographs: spacing / origin are only dpi metadata
                        diff = [d for d in diff if d.startswith("size") or d.endswith("D")]
                    if diff:
                        found.append(f"{path}: not on the grid of {Path(reference[0]).name} ({'; '.join(diff)}); "
                                     f"image and {key} must share size, spacing, origin and direction")
                        continue
                elif reference is None:
                    reference = (path, grid)
                is_label = key == label_key
                floating = is_floating(info)
                needs_array = (check_finite and floating) or (is_label and label_values)
                if not needs_array:
                    continue
                try:
                    array = read_voxels(path)
                except (RuntimeError, OSError, EOFError, ValueError) as e:
                    found.append(f"{path}: cannot read the voxels ({str(e).strip().splitlines()[-1]})")
                    continue
                nan, inf = count_nonfinite(array) if check_finite and floating else (0, 0)
                if nan or inf:
                    found.append(f"{path}: {nan} NaN and {inf} Inf value(s)")
                    continue
                if is_label and label_values:
                    allowed = label_values(item) if callable(label_values) else label_values
                    values = np.unique(array)
                    outside = [v for v in values.tolist() if v not in set(allowed)]
                    if outside:
                        found.append(f"{path}: label value(s) {outside[:8]} outside the convention {list(allowed)}")
                    elif values.max(initial=0) == 0:
                        warnings.append(f"{path}: empty label map (background only), kept as a negative example")
        if found:
            problems.extend(found)
        else:
            kept.append(item)
    return kept, problems, warnings


def _skip_message(problems: Sequence[str]) -> None:
    for line in problems:
        logger.warning("preflight: skipped: %s", line)


def _write_skipped(output_dir: str | os.PathLike | None, problems: Sequence[str]) -> None:
    if output_dir is not None and is_main_process():
        write_text_atomic(Path(output_dir) / SKIPPED_FILE, "".join(f"{line}\n" for line in problems))


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"preflight policy must be one of {POLICIES}, got {policy!r}")


def _fail(problems: Sequence[str], total: int, bad_items: int) -> None:
    raise ValueError(
        f"preflight: {len(problems)} problem(s) in {bad_items} of {total} datalist item(s); fix them, or train "
        f"without them with preflight_policy 'skip' (they are then listed in {SKIPPED_FILE}):\n  "
        + "\n  ".join(problems)
    )


def _warn_empty(warnings: Sequence[str]) -> None:
    if warnings:
        shown = "; ".join(w.split(":")[0] for w in warnings[:3])
        logger.warning("preflight: %d empty label map(s) kept as negative examples (%s%s)", len(warnings), shown,
                       ", ..." if len(warnings) > 3 else "")


def check_datalist(
    items: Sequence[Mapping],
    keys: Sequence[str] = ("image", "label"),
    *,
    policy: str = "fail",
    expect_dims: int | Mapping[str, int] | None = 3,
    expect_channels: int | Mapping[str, int] | None = None,
    label_values: Sequence[int] | Callable[[Mapping], Sequence[int]] | None = None,
    check_finite: bool = True,
    check_grids: bool | str = True,
    label_key: str = "label",
    output_dir: str | os.PathLike | None = None,
) -> tuple[list, list[str]]:
    """Check every file the ``keys`` of ``items`` name; return (kept items, problem lines).

    Args:
        items: datalist items; ``item[key]`` is a path or a list of paths (e.g. BraTS's four modalities).
        keys: the entries holding file paths; the first file of the first key is the grid reference of the item.
        policy: ``"fail"`` raises one ``ValueError`` listing every problem; ``"skip"`` drops bad items (see module).
        expect_dims: spatial dimensions of every file (``None``: any), or ``{key: dims}``.
        expect_channels: components per pixel of every file (``None``: any), or ``{key: channels}``; e.g.
            ``{"image": 3, "label": 1}`` for RGB images with grey masks.
        label_values: the values a label map may hold, or a callable ``item -> values`` (``None``: not read).
        check_finite: read floating-point files to find NaN / Inf.
        check_grids: require every file of an item on the grid (size, spacing, origin, direction) of the first;
            ``"size"`` compares the size only (2D photographs, whose spacing is dpi metadata).
        label_key: which key holds the label map.
        output_dir: with ``policy="skip"``, where ``skipped_inputs.txt`` is written.
    """
    _check_policy(policy)
    kept, problems, warnings = _inspect(items, keys, expect_dims=expect_dims, expect_channels=expect_channels,
                                        label_values=label_values, check_finite=check_finite,
                                        check_grids=check_grids, label_key=label_key)
    _warn_empty(warnings)
    if problems and policy == "fail":
        _fail(problems, len(items), len(items) - len(kept))
    if policy == "skip":
        _skip_message(problems)
        _write_skipped(output_dir, problems)
    return kept, problems


def preflight_datalist(
    datalist: Mapping[str, Any],
    *,
    splits: Sequence[str] = ("training", "validation"),
    policy: str = "fail",
    output_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict:
    """:func:`check_datalist` over the ``splits`` of an MSD-style datalist, the policy applied once to them all.

    Returns a copy of ``datalist`` with bad items removed (policy ``"skip"``). A split that had items and has none
    left is a ``ValueError``. Other keys of the datalist (``"classes"``, ``"test"``...) are passed through unchecked.
    Under ``torch.distributed`` every rank checks (the result must be the same on all), rank 0 alone writes the file.
    """
    _check_policy(policy)
    out = dict(datalist)
    problems: list[str] = []
    warnings: list[str] = []
    total = bad_items = 0
    for split in splits:
        items = list(datalist.get(split) or [])
        kept, found, warned = _inspect(items, **_inspect_kwargs(kwargs))
        out[split] = kept
        problems += found
        warnings += warned
        total += len(items)
        bad_items += len(items) - len(kept)
    _warn_empty(warnings)
    if problems and policy == "fail":
        _fail(problems, total, bad_items)
    if policy == "skip":
        _skip_message(problems)
        _write_skipped(output_dir, problems)
        if problems:
            logger.warning("preflight: %d of %d item(s) skipped, listed in %s", bad_items, total,
                           Path(output_dir) / SKIPPED_FILE if output_dir is not None else "the log")
    emptied = [s for s in splits if datalist.get(s) and not out[s]]
    if emptied:
        raise ValueError(f"preflight: no {' or '.join(emptied)} item left after skipping the bad ones:\n  "
                         + "\n  ".join(problems))
    return out


def _inspect_kwargs(kwargs: dict) -> dict:
    known = {"keys": ("image", "label"), "expect_dims": 3, "expect_channels": None, "label_values": None,
             "check_finite": True, "check_grids": True, "label_key": "label"}
    unknown = set(kwargs) - set(known)
    if unknown:
        raise TypeError(f"preflight_datalist: unexpected argument(s) {sorted(unknown)}")
    return {**known, **kwargs}
