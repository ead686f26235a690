"""Every inference wrapper: the device-planned sliding window (segmentation and super-resolution), channels-last,
mirror test-time augmentation and the CT super-resolution window passthrough.

**The sliding window plans itself.**

MONAI's :class:`~monai.inferers.SlidingWindowInfererAdapt` already moves the stitching (the volume-sized output and
count buffers) to the CPU, buffered or whole, *after* a CUDA out-of-memory error, and remembers the size. What it
lacks, and this module adds:

* ``sw_batch_size="auto"``: on CUDA, as many windows per forward pass as fit in a fraction of the free memory, from a
  probe of one window's activation memory (measured once per window shape and dtype); on a CPU, 2 (larger batches
  were not faster on the CPUs we measured, see ``bench/results_fast_inference.md``, and cost memory).
* a proactive ``cpu_thresh``: when the output and count buffers of a volume would take more than
  ``stitch_fraction`` of the free CUDA memory, stitching starts on the CPU instead of failing first.

On a CPU everything happens in host memory, so only the batch size is planned. The plan is a plain function,
:func:`plan_sliding_window`, so that it can be tested and logged without a GPU. The buffers are those of the
*output*: the probe measures how much larger than its window the network's output is (1 for segmentation, the scale
for super-resolution), so the buffers of an x4 2D network are 16 times those of its input's size.

**Super-resolution** (:class:`SuperResolutionInferer`, built by :func:`sr_inferer` from the SR bundles' configs) is
the same planned sliding window: ``monai.inferers.sliding_window_inference`` supports networks whose output is larger
than the window by an integer factor per axis (it measures ``output / roi_size`` per window, places each window at its
start times that factor and nearest-upsamples the blending weights), including inputs smaller than the window
(padded, then cropped by the factor). MONAI's buffered stitching does not (its buffer is allocated at the input's
size), so it is never used: where a segmentation volume would be stitched buffered on the GPU, a super-resolved one
is stitched on the CPU. ``passthrough_window`` (CT) wraps the network in :class:`WindowPassthrough` on every call.

**Network wrappers** (``python -m pipelines infer --precision bf16``, ``--tta``): :class:`ChannelsLast` runs a network
in the channels-last memory format, :class:`MirrorTTA` averages its outputs over mirrored inputs.

**ONNX Runtime** (``--backend onnxruntime``, a bundle's ``"backend"`` key): :func:`onnxruntime_network` exports the
loaded network once to ONNX (:func:`export_onnx`, cached beside the weights by :func:`onnx_cache_path`) and wraps an
``onnxruntime.InferenceSession`` on the CPU in :class:`OnnxRuntimeNetwork`, a module the same inferers call window
batch by window batch.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInfererAdapt

from pipelines.io.digest import file_sha256

__all__ = [
    "WindowPlan", "plan_sliding_window", "stitch_bytes", "output_geometry", "AutoSlidingWindowInferer",
    "CPU_SW_BATCH_SIZE",
    "SuperResolutionInferer", "WindowPassthroughInferer", "sr_inferer", "WindowPassthrough", "ChannelsLast",
    "MirrorTTA",
    "ONNX_OPSET", "OnnxRuntimeNetwork", "export_onnx", "onnx_cache_path", "onnxruntime_network",
]

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
        spatial_shape: spatial size of the stitched output (the pre-processed volume's, times the scale of a
            super-resolution network).
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


def output_geometry(window: torch.Tensor, output: Any) -> tuple[int, tuple[float, ...]]:
    """The channels of a network's ``output`` for ``window`` ``(B, C, *roi)`` and how much larger than the window it is
    along each spatial axis (1 for segmentation, the scale of a super-resolution network). An output that is not one
    tensor of the window's rank (deep supervision's several) counts as the window's channels at its size."""
    if isinstance(output, torch.Tensor) and output.ndim == window.ndim:
        return int(output.shape[1]), tuple(int(o) / int(w) for o, w in zip(output.shape[2:], window.shape[2:]))
    return int(window.shape[1]), (1.0,) * (window.ndim - 2)


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
        self._probes: dict[tuple, tuple[int, int, tuple[float, ...]]] = {}
        self.last_plan: WindowPlan | None = None

    def _probe(self, inputs: torch.Tensor, network: Callable,
               run_device: torch.device) -> tuple[int, int, tuple[float, ...]]:
        """CUDA memory of one window's forward pass, the network's output channels and how much larger than the
        window its output is per spatial axis (1 for segmentation, the scale for super-resolution), measured once per
        (window shape, input channels, dtype, autocast state)."""
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
            channels, scale = output_geometry(window, out)
            self._probes[key] = (max(1, torch.cuda.max_memory_allocated(run_device) - base), channels, scale)
        return self._probes[key]

    def plan(self, inputs: torch.Tensor, network: Callable, free_bytes: int | None = None) -> WindowPlan:
        """The plan for ``inputs`` ``(B, C, *spatial)``: probes the network once per window shape on CUDA
        (``free_bytes``: the free device memory, ``torch.cuda.mem_get_info`` when omitted)."""
        run_device = torch.device(self.sw_device) if self.sw_device is not None else inputs.device
        window_bytes, out_channels, scale = None, inputs.shape[1], (1.0,) * (inputs.ndim - 2)
        if run_device.type == "cuda":
            window_bytes, out_channels, scale = self._probe(inputs, network, run_device)
        output_shape = [math.ceil(int(s) * f) for s, f in zip(inputs.shape[2:], scale)]
        return plan_sliding_window(
            run_device, output_shape, out_channels, window_bytes=window_bytes if self.auto_batch else None,
            free_bytes=free_bytes, memory_fraction=self.memory_fraction, stitch_fraction=self.stitch_fraction,
            max_sw_batch_size=self.max_sw_batch_size,
        )

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any):
        plan = self.plan(inputs, network)
        if self.auto_batch:
            self.sw_batch_size = plan.sw_batch_size
        elif plan.sw_batch_size != self.sw_batch_size:
            plan = WindowPlan(self.sw_batch_size, plan.stitch_on_cpu, plan.reason + f" (fixed at {self.sw_batch_size})")
        if self.device is None and plan.stitch_on_cpu and inputs.is_cuda:
            # let the parent stitch on the CPU (buffered; whole for super-resolution) from the start, not after an OOM
            self.cpu_thresh = min(self.cpu_thresh or inputs.shape[2:].numel(), inputs.shape[2:].numel() - 1)
        if plan != self.last_plan:
            logger.info("sliding window: %s", plan.reason)
        self.last_plan = plan
        return super().__call__(inputs, network, *args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# super-resolution


def _interpolation_of(network: Any, spatial_dims: int) -> str:
    """The interpolation of ``network``'s own skip (:class:`~networks.RRDBNet` ``interpolation_skip``), looked up
    through wrappers (``.network``, ``.module``); (bi/tri)linear when it has none. Every mode here is linear in its
    input, so interpolating the clipped input and the excess separately adds up to interpolating the whole."""
    seen = 0
    while network is not None and seen < 8:
        mode = getattr(network, "interpolation_skip", None)
        if isinstance(mode, str):
            return mode
        inner = getattr(network, "network", None)
        network = inner if inner is not None else getattr(network, "module", None)
        seen += 1
    return "bilinear" if spatial_dims == 2 else "trilinear"


class WindowPassthrough(torch.nn.Module):
    """Run ``network`` on its input clipped to ``window`` and add back what the clipping removed, up-sampled.

    ``output = network(clip(x, low, high)) + interpolate(x - clip(x, low, high))`` to the network's output size.
    A super-resolution network trained on windowed intensities (CT in -1000..400 HU, normalised to 0..1) never saw
    values outside the window; this keeps its input inside what it learnt while the output keeps the input's range:
    bone at 1500 HU comes out near 1500 HU instead of 400. With the network's own interpolation skip
    (``interpolation_skip="trilinear"``) the result equals that skip applied to the whole input plus the residual the
    network predicts from the windowed input. An input inside the window is passed unchanged (``output =
    network(x)``). Upstream MONAI has no intensity passthrough for its inferers.

    Args:
        network: maps ``(B, C, *S)`` to ``(B, C, *S * scale)`` (``C`` the same in and out).
        low, high: the window in the network's units (``0.0, 1.0`` after ``ct_sr_preprocessing``).
        mode: ``F.interpolate`` mode for the excess; ``"auto"``: the network's interpolation skip, else linear.
    """

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor], low: float = 0.0, high: float = 1.0,
                 mode: str = "auto") -> None:
        super().__init__()
        if not low < high:
            raise ValueError(f"passthrough window must have low < high, got ({low}, {high})")
        self.network = network
        self.low, self.high = float(low), float(high)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = x.clamp(self.low, self.high)
        out = self.network(inside)
        excess = (x - inside).float()
        if not bool(excess.any()):
            return out
        if excess.shape[1] != out.shape[1]:
            raise ValueError(f"passthrough needs as many output channels as input channels, got {excess.shape[1]} "
                             f"in and {out.shape[1]} out")
        mode = _interpolation_of(self.network, x.ndim - 2) if self.mode == "auto" else self.mode
        align = None if mode in ("nearest", "area", "nearest-exact") else False
        up = F.interpolate(excess, size=tuple(out.shape[2:]), mode=mode, align_corners=align)
        return out + up.to(out.dtype)


