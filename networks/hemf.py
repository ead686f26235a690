"""HEMF: hierarchical enhanced multi-attention feature fusion for image classification, in 2D and 3D.

A port of the authors' PyTorch code (repository ``Esgjgd/HEMF``, files ``main_model.py``, ``ELF_block.py``,
``EGF_block.py``, ``HEF_block.py``, ``MHEA.py``). It reproduces the code rather than the figure: the SIRMLP's 3x3
convolution is dense, the two LayerNorms of an EGF block are shared by its inner layers, every fusion block carries the
layers of both of its input paths, and the model-level initialisation skips the fusion blocks. With the default
arguments ``HEMF(spatial_dims=2, in_channels=3, out_channels=7)`` has 68,269,367 parameters, as the reference.
The stage widths are ``features`` and the classes ``out_channels``, as in the other networks of this package; the
earlier names ``widths`` and ``num_classes`` are accepted, with a ``DeprecationWarning``, until version 0.2.0
(:mod:`networks.deprecation`).

In 3D the row/column retention becomes three axial passes (W, then H, then D) with a 1D Manhattan decay mask per axis;
external attention runs over the flattened ``D*H*W`` tokens and the spatial attention uses a ``7x7x7`` kernel.

Every ``forward`` compiles with ``torch.jit.script`` (no starred unpacking, generators, closures or modules passed as
arguments; lists for shapes) and exports to ONNX through both of PyTorch's exporters at any input size: ``movedim``
is always given a non-negative source axis, because the TorchScript-based ONNX exporter (``dynamo=False``, torch 2.13)
writes a negative source as a negative ``Transpose`` permutation that ONNX rejects.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.networks.blocks import Convolution
from monai.networks.layers import DropPath
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer

from .blocks.attention import ChannelAttention, MultiHeadExternalAttention, SpatialAttention
from .blocks.shapes import divisible_spatial, shape_text
from .deprecation import check_renamed, renamed_args

__all__ = [
    "ChannelsFirstLayerNorm",
    "ELFBlock",
    "RetentionRelPos",
    "AxialRetention",
    "EGFBlock",
    "SIRMLP",
    "HEFBlock",
    "HEMF",
    "hemf_3d_light",
]


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel dimension (dim 1) of a ``(B, C, *spatial)`` tensor of any rank.

    Args:
        num_channels: number of channels C (the size of dim 1).
        eps: value added to the variance for numerical stability.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.movedim(1, -1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.movedim(x.ndim - 1, 1)  # (a non-negative source axis throughout: see the module docstring)


class ELFBlock(nn.Module):
    """Enhanced local feature block: ``x + DropPath(act(PW(DW3(LN(Conv3(x))))))``, same shape in and out.

    The 3x3 convolution is dense with bias, DW a depthwise 3x3 and PW a ``Linear(C, C)`` applied over channels.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        channels: number of channels C.
        drop_path: stochastic depth probability of the residual branch.
        act: activation type and arguments (MONAI spec).
    """

    def __init__(self, spatial_dims: int, channels: int, drop_path: float = 0.0, act: str | tuple = "gelu") -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.conv = conv_type(channels, channels, kernel_size=3, padding=1)
        self.norm = ChannelsFirstLayerNorm(channels)
        self.dwconv = conv_type(channels, channels, kernel_size=3, padding=1, groups=channels)
        self.pwconv = nn.Linear(channels, channels)
        self.act = get_act_layer(act)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(self.norm(self.conv(x)))
        y = self.pwconv(y.movedim(1, -1))
        y = y.movedim(y.ndim - 1, 1)
        return x + self.drop_path(self.act(y))


def _rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs ``(x0, x1) -> (-x1, x0)`` along the last dimension."""
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)


