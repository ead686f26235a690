"""Fixed (non-learnable) depthwise filters: explicit normalised Gaussian kernels, applied separably where they can be.

MONAI's ``GaussianFilter`` truncates its kernel by sigma (``truncated=4.0``), so it cannot reproduce a fixed
``k x k`` kernel as Keras/OpenCV code does. The networks here (E-DU's MDE module, FRCU-Net's DoG stack) need
kernels of an exact size, normalised to sum 1, applied per channel: that is what this module provides.

A fixed kernel that is an outer product of 1D kernels (every Gaussian) is applied as one pass per axis instead of one
``k^d`` depthwise convolution. Each pass is a matrix product with an ``n x n`` banded matrix (``n`` the length of that
axis) that holds the 1D taps and the padding: zero "same" padding drops the taps that fall outside (exactly what the
full kernel sees, since a zero-padded border stays zero through the other passes), reflect/replicate fold them back
onto the mirrored/edge samples (the n-d padding is the product of the 1D index maps, so padding once and filtering
equals filtering with per-axis padding). The backward pass multiplies by the transposed matrices. Matrix products run
at BLAS speed in any memory layout (channels-first or channels-last), where PyTorch's CPU depthwise 3D convolution
is slow (and under bfloat16 autocast slower still); long axes are cut into blocks so that the band, not the whole
``n x n`` matrix, is multiplied. The per-axis path is the default in 3D; in 2D the ``k^2``-tap depthwise convolution
measured as fast or faster and is kept (``FixedDepthwiseFilter(separable=...)`` chooses by hand). Non-separable kernels
(the Laplacian), learnable ones and traced, scripted or exported code keep the full depthwise convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["gaussian_kernel", "opencv_sigma", "separable_factors", "FixedDepthwiseFilter"]

# axes longer than this are multiplied block by block (rows of _BLOCK outputs and the columns their band touches)
_BLOCK = 32
_DENSE_MAX = 2 * _BLOCK
# channels-first inputs larger than this (elements) are filtered a few channel maps at a time
_CHUNK = 1 << 20

# the per-axis operator of one spatial axis: ``None`` (identity), a float (a scale) or ``(A, row blocks of A)``,
# the blocks ``(r0, r1, c0, c1, A[r0:r1, c0:c1])`` (``None`` for a short axis, multiplied densely)
_Block = tuple[int, int, int, int, torch.Tensor]
_MatrixOp = tuple[torch.Tensor, list[_Block] | None]
_AxisOp = float | None | _MatrixOp
# the operators of all the axes and their transposes
_AxisOps = tuple[list[_AxisOp], list[_AxisOp]]


def opencv_sigma(kernel_size: int) -> float:
    """OpenCV's default sigma for a Gaussian of ``kernel_size`` taps: ``0.3 * ((k - 1) / 2 - 1) + 0.8``."""
    return 0.3 * ((kernel_size - 1) / 2 - 1) + 0.8


