"""Attention gates for channels-first feature maps of any spatial rank (``(B, C, *spatial)``, 2D or 3D).

- :class:`ChannelAttention`: CBAM's channel gate, ``sigmoid(MLP(avg-pool) + MLP(max-pool))``.
- :class:`SpatialAttention`: CBAM's spatial gate, ``sigmoid(Conv(concat[channel-mean, channel-max]))``.
- :class:`MultiHeadExternalAttention`: external attention with two shared memory units and double normalisation.

Each module returns the gate (or the attended features) only; the caller decides how to combine it with its input
(HEMF multiplies, ``x * gate(x)``). References: Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018;
Guo et al., "Beyond Self-attention: External Attention using Two Linear Layers for Visual Tasks", TPAMI 2022.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from monai.networks.layers.factories import Conv, Pool

__all__ = ["ChannelAttention", "SpatialAttention", "MultiHeadExternalAttention"]


class ChannelAttention(nn.Module):
    """Channel gate ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` of shape ``(B, C, 1, ..., 1)``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        channels: number of input channels C.
        ratio: channel reduction of the shared MLP's hidden layer (``C // ratio``, at least 1).
    """

    def __init__(self, spatial_dims: int, channels: int, ratio: int = 16) -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        hidden = max(channels // ratio, 1)
        self.avg_pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.max_pool = Pool[Pool.ADAPTIVEMAX, spatial_dims](1)
        self.mlp = nn.Sequential(
            conv_type(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(),
            conv_type(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x)))


class SpatialAttention(nn.Module):
    """Spatial gate ``sigmoid(Conv_k(concat[mean_C(x), max_C(x)]))`` of shape ``(B, 1, *spatial)``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        kernel_size: odd kernel size of the convolution (7 gives a 7x7 or 7x7x7 kernel).
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
        self.conv = Conv[Conv.CONV, spatial_dims](2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class MultiHeadExternalAttention(nn.Module):
    """Multi-head external attention over the flattened spatial tokens of ``(B, C, *spatial)``; same shape out.

    The channels are split into ``heads`` groups of ``C // heads``. A memory key ``Linear(C/heads -> memory_size)`` and
    a memory value ``Linear(memory_size -> C/heads)``, both without bias, are shared by all heads. The attention map is
    normalised twice: softmax over the token axis, then L1 over the memory axis. Tokens are the ``H*W`` (or ``D*H*W``)
    positions, so no square input is required. The memory layers are initialised ``N(0, 0.001)``.

    Args:
        channels: number of channels C; must be divisible by ``heads``.
        heads: number of heads.
        memory_size: number S of memory slots.
        shortcut: add the input to the output (residual).
        dropout: dropout probability applied to the attended features.
    """

    def __init__(
        self, channels: int, heads: int = 8, memory_size: int = 64, shortcut: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads}).")
        self.heads = heads
        self.shortcut = shortcut
        self.memory_key = nn.Linear(channels // heads, memory_size, bias=False)
        self.memory_value = nn.Linear(memory_size, channels // heads, bias=False)
        self.dropout = nn.Dropout(dropout)
        for layer in (self.memory_key, self.memory_value):
            nn.init.normal_(layer.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        tokens = tokens.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)  # (B, heads, N, C/heads)
        attn = torch.softmax(self.memory_key(tokens), dim=2)  # softmax over tokens
        attn = attn / attn.sum(dim=3, keepdim=True)  # L1 over memory slots
        out = self.dropout(self.memory_value(attn))  # (B, heads, N, C/heads)
        out = out.transpose(1, 2).reshape(b, -1, c).transpose(1, 2).reshape(x.shape)
        return out + x if self.shortcut else out