def _theta_shift(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_every_two(x) * sin


class RetentionRelPos(nn.Module):
    """Relative-position terms of vision retention: RoPE-like angles and per-axis Manhattan decay masks.

    The rotation angle of position ``n`` (the flattened ``H*W`` or ``D*H*W`` index) and channel pair ``j`` is
    ``n / 10000**linspace(0, 1, d/2)[j]``; the decay logit of head ``h`` between positions ``i`` and ``j`` of one axis
    is ``|i - j| * log(1 - 2**-(initial_value + heads_range * h / num_heads))``. Angles and decays are non-persistent
    buffers.

    Args:
        dim: embedding channels C.
        num_heads: number of heads; ``C // num_heads`` must be even.
        initial_value: decay exponent of head 0.
        heads_range: spread of the decay exponents over the heads.
    """

    def __init__(self, dim: int, num_heads: int, initial_value: float = 1.0, heads_range: float = 3.0) -> None:
        super().__init__()
        head_dim = dim // num_heads
        angle = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 2))
        exponent = initial_value + heads_range * torch.arange(num_heads, dtype=torch.float) / num_heads
        decay = torch.log(1 - 2**-exponent)
        # buffers, declared for the type checker (``nn.Module.__getattr__`` is typed ``Tensor | Module``)
        self.angle: torch.Tensor
        self.decay: torch.Tensor
        self.register_buffer("angle", angle.repeat_interleave(2), persistent=False)
        self.register_buffer("decay", decay, persistent=False)

    def forward(self, spatial_shape: list[int]) -> tuple[tuple[torch.Tensor, torch.Tensor], list[torch.Tensor]]:
        """Return ``((sin, cos), masks)``: sin/cos of shape ``(*spatial, d)``, one ``(heads, L, L)`` mask per axis.

        ``spatial_shape`` is any sequence of ints in Python (a list in TorchScript).
        """
        spatial_shape = list(spatial_shape)  # (not int(s): that would fix symbolic sizes under torch.export)
        tokens = 1
        for length in spatial_shape:
            tokens *= length
        index = torch.arange(tokens).to(self.decay)
        phase = (index[:, None] * self.angle[None, :]).reshape(spatial_shape + [-1])
        masks: list[torch.Tensor] = []
        for length in spatial_shape:
            pos = torch.arange(length).to(self.decay)
            masks.append((pos[:, None] - pos[None, :]).abs() * self.decay[:, None, None])
        return (torch.sin(phase), torch.cos(phase)), masks


