"""Fixed (non-learnable) depthwise filters: explicit normalised Gaussian kernels.

MONAI's ``GaussianFilter`` truncates its kernel by sigma (``truncated=4.0``), so it cannot reproduce a fixed
``k x k`` kernel as Keras/OpenCV code does. The networks here (E-DU's MDE module, FRCU-Net's DoG stack) need
kernels of an exact size, normalised to sum 1, applied per channel: that is what this module provides.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["gaussian_kernel", "opencv_sigma", "FixedDepthwiseFilter"]


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

    Args:
        spatial_dims: 2 or 3.
        channels: number of channels C of the input ``(B, C, *spatial)``.
        kernel: a ``(k,) * spatial_dims`` tensor with odd k.
        padding_mode: ``"zeros"`` (as Keras "same" padding) or ``"reflect"``/``"replicate"``.
        learnable: make the kernel a depthwise parameter initialised from ``kernel`` instead of a buffer.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        kernel: torch.Tensor,
        padding_mode: str = "zeros",
        learnable: bool = False,
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
        # F.pad takes pairs from the last axis backwards
        self._pad = tuple(p for s in reversed(kernel.shape) for p in (s // 2, s // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv2d if self.spatial_dims == 2 else F.conv3d
        weight = self.weight.to(dtype=x.dtype)
        if self.padding_mode == "zeros":
            if isinstance(self.weight, nn.Parameter) or torch.jit.is_tracing() or not torch.is_grad_enabled():
                # learnable (the weight gradient is needed), traced (TorchScript cannot save the custom function)
                # or no backward pass at all: the plain convolution
                return conv(x, weight, padding=tuple(s // 2 for s in weight.shape[2:]), groups=self.channels)
            return _FixedDepthwiseConv.apply(x, weight, self.channels)
        return conv(F.pad(x, self._pad, mode=self.padding_mode), weight, groups=self.channels)