class SuperResolutionInferer(AutoSlidingWindowInferer):
    """The device-planned sliding window (:class:`AutoSlidingWindowInferer`) for networks that up-sample by an integer
    factor per axis.

    ``roi_size`` is the *input* (low-resolution) window; the output of an input ``(B, C, *S)`` is
    ``(B, C', *S * scale)``, seamless thanks to overlapping windows blended with Gaussian weights. The batch size and
    the stitching device are planned as for segmentation, with the output's size (see the module docstring); MONAI's
    buffered stitching, which cannot hold an output larger than the input, is never used (``buffer_steps`` is
    refused), so a volume whose buffers would not fit the GPU is stitched on the CPU.

    A purely local network gives exactly its whole-image output. A network whose receptive field exceeds the
    window's overlap margin differs from whole-image inference where windows saw zero padding; Gaussian blending
    suppresses that inside the image, but MONAI clamps the Gaussian weights at 1e-3, so in the outermost
    ``~roi_size / 8`` pixels along the image border, where every window is near its own edge, the blend is close
    to uniform (use larger windows to shrink that band).

    Args:
        roi_size: the input window.
        sw_batch_size: windows per forward pass, or ``"auto"``.
        device: stitching device, ``"auto"`` (or ``None``) to plan it.
        passthrough_window: ``(low, high)`` in the network's input units: the network sees its input clipped to it
            and the part outside is interpolated back into the output (:class:`WindowPassthrough`; CT at inference).
        passthrough_mode: interpolation of the excess (``"auto"``: the network's interpolation skip, else linear).
        kwargs: :class:`AutoSlidingWindowInferer`'s and MONAI's ``SlidingWindowInferer``'s (``overlap``, ``mode``,
            ``padding_mode``, ``sw_device``, ``progress``...).
    """

    def __init__(self, roi_size: Sequence[int] | int, sw_batch_size: int | str = "auto",
                 device: torch.device | str | None = "auto", passthrough_window: Sequence[float] | None = None,
                 passthrough_mode: str = "auto", **kwargs: Any) -> None:
        if kwargs.get("buffer_steps") not in (None, 0):
            raise ValueError("buffer_steps is not supported for super-resolution: MONAI's buffered sliding window "
                             "allocates its buffer at the input's size and cannot hold a larger output")
        # buffer_steps=0: SlidingWindowInfererAdapt then never tries buffered stitching; it stitches on the CPU instead
        kwargs["buffer_steps"] = 0
        super().__init__(roi_size, sw_batch_size=sw_batch_size, device=device, **kwargs)
        if passthrough_window is not None:
            low, high = (float(v) for v in passthrough_window)
            WindowPassthrough(torch.nn.Identity(), low, high)  # checks the window now, not at the first volume
            self.passthrough_window: tuple[float, float] | None = (low, high)
        else:
            self.passthrough_window = None
        self.passthrough_mode = passthrough_mode

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any):
        if self.passthrough_window is not None:
            network = WindowPassthrough(network, *self.passthrough_window, mode=self.passthrough_mode)
        return super().__call__(inputs, network, *args, **kwargs)


