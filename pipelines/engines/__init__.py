"""Ignite handlers and engine helpers on ``monai.engines``: TensorBoard slices, learning rate, resume, summaries."""

from .checkpoint import ResumableCheckpoint
from .handlers import LearningRateLogger, TensorBoardSlices, TrainingSummary

__all__ = ["LearningRateLogger", "ResumableCheckpoint", "TensorBoardSlices", "TrainingSummary"]