class AxialRetention(nn.Module):
    """Decomposed (axial) vision retention on channels-last tokens ``(B, *spatial, C)``; same shape out.

    q, k, v are ``Linear(C, C)``; k is scaled by ``d**-0.5``; q and k are rotated (RoPE-like). Attention is a softmax
    along one axis at a time, first W (within each row), then H, then D in 3D, each with its 1D decay mask added to the
    logits and each pass using the output of the previous one as values. LePE (a depthwise convolution of v) is added
    before the output projection. Cost per head is ``O(N * (D + H + W))``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        dim: embedding channels C.
        num_heads: number of heads.
        lepe_kernel_size: kernel size of the depthwise LePE convolution.
    """

    def __init__(self, spatial_dims: int, dim: int, num_heads: int, lepe_kernel_size: int = 5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.lepe = Conv[Conv.CONV, spatial_dims](
            dim, dim, kernel_size=lepe_kernel_size, padding=lepe_kernel_size // 2, groups=dim
        )
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, rel_pos: tuple[tuple[torch.Tensor, torch.Tensor], list[torch.Tensor]]
    ) -> torch.Tensor:
        # written for TorchScript too: no starred unpacking, generators or closures
        b, c = x.shape[0], x.shape[-1]
        spatial = list(x.shape[1:-1])
        n = len(spatial)
        sin, cos = rel_pos[0]
        masks = rel_pos[1]
        v = self.v_proj(x)
        lepe = self.lepe(v.movedim(v.ndim - 1, 1)).movedim(1, -1)
        q = _theta_shift(self._heads_first(self.q_proj(x)), sin, cos)
        k = _theta_shift(self._heads_first(self.k_proj(x) * self.scaling), sin, cos)
        v = self._heads_first(v)
        for i in range(n):
            axis = n - 1 - i  # W, then H (then D)
            dim = 2 + axis
            length = spatial[axis]
            qa, ka, va = q.movedim(dim, -2), k.movedim(dim, -2), v.movedim(dim, -2)
            mask = masks[axis].reshape([self.num_heads] + [1] * (n - 1) + [length, length])
            attn = torch.softmax(qa @ ka.transpose(-1, -2) + mask, dim=-1)
            v = attn @ va
            v = v.movedim(v.ndim - 2, dim)
        out = v.movedim(1, -2).reshape([b] + spatial + [c])
        return self.out_proj(out + lepe)

    def _heads_first(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, *S, C) -> (B, heads, *S, d)``."""
        t = t.reshape(list(t.shape[:-1]) + [self.num_heads, self.head_dim])
        return t.movedim(t.ndim - 2, 1)


class EGFBlock(nn.Module):
    """Enhanced global feature block: ``depth`` post-norm retention layers on ``(B, C, *spatial)``; same shape out.

    Each layer computes ``x = LN1(x + Retention(x))`` then ``x = LN2(x + Linear(x))``. As in the reference code,
    ``LN1`` and ``LN2`` are shared by all layers and the feed-forward part is a single ``Linear(C, C)``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        dim: channels C.
        num_heads: retention heads; ``C // num_heads`` must be even.
        depth: number of inner layers.
        lepe_kernel_size: kernel size of the depthwise LePE convolution.
        initial_value: decay exponent of head 0.
        heads_range: spread of the decay exponents over the heads.
    """

    def __init__(
        self,
        spatial_dims: int,
        dim: int,
        num_heads: int = 8,
        depth: int = 1,
        lepe_kernel_size: int = 5,
        initial_value: float = 1.0,
        heads_range: float = 3.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0 or (dim // num_heads) % 2 != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}) into an even head size.")
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.rel_pos = RetentionRelPos(dim, num_heads, initial_value, heads_range)
        self.retentions = nn.ModuleList(
            [AxialRetention(spatial_dims, dim, num_heads, lepe_kernel_size) for _ in range(depth)]
        )
        self.ffns = nn.ModuleList([nn.Linear(dim, dim) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(1, -1)
        rel_pos = self.rel_pos(list(x.shape[1:-1]))
        for retention, ffn in zip(self.retentions, self.ffns):
            x = self.norm1(x + retention(x, rel_pos))
            x = self.norm2(x + ffn(x))
        return x.movedim(x.ndim - 1, 1)


def _conv_norm(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    norm: str | tuple | None = None,
    act: str | tuple | None = None,
    bias: bool = True,
    groups: int = 1,
) -> Convolution:
    """"Same"-padded convolution followed by optional norm and activation (the reference's ``Conv`` helper)."""
    return Convolution(
        spatial_dims, in_channels, out_channels, kernel_size=kernel_size, norm=norm, act=act, bias=bias, groups=groups
    )


class SIRMLP(nn.Module):
    """Squeezed inverted-residual MLP: ``(B, C_in, *spatial) -> (B, C_out, *spatial)``.

    ``r = Norm(Conv1(x))`` (C_in -> C), ``y = Norm(act(Conv3(r)) + r)``, then ``Norm(Conv1(act(Conv1(y))))`` through a
    4C hidden width. The 3x3 convolution is dense as in the code, or depthwise as in the paper's figure.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: input channels C_in.
        channels: squeezed width C.
        out_channels: output channels C_out.
        depthwise: use a depthwise instead of a dense 3x3 convolution.
        norm: normalisation type and arguments (MONAI spec).
        act: activation type and arguments (MONAI spec).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: int,
        out_channels: int,
        depthwise: bool = False,
        norm: str | tuple = "batch",
        act: str | tuple = "gelu",
    ) -> None:
        super().__init__()
        self.conv_s = _conv_norm(spatial_dims, in_channels, channels, 1, norm=norm)
        self.conv1 = _conv_norm(spatial_dims, channels, channels, 3, bias=False, groups=channels if depthwise else 1)
        self.norm1 = get_norm_layer(norm, spatial_dims, channels)
        self.conv2 = _conv_norm(spatial_dims, channels, channels * 4, 1, bias=False)
        self.conv3 = _conv_norm(spatial_dims, channels * 4, out_channels, 1, norm=norm, bias=False)
        self.act = get_act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_s(x)
        x = self.norm1(self.act(self.conv1(x)) + x)
        return self.conv3(self.act(self.conv2(x)))


class HEFBlock(nn.Module):
    """Hierarchical enhanced fusion block: fuses local L, global G and the previous fusion output F.

    ``L, G: (B, C, *spatial)``, ``F: (B, C_prev, *2spatial)`` or ``None``; returns ``(B, C, *spatial)``.

    1. ``X = act(Conv1+Norm(LN(concat[F', W_l(L), W_g(G)])))`` with ``F' = AvgPool2(ReLU(Norm(Conv1(F))))`` as the
       shortcut, or ``X = act(Conv1+Norm(LN(concat[W_l(L), W_g(G)])))`` and no shortcut for the first stage.
    2. L and G each pass ``x = LN(x); x = x * MHEA(x); x = LN(x); x = x * SA(x); x = x * CA(x)`` with their own modules
       (the same LN twice).
    3. ``shortcut + DropPath(SIRMLP(LN(concat[G', L', X])))``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        channels: channels C of L, G and the output.
        previous_channels: channels of F (default ``C // 2``).
        num_heads: heads of the external attention.
        memory_size: memory slots of the external attention.
        ca_ratio: reduction of the channel attention MLP.
        sa_kernel_size: kernel size of the spatial attention.
        fuse_previous: ``True`` builds only the layers used when F is given, ``False`` only those used when it is
            ``None``, ``None`` builds both, as the reference code does (their parameters then count in every block).
        sirmlp_depthwise: depthwise 3x3 in the SIRMLP (the figure) instead of dense (the code).
        dropout: dropout probability inside the external attention.
        drop_path: stochastic depth probability of the SIRMLP branch.
        norm: normalisation type and arguments (MONAI spec), batch norm in the reference.
        act: activation type and arguments (MONAI spec), GELU in the reference.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        previous_channels: int | None = None,
        num_heads: int = 8,
        memory_size: int = 64,
        ca_ratio: int = 16,
        sa_kernel_size: int = 7,
        fuse_previous: bool | None = None,
        sirmlp_depthwise: bool = False,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        norm: str | tuple = "batch",
        act: str | tuple = "gelu",
    ) -> None:
        super().__init__()
        c = channels
        previous_channels = c // 2 if previous_channels is None else previous_channels
        self.w_l = _conv_norm(spatial_dims, c, c, 1, norm=norm)
        self.w_g = _conv_norm(spatial_dims, c, c, 1, norm=norm)
        self.norm_l = ChannelsFirstLayerNorm(c)
        self.norm_g = ChannelsFirstLayerNorm(c)
        self.mhea_l = MultiHeadExternalAttention(c, num_heads, memory_size, shortcut=False, dropout=dropout)
        self.mhea_g = MultiHeadExternalAttention(c, num_heads, memory_size, shortcut=False, dropout=dropout)
        self.sa_l = SpatialAttention(spatial_dims, sa_kernel_size)
        self.sa_g = SpatialAttention(spatial_dims, sa_kernel_size)
        self.ca_l = ChannelAttention(spatial_dims, c, ca_ratio)
        self.ca_g = ChannelAttention(spatial_dims, c, ca_ratio)
        if fuse_previous is None or fuse_previous:
            self.up = _conv_norm(spatial_dims, previous_channels, c, 1, norm=norm, act="relu")
            self.pool = Pool[Pool.AVG, spatial_dims](kernel_size=2, stride=2)
            self.norm_fuse3 = ChannelsFirstLayerNorm(3 * c)
            self.fuse3 = _conv_norm(spatial_dims, 3 * c, c, 1, norm=norm)
        if fuse_previous is None or not fuse_previous:
            self.norm_fuse2 = ChannelsFirstLayerNorm(2 * c)
            self.fuse2 = _conv_norm(spatial_dims, 2 * c, c, 1, norm=norm)
        self.act = get_act_layer(act)
        self.norm_out = ChannelsFirstLayerNorm(3 * c)
        self.mlp = SIRMLP(spatial_dims, 3 * c, c, c, depthwise=sirmlp_depthwise, norm=norm, act=act)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    @staticmethod
    def _attend(
        x: torch.Tensor, norm: nn.Module, mhea: nn.Module, sa: nn.Module, ca: nn.Module
    ) -> torch.Tensor:
        x = norm(x)
        x = norm(x * mhea(x))
        x = x * sa(x)
        return x * ca(x)

    def forward(self, local: torch.Tensor, glob: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        # TorchScript: ``hasattr`` on a module is decided when compiling, so a path whose layers were not built is not
        # compiled; the first stage's shortcut is a zero tensor (one type for both paths)
        w_local, w_global = self.w_l(local), self.w_g(glob)
        if previous is not None:
            if hasattr(self, "fuse3"):
                shortcut = self.pool(self.up(previous))
                x_f = self.act(self.fuse3(self.norm_fuse3(torch.cat([shortcut, w_local, w_global], dim=1))))
            else:
                raise RuntimeError("this HEFBlock was built with fuse_previous=False but received a previous output.")
        else:
            if hasattr(self, "fuse2"):
                x_f = self.act(self.fuse2(self.norm_fuse2(torch.cat([w_local, w_global], dim=1))))
                shortcut = x_f.new_zeros(())
            else:
                raise RuntimeError("this HEFBlock was built with fuse_previous=True but received no previous output.")
        if torch.jit.is_scripting():  # modules cannot be arguments in TorchScript: _attend written out per branch
            local = self.norm_l(local)
            local = self.norm_l(local * self.mhea_l(local))
            local = local * self.sa_l(local)
            local = local * self.ca_l(local)
            glob = self.norm_g(glob)
            glob = self.norm_g(glob * self.mhea_g(glob))
            glob = glob * self.sa_g(glob)
            glob = glob * self.ca_g(glob)
        else:
            local = self._attend(local, self.norm_l, self.mhea_l, self.sa_l, self.ca_l)
            glob = self._attend(glob, self.norm_g, self.mhea_g, self.sa_g, self.ca_g)
        fused = self.mlp(self.norm_out(torch.cat([glob, local, x_f], dim=1)))
        return shortcut + self.drop_path(fused)


def _per_stage(value: int | Sequence[int], num_stages: int, name: str) -> tuple[int, ...]:
    values = (value,) * num_stages if isinstance(value, int) else tuple(value)
    if len(values) != num_stages:
        raise ValueError(f"{name} must be an int or have one entry per stage ({num_stages}), got {value}.")
    return values


class HEMF(nn.Module):
    """HEMF classifier: a local (ELF) and a global (EGF retention) branch fused stage by stage by HEF blocks.

    Both branches have their own patchify stem (Conv 4 stride 4 + LN) and downsamplings (LN + Conv 2 stride 2). At stage
    i the fusion block combines the local features, the global features and the previous fusion output; the last fusion
    output is average-pooled, layer-normalised and classified by a linear layer.

    Input ``(B, in_channels, H, W)`` or ``(B, in_channels, D, H, W)`` with every spatial size divisible by
    ``4 * 2 ** (len(features) - 1)`` (32 for four stages); output logits ``(B, out_channels)``.

    Initialisation reproduces the reference: after the branches and the head are built, Linear layers get truncated
    normal sigma 0.02 (bias 0) and the convolutions of the stems, ELF blocks, downsamplings and LePE sigma 0.2 (bias 0);
    the fusion blocks keep PyTorch's defaults and ``N(0, 0.001)`` for the external-attention memories.

    Reference: J. He, Q. Shi, J. Ma, Y. Xiong, T. Min, "HEMF: An Adaptive Hierarchical Enhanced Multi-attention Feature
    Fusion Framework for Cross-scale Medical Image Classification", code https://github.com/Esgjgd/HEMF
    (doi:10.5281/zenodo.15163137).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output logits (classes).
        features: channels of each stage.
        elf_depths: ELF blocks per stage (int or one per stage).
        egf_depths: retention layers of the EGF block of each stage (int or one per stage).
        num_heads: heads of the retention and of the external attention.
        memory_size: memory slots S of the external attention.
        ca_ratio: reduction of the channel-attention MLP.
        sa_kernel_size: kernel size of the spatial attention (7 gives 7x7 or 7x7x7).
        lepe_kernel_size: kernel size of the depthwise LePE convolution in the retention.
        drop_path_rate: stochastic depth of the ELF blocks, rising linearly from 0 to this value.
        fusion_drop_path_rate: stochastic depth of the SIRMLP branch of every fusion block.
        dropout: dropout probability inside the external attention.
        norm: normalisation of the fusion blocks (MONAI spec), batch norm in the reference.
        act: activation of the ELF and fusion blocks (MONAI spec), GELU in the reference.
        sirmlp_depthwise: depthwise 3x3 in the SIRMLP (the paper's figure) instead of dense (the code).
        reference_fusion_layers: build the layers of both fusion paths in every fusion block, as the reference code does
            (they count in the parameters but the unused ones get no gradient); ``False`` builds only those used.
        num_classes: deprecated name of ``out_channels``.
        widths: deprecated name of ``features``.
    """

    @renamed_args(num_classes="out_channels", widths="features")
    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 7,
        features: Sequence[int] = (96, 192, 384, 768),
        elf_depths: int | Sequence[int] = (4, 4, 4, 4),
        egf_depths: int | Sequence[int] = (3, 3, 3, 3),
        num_heads: int = 8,
        memory_size: int = 64,
        ca_ratio: int = 16,
        sa_kernel_size: int = 7,
        lepe_kernel_size: int = 5,
        drop_path_rate: float = 0.0,
        fusion_drop_path_rate: float = 0.0,
        dropout: float = 0.0,
        norm: str | tuple = "batch",
        act: str | tuple = "gelu",
        sirmlp_depthwise: bool = False,
        reference_fusion_layers: bool = True,
        num_classes: int | None = None,
        widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_renamed("HEMF", "out_channels", out_channels, "num_classes", num_classes)
        check_renamed("HEMF", "features", features, "widths", widths)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        stage_widths = tuple(features)
        num_stages = len(stage_widths)
        elf_depths = _per_stage(elf_depths, num_stages, "elf_depths")
        egf_depths = _per_stage(egf_depths, num_stages, "egf_depths")
        self.spatial_dims = spatial_dims
        self.size_divisor = 4 * 2 ** (num_stages - 1)
        conv_type = Conv[Conv.CONV, spatial_dims]

        def downsamplings() -> nn.ModuleList:
            stem = conv_type(in_channels, stage_widths[0], kernel_size=4, stride=4)
            layers = [nn.Sequential(stem, ChannelsFirstLayerNorm(stage_widths[0]))]
            for i in range(num_stages - 1):
                down = conv_type(stage_widths[i], stage_widths[i + 1], kernel_size=2, stride=2)
                layers.append(nn.Sequential(ChannelsFirstLayerNorm(stage_widths[i]), down))
            return nn.ModuleList(layers)

        # local branch
        self.local_downsamples = downsamplings()
        rates = torch.linspace(0, drop_path_rate, sum(elf_depths), device="cpu").tolist()
        self.local_stages = nn.ModuleList()
        for i, (width, depth) in enumerate(zip(stage_widths, elf_depths)):
            start = sum(elf_depths[:i])
            self.local_stages.append(
                nn.Sequential(*[ELFBlock(spatial_dims, width, rates[start + j], act) for j in range(depth)])
            )
        # global branch
        self.global_downsamples = downsamplings()
        self.global_stages = nn.ModuleList(
            [EGFBlock(spatial_dims, w, num_heads, d, lepe_kernel_size) for w, d in zip(stage_widths, egf_depths)]
        )
        # head
        self.norm = nn.LayerNorm(stage_widths[-1], eps=1e-6)
        self.head = nn.Linear(stage_widths[-1], out_channels)
        branches = (self.local_downsamples, self.local_stages, self.global_downsamples, self.global_stages, self.head)
        for module in branches:
            module.apply(self._init_weights)
        # fusion path (built after the model-level init, so it keeps its own defaults)
        self.fusions = nn.ModuleList(
            [
                HEFBlock(
                    spatial_dims,
                    width,
                    previous_channels=stage_widths[i - 1] if i > 0 else None,
                    num_heads=num_heads,
                    memory_size=memory_size,
                    ca_ratio=ca_ratio,
                    sa_kernel_size=sa_kernel_size,
                    fuse_previous=None if reference_fusion_layers else i > 0,
                    sirmlp_depthwise=sirmlp_depthwise,
                    dropout=dropout,
                    drop_path=fusion_drop_path_rate,
                    norm=norm,
                    act=act,
                )
                for i, width in enumerate(stage_widths)
            ]
        )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=0.2)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not divisible_spatial(x, self.spatial_dims, self.size_divisor):
            axes = "D, H, W" if self.spatial_dims == 3 else "H, W"
            raise ValueError(
                f"HEMF expects a (B, C, {axes}) input with every spatial size "
                f"divisible by {self.size_divisor}, got shape {shape_text(x)}."
            )
        local, glob = x, x
        fused: torch.Tensor | None = None
        for down_l, stage_l, down_g, stage_g, fusion in zip(
            self.local_downsamples, self.local_stages, self.global_downsamples, self.global_stages, self.fusions
        ):
            glob = stage_g(down_g(glob))
            local = stage_l(down_l(local))
            fused = fusion(local, glob, fused)
        assert fused is not None  # (there is at least one stage)
        return self.head(self.norm(fused.flatten(2).mean(-1)))


@renamed_args(num_classes="out_channels", widths="features")
def hemf_3d_light(
    in_channels: int = 1,
    out_channels: int = 2,
    num_classes: int | None = None,
    widths: Sequence[int] | None = None,
    **kwargs,
) -> HEMF:
    """3D HEMF preset with halved widths (``features`` 48, 96, 192, 384), 2 ELF blocks and 2 retention layers per
    stage.

    Further keyword arguments are passed to :class:`HEMF`; ``num_classes`` and ``widths`` are the deprecated names of
    ``out_channels`` and ``features``.
    """
    check_renamed("hemf_3d_light", "out_channels", out_channels, "num_classes", num_classes)
    check_renamed("hemf_3d_light", "features", kwargs.get("features"), "widths", widths)
    config = {"features": (48, 96, 192, 384), "elf_depths": 2, "egf_depths": 2, **kwargs}
    return HEMF(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **config)
