"""Sliding-window inference whose batch size and stitching device follow the device it runs on.

MONAI's :class:`~monai.inferers.SlidingWindowInfererAdapt` already moves the stitching (the volume-sized output and
count buffers) to the CPU, buffered or whole, *after* a CUDA out-of-memory error, and remembers the size. What it
lacks, and this module adds:

* ``sw_batch_size="auto"``: on CUDA, as many windows per forward pass as fit in a fraction of the free memory, from a
  probe of one window's activation memory (measured once per window shape and dtype); on a CPU, 2 (larger batches
  were not faster on the CPUs we measured, see ``bench/results_fast_inference.md``, and cost memory).
* a proactive ``cpu_thresh``: when the output and count buffers of a volume would take more than
  ``stitch_fraction`` of the free CUDA memory, stitching starts on the CPU instead of failing first.

On a CPU everything happens in host memory, so only the batch size is planned. The plan is a plain function,
:func:`plan_sliding_window`, so that it can be tested and logged without a GPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.inferers import SlidingWindowInfererAdapt

__all__ = ["WindowPlan", "plan_sliding_window", "AutoSlidingWindowInferer", "CPU_SW_BATCH_SIZE"]

logger = logging.getLogger(__name__)

#: windows per forward pass on a CPU
CPU_SW_BATCH_SIZE = 2


@dataclass(frozen=True)
class WindowPlan:
    """How to run one volume: windows per forward pass, where to stitch, and why."""

    sw_batch_size: int
    stitch_on_cpu: bool
    reason: str


def stitch_bytes(spatial_shape: Sequence[int], out_channels: int, bytes_per_value: int = 4) -> int:
    """Bytes of MONAI's stitching buffers for one volume: the output ``(out_channels, *spatial)`` plus the count map."""
    return (out_channels + 1) * math.prod(int(s) for s in spatial_shape) * bytes_per_value


