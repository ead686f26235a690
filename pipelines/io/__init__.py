"""Reading and writing images and weights: the suffix table, header checks for every entry point, grid geometry, a
SimpleITK reader for MONAI, the one weights loader, and writers that never leave half-written files.

==========================  ===========================================================================================
module                      what it owns
==========================  ===========================================================================================
:mod:`~.formats`            the file suffixes of every format and the predicates on them (``is_nifti``, ...)
:mod:`~.checks`             header checks of files and DICOM series, ``ensure_writable`` of output folders
:mod:`~.geometry`           size/spacing/origin/direction, voxel-to-world affines, grid comparisons
:mod:`~.readers`            :class:`SimpleITKReader` (MONAI ``ImageReader``), ``read_voxels``, ``count_nonfinite``
:mod:`~.weights`            ``load_weights`` / ``read_state_dict``: one unwrap rule, one-line errors
:mod:`~.atomic`             write to a temporary name, rename when complete
:mod:`~.writers`            MONAI writers made atomic
:mod:`~.tables`             CSV tables with checked headers
:mod:`~.dicom_seg`          DICOM Segmentation output
==========================  ===========================================================================================

The names below are imported on first use (PEP 562), so that ``pipelines.io.formats`` or ``pipelines.io.atomic`` cost
no SimpleITK, MONAI or torch import (the CLI's argument parser reads the suffix table).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .atomic import atomic_path, write_json_atomic, write_text_atomic
    from .checks import DicomSeries, dicom_series, ensure_writable, nifti_size_problem, read_image_information
    from .readers import SELECTED_SERIES, SimpleITKReader
    from .weights import load_weights, read_state_dict
    from .writers import AtomicNibabelWriter

#: public name -> the submodule that defines it
_EXPORTS = {
    "atomic_path": "atomic",
    "write_json_atomic": "atomic",
    "write_text_atomic": "atomic",
    "DicomSeries": "checks",
    "dicom_series": "checks",
    "ensure_writable": "checks",
    "nifti_size_problem": "checks",
    "read_image_information": "checks",
    "SELECTED_SERIES": "readers",
    "SimpleITKReader": "readers",
    "load_weights": "weights",
    "read_state_dict": "weights",
    "AtomicNibabelWriter": "writers",
}

__all__ = [
    "AtomicNibabelWriter",
    "DicomSeries",
    "SELECTED_SERIES",
    "SimpleITKReader",
    "atomic_path",
    "dicom_series",
    "ensure_writable",
    "load_weights",
    "nifti_size_problem",
    "read_image_information",
    "read_state_dict",
    "write_json_atomic",
    "write_text_atomic",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
