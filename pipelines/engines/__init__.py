"""Ignite handlers and engine helpers on ``monai.engines``: TensorBoard slices, learning rate, resume, summaries,
and GAN super-resolution training (:mod:`pipelines.engines.gan`)."""

from .checkpoint import ResumableCheckpoint
from .gan import (
    SuperResolutionEvaluator,
    SuperResolutionPrepareBatch,
    SuperResolutionTrainer,
    super_resolution_metrics,
)
from .handlers import LearningRateLogger, TensorBoardSlices, TensorBoardTriplets, TrainingSummary
from .memory_plan import MemoryPlanError, MemoryPlanHandler, estimate_training_memory  # noqa: F401

__all__ = [
    "LearningRateLogger",
    "ResumableCheckpoint",
    "SuperResolutionEvaluator",
    "SuperResolutionPrepareBatch",
    "SuperResolutionTrainer",
    "TensorBoardSlices",
    "TensorBoardTriplets",
    "TrainingSummary",
    "super_resolution_metrics",
]
