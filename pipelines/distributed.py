"""Rank-aware pieces of a distributed (``torchrun``) run, for bundle configs to wire in by ``_target_``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.distributed as dist

__all__ = ["rank", "is_main_process", "handlers_for_rank"]


def rank() -> int:
    """This process's global rank (0 without ``torch.distributed``)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def handlers_for_rank(handlers: Sequence[Any] | None, rank_zero_only: Sequence[str] = ()) -> list[Any] | None:
    """``handlers`` on rank 0; on the other ranks those whose class name is not in ``rank_zero_only`` (the loggers,
    TensorBoard writers and summaries that must write once). ``None`` stays ``None``."""
    if handlers is None:
        return None
    if is_main_process():
        return list(handlers)
    skip = set(rank_zero_only)
    return [h for h in handlers if type(h).__name__ not in skip]
