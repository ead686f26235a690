"""Keras 2.2 defaults in PyTorch: BatchNorm momentum and epsilon, the ``he_normal`` and ``glorot_uniform`` initialisers
and TensorFlow's "same" padding, for networks ported from Keras code (FRCU-Net's Xception path).

- BatchNorm: Keras updates ``moving = momentum * moving + (1 - momentum) * batch`` with ``momentum=0.99`` and adds
  ``epsilon=1e-3``; PyTorch's ``momentum`` is the weight of the batch, so Keras's default is PyTorch ``momentum=0.01``
  (:data:`KERAS_BN_MOMENTUM`), ``eps=1e-3`` (:data:`KERAS_BN_EPS`).
- ``he_normal`` (Keras 2.2.0-2.2.5, ``VarianceScaling(scale=2, mode="fan_in", distribution="normal")``): a normal
  distribution truncated at two standard deviations whose standard deviation after truncation is
  ``sqrt(2 / fan_in)``: the underlying normal has ``sqrt(2 / fan_in) / 0.8796...`` (the standard deviation of a unit
  normal truncated to [-2, 2]). PyTorch's ``kaiming_normal_`` is not truncated.
- ``glorot_uniform`` (Keras's default kernel initialiser): ``U(-l, l)``, ``l = sqrt(6 / (fan_in + fan_out))``, which
  is ``torch.nn.init.xavier_uniform_``: the fans of a PyTorch weight ``(out, in / groups, *k)`` and of the Keras kernel
  ``(*k, in, out)`` agree, and for a depthwise kernel (Keras ``(*k, C, 1)``: fan_in ``C k``, fan_out ``k``; PyTorch
  ``(C, 1, *k)``: fan_in ``k``, fan_out ``C k``) they are swapped, which leaves their sum, and the limit, unchanged.
  Keras biases start at zero.
- TensorFlow "same" padding pads ``max((ceil(n / s) - 1) s + (k - 1) d + 1 - n, 0)`` in total, the odd one at the end:
  a 3x3 stride-2 convolution of an even size pads (0, 1) and a 2x2 stride-1 convolution always pads (0, 1), where
  PyTorch's ``padding`` is symmetric. :class:`Conv2dSame` pads as TensorFlow (timm has the same layer, but it is not
  a dependency of this project).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "KERAS_BN_MOMENTUM",
    "KERAS_BN_EPS",
    "TRUNCATED_NORMAL_STD",
    "keras_he_normal_",
    "keras_glorot_uniform_",
    "tf_same_pad",
    "Conv2dSame",
]

KERAS_BN_MOMENTUM = 0.01
KERAS_BN_EPS = 1e-3
#: standard deviation of a unit normal truncated to [-2, 2] (``scipy.stats.truncnorm.std(-2, 2)``), as in Keras
TRUNCATED_NORMAL_STD = 0.87962566103423978


def _fan_in(weight: torch.Tensor) -> int:
    """``in / groups * prod(kernel)`` of a ``(out, in / groups, *k)`` convolution or ``(out, in)`` linear weight."""
    if weight.ndim < 2:
        raise ValueError(f"a fan-in needs a weight of at least 2 dimensions, got shape {tuple(weight.shape)}.")
    return int(math.prod(weight.shape[1:]))


def keras_he_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Fill ``weight`` in place as Keras 2.2's ``he_normal``: ``N(0, s)`` truncated to ``[-2 s, 2 s]`` with
    ``s = sqrt(2 / fan_in) / 0.8796...``, so that the values have standard deviation ``sqrt(2 / fan_in)``."""
    std = math.sqrt(2.0 / max(1, _fan_in(weight))) / TRUNCATED_NORMAL_STD
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def keras_glorot_uniform_(weight: torch.Tensor) -> torch.Tensor:
    """Fill ``weight`` in place as Keras's default ``glorot_uniform`` (``xavier_uniform_``; see the module docstring
    for why the fans agree, depthwise kernels included)."""
    return nn.init.xavier_uniform_(weight)


def tf_same_pad(x: torch.Tensor, kernel_size: int, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """Zero-pad the spatial axes of ``x`` as TensorFlow's "same" padding for a ``kernel_size`` window of ``stride``
    and ``dilation``: the total ``max((ceil(n / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - n, 0)``,
    ``total // 2`` before and the rest after."""
    pads: list[int] = []
    for axis in range(x.dim() - 1, 1, -1):  # F.pad takes the last axis first
        n = x.shape[axis]
        out = (n + stride - 1) // stride
        total = max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - n, 0)
        pads.append(total // 2)
        pads.append(total - total // 2)
    return F.pad(x, pads)


class Conv2dSame(nn.Conv2d):
    """A square-kernel ``nn.Conv2d`` with TensorFlow's "same" padding (:func:`tf_same_pad`) instead of ``padding``.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels.
        kernel_size: side of the square kernel.
        stride: stride of both axes.
        dilation: dilation of both axes.
        groups: number of groups.
        bias: whether the convolution has a bias term.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=0, dilation=dilation, groups=groups,
            bias=bias,
        )
        self.same_kernel = int(kernel_size)
        self.same_stride = int(stride)
        self.same_dilation = int(dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tf_same_pad(x, self.same_kernel, self.same_stride, self.same_dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
