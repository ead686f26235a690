"""Rank-aware pieces of a distributed (``torchrun``) run, for bundle configs to wire in by ``_target_``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch.distributed as dist
from monai.data import partition_dataset

__all__ = ["rank", "world_size", "is_main_process", "handlers_for_rank", "partition_for_rank"]

logger = logging.getLogger(__name__)


def rank() -> int:
    """This process's global rank (0 without ``torch.distributed``)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in this run (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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


def partition_for_rank(data: Sequence[Any], even_divisible: bool, name: str = "data") -> list[Any]:
    """This rank's share of ``data`` (MONAI's ``partition_dataset``, interleaved: rank r gets items r, r + n, ...),
    so that each rank preprocesses, caches and reads only its own cases and memory per rank falls as ranks are
    added. ``even_divisible`` repeats items from the start until every rank has as many (training: every rank must
    run the same number of iterations, or DDP's all-reduce waits forever); without it the last ranks get one fewer
    (validation: the metrics gather uneven shards, and no case is counted twice). Without ``even_divisible``, fewer
    items than ranks is refused with one line: a rank without data cannot take part in the collective calls.
    Without ``torch.distributed``, all of ``data``."""
    items, ranks = list(data), world_size()
    if ranks == 1:
        return items
    if not items or (len(items) < ranks and not even_divisible):
        raise ValueError(f"the {name} split has {len(items)} case(s) for {ranks} ranks: every rank needs at least one; "
                         f"run fewer processes (--nproc_per_node) or give the split more cases")
    if even_divisible:
        # MONAI's partition_dataset(shuffle=False, even_divisible=True) rule, which upstream refuses for fewer items
        # than ranks: pad by cycling from the start to a multiple of the ranks, then interleave
        items = [items[i % len(items)] for i in range(-(-len(items) // ranks) * ranks)]
    share = partition_dataset(items, num_partitions=ranks, shuffle=False, even_divisible=False)[rank()]
    logger.info(f"rank {rank()} of {ranks}: {len(share)} of {len(items)} {name} cases")
    return share