class WindowPassthroughInferer(SuperResolutionInferer):
    """:class:`SuperResolutionInferer` whose network always sees its input clipped to ``passthrough_window``
    (default ``(0, 1)``, the CT bundle's window), the rest added back by :class:`WindowPassthrough`."""

    def __init__(self, roi_size: Sequence[int] | int, sw_batch_size: int | str = "auto",
                 device: torch.device | str | None = "auto", passthrough_window: Sequence[float] = (0.0, 1.0),
                 passthrough_mode: str = "auto", **kwargs: Any) -> None:
        super().__init__(roi_size, sw_batch_size, device, passthrough_window=passthrough_window,
                         passthrough_mode=passthrough_mode, **kwargs)


def sr_inferer(
    roi_size: Sequence[int] | int,
    sw_batch_size: int | str = 4,
    overlap: float | Sequence[float] = 0.25,
    mode: str = "gaussian",
    padding_mode: str = "replicate",
    passthrough_window: Sequence[float] | None = None,
    passthrough_mode: str = "auto",
    **kwargs: Any,
) -> SuperResolutionInferer:
    """The SR bundles' inferer: a :class:`SuperResolutionInferer` (a :class:`WindowPassthroughInferer` with
    ``passthrough_window``, ``(0, 1)`` for CT at inference). ``padding_mode`` pads inputs smaller than the window
    (replicate: no dark border); ``device`` (the stitching device, planned by default) and the other keyword
    arguments go to the inferer; ``buffer_steps`` is refused."""
    common = dict(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode,
                  padding_mode=padding_mode, passthrough_mode=passthrough_mode, **kwargs)
    if passthrough_window is not None:
        return WindowPassthroughInferer(passthrough_window=passthrough_window, **common)
    return SuperResolutionInferer(**common)


