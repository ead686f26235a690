"""A TensorBoard writer for rank 0 only, so that distributed training leaves one event file, not one per process.

Bundle configs resolve every handler on every rank (a ``$@train#handlers[...]`` slice resolves the whole list
first), and MONAI's TensorBoard handlers open a ``SummaryWriter`` of their own when given none. Handing them this
factory's result instead keeps the other ranks silent.
"""

from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter

from pipelines.distributed import is_main_process

__all__ = ["NullSummaryWriter", "rank_zero_summary_writer"]


class NullSummaryWriter:
    """Accepts every ``SummaryWriter`` call and writes nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def rank_zero_summary_writer(log_dir: str, **kwargs) -> SummaryWriter | NullSummaryWriter:
    """``SummaryWriter(log_dir)`` on rank 0 (or without ``torch.distributed``), a :class:`NullSummaryWriter` elsewhere
    (:func:`pipelines.distributed.is_main_process`: torchrun's ``RANK`` before the process group exists)."""
    if not is_main_process():
        return NullSummaryWriter()
    return SummaryWriter(log_dir=log_dir, **kwargs)