def plan_sliding_window(
    device: torch.device | str,
    spatial_shape: Sequence[int],
    out_channels: int,
    *,
    window_bytes: int | None = None,
    free_bytes: int | None = None,
    memory_fraction: float = 0.5,
    stitch_fraction: float = 0.25,
    max_sw_batch_size: int = 16,
) -> WindowPlan:
    """Choose the sliding-window batch size and stitching device for a volume.

    Args:
        device: where the network runs.
        spatial_shape: spatial size of the (pre-processed) volume.
        out_channels: channels of the network's output.
        window_bytes: device memory one window takes in a forward pass (activations and output); CUDA only.
        free_bytes: free device memory; CUDA only (``torch.cuda.mem_get_info`` when omitted).
        memory_fraction: share of the free memory the windows of one batch may use.
        stitch_fraction: stitch on the CPU when the output and count buffers would take more than this share.
        max_sw_batch_size: upper bound of the batch size.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return WindowPlan(CPU_SW_BATCH_SIZE, True, f"{device.type}: {CPU_SW_BATCH_SIZE} windows per pass")
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    buffers = stitch_bytes(spatial_shape, out_channels)
    stitch_on_cpu = buffers > stitch_fraction * free_bytes
    budget = free_bytes - (0 if stitch_on_cpu else buffers)
    if window_bytes is None or window_bytes <= 0:
        batch = 1
    else:
        batch = int(max(1, min(max_sw_batch_size, memory_fraction * budget // window_bytes)))
    reason = (f"cuda: {free_bytes / 2**30:.1f} GiB free, buffers {buffers / 2**30:.2f} GiB "
              f"({'CPU' if stitch_on_cpu else 'GPU'} stitching), "
              f"window {0 if window_bytes is None else window_bytes / 2**20:.0f} MiB -> {batch} per pass")
    return WindowPlan(batch, stitch_on_cpu, reason)


class AutoSlidingWindowInferer(SlidingWindowInfererAdapt):
    """:class:`~monai.inferers.SlidingWindowInfererAdapt` with the window batch size and stitching device planned
    for the device and the volume (:func:`plan_sliding_window`).

    Args:
        roi_size: window size.
        sw_batch_size: windows per forward pass, or ``"auto"``.
        device: stitching device; ``None`` or ``"auto"`` plans it (and falls back to the CPU on an out-of-memory
            error, as the MONAI parent does); anything else is used as given.
        memory_fraction: see :func:`plan_sliding_window`.
        stitch_fraction: see :func:`plan_sliding_window`.
        max_sw_batch_size: upper bound of the planned batch size.
        kwargs: the other arguments of :class:`~monai.inferers.SlidingWindowInferer` (``overlap``, ``mode``,
            ``sw_device``...).
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int | str = "auto",
        device: torch.device | str | None = "auto",
        memory_fraction: float = 0.5,
        stitch_fraction: float = 0.25,
        max_sw_batch_size: int = 16,
        **kwargs: Any,
    ) -> None:
        self.auto_batch = isinstance(sw_batch_size, str)
        if self.auto_batch and sw_batch_size != "auto":
            raise ValueError(f"sw_batch_size must be an integer or 'auto', got {sw_batch_size!r}")
        if isinstance(device, str) and device == "auto":
            device = None
        super().__init__(roi_size, sw_batch_size=1 if self.auto_batch else int(sw_batch_size), device=device,
                         **kwargs)
        self.memory_fraction = memory_fraction
        self.stitch_fraction = stitch_fraction
        self.max_sw_batch_size = max_sw_batch_size
        self._probes: dict[tuple, tuple[int, int]] = {}
        self.last_plan: WindowPlan | None = None

    def _probe(self, inputs: torch.Tensor, network: Callable, run_device: torch.device) -> tuple[int, int]:
        """CUDA memory of one window's forward pass and the network's output channels, measured once per (window
        shape, input channels, dtype, autocast state)."""
        roi = self.roi_size if isinstance(self.roi_size, Sequence) else [self.roi_size] * (inputs.ndim - 2)
        roi = [min(int(r), int(s)) for r, s in zip(roi, inputs.shape[2:])]
        key = (tuple(roi), inputs.shape[1], inputs.dtype, torch.is_autocast_enabled("cuda"))
        if key not in self._probes:
            window = torch.zeros((1, inputs.shape[1], *roi), dtype=inputs.dtype, device=run_device)
            torch.cuda.synchronize(run_device)
            base = torch.cuda.memory_allocated(run_device)
            torch.cuda.reset_peak_memory_stats(run_device)
            with torch.no_grad():
                out = network(window)
            torch.cuda.synchronize(run_device)
            channels = out.shape[1] if isinstance(out, torch.Tensor) else inputs.shape[1]
            self._probes[key] = (max(1, torch.cuda.max_memory_allocated(run_device) - base), int(channels))
        return self._probes[key]

    def plan(self, inputs: torch.Tensor, network: Callable) -> WindowPlan:
        """The plan for ``inputs`` ``(B, C, *spatial)``: probes the network once per window shape on CUDA."""
        run_device = torch.device(self.sw_device) if self.sw_device is not None else inputs.device
        window_bytes, out_channels = None, inputs.shape[1]
        if run_device.type == "cuda":
            window_bytes, out_channels = self._probe(inputs, network, run_device)
        return plan_sliding_window(
            run_device, inputs.shape[2:], out_channels, window_bytes=window_bytes if self.auto_batch else None,
            memory_fraction=self.memory_fraction, stitch_fraction=self.stitch_fraction,
            max_sw_batch_size=self.max_sw_batch_size,
        )

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any):
        plan = self.plan(inputs, network)
        if self.auto_batch:
            self.sw_batch_size = plan.sw_batch_size
        elif plan.sw_batch_size != self.sw_batch_size:
            plan = WindowPlan(self.sw_batch_size, plan.stitch_on_cpu, plan.reason + f" (fixed at {self.sw_batch_size})")
        if self.device is None and plan.stitch_on_cpu and inputs.is_cuda:
            # let the parent stitch on the CPU (buffered) from the start instead of after an out-of-memory error
            self.cpu_thresh = min(self.cpu_thresh or inputs.shape[2:].numel(), inputs.shape[2:].numel() - 1)
        if plan != self.last_plan:
            logger.info("sliding window: %s", plan.reason)
        self.last_plan = plan
        return super().__call__(inputs, network, *args, **kwargs)