def gaussian_kernel(kernel_size: int, sigma: float, spatial_dims: int) -> torch.Tensor:
    """Separable Gaussian of ``kernel_size`` taps per axis, as the outer product of 1D kernels; sums to 1.

    Returns a tensor of shape ``(kernel_size,) * spatial_dims`` in float32.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}.")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}.")
    x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g1 = torch.exp(-(x**2) / (2 * sigma**2))
    g1 = g1 / g1.sum()
    kernel = g1
    for _ in range(spatial_dims - 1):
        kernel = kernel.unsqueeze(-1) * g1
    return (kernel / kernel.sum()).float()


def separable_factors(kernel: torch.Tensor, rtol: float = 1e-6) -> list[torch.Tensor] | None:
    """1D factors ``f_0, ..., f_{d-1}`` (float64) whose outer product is ``kernel``, or ``None`` when it has none.

    The factors are the fibres through the largest tap, scaled so that for a Gaussian each one is the 1D Gaussian.
    ``kernel`` counts as separable when the outer product matches it to ``rtol`` of its largest magnitude (the float32
    rounding of an exact outer product is about 1e-7 of it).
    """
    k = kernel.detach().to(dtype=torch.float64, device="cpu")
    if k.numel() == 0 or not bool(torch.isfinite(k).all()):
        return None
    peak = k.abs().max()
    if peak == 0:
        return None
    centre = [int(i) for i in torch.unravel_index(k.abs().argmax(), k.shape)]
    pivot = k[tuple(centre)]
    d = k.ndim
    scale = pivot.abs() ** ((d - 1) / d)
    factors = []
    for axis in range(d):
        index: list[int | slice] = list(centre)
        index[axis] = slice(None)
        factors.append(k[tuple(index)] / scale)
    factors[0] = factors[0] * torch.sign(pivot) ** (d - 1)
    outer = factors[0]
    for f in factors[1:]:
        outer = outer.unsqueeze(-1) * f
    if (outer - k).abs().max() > rtol * peak:
        return None
    return factors


def _axis_operator(taps: tuple[float, ...], n: int, padding_mode: str) -> torch.Tensor:
    """The ``n x n`` float64 matrix ``A`` of one "same" 1D correlation: ``y = A @ x`` along the axis.

    ``y[i] = sum_t taps[t] * x[i + t - p]`` with ``p = len(taps) // 2``; an index outside ``[0, n)`` is dropped
    (``"zeros"``), mirrored without repeating the edge (``"reflect"``, as ``F.pad``) or clamped (``"replicate"``).
    """
    p = len(taps) // 2
    rows = torch.arange(n)
    a = torch.zeros(n, n, dtype=torch.float64)
    for t, w in enumerate(taps):
        cols = rows + t - p
        if padding_mode == "zeros":
            keep = (cols >= 0) & (cols < n)
            r, c = rows[keep], cols[keep]
        else:
            if padding_mode == "reflect":
                cols = cols.abs()
                cols = torch.where(cols > n - 1, 2 * (n - 1) - cols, cols)
            else:
                cols = cols.clamp(0, n - 1)
            r, c = rows, cols
        a.index_put_((r, c), torch.full((len(r),), float(w), dtype=torch.float64), accumulate=True)
    return a


def _blocks(a: torch.Tensor) -> list[_Block]:
    """``(r0, r1, c0, c1, a[r0:r1, c0:c1])`` for row blocks of ``_BLOCK`` rows and the columns their band reaches."""
    n = a.shape[0]
    out = []
    for r0 in range(0, n, _BLOCK):
        r1 = min(n, r0 + _BLOCK)
        cols = torch.nonzero(a[r0:r1].abs().sum(0)).flatten()
        c0, c1 = (int(cols.min()), int(cols.max()) + 1) if len(cols) else (0, 1)
        out.append((r0, r1, c0, c1, a[r0:r1, c0:c1].contiguous()))
    return out


def _matmul_along(x: torch.Tensor, dim: int, op: _MatrixOp, out: torch.Tensor | None = None) -> torch.Tensor:
    """``y[..., i, ...] = sum_j A[i, j] x[..., j, ...]`` along ``dim`` of ``x``, in ``x``'s own memory layout.

    ``op`` is ``(A, blocks)``: the dense matrix, and its row blocks for a long axis (``None`` for a short one).
    The axes are taken in the order of their strides, so that channels-first and channels-last inputs are both read
    as contiguous ``(before, n, after)`` views and the output keeps the input's memory format. ``out`` (contiguous,
    the shape and dtype of a channels-first ``x``) receives the result when ``dim`` is the innermost axis; otherwise
    it is ignored.
    """
    strides = x.stride()
    order = sorted(range(x.ndim), key=lambda i: (-strides[i], i))
    xp = x.permute(order)
    if not xp.is_contiguous():
        x = x.contiguous()
        order = list(range(x.ndim))
        xp = x
    q = order.index(dim)
    n = xp.shape[q]
    before, after = math.prod(xp.shape[:q]), math.prod(xp.shape[q + 1 :])
    a, blocks = op
    a = a.to(dtype=x.dtype)
    if after == 1:  # the axis is the innermost one: (rows, n) @ A^T
        v = xp.reshape(before, n)
        # (the chunks of _separable_apply, the only caller with an ``out``, are channels-first: order is the identity)
        out = out.view(before, n) if out is not None and order == sorted(order) else None
        if blocks is None:
            out = v @ a.t() if out is None else torch.mm(v, a.t(), out=out)
        else:
            out = torch.empty_like(v) if out is None else out
            for r0, r1, c0, c1, ab in blocks:
                torch.mm(v[:, c0:c1], ab.to(dtype=x.dtype).t(), out=out[:, r0:r1])
    else:
        v = xp.reshape(before, n, after)
        if blocks is None:
            out = torch.matmul(a, v)
        else:
            out = torch.empty_like(v)
            for r0, r1, c0, c1, ab in blocks:
                torch.matmul(ab.to(dtype=x.dtype), v[:, c0:c1], out=out[:, r0:r1])
    inverse = [order.index(i) for i in range(x.ndim)]
    return out.view(xp.shape).permute(inverse)


def _separable_passes(x: torch.Tensor, ops: list[_AxisOp], out: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the per-axis operators ``ops[i]`` (``None``: identity, a float: a scale) along spatial axis ``2 + i``.

    ``out`` may receive the last pass (see :func:`_matmul_along`); the result is returned either way.
    """
    last = max(i for i, op in enumerate(ops) if op is not None) if any(op is not None for op in ops) else -1
    for i, op in enumerate(ops):
        if op is None:
            continue
        x = x * op if isinstance(op, float) else _matmul_along(x, 2 + i, op, out if i == last else None)
    return x