# ---------------------------------------------------------------------------------------------------------------------
# network wrappers


class ChannelsLast(torch.nn.Module):
    """Run ``network`` in the channels-last memory format (NHWC in 2D, NDHWC in 3D) and return a contiguous output.

    oneDNN on CPUs (and cuDNN with AMP on GPUs) has faster convolution kernels for channels-last tensors. Measured by
    ``bench/fast_inference.py`` on this project's 2-core CPU, the shipped lung E-DU's forward pass over two
    96 x 96 x 64 windows: fp32 1.36x, bf16 autocast 2.21x instead of 1.53x. The weights are converted once here (in
    place), every input window on the way in. The numbers do not change beyond floating-point reordering.
    """

    def __init__(self, network: torch.nn.Module, spatial_dims: int) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"channels-last needs 2 or 3 spatial dimensions, got {spatial_dims}")
        self.memory_format = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
        self.network = network.to(memory_format=self.memory_format)  # type: ignore[call-overload]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.contiguous(memory_format=self.memory_format)).contiguous()


class MirrorTTA(torch.nn.Module):
    """Test-time augmentation by mirroring: the mean of the network's outputs over every combination of flips of
    ``axes`` (spatial axes, 0-based), each flipped back. ``axes=(0, 1, 2)`` runs the network 8 times per window."""

    def __init__(self, network: torch.nn.Module, axes: tuple[int, ...] = (0, 1, 2)) -> None:
        super().__init__()
        self.network = network
        self.axes = tuple(axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for r in range(len(self.axes) + 1):
            for combo in itertools.combinations(self.axes, r):
                dims = [a + 2 for a in combo]
                flipped = x.flip(dims) if dims else x
                y = self.network(flipped)
                outputs.append(y.flip(dims) if dims else y)
        return torch.stack(outputs).mean(0)


# ---------------------------------------------------------------------------------------------------------------------
# ONNX Runtime backend (``python -m pipelines infer --backend onnxruntime``)

#: ``torch.onnx.export``'s opset: ``None``, PyTorch's default, as ``python -m monai.bundle onnx_export`` (MONAI's
#: ``convert_to_onnx``) and ``tests/pipelines/test_bundle_commands.py`` export every bundle
ONNX_OPSET: int | None = None
#: the exported model's input and output names, those of the README's ``onnx_export`` command
ONNX_INPUT, ONNX_OUTPUT = "image", "pred"
#: largest ``|onnx - eager|`` accepted when an export is checked, as a share of the eager output's largest magnitude.
#: Not 1e-4 (what the tests assert at their small sizes): ONNX Runtime's fp32 kernels sum in another order than
#: PyTorch's, which grows with the window; on the shipped BraTS FRCU-Net at 128^3 (the global mean over the window in
#: its frequency attention) it differs from eager fp32 by 2e-4 of the output's scale at every graph optimisation level,
#: where eager fp32 itself is 3.5e-5 from a float64 reference. A trace that fixed a shape is off by the output's order.
ONNX_TOLERANCE = 1e-3
_CACHE_TAG = "onnxrt"


def onnx_cache_path(weights: str | os.PathLike, in_channels: int, network: torch.nn.Module,
                    folder: str | os.PathLike | None = None) -> Path:
    """Where the ONNX export of ``network`` loaded with ``weights`` is cached:
    ``<folder>/<weights stem>.onnxrt-<SHA-256 of the weights, 16 hex>-in<C>-<architecture, 8 hex>.onnx``, ``folder``
    by default the weights' own. The architecture digest covers what the weights do not fix: the network's module
    tree as ``repr`` prints it, the PyTorch version and the opset, so changing any of them exports again."""
    weights = Path(weights)
    arch = hashlib.sha256(f"{network!r}|{torch.__version__}|{ONNX_OPSET}".encode()).hexdigest()[:8]
    name = f"{weights.stem}.{_CACHE_TAG}-{file_sha256(weights)[:16]}-in{int(in_channels)}-{arch}.onnx"
    return Path(folder if folder is not None else weights.parent) / name


def _stale_exports(path: Path) -> list[Path]:
    """Cached exports beside ``path`` of the same weights file with other weights (another SHA-256): they can never
    be used again once the file changed. Exports of the same weights for another architecture are kept."""
    stem, rest = path.name.split(f".{_CACHE_TAG}-", 1)
    digest = rest.split("-", 1)[0]
    return [p for p in path.parent.glob(f"{stem}.{_CACHE_TAG}-*.onnx")
            if p.name.split(f".{_CACHE_TAG}-", 1)[1].split("-", 1)[0] != digest]


def _first_line(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__


def export_onnx(network: torch.nn.Module, path: str | os.PathLike, example_shape: Sequence[int], *,
                check: bool = True, tolerance: float = ONNX_TOLERANCE) -> Path:
    """Export ``network`` (on the CPU, in eval mode) to ONNX at ``path``, the batch and every spatial axis dynamic.

    ``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``, seconds; the README's
    ``onnx_export`` command), traced on a random input of ``example_shape`` ``(B, C, *spatial)``. The output's spatial
    axes are dynamic when it has the input's rank (segmentation, super-resolution), only its batch otherwise (a
    classifier's logits). With ``check`` the written model runs once in ONNX Runtime on a batch of another size than
    the trace's and must equal the eager output within ``tolerance`` of its largest magnitude, so a shape the trace
    fixed is found now and not in the middle of a volume. Written to a temporary name and renamed when complete.

    Raises:
        ValueError: one line with the reason: the network returns no single tensor, the exporter fails, or the export
            differs from the eager network.
    """
    path = Path(path)
    shape = tuple(int(s) for s in example_shape)
    network = network.eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(shape, generator=generator)
    probe = example[:1] if shape[0] > 1 else torch.rand((2, *shape[1:]), generator=generator)
    from pipelines.io.atomic import atomic_path

    try:
        with torch.no_grad():
            expected = network(probe)
        if not isinstance(expected, torch.Tensor):
            raise ValueError(f"its output is {type(expected).__name__}, not one tensor, which the ONNX backend runs")
        axes = [0, *range(2, len(shape))]
        out_axes = [0, *range(2, expected.ndim)] if expected.ndim == len(shape) else [0]
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings, once per bundle
            with torch.no_grad():
                torch.onnx.export(network, (example,), str(tmp), dynamo=False, input_names=[ONNX_INPUT],
                                  output_names=[ONNX_OUTPUT], opset_version=ONNX_OPSET, do_constant_folding=True,
                                  dynamic_axes={ONNX_INPUT: axes, ONNX_OUTPUT: out_axes})
            if check:
                got = OnnxRuntimeNetwork(tmp, threads=torch.get_num_threads())(probe)
                if got.shape != expected.shape:
                    raise ValueError(f"the exported model gives shape {tuple(got.shape)} for batch {probe.shape[0]}, "
                                     f"the network {tuple(expected.shape)}")
                scale = float(expected.abs().max())
                error = float((got - expected).abs().max())
                if not error <= tolerance * max(scale, 1e-12):
                    raise ValueError(f"the exported model differs from the network by {error:.3g} (output scale "
                                     f"{scale:.3g}, allowed {tolerance:g} of it)")
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; the user needs one line
        raise ValueError(_first_line(e)) from None
    return path


class OnnxRuntimeNetwork(torch.nn.Module):
    """An exported network run by an ONNX Runtime ``InferenceSession``, called like the ``nn.Module`` it came from.

    Each call turns its input window batch ``(B, C, *spatial)`` into a float32 NumPy array, runs the session and
    returns a float32 tensor on the input's device, so any inferer here (the sliding window with its stitching and
    Gaussian weighting, :class:`MirrorTTA`, :class:`WindowPassthrough`) runs it unchanged. The session uses the
    ``CPUExecutionProvider`` with ``threads`` intra-op threads (default ``torch.get_num_threads()``: the share of the
    machine PyTorch was given) and one inter-op thread. ``interpolation_skip`` is the original network's, which
    :class:`WindowPassthrough` reads. Upstream: MONAI verifies an export with onnxruntime (``convert_to_onnx``) but
    has no wrapper that runs one as a network.
    """

    def __init__(self, model_path: str | os.PathLike, threads: int | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",), interpolation_skip: str | None = None) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        self.threads = int(threads or torch.get_num_threads())
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: ORT warns about every initializer it folds
        self.model_path = Path(model_path)
        self.session = onnxruntime.InferenceSession(str(model_path), sess_options=options, providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        if interpolation_skip is not None:
            self.interpolation_skip = interpolation_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = x.as_tensor() if hasattr(x, "as_tensor") else x  # a MONAI MetaTensor: its plain tensor
        array = np.ascontiguousarray(window.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"{self.model_path.name}, threads={self.threads}"


def onnxruntime_network(network: torch.nn.Module, weights: str | os.PathLike, example_shape: Sequence[int], *,
                        cache_dir: str | os.PathLike | None = None, fallback_dir: str | os.PathLike | None = None,
                        threads: int | None = None) -> OnnxRuntimeNetwork:
    """``network`` (weights loaded from ``weights``) as an :class:`OnnxRuntimeNetwork`, exported once.

    The export is cached at :func:`onnx_cache_path` (beside the weights unless ``cache_dir``) and reused while the
    weights file, the input channels (``example_shape[1]``) and the architecture stay the same; exports of earlier
    contents of the weights file are removed, and a cached file ONNX Runtime cannot load is exported again. When
    that folder cannot be written the model is exported into ``fallback_dir`` (not cached; ``ValueError`` without
    one). ``ValueError`` with the reason when it does not export (:func:`export_onnx`) or the session does not start.
    """
    path = onnx_cache_path(weights, int(example_shape[1]), network, cache_dir)
    if not os.access(path.parent, os.W_OK):
        if fallback_dir is None:
            raise ValueError(f"{path.parent}: cannot write the ONNX export there")
        logger.warning("onnxruntime: %s is not writable; the export is not cached", path.parent)
        path = Path(fallback_dir) / path.name
    mode = getattr(network, "interpolation_skip", None)
    mode = mode if isinstance(mode, str) else None
    if path.is_file():
        try:
            session = OnnxRuntimeNetwork(path, threads=threads, interpolation_skip=mode)
            logger.info("onnxruntime: reusing %s", path)
            return session
        except Exception as e:  # noqa: BLE001 - e.g. written by a newer onnx than this onnxruntime reads
            logger.warning("onnxruntime: cannot load %s (%s); exporting again", path, _first_line(e))
            path.unlink(missing_ok=True)
    start = time.perf_counter()
    export_onnx(network, path, example_shape)
    logger.info("onnxruntime: exported %s in %.1f s", path, time.perf_counter() - start)
    for stale in _stale_exports(path):
        stale.unlink(missing_ok=True)
    try:
        return OnnxRuntimeNetwork(path, threads=threads, interpolation_skip=mode)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's own error types
        raise ValueError(f"ONNX Runtime cannot load the export ({_first_line(e)})") from None
