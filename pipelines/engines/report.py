"""Old import path of the evaluation reports and of the HD95 handler (bundle configs name it): re-exports only.

The report writers live in :mod:`pipelines.reports` (:class:`~pipelines.reports.segmentation.SegmentationReport`,
:class:`~pipelines.reports.super_resolution.SuperResolutionReport`), the metric handler and helpers in
:mod:`pipelines.metrics` (:class:`~pipelines.metrics.HD95`, :func:`~pipelines.metrics.channel_output`,
:func:`~pipelines.metrics.pooled_scores`).
"""

from __future__ import annotations

from pipelines.metrics import HD95, channel_output, pooled_scores
from pipelines.reports.segmentation import SegmentationReport
from pipelines.reports.super_resolution import SuperResolutionReport

__all__ = ["HD95", "SegmentationReport", "SuperResolutionReport", "channel_output", "pooled_scores"]