def _separable_apply(x: torch.Tensor, ops: list[_AxisOp]) -> torch.Tensor:
    """:func:`_separable_passes`, a few channel maps at a time when ``x`` is large and channels-first.

    The passes of one chunk of about ``_CHUNK`` elements stay in the cache between the axes; over the whole tensor
    each pass would stream it through memory (measured 1.2-1.6x faster on 32 x 96 x 96 x 64 and 2 x 64 x 48 x 48 x 32).
    """
    per_map = math.prod(x.shape[2:])
    maps = x.shape[0] * x.shape[1]
    if x.numel() <= _CHUNK or maps == 1 or not x.is_contiguous():
        return _separable_passes(x, ops)
    step = max(1, _CHUNK // per_map)
    flat = x.reshape(maps, 1, *x.shape[2:])
    # the last pass of each chunk writes into the output, except under autocast, whose matrix products return
    # bfloat16: there the output takes the first chunk's dtype and each chunk is copied in while still in the cache
    out = None if torch.is_autocast_enabled(x.device.type) else torch.empty_like(flat)
    for s in range(0, maps, step):
        part = _separable_passes(flat[s : s + step], ops, None if out is None else out[s : s + step])
        if out is None:
            out = torch.empty((maps,) + tuple(part.shape[1:]), dtype=part.dtype, device=part.device)
        if part.data_ptr() != out[s : s + step].data_ptr():
            out[s : s + step].copy_(part)
    assert out is not None  # maps > 1: the loop ran
    return out.view(x.shape)


class _SeparableDepthwiseFilter(torch.autograd.Function):
    """One matrix product per axis forward, the transposed matrices backward; nothing but the matrices is saved.

    Replaces the custom backward of :class:`_FixedDepthwiseConv` for separable kernels: the adjoint of each pass is
    its transposed matrix (for zero padding and a symmetric kernel the same matrix), a matrix product as fast as the
    forward one.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, ops: list[_AxisOp], ops_t: list[_AxisOp]) -> torch.Tensor:
        ctx.ops_t = ops_t
        return _separable_apply(x, ops)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return _separable_apply(grad_output, ctx.ops_t), None, None


class _FixedDepthwiseConv(torch.autograd.Function):
    """Depthwise "same" convolution with a fixed kernel whose backward pass is one more depthwise convolution.

    PyTorch's CPU backward of a depthwise 3D convolution takes a slow generic path (about 50x the forward time here,
    measured in ``bench/``) and computes a weight gradient that a fixed kernel does not need. With zero padding of
    ``k // 2`` and stride 1, the adjoint of the correlation is the correlation with the flipped kernel, which
    runs on the same fast path as the forward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
        conv = F.conv2d if weight.ndim == 4 else F.conv3d
        padding = tuple(s // 2 for s in weight.shape[2:])
        ctx.save_for_backward(weight)
        ctx.groups = groups
        return conv(x, weight, padding=padding, groups=groups)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (weight,) = ctx.saved_tensors
        conv = F.conv2d if weight.ndim == 4 else F.conv3d
        flipped = weight.flip(dims=tuple(range(2, weight.ndim)))
        padding = tuple(s // 2 for s in weight.shape[2:])
        return conv(grad_output, flipped, padding=padding, groups=ctx.groups), None, None


class FixedDepthwiseFilter(nn.Module):
    """Apply one fixed kernel to every channel ("same" output size); the kernel is a buffer, not a parameter.

    A fixed kernel that is an outer product of 1D kernels (:func:`separable_factors`; every Gaussian) is applied as
    one banded matrix product per axis, forward and backward (see the module docstring); any other kernel, a
    learnable one, and traced, scripted or compiled code use the full depthwise convolution. Both give the same values
    (to float rounding, about 1e-7 relative in float32).

    Args:
        spatial_dims: 2 or 3.
        channels: number of channels C of the input ``(B, C, *spatial)``.
        kernel: a ``(k,) * spatial_dims`` tensor with odd k.
        padding_mode: ``"zeros"`` (as Keras "same" padding) or ``"reflect"``/``"replicate"``.
        learnable: make the kernel a depthwise parameter initialised from ``kernel`` instead of a buffer.
        separable: ``None`` (default) applies a separable fixed kernel per axis where that was measured faster
            (``bench/results_separable_filters.md``): in 3D, except a kernel of at most 27 taps on a channels-last
            float input outside autocast, where oneDNN's channels-last depthwise convolution is faster; in 2D the
            depthwise convolution of ``k^2`` taps was as fast or faster and is kept. ``True`` applies every separable
            fixed kernel per axis, ``False`` never.
    """

    # eager-only state of the per-axis path, which TorchScript neither types nor compiles (see :meth:`forward`)
    __jit_ignored_attributes__ = ["taps", "_operators", "separable_policy"]
    __jit_unused_properties__ = ["is_separable"]

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        kernel: torch.Tensor,
        padding_mode: str = "zeros",
        learnable: bool = False,
        separable: bool | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if kernel.ndim != spatial_dims or any(s % 2 == 0 for s in kernel.shape):
            raise ValueError(f"kernel must have {spatial_dims} odd-sized axes, got shape {tuple(kernel.shape)}.")
        if padding_mode not in ("zeros", "reflect", "replicate"):
            raise ValueError(f"padding_mode must be 'zeros', 'reflect' or 'replicate', got {padding_mode!r}.")
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.padding_mode = padding_mode
        weight = kernel.detach().clone().float().expand(channels, 1, *kernel.shape).contiguous()
        if learnable:
            self.weight = nn.Parameter(weight)
        else:
            # not persistent: the kernel is rebuilt from the constructor arguments, so checkpoints need not carry it
            self.register_buffer("weight", weight, persistent=False)
        # F.pad takes pairs from the last axis backwards; the convolution's own "same" padding per axis
        self._pad = [p for s in reversed(kernel.shape) for p in (s // 2, s // 2)]
        self._same = [s // 2 for s in kernel.shape]
        # the 1D taps of a fixed separable kernel (factored from the float32 kernel the full path uses), else None
        # (a kernel built on the meta device, to count parameters, has no values to factor)
        factors = None if learnable or weight.is_meta else separable_factors(weight[0, 0])
        self.taps: tuple[tuple[float, ...], ...] | None = (
            None if factors is None else tuple(tuple(float(v) for v in f) for f in factors)
        )
        # (spatial shape, dtype, device) -> (operators, transposed operators)
        self._operators: dict[tuple[tuple[int, ...], torch.dtype, torch.device], _AxisOps] = {}
        self.separable_policy = separable

    @property
    def is_separable(self) -> bool:
        """Whether the kernel factors into 1D taps (a fixed kernel only): :meth:`forward` may apply it per axis."""
        return self.taps is not None

    def _ops(self, x: torch.Tensor) -> _AxisOps:
        """The per-axis operators for the spatial shape, dtype and device of ``x`` and their transposes, cached."""
        key = (tuple(x.shape[2:]), x.dtype, x.device)
        cached = self._operators.get(key)
        if cached is not None:
            return cached
        assert self.taps is not None  # only a separable kernel takes the per-axis path (_use_separable)
        ops: list[_AxisOp] = []
        ops_t: list[_AxisOp] = []
        for taps, n in zip(self.taps, x.shape[2:]):
            if len(taps) == 1:
                scale = None if taps[0] == 1.0 else taps[0]
                ops.append(scale)
                ops_t.append(scale)
                continue
            a = _axis_operator(taps, n, self.padding_mode)
            for target, m in ((ops, a), (ops_t, a.t().contiguous())):
                m = m.to(dtype=x.dtype, device=x.device)
                target.append((m, None if n <= _DENSE_MAX else _blocks(m)))
        if len(self._operators) >= 16:  # a handful of window shapes in practice; do not grow without bound
            self._operators.clear()
        self._operators[key] = (ops, ops_t)
        return ops, ops_t

    def _use_separable(self, x: torch.Tensor) -> bool:
        if self.taps is None or self.separable_policy is False or torch.jit.is_tracing() or torch.jit.is_scripting():
            return False
        if torch.compiler.is_compiling():  # torch.export / torch.compile see the plain convolution
            return False
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.channels:
            return False  # let the convolution raise its usual error
        if self.padding_mode == "reflect" and any(len(t) // 2 >= n for t, n in zip(self.taps, x.shape[2:])):
            return False  # F.pad refuses reflect padding this wide: keep its error
        if self.separable_policy:
            return True
        if self.spatial_dims == 2:
            return False
        small = math.prod(len(t) for t in self.taps) <= 27
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)
        autocast = torch.is_autocast_enabled(x.device.type)
        return not (small and channels_last and not autocast and x.dtype in (torch.float32, torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TorchScript compiles only the full convolution (``torch.jit.is_scripting()`` is a compile-time constant
        # there): the per-axis path's cached operators and custom autograd functions are eager-only. The scripted
        # module gives the same values, and with fixed kernels the same input gradient, through PyTorch's own
        # convolution backward.
        if not torch.jit.is_scripting():
            if self._use_separable(x):
                ops, ops_t = self._ops(x)
                if torch.is_grad_enabled() and x.requires_grad:
                    return _SeparableDepthwiseFilter.apply(x, ops, ops_t)
                return _separable_apply(x, ops)
            if (
                self.padding_mode == "zeros"
                and not isinstance(self.weight, nn.Parameter)
                and not torch.jit.is_tracing()
                and torch.is_grad_enabled()
            ):
                # a fixed kernel under autograd: the custom backward (the plain convolution is kept for a learnable
                # kernel, whose weight gradient is needed, for traced code, which cannot save the custom function,
                # and when there is no backward pass at all)
                return _FixedDepthwiseConv.apply(x, self.weight.to(dtype=x.dtype), self.channels)
        return self._convolve(x)

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        """The full depthwise convolution (zero padding inside the convolution, else ``F.pad`` first)."""
        weight = self.weight.to(dtype=x.dtype)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._pad, mode=self.padding_mode)
            padding = [0] * self.spatial_dims
        else:
            padding = self._same
        if self.spatial_dims == 2:
            return F.conv2d(x, weight, padding=padding, groups=self.channels)
        return F.conv3d(x, weight, padding=padding, groups=self.channels)
