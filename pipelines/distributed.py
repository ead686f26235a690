"""Rank-aware pieces of a distributed (``torchrun``) run, for bundle configs to wire in by ``_target_``."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from monai.data import partition_dataset

__all__ = ["rank", "world_size", "is_main_process", "handlers_for_rank", "partition_for_rank"]

logger = logging.getLogger(__name__)


def rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's global rank: the process group's; before one exists, ``torchrun``'s ``RANK`` environment
    variable (``environ``, default ``os.environ``: torchrun sets it before a bundle's config is parsed, and handlers,
    writers and locks are built then); 0 outside ``torchrun`` or when ``RANK`` is not a number."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    try:
        return int((os.environ if environ is None else environ).get("RANK", "0"))
    except ValueError:
        return 0


def world_size() -> int:
    """Processes in this run (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is rank 0 (:func:`rank`), the one that writes logs, summaries and checkpoints."""
    return (rank() if environ is None else rank(environ)) == 0


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


# ------------------------------------------------------------------------------- process group, for bundle configs
# What a multi_gpu_train.json wires by _target_ (MONAI's configs write these as inline expressions; a component
# with named arguments keeps the config free of Python): the device and backend of this rank, the process group's
# start and end, and values that only rank 0 keeps.
__all__ += ["local_device", "ddp_backend", "start_process_group", "end_process_group", "on_main_process",
            "is_not_main_process"]


def local_device(environ: Mapping[str, str] | None = None) -> torch.device:
    """``cuda:<LOCAL_RANK>`` (``torchrun``'s variable, 0 without it) when CUDA is available, else the CPU: the
    ``device`` of every bundle config, single process and ``torchrun`` alike."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    value = (os.environ if environ is None else environ).get("LOCAL_RANK", "0")
    try:
        return torch.device(f"cuda:{int(value)}")
    except ValueError:
        raise ValueError(f"LOCAL_RANK={value!r}: not a GPU index (torchrun sets it to 0, 1, ...)") from None


def ddp_backend() -> str:
    """The process-group backend: ``nccl`` with CUDA, ``gloo`` on CPUs."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def start_process_group(backend: str | None = None, device: Any = None) -> bool:
    """Join ``torchrun``'s process group (once: a second call does nothing) with ``backend`` (default
    :func:`ddp_backend`), and make ``device`` (a CUDA device) this process's current GPU. Returns ``True``."""
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ddp_backend())
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
    return True


def end_process_group() -> bool:
    """Leave the process group if one was started (a bundle's ``finalize``); returns whether there was one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


def on_main_process(value: Any, otherwise: Any = None) -> Any:
    """``value`` on rank 0, ``otherwise`` on the other ranks: e.g. a validator's handlers, which write reports and
    checkpoints once (``otherwise``: ``None``, or the few handlers every rank needs)."""
    return value if is_main_process() else otherwise


def is_not_main_process() -> bool:
    """``True`` on every rank but 0: the ``_disabled_`` flag of a handler only rank 0 runs (MLflow tracking)."""
    return not is_main_process()
