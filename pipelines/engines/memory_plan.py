"""A memory plan before the first training step: estimate what one step needs, refuse to start when it cannot fit.

A configuration that does not fit is otherwise found out by the kernel's OOM killer in the first iteration (exit
137, no message) or by a CUDA out-of-memory error deep in the backward pass. Neither MONAI nor Ignite estimates the
memory of a training step (``SlidingWindowInfererAdapt`` reacts to an out-of-memory error at inference, after the
fact), so this module does, in seconds, before the first batch is loaded. The network runs forward and backward
(seeded with ones, no optimizer step) in train mode, under the trainer's autocast, on the real device, at three
small probes: 1 patch of a small shape, 2 patches of it, 1 patch of a larger one (:func:`probe_shapes`). Parts:

* **activations**: the bytes autograd saves for the backward pass, counted with
  :class:`torch.autograd.graph.saved_tensors_hooks` (once per storage, the network's own parameters and buffers
  left out). They are linear in the batch and the voxels, so the probes fit ``saved(b, v) = c + b * (p + q * v)``
  (``c``: per-step tensors such as autocast's copies of the weights; ``p``: per-patch bytes independent of the voxel
  count; ``q``: bytes per voxel), extrapolated to ``batch_size * num_samples`` patches of ``patch_size``;
* **transient**: what the passes held beyond the saved tensors at their peak (gradients in flight, im2col buffers,
  oneDNN or cuDNN workspaces), read from the allocator (CUDA: its statistics; CPU: ``torch.profiler``'s allocation
  events). It is not linear (the kernels change with the shape), so it is scaled from the largest probe by the
  patches and voxels; plus ``loss_factor`` times the network's output for the loss;
* **parameters** (and buffers), **gradients** and **optimizer state** (the tensors the optimizer already holds when
  it has any, after a resume, else two per parameter for Adam/AdamW, three with ``amsgrad``, one for SGD with
  momentum, see :func:`optimizer_state_bytes`);
* on CUDA the **context** (:data:`CUDA_CONTEXT_BYTES`, an assumption: not measurable from inside the process).

The sum times ``safety`` is the estimate. It is compared with ``memory_budget_gb`` when given (a cap on the whole
step) or else with the memory the device has free *plus* what the step already holds there (the parameters, and
the optimizer state of a resumed run): on CPUs ``MemAvailable`` of ``/proc/meminfo`` or the cgroup's
``memory.max - memory.current``, whichever is lower; on CUDA ``torch.cuda.mem_get_info`` plus what PyTorch's caching
allocator holds unused. ``bench/memory_plan.py`` measures the estimate against the live bytes and the peak resident
memory of real training steps (``bench/results_memory_plan.md``).

The probe leaves the network as it found it: weights, gradients, BatchNorm running statistics, train/eval modes and
the torch random state (CPU and CUDA), so a seeded run gives the same weights with or without the check.

Not counted: the caching allocator's fragmentation on CUDA and glibc's on CPUs (the heap keeps freed blocks below
its mmap threshold, at most 32 MiB, resident: configurations of small tensors use up to twice their live bytes,
large ones 1.1-1.2 times), and a GAN's second network (estimate the discriminator separately). Networks whose memory
grows faster than their voxel count (global attention) are extrapolated linearly, so underestimated.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events

__all__ = [
    "CUDA_CONTEXT_BYTES",
    "DEFAULT_SAFETY",
    "DEFAULT_LOSS_FACTOR",
    "MemoryEstimate",
    "MemoryPlanError",
    "MemoryPlanHandler",
    "Probe",
    "estimate_training_memory",
    "extrapolate",
    "free_memory",
    "optimizer_state_bytes",
    "probe_shapes",
    "probe_step",
    "saved_tensor_bytes",
]

logger = logging.getLogger(__name__)

GiB = 2**30

#: Device memory a CUDA context takes before any tensor: an assumption, 0.5 GiB. Reported sizes range from
#: 128-256 MiB with lazy module loading (invoke-ai/InvokeAI#9447) to 781 MB as nvidia-smi shows it at start-up
#: (pytorch/pytorch#34323); it depends on the GPU, the driver and which kernels get loaded.
CUDA_CONTEXT_BYTES = GiB // 2

#: factor on the sum of the parts (``bench/results_memory_plan.md`` measures the sum against real peaks)
DEFAULT_SAFETY = 1.2

#: bytes kept for the loss, as a multiple of the network's output bytes
DEFAULT_LOSS_FACTOR = 4.0


class MemoryPlanError(RuntimeError):
    """A training configuration whose step will not fit in the memory of its device."""


@dataclass(frozen=True)
class Probe:
    """One probe pass (forward and backward) of ``batch`` patches of ``shape``: the bytes saved for backward, the
    most bytes the device's allocator held at once during the pass beyond what it held before (plus the input; see
    :func:`probe_step`) and the bytes of the network's output."""

    batch: int
    shape: tuple[int, ...]
    saved: int
    peak: int
    output: int

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class MemoryEstimate:
    """The memory one training step needs on ``device``, by part (bytes), before and after ``safety``."""

    device: str
    batch: int
    patch_size: tuple[int, ...]
    dtype: str
    parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    transient: int
    context: int
    safety: float
    #: bytes of the step already on the device (parameters, existing gradients and optimizer state, the context)
    resident: int = 0
    #: activations + transient of one more patch, for the largest batch that fits
    per_patch: int = 0
    probes: tuple[Probe, ...] = field(default_factory=tuple)

    @property
    def raw(self) -> int:
        return (self.parameters + self.gradients + self.optimizer_state + self.activations + self.transient
                + self.context)

    @property
    def total(self) -> int:
        return int(math.ceil(self.raw * self.safety))

    def max_batch(self, available: int) -> int:
        """The largest number of patches per step whose estimate fits in ``available`` bytes (0 when none)."""
        if self.per_patch <= 0:
            return self.batch
        fixed = self.raw - self.batch * self.per_patch
        return max(0, int((available / self.safety - fixed) // self.per_patch))

    @property
    def unit(self) -> str:
        """The unit its figures are written in: GiB from 1 GiB on, MiB below."""
        return "GiB" if self.total >= GiB else "MiB"

    def parts(self) -> str:
        """``parameters 0.06 + gradients 0.06 + ... GiB, x1.2 safety`` (the parts before ``safety``)."""
        names = [("parameters", self.parameters), ("gradients", self.gradients),
                 ("optimizer state", self.optimizer_state), ("activations", self.activations),
                 ("transient", self.transient)]
        if self.context:
            names.append(("CUDA context", self.context))
        return (" + ".join(f"{n} {_size(v, self.unit)}" for n, v in names)
                + f" {self.unit}, x{self.safety:g} safety")

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "batch": self.batch, "patch_size": list(self.patch_size), "dtype": self.dtype,
                "parameters": self.parameters, "gradients": self.gradients,
                "optimizer_state": self.optimizer_state, "activations": self.activations,
                "transient": self.transient, "context": self.context, "safety": self.safety, "raw": self.raw,
                "total": self.total, "resident": self.resident, "per_patch": self.per_patch,
                "probes": [{"batch": p.batch, "shape": list(p.shape), "saved": p.saved, "peak": p.peak,
                            "output": p.output} for p in self.probes]}


def _size(n: float, unit: str = "GiB") -> str:
    return f"{n / GiB:.2f}" if unit == "GiB" else f"{n / 2**20:.1f}"


def _auto(n: float) -> str:
    return f"{_size(n, 'GiB')} GiB" if n >= GiB else f"{_size(n, 'MiB')} MiB"


# ---------------------------------------------------------------------------------------------- counting the probe
def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _nbytes(obj: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(obj))


def _storage(t: torch.Tensor) -> tuple[tuple, int] | None:
    """(key, bytes) of the storage behind ``t``: views of one storage count once, and in full; ``None`` for a
    tensor without one (sparse, wrapper subclasses)."""
    try:
        s = t.untyped_storage()
        return (t.device.type, t.device.index, s.data_ptr()), s.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return None


class _PeakMeter:
    """Peak bytes the device's allocator hands out inside each ``measure(name)`` block, over what it held before.

    CUDA: the caching allocator's statistics (``torch.cuda.max_memory_allocated``, whose peak is reset). CPU:
    torch keeps no allocator statistics, so the block runs under ``torch.profiler`` with ``profile_memory=True``
    and the peak is read from the allocation events' running total, as ``torch.profiler``'s own memory timeline
    does (``torch.profiler._memory_profiler``). Unlike counting tensors, both see what ops allocate inside
    themselves: im2col buffers, oneDNN and cuDNN workspaces. ``peaks[name]`` is ``None`` where the profiler's
    events cannot be read.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peaks: dict[str, int | None] = {}
        self._profiler: Any = None
        self._count = 0

    def __enter__(self) -> _PeakMeter:
        if self.device.type != "cuda":
            if torch.autograd._profiler_enabled():  # one profiler at a time: the user's own is running
                logger.warning("memory plan: a profiler is running, so the transient part is left out")
            else:
                from torch.profiler import ProfilerActivity, profile

                self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
                self._profiler.__enter__()
        return self

    def next_name(self) -> str:
        """A name no block of this meter had before."""
        self._count += 1
        return str(self._count)

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self.peaks[name] = torch.cuda.max_memory_allocated(self.device) - base
        else:
            self.peaks[name] = None
            with torch.profiler.record_function(f"memory_plan:{name}"):
                yield

    def __exit__(self, *exc: Any) -> None:
        if self._profiler is None:
            return
        self._profiler.__exit__(*exc)
        try:
            from torch._C._profiler import _EventType

            def allocations(node: Any, out: list) -> list:
                if node.tag == _EventType.Allocation and node.extra_fields.device.type == self.device.type:
                    out.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
                for child in node.children:
                    allocations(child, out)
                return out

            stack = list(self._profiler.profiler.kineto_results.experimental_event_tree())
            while stack:
                node = stack.pop()
                name = node.name.removeprefix("memory_plan:")
                if name != node.name and name in self.peaks:
                    events = sorted(allocations(node, []))
                    base = events[0][2] - events[0][1] if events else 0
                    self.peaks[name] = max((total - base for _, _, total in events), default=0)
                else:
                    stack.extend(node.children)
        except (ImportError, AttributeError, TypeError) as e:  # the profiler's event tree is not a public API
            logger.warning("memory plan: cannot read the profiler's allocations (%s); the transient part is "
                           "left out", e)


def _autocast(device: torch.device, amp: bool, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype, enabled=bool(amp))


def _probe_pass(network: nn.Module, inputs: torch.Tensor, meter: _PeakMeter, name: str, amp: bool,
                amp_dtype: torch.dtype | None) -> tuple[int, int]:
    """One forward and backward pass under ``meter.measure(name)``; returns (saved bytes, output bytes)."""
    device = inputs.device
    params = [p for p in network.parameters() if p.requires_grad]
    own = {found[0] for t in list(network.parameters()) + list(network.buffers()) if (found := _storage(t))}
    saved: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        found = _storage(t)
        if found is not None and found[0] not in own:
            saved[found[0]] = found[1]
        return t

    grads = [p.grad for p in params]
    try:
        # zero gradients of its own for the pass: the backward pass adds into them in place, as in every step
        # after the first (so only its per-parameter temporaries are measured), and the caller's stay untouched
        for p in params:
            p.grad = torch.zeros_like(p)
        with torch.enable_grad(), meter.measure(name):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(device, amp, amp_dtype):
                out = network(inputs)
            outs = [t for t in _tensors(out) if t.requires_grad]
            out_bytes = sum(t.numel() * t.element_size() for t in _tensors(out))
            del out
            if outs:
                torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])
            del outs
    finally:
        for p, g in zip(params, grads):
            p.grad = g
    return sum(saved.values()), out_bytes


def probe_step(
    network: nn.Module, inputs: torch.Tensor, *, amp: bool = False, amp_dtype: torch.dtype | None = None
) -> tuple[int, int, int]:
    """Run ``network(inputs)`` and its backward pass (seeded with ones) once; return ``(saved, peak, output)``.

    ``saved``: the bytes autograd saves for the backward pass, counted with
    :class:`torch.autograd.graph.saved_tensors_hooks`, once per storage (a view counts its whole storage, which it
    keeps alive), the network's parameters and buffers left out. ``peak``: the most bytes the device's allocator
    held at once during the two passes over what it held before (see :class:`_PeakMeter`), plus ``inputs``;
    ``saved`` where the allocations cannot be read. ``output``: bytes of the network's output.

    The parameters' ``.grad`` are put back as they were (the pass runs with zero gradients of its own).
    BatchNorm running statistics and the random state are changed by the pass, which
    :func:`estimate_training_memory` saves and restores around it.
    """
    with _PeakMeter(inputs.device) as meter:
        saved, output = _probe_pass(network, inputs, meter, "probe", amp, amp_dtype)
    peak = meter.peaks["probe"]
    return saved, saved if peak is None else peak + _nbytes(inputs), output


def saved_tensor_bytes(
    network: nn.Module, inputs: torch.Tensor, *, amp: bool = False, amp_dtype: torch.dtype | None = None
) -> int:
    """Bytes autograd saves for the backward pass of ``network(inputs)`` (see :func:`probe_step`)."""
    return probe_step(network, inputs, amp=amp, amp_dtype=amp_dtype)[0]


def probe_shapes(patch_size: Sequence[int], max_align: int = 32) -> list[tuple[int, ...]]:
    """Probe shapes for ``patch_size``: about a quarter and a half of it per axis, as multiples of the largest
    power of two (at most ``max_align``) that divides every axis, so that networks that down-sample accept them;
    never larger than the patch. When both round to the same shape, that shape and the patch itself (then small)."""
    patch = tuple(int(s) for s in patch_size)
    align = max_align
    while align > 1 and any(s % align for s in patch):
        align //= 2
    shapes: list[tuple[int, ...]] = []
    for fraction in (4, 2):
        shape = tuple(min(s, max(align, int(round(s / fraction / align)) * align)) for s in patch)
        if shape not in shapes:
            shapes.append(shape)
    if len(shapes) == 1 and shapes[0] != patch:
        shapes.append(patch)
    return shapes


def extrapolate(probes: Sequence[Probe], batch: int, voxels: int, attr: str = "saved") -> tuple[int, int]:
    """Fit ``bytes(b, v) = c + b * (p + q * v)`` to the probes' ``attr`` and return ``(total, per_patch)`` at
    ``batch`` patches of ``voxels`` voxels (``per_patch = p + q * voxels``).

    The probes are (1, v1), (2, v1) and, when given, (1, v2): the first two give ``c`` and the bytes of one patch at
    ``v1``, the third the bytes per voxel ``q``. Without it the per-patch bytes scale with the voxels (``p = 0``);
    without the batch-2 probe every byte is per patch (``c = 0``). ``c`` and the per-patch bytes are at least 0.
    """
    by_key = {(p.batch, p.voxels): getattr(p, attr) for p in probes}
    b = min(p.batch for p in probes)  # 1, or 2 for networks that refuse one patch (BatchNorm after global pooling)
    singles = sorted(p.voxels for p in probes if p.batch == b)
    v1 = singles[0]
    s11 = by_key[(b, v1)]
    c = max(0, 2 * s11 - by_key[(2 * b, v1)]) if (2 * b, v1) in by_key else 0
    r1 = (s11 - c) / b
    if singles[-1] != v1:
        v2 = singles[-1]
        q = ((by_key[(b, v2)] - c) / b - r1) / (v2 - v1)
        p = r1 - q * v1
    else:
        q, p = r1 / v1, 0.0
    per_patch = max(0, int(round(p + q * voxels)))
    return c + batch * per_patch, per_patch


# ------------------------------------------------------------------------------------------------ the other parts
def optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of the optimizer's state after its first step.

    When the optimizer already holds state (a resumed run), the bytes of those tensors. Otherwise by type, per
    parameter of its groups: Adam and AdamW 2 (3 with ``amsgrad``), NAdam, RAdam, Adamax and Adadelta 2, SGD 1 with
    momentum (0 without), RMSprop 1 (+1 with momentum, +1 centered), Adagrad 1; other optimizers are assumed to
    hold 2 (logged).
    """
    if optimizer is None:
        return 0
    held = sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in _tensors(state)
               if t.ndim > 0)
    if held:
        return held
    total = 0
    for group in optimizer.param_groups:
        nbytes = sum(p.numel() * p.element_size() for p in group["params"] if p.requires_grad)
        if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            states = 3 if group.get("amsgrad", False) else 2
        elif isinstance(optimizer, (torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adamax, torch.optim.Adadelta)):
            states = 2
        elif isinstance(optimizer, torch.optim.SGD):
            states = 1 if group.get("momentum", 0) else 0
        elif isinstance(optimizer, torch.optim.RMSprop):
            states = 1 + bool(group.get("momentum", 0)) + bool(group.get("centered", False))
        elif isinstance(optimizer, torch.optim.Adagrad):
            states = 1
        else:
            logger.info("memory plan: %s assumed to hold 2 state tensors per parameter", type(optimizer).__name__)
            states = 2
        total += states * nbytes
    return total


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def free_memory(device: torch.device | str, cgroup_root: str | Path = "/sys/fs/cgroup") -> tuple[int, str]:
    """Bytes the device can still give, and where the figure comes from.

    CUDA: ``torch.cuda.mem_get_info`` plus what the caching allocator reserved but does not use. CPU:
    ``MemAvailable`` from ``/proc/meminfo`` or the cgroup's limit minus its usage (v2 ``memory.max`` -
    ``memory.current``, v1 ``memory.limit_in_bytes`` - ``memory.usage_in_bytes``), whichever is lower.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, "torch.cuda.mem_get_info"
    candidates: list[tuple[int, str]] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except OSError:
        pass
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit = _read_int(Path(cgroup_root) / limit_file)
        usage = _read_int(Path(cgroup_root) / usage_file)
        if limit is not None and usage is not None and limit < 2**60:  # v1 writes "no limit" as a huge number
            candidates.append((max(0, limit - usage), "cgroup limit"))
            break
    if not candidates:
        raise RuntimeError(f"memory plan: cannot read the free memory of {device} (no /proc/meminfo, no cgroup "
                           "limit); set memory_budget_gb")
    return min(candidates)


# ----------------------------------------------------------------------------------------------------- estimate
def _unwrap(network: nn.Module) -> nn.Module:
    while isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        network = network.module
    return network


def _resolve_dtype(amp_dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if isinstance(amp_dtype, str):
        dtype = getattr(torch, amp_dtype.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"memory plan: amp_dtype {amp_dtype!r} is not a torch dtype")
        return dtype
    if amp_dtype is not None:
        return amp_dtype
    return torch.get_autocast_dtype(device.type)


def _in_channels(network: nn.Module) -> int:
    for m in network.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            return int(m.in_channels if hasattr(m, "in_channels") else m.in_features)
    raise ValueError(f"memory plan: cannot tell the input channels of {type(network).__name__}; pass in_channels")


def estimate_training_memory(
    network: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    patch_size: Sequence[int],
    batch: int,
    *,
    in_channels: int | None = None,
    device: torch.device | str | None = None,
    amp: bool = False,
    amp_dtype: torch.dtype | str | None = None,
    safety: float = DEFAULT_SAFETY,
    loss_factor: float = DEFAULT_LOSS_FACTOR,
    context_bytes: int | None = None,
    probe_sizes: Sequence[Sequence[int]] | None = None,
) -> MemoryEstimate:
    """Estimate the memory of one training step: ``batch`` patches (``batch_size * num_samples``) of
    ``patch_size`` through ``network`` (forward, loss, backward) and ``optimizer.step()``, on ``device``.

    Args:
        network: the trainer's network (a ``DistributedDataParallel`` wrapper is looked through), on ``device``.
        optimizer: its optimizer (``None``: no optimizer state).
        patch_size: spatial size of one training patch (the network's input).
        batch: patches per step.
        in_channels: input channels; ``None`` reads them from the first convolution or linear layer.
        device: where the step runs; ``None``: where the network's parameters are.
        amp: run the probe under ``torch.autocast(device.type, dtype=amp_dtype)``, as the trainer's step.
        amp_dtype: the autocast dtype (a dtype or its name); ``None``: autocast's default for the device.
        safety: factor on the sum of the parts.
        loss_factor: bytes kept for the loss (its inputs, targets and gradient), as a multiple of the network's
            output bytes.
        context_bytes: CUDA context; ``None``: :data:`CUDA_CONTEXT_BYTES` on CUDA, 0 elsewhere.
        probe_sizes: probe shapes; ``None``: :func:`probe_shapes` of ``patch_size``.

    The network's weights, gradients, buffers (BatchNorm running statistics), train/eval modes and the torch
    random state are the same after the call as before.
    """
    net = _unwrap(network)
    params = list(net.parameters())
    tensors = params + list(net.buffers())
    if device is None:
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = _resolve_dtype(amp_dtype, device) if amp else torch.float32
    channels = _in_channels(net) if in_channels is None else int(in_channels)
    patch = tuple(int(s) for s in patch_size)
    shapes = [tuple(int(s) for s in p) for p in (probe_sizes or probe_shapes(patch))]

    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    param_bytes = nbytes(tensors)
    grad_bytes = nbytes(p for p in params if p.requires_grad)
    state_bytes = optimizer_state_bytes(optimizer)
    held_state = 0 if optimizer is None else nbytes(
        t for s in optimizer.state.values() for t in _tensors(s) if t.ndim > 0 and t.device == device)
    if context_bytes is None:
        context_bytes = CUDA_CONTEXT_BYTES if device.type == "cuda" else 0
    context_held = context_bytes if device.type == "cuda" and torch.cuda.is_initialized() else 0
    resident = (nbytes(t for t in tensors if t.device == device)
                + nbytes(p.grad for p in params if p.grad is not None and p.grad.device == device)
                + held_state + context_held)

    probes = _run_probes(net, channels, shapes, patch, device, amp, dtype)
    voxels = math.prod(patch)
    activations, act_patch = extrapolate(probes, batch, voxels, "saved")
    output, output_patch = extrapolate(probes, batch, voxels, "output")
    # what the passes held beyond the saved tensors (gradients in flight, op workspaces) is not linear in the
    # probe size (the algorithms change with the shape): the largest probe's, per patch and voxel
    big = max(probes, key=lambda p: (p.voxels, -p.batch))
    extra_patch = int(max(0, big.peak - big.saved) / big.batch * voxels / big.voxels)
    transient = batch * extra_patch + int(loss_factor * output)
    per_patch = act_patch + extra_patch + int(loss_factor * output_patch)
    return MemoryEstimate(
        device=str(device), batch=int(batch), patch_size=patch, dtype=str(dtype).removeprefix("torch."),
        parameters=param_bytes, gradients=grad_bytes, optimizer_state=state_bytes, activations=activations,
        transient=transient, context=context_bytes, safety=float(safety), resident=resident, per_patch=per_patch,
        probes=tuple(probes))


def _run_probes(net: nn.Module, channels: int, shapes: list[tuple[int, ...]], patch: tuple[int, ...],
                device: torch.device, amp: bool, dtype: torch.dtype) -> list[Probe]:
    """Probe passes of (1, small), (2, small) and (1, large) patches; when the network refuses one, the same with 2
    and 4 patches, then (1, patch) and (2, patch), then (2, patch) and (4, patch) (and a network that refuses all of
    them raises its own error)."""
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()}
    modes = {m: m.training for m in net.modules()}
    # fallbacks, in turn, when the network refuses a probe: two patches at least (BatchNorm in train mode refuses
    # one value per channel, as after a global pooling), then the patch itself
    attempts = [[(b, shapes[0]), (2 * b, shapes[0])] + [(b, s) for s in shapes[1:2]] for b in (1, 2)]
    attempts += [[(1, patch), (2, patch)], [(2, patch), (4, patch)]]
    plan = attempts.pop(0)
    runs: list[tuple[str, int, tuple[int, ...], int, int, int]] = []
    try:
        net.train()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _PeakMeter(device) as meter:
            while plan:
                batch, shape = plan.pop(0)
                x = torch.randn((batch, channels, *shape), device=device)
                try:
                    name = meter.next_name()
                    saved, output = _probe_pass(net, x, meter, name, amp, dtype)
                    runs.append((name, batch, shape, saved, output, _nbytes(x)))
                except torch.OutOfMemoryError as e:
                    raise MemoryPlanError(
                        f"memory plan: {device} ran out of memory in a probe of {batch} x "
                        f"{'x'.join(map(str, shape))}, smaller than one training step; lower batch_size, num_samples "
                        "or patch_size") from e
                except (RuntimeError, ValueError) as e:
                    if not attempts:
                        raise
                    plan, runs = attempts.pop(0), []
                    logger.info("memory plan: the network refuses a %d x %s probe (%s), probing %s instead",
                                batch, list(shape), str(e).splitlines()[0] if str(e) else type(e).__name__,
                                [(n, list(s)) for n, s in plan])
                finally:
                    del x
    finally:
        with torch.no_grad():
            for key, b in net.named_buffers():
                if key in buffers:
                    b.copy_(buffers[key])
        for m, training in modes.items():
            m.train(training)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    probes = []
    for name, batch, shape, saved, output, input_bytes in runs:
        peak = meter.peaks.get(name)
        probes.append(Probe(batch, shape, saved, saved if peak is None else peak + input_bytes, output))
    return probes


# --------------------------------------------------------------------------------------------------- the handler
def _amp_takes_effect(engine: Engine | None, device: torch.device) -> bool:
    """MONAI's ``SupervisedTrainer`` autocasts ``"cuda"`` only: on other devices its ``amp`` changes nothing."""
    if engine is None or device.type == "cuda":
        return True
    from monai.engines import SupervisedTrainer

    return not isinstance(engine, SupervisedTrainer)


class MemoryPlanHandler:
    """At ``Events.STARTED`` of the trainer, before the first iteration: estimate the memory of one training step
    (:func:`estimate_training_memory`), log it (one INFO line) and raise :class:`MemoryPlanError` (a one-line
    message: the estimate, the free memory or budget, the settings to lower) when it will not fit.

    Args:
        patch_size: spatial size of a training patch.
        batch_size: the data loader's batch size.
        num_samples: patches drawn per image (the step sees ``batch_size * num_samples``).
        device: the trainer's device; ``None``: the engine's ``state.device``, else where the network is.
        amp: the trainer's ``amp``; ``None``: the engine's.
        amp_dtype: the trainer's autocast dtype (a dtype or its name); ``None``: the engine's.
        memory_budget_gb: cap of the whole step in GiB; ``None``: the device's free memory (:func:`free_memory`).
        safety: factor on the estimate.
        in_channels: input channels; ``None``: from the network's first layer.
        network: the network; ``None``: the engine's ``network`` (or ``generator``).
        optimizer: its optimizer; ``None``: the engine's ``optimizer`` (or ``g_optimizer``).
        loss_factor: see :func:`estimate_training_memory`.
        enabled: ``False`` attaches nothing (a bundle's ``memory_plan`` key): for runs whose step is known to fit,
            such as the test suite's tiny copies, where the probes would cost more than the training itself.
    """

    def __init__(
        self,
        patch_size: Sequence[int],
        batch_size: int,
        num_samples: int = 1,
        device: torch.device | str | None = None,
        amp: bool | None = None,
        amp_dtype: torch.dtype | str | None = None,
        memory_budget_gb: float | None = None,
        safety: float = DEFAULT_SAFETY,
        in_channels: int | None = None,
        network: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        loss_factor: float = DEFAULT_LOSS_FACTOR,
        enabled: bool = True,
    ) -> None:
        from pipelines.bundle import config_bool

        self.enabled = config_bool(enabled, "memory plan: enabled (the bundle's memory_plan)")

        def positive(name: str, value: Any, kind: type = int) -> Any:
            try:
                number = kind(value)
            except (TypeError, ValueError):
                number = 0
            if isinstance(value, bool) or not number > 0 or number != float(value):
                raise ValueError(f"memory plan: {name} must be a positive {kind.__name__}, got {value!r}")
            return number

        try:
            self.patch_size = [positive("patch_size", s) for s in patch_size]
        except TypeError:
            raise ValueError(f"memory plan: patch_size must be a list of positive integers, got {patch_size!r}") \
                from None
        if not self.patch_size:
            raise ValueError("memory plan: patch_size must be a list of positive integers, got []")
        self.batch_size, self.num_samples = positive("batch_size", batch_size), positive("num_samples", num_samples)
        if memory_budget_gb is not None:
            memory_budget_gb = positive("memory_budget_gb (GiB, or null for the free memory)", memory_budget_gb,
                                        float)
        safety = positive("safety", safety, float)
        self.device, self.amp, self.amp_dtype = device, amp, amp_dtype
        self.memory_budget_gb = memory_budget_gb
        self.safety, self.loss_factor = safety, loss_factor
        self.in_channels, self.network, self.optimizer = in_channels, network, optimizer
        self.estimate: MemoryEstimate | None = None

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self)
        else:
            logger.info("memory plan: off (memory_plan false); the first step is not checked before it runs")

    def __call__(self, engine: Engine) -> None:
        network, optimizer = self.network, self.optimizer
        for name in ("network", "generator"):  # SupervisedTrainer, SuperResolutionTrainer
            network = getattr(engine, name, None) if network is None else network
        if network is None:
            raise ValueError("memory plan: the engine has no network; pass network")
        for name in ("optimizer", "g_optimizer"):
            optimizer = getattr(engine, name, None) if optimizer is None else optimizer
        device = self.device if self.device is not None else getattr(engine.state, "device", None)
        if device is None:
            device = next(_unwrap(network).parameters()).device
        device = torch.device(device)
        amp = self.amp if self.amp is not None else bool(getattr(engine, "amp", False))
        amp_dtype = self.amp_dtype
        if amp_dtype is None:
            amp_dtype = getattr(engine, "amp_dtype", None) or (getattr(engine, "amp_kwargs", None) or {}).get("dtype")
        effective = _amp_takes_effect(engine, device)
        batch = self.batch_size * self.num_samples
        est = estimate_training_memory(
            network, optimizer, self.patch_size, batch, in_channels=self.in_channels, device=device,
            amp=amp and effective, amp_dtype=amp_dtype, safety=self.safety, loss_factor=self.loss_factor)
        self.estimate = est
        unit = est.unit
        if self.memory_budget_gb is not None:
            room = int(self.memory_budget_gb * GiB)
            have = f"the budget is memory_budget_gb {self.memory_budget_gb:g}"
        else:
            free, source = free_memory(device)
            room = free + est.resident  # what the step already holds on the device is out of `free` already
            have = f"{device} has {_auto(free)} free ({source}) + {_auto(est.resident)} the step holds already"
        shape = f"{self.batch_size} x {self.num_samples} patches of {'x'.join(map(str, self.patch_size))}"
        logger.info("memory plan: one training step of %s on %s (%s) needs an estimated %s %s (%s); %s", shape,
                    device, est.dtype, _size(est.total, unit), unit, est.parts(), have)
        if est.total <= room:
            return
        lower = "batch_size, num_samples or patch_size"
        if not amp and effective:
            lower += ", or set amp true"
        fits = est.max_batch(room)
        raise MemoryPlanError(
            f"memory plan: one training step of {shape} on {device} needs an estimated {_size(est.total, unit)} "
            f"{unit} ({est.parts()}) but {have}; "
            f"{f'at most {fits} patches per step fit' if fits else 'not even one patch fits'}: lower {lower}")
