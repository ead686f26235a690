"""Reports: every per-case and summary file a run writes, on one collect-then-write base.

    pipelines/reports/
    ├── base.py              CollectThenWrite (rows per iteration, gathered over the ranks, written once by rank 0,
    │                        every file at a temporary name and all renamed together), Staging, publish_together
    ├── segmentation.py      segmentation_report (per-case metrics CSV + summary JSON), SegmentationReport handler
    ├── super_resolution.py  SuperResolutionReport (per-case PSNR/SSIM/MSE of network and interpolation)
    ├── classification.py    the classification report (scores, confusion matrix, ROC), ClassificationReport,
    │                        PredictionWriter, ClassificationScore
    ├── training.py          TrainingSummary: best metric, timing and the learning curve of a training run
    ├── case_statistics.py   per-label voxel count, volume and mean intensity of one prediction (``--statistics``)
    └── preview.py           a PNG preview of one case (``--preview``)

The metrics themselves are computed in :mod:`pipelines.metrics`; the files are written here, through
:func:`pipelines.io.atomic.atomic_path`. The names below are importable from the package (loaded on first use, so that
importing one report does not import the others' dependencies).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CollectThenWrite": "base", "Staging": "base", "publish_together": "base",
    "segmentation_report": "segmentation", "SegmentationReport": "segmentation",
    "SuperResolutionReport": "super_resolution",
    "ClassificationReport": "classification", "PredictionWriter": "classification",
    "ClassificationScore": "classification", "write_classification_report": "classification",
    "TrainingSummary": "training",
    "case_statistics": "case_statistics", "write_case_statistics": "case_statistics",
    "write_preview": "preview",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
