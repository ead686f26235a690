"""The teaching U-Net family: U-Net, UNet++, ResUNet and ResUNet++ as in RezaSaadatyar/Medical-Image-Processing.

Source: the Keras helpers ``Code/Functions/{unet,unetplusplus,resunet,resunetplusplus}_model.py`` of the course
repository RezaSaadatyar/Medical-Image-Processing (Keras teaching code). The classes reproduce those
layouts layer for layer (widths, kernel sizes, biases, concatenation order, the quirks listed below), so that with the
default ``base_filters=16``, ``in_channels=3`` and ``out_channels=1`` the 2D parameter counts match the Keras models
(1.94 M, 2.28 M, 4.72 M, 4.06 M). Convolutions, pooling and normalisation come from MONAI factories, so
``spatial_dims=3`` gives the 3D analogue.

Deliberate deviations from the Keras code, all of which leave the parameter counts unchanged:

- **Outputs are logits.** The Keras models end in sigmoid (one class) or softmax; here the last layer is a plain 1x1
  convolution. Put the activation in the loss (``DiceLoss(sigmoid=True)``, ``DiceCELoss(softmax=True)``, ...) and in the
  post-processing (``Activations``), as MONAI networks do.
- **No input scaling inside the network.** The Keras models divide the input by 255 when its maximum exceeds 1; that
  is a transform (``ScaleIntensityRange``/``ScaleIntensity``), not a layer.
- **Initialisation.** Keras used He-normal for most convolutions and Glorot-uniform for the rest; here every
  convolution, transposed convolution and linear layer gets He-normal (``kaiming_normal_``, fan-in, ReLU gain) weights
  and zero biases. Normalisation layers keep PyTorch's defaults (weight 1, bias 0).

Quirks kept on purpose, each behind an argument so that the textbook variant is one flag away:

- UNet++ node X^{0,3} has ``2 * base_filters`` channels (``x03_quirk=True``).
- The ResUNet++ attention block multiplies by the raw convolution output, with no sigmoid (``attention_sigmoid=False``).
- ResUNet re-uses the batch-normalised encoder output both as the input of the next residual unit (main path *and*
  1x1 shortcut) and as the decoder skip; ResUNet++ instead feeds its shortcut with the un-normalised input.

Inputs must have every spatial size divisible by the total down-sampling factor (16 for U-Net, UNet++ and ResUNet,
8 for ResUNet++); ``forward`` raises ``ValueError`` naming the shape otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer

__all__ = [
    "UNET_TEACHING_DROPOUT",
    "UNETPP_TEACHING_DROPOUT",
    "DoubleConv",
    "Down",
    "UpCat",
    "SqueezeExcite",
    "ResidualStem",
    "ResidualUnit",
    "PreActDoubleConv",
    "ResUpCat",
    "SumASPP",
    "AttentionBlock",
    "AttentionResUpCat",
    "UNet",
    "UNetPlusPlus",
    "ResUNet",
    "ResUNetPlusPlus",
]

#: Per-level dropout rates of the Keras ``unet_model`` with ``act_dropout=True`` (levels 1..5, bottleneck last):
#: none at level 1, 0.1 ("shallow") at level 2, 0.2 ("mid") at levels 3-4, 0.3 ("deep") at the bottleneck. The decoder
#: block of a level re-uses the level's rate, so the shallowest decoder block has none.
UNET_TEACHING_DROPOUT: tuple[float, ...] = (0.0, 0.1, 0.2, 0.2, 0.3)

#: Per-row dropout rates of the Keras ``unetplusplus_model`` with ``act_dropout=True`` (rows X^{0,*} .. X^{4,*}),
#: applied after *each* convolution of a node.
UNETPP_TEACHING_DROPOUT: tuple[float, ...] = (0.1, 0.2, 0.2, 0.3, 0.3)

_DEPTH = 5  # number of resolution levels of U-Net, UNet++ and ResUNet (4 poolings)


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------


def _norm(norm: str | tuple | None, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer from a MONAI factory spec, or ``nn.Identity`` when ``norm`` is ``None``."""
    if norm is None:
        return nn.Identity()
    return get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=channels)


def _conv(
    spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1
) -> nn.Module:
    """A biased convolution with Keras 'same' padding (odd kernel, stride 1 or 2 on even sizes)."""
    padding = dilation * (kernel_size - 1) // 2
    return Conv[Conv.CONV, spatial_dims](
        in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, bias=True
    )


def _rates(dropout: float | Sequence[float] | None, n: int, name: str) -> tuple[float, ...]:
    """Expand a dropout spec (None, one rate, or one rate per level) to ``n`` rates."""
    if dropout is None:
        return (0.0,) * n
    if isinstance(dropout, (int, float)):
        return (float(dropout),) * n
    rates = tuple(float(r) for r in dropout)
    if len(rates) != n:
        raise ValueError(f"{name}: dropout needs one rate per level ({n}), got {len(rates)}: {rates}.")
    if any(not 0.0 <= r < 1.0 for r in rates):
        raise ValueError(f"{name}: dropout rates must lie in [0, 1), got {rates}.")
    return rates


def _check_input(x: torch.Tensor, spatial_dims: int, factor: int, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, C, *spatial)`` with every spatial size divisible by ``factor``."""
    if x.ndim != spatial_dims + 2:
        raise ValueError(
            f"{name} (spatial_dims={spatial_dims}) expects a {spatial_dims + 2}D input (B, C, *spatial), "
            f"got shape {tuple(x.shape)}."
        )
    spatial = tuple(x.shape[2:])
    if any(s % factor for s in spatial):
        raise ValueError(
            f"{name}: input shape {tuple(x.shape)} has spatial size {spatial}, which is not divisible by {factor} "
            f"(the network down-samples {int(math.log2(factor))} times by 2); pad or crop the input, e.g. with "
            f"DivisiblePadd(k={factor})."
        )


def _he_init(module: nn.Module) -> None:
    """He-normal (fan-in, ReLU gain) weights and zero biases for every convolution and linear layer."""
    for m in module.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------------------------
# U-Net / UNet++ blocks
# --------------------------------------------------------------------------------------------------------------------


class DoubleConv(nn.Sequential):
    """Two [Conv3x3 -> (norm) -> act] layers, with optional dropout after the block or after each convolution."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = None,
        dropout: float = 0.0,
        dropout_each: bool = False,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_channels: number of input channels.
            out_channels: number of output channels of both convolutions.
            act: activation type and arguments.
            norm: feature normalisation type and arguments; ``None`` for none (the Keras default).
            dropout: dropout rate; 0 for none.
            dropout_each: apply the dropout after each convolution (UNet++) rather than once after the block (U-Net).
        """
        super().__init__()
        drop = dropout if dropout > 0 else None
        for i, c_in in enumerate((in_channels, out_channels)):
            self.add_module(
                f"conv_{i}",
                Convolution(
                    spatial_dims,
                    c_in,
                    out_channels,
                    kernel_size=3,
                    act=act,
                    norm=norm,
                    dropout=drop if (dropout_each or i == 1) else None,
                    adn_ordering="NAD",
                    bias=True,
                ),
            )


class Down(nn.Sequential):
    """MaxPool 2 followed by a :class:`DoubleConv`."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = None,
        dropout: float = 0.0,
        dropout_each: bool = False,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_channels: number of input channels.
            out_channels: number of output channels.
            act: activation type and arguments.
            norm: feature normalisation type and arguments, or ``None``.
            dropout: dropout rate of the :class:`DoubleConv`.
            dropout_each: see :class:`DoubleConv`.
        """
        super().__init__()
        self.add_module("pool", Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2))
        self.add_module(
            "convs", DoubleConv(spatial_dims, in_channels, out_channels, act, norm, dropout, dropout_each)
        )


class UpCat(nn.Module):
    """ConvTranspose 2x2 stride 2 (no activation), concatenation with one or more skips, then a :class:`DoubleConv`."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        up_channels: int | None = None,
        act: str | tuple = "relu",
        norm: str | tuple | None = None,
        dropout: float = 0.0,
        dropout_each: bool = False,
        up_first: bool = False,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_channels: channels of the coarser feature that is up-sampled.
            skip_channels: total channels of the skip features (all of them, concatenated).
            out_channels: output channels of the :class:`DoubleConv`.
            up_channels: output channels of the transposed convolution; defaults to ``out_channels``.
            act: activation type and arguments.
            norm: feature normalisation type and arguments, or ``None``.
            dropout: dropout rate of the :class:`DoubleConv`.
            dropout_each: see :class:`DoubleConv`.
            up_first: concatenate as ``[up, *skips]`` (UNet++) instead of ``[*skips, up]`` (U-Net).
        """
        super().__init__()
        up_channels = out_channels if up_channels is None else up_channels
        self.up_first = up_first
        self.up = Conv[Conv.CONVTRANS, spatial_dims](in_channels, up_channels, kernel_size=2, stride=2)
        self.convs = DoubleConv(
            spatial_dims, up_channels + skip_channels, out_channels, act, norm, dropout, dropout_each
        )

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``; ``skips``: tensors ``(B, c_k, *2S)``; returns ``(B, out_channels, *2S)``."""
        up = self.up(x)
        parts = [up, *skips] if self.up_first else [*skips, up]
        return self.convs(torch.cat(parts, dim=1))


# --------------------------------------------------------------------------------------------------------------------
# ResUNet / ResUNet++ blocks
# --------------------------------------------------------------------------------------------------------------------


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation as in the Keras helper: GAP -> FC C/r ReLU -> FC C sigmoid (both without bias) -> scale.

    MONAI's ``ChannelSELayer`` has biased linear layers, hence this small re-declaration.
    """

    def __init__(self, channels: int, reduction: int = 8, act: str | tuple = "relu"):
        """
        Args:
            channels: number of channels C.
            reduction: reduction ratio r of the hidden layer (``C // r`` units, at least 1).
            act: activation of the hidden layer.
        """
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            get_act_layer(act),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, *S)``; returns ``x`` scaled per channel, same shape."""
        w = self.fc(x.flatten(2).mean(dim=2))
        return x * w.view(*w.shape, *([1] * (x.ndim - 2)))


class ResidualStem(nn.Module):
    """Input stem: [Conv3x3 -> norm -> act -> Conv3x3] + [Conv1x1 -> norm], optionally followed by SE."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        se_reduction: int | None = None,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_channels: number of input channels.
            out_channels: number of output channels.
            act: activation type and arguments.
            norm: feature normalisation type and arguments, or ``None``.
            se_reduction: add a :class:`SqueezeExcite` with this ratio after the sum (ResUNet++); ``None`` for none.
        """
        super().__init__()
        self.conv1 = _conv(spatial_dims, in_channels, out_channels, 3)
        self.norm1 = _norm(norm, spatial_dims, out_channels)
        self.act1 = get_act_layer(act)
        self.conv2 = _conv(spatial_dims, out_channels, out_channels, 3)
        self.shortcut = nn.Sequential(
            _conv(spatial_dims, in_channels, out_channels, 1), _norm(norm, spatial_dims, out_channels)
        )
        self.se = SqueezeExcite(out_channels, se_reduction, act) if se_reduction else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``; returns ``(B, out_channels, *S)``."""
        y = self.conv2(self.act1(self.norm1(self.conv1(x))))
        return self.se(y + self.shortcut(x))


class ResidualUnit(nn.Module):
    """Pre-activation residual unit: [(norm) -> act -> Conv3x3 s -> norm -> act -> Conv3x3] + [Conv1x1 s -> norm].

    With ``pre_norm=True`` (ResUNet++ ``resnet_block``) the unit normalises its input itself and the shortcut sees the
    raw input. With ``pre_norm=False`` (ResUNet) the caller passes an already normalised input, which then also feeds
    the shortcut; that is how the Keras ResUNet shares one BatchNorm between main path, shortcut and decoder skip.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: int = 1,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        pre_norm: bool = True,
        se_reduction: int | None = None,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_channels: number of input channels.
            out_channels: number of output channels.
            strides: stride of the first 3x3 convolution and of the 1x1 shortcut (1 or 2).
            act: activation type and arguments.
            norm: feature normalisation type and arguments, or ``None``.
            pre_norm: normalise the input inside the unit (see the class docstring).
            se_reduction: add a :class:`SqueezeExcite` with this ratio after the sum; ``None`` for none.
        """
        super().__init__()
        self.norm0 = _norm(norm, spatial_dims, in_channels) if pre_norm else nn.Identity()
        self.act0 = get_act_layer(act)
        self.conv1 = _conv(spatial_dims, in_channels, out_channels, 3, stride=strides)
        self.norm1 = _norm(norm, spatial_dims, out_channels)
        self.act1 = get_act_layer(act)
        self.conv2 = _conv(spatial_dims, out_channels, out_channels, 3)
        self.shortcut = nn.Sequential(
            _conv(spatial_dims, in_channels, out_channels, 1, stride=strides), _norm(norm, spatial_dims, out_channels)
        )
        self.se = SqueezeExcite(out_channels, se_reduction, act) if se_reduction else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``; returns ``(B, out_channels, *S / strides)``."""
        y = self.conv2(self.act1(self.norm1(self.conv1(self.act0(self.norm0(x))))))
        return self.se(y + self.shortcut(x))


class PreActDoubleConv(nn.Sequential):
    """ResUNet bridge: norm -> act -> Conv3x3 -> norm -> act -> Conv3x3, without a residual connection."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_channels: number of input channels.
            out_channels: number of output channels.
            act: activation type and arguments.
            norm: feature normalisation type and arguments, or ``None``.
        """
        super().__init__(
            _norm(norm, spatial_dims, in_channels),
            get_act_layer(act),
            _conv(spatial_dims, in_channels, out_channels, 3),
            _norm(norm, spatial_dims, out_channels),
            get_act_layer(act),
            _conv(spatial_dims, out_channels, out_channels, 3),
        )


class ResUpCat(nn.Module):
    """ResUNet decoder level: nearest up x2 -> concat ``[up, skip]`` -> norm -> :class:`ResidualUnit` (shortcut on the
    normalised concatenation)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_channels: channels of the coarser feature that is up-sampled.
            skip_channels: channels of the encoder skip.
            out_channels: output channels of the residual unit.
            act: activation type and arguments.
            norm: feature normalisation type and arguments, or ``None``.
        """
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.norm = _norm(norm, spatial_dims, in_channels + skip_channels)
        self.res = ResidualUnit(
            spatial_dims, in_channels + skip_channels, out_channels, 1, act, norm, pre_norm=False
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``, ``skip``: ``(B, skip_channels, *2S)``; returns ``(B, out_channels, *2S)``"""
        return self.res(self.norm(torch.cat([self.up(x), skip], dim=1)))


class SumASPP(nn.Module):
    """ASPP of the Keras ResUNet++: parallel [Conv3x3 dilated -> norm] branches, **summed**, then a 1x1 projection.

    MONAI's ``SimpleASPP`` concatenates its branches and mixes kernel sizes, so it does not match this layout.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int] = (6, 12, 18, 1),
        norm: str | tuple | None = "batch",
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_channels: number of input channels.
            out_channels: channels of every branch and of the 1x1 projection.
            dilations: one 3x3 branch per dilation ('same' padding).
            norm: feature normalisation type and arguments, or ``None``.
        """
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                _conv(spatial_dims, in_channels, out_channels, 3, dilation=int(d)),
                _norm(norm, spatial_dims, out_channels),
            )
            for d in dilations
        )
        self.project = _conv(spatial_dims, out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``; returns ``(B, out_channels, *S)``."""
        y = self.branches[0](x)
        for branch in self.branches[1:]:
            y = y + branch(x)
        return self.project(y)


class AttentionBlock(nn.Module):
    """ResUNet++ attention: g (encoder, 2x finer) -> norm-act-Conv3x3 -> MaxPool 2; x (decoder) -> norm-act-Conv3x3;
    sum -> norm-act-Conv3x3 -> (sigmoid, off as in the Keras code) -> multiply with x."""

    def __init__(
        self,
        spatial_dims: int,
        g_channels: int,
        x_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        sigmoid: bool = False,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            g_channels: channels of the encoder feature g.
            x_channels: channels of the decoder feature x (and of the output).
            act: activation type and arguments.
            norm: feature normalisation type and arguments, or ``None``.
            sigmoid: squash the attention map with a sigmoid before the product (the teaching code does not).
        """
        super().__init__()
        self.g_path = nn.Sequential(
            _norm(norm, spatial_dims, g_channels),
            get_act_layer(act),
            _conv(spatial_dims, g_channels, x_channels, 3),
            Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2),
        )
        self.x_path = nn.Sequential(
            _norm(norm, spatial_dims, x_channels), get_act_layer(act), _conv(spatial_dims, x_channels, x_channels, 3)
        )
        self.gc_path = nn.Sequential(
            _norm(norm, spatial_dims, x_channels), get_act_layer(act), _conv(spatial_dims, x_channels, x_channels, 3)
        )
        self.gate = nn.Sigmoid() if sigmoid else nn.Identity()

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``g``: ``(B, g_channels, *2S)``; ``x``: ``(B, x_channels, *S)``; returns ``(B, x_channels, *S)``."""
        return self.gate(self.gc_path(self.g_path(g) + self.x_path(x))) * x


class AttentionResUpCat(nn.Module):
    """ResUNet++ decoder level: :class:`AttentionBlock` (g = skip) -> nearest up x2 -> concat ``[up, skip]`` ->
    :class:`ResidualUnit` with SE."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        se_reduction: int | None = 8,
        attention_sigmoid: bool = False,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_channels: channels of the decoder feature x.
            skip_channels: channels of the encoder feature (g of the attention, and the skip).
            out_channels: output channels of the residual unit.
            act: activation type and arguments.
            norm: feature normalisation type and arguments, or ``None``.
            se_reduction: SE ratio of the residual unit; ``None`` for no SE.
            attention_sigmoid: see :class:`AttentionBlock`.
        """
        super().__init__()
        self.attention = AttentionBlock(spatial_dims, skip_channels, in_channels, act, norm, attention_sigmoid)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.res = ResidualUnit(
            spatial_dims, in_channels + skip_channels, out_channels, 1, act, norm, True, se_reduction
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``, ``skip``: ``(B, skip_channels, *2S)``; returns ``(B, out_channels, *2S)``"""
        a = self.up(self.attention(skip, x))
        return self.res(torch.cat([a, skip], dim=1))


# --------------------------------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------------------------------


class UNet(nn.Module):
    """Teaching U-Net (Keras ``unet_model`` of RezaSaadatyar/Medical-Image-Processing).

    Five levels of widths ``base_filters * (1, 2, 4, 8, 16)``; each level is 2x [Conv3x3 -> (norm) -> act]; MaxPool 2
    between levels; decoder levels are ConvTranspose 2x2 s2 (no activation) -> concat ``[skip, up]`` -> the same double
    convolution; a 1x1 convolution gives the output.
    Base 16, 3 -> 1 channels, 2D: 1,941,105 parameters (3D, 1 -> 2: 5,644,930).

    Input ``(B, in_channels, *S)`` with every size in ``S`` divisible by 16; output ``(B, out_channels, *S)``
    **logits** (the Keras model applies sigmoid/softmax; here that belongs in the loss).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        base_filters: width of the first level; level k has ``base_filters * 2**k`` channels.
        act: activation type and arguments.
        norm: feature normalisation after each convolution; ``None`` (the Keras default ``use_batchnorm=False``) or a
            MONAI spec such as ``"batch"``.
        dropout: dropout after each level's double convolution, off by default. ``None``/0 for none, one rate for all
            levels, or five per-level rates (level 1 .. bottleneck); a decoder level re-uses the rate of its encoder
            level. :data:`UNET_TEACHING_DROPOUT` ``(0, 0.1, 0.2, 0.2, 0.3)`` reproduces ``act_dropout=True``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        base_filters: int = 16,
        act: str | tuple = "relu",
        norm: str | tuple | None = None,
        dropout: float | Sequence[float] | None = None,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"UNet: spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.factor = 2 ** (_DEPTH - 1)
        f = [base_filters * 2**k for k in range(_DEPTH)]
        p = _rates(dropout, _DEPTH, "UNet")

        self.conv_0 = DoubleConv(spatial_dims, in_channels, f[0], act, norm, p[0])
        self.downs = nn.ModuleList(Down(spatial_dims, f[k - 1], f[k], act, norm, p[k]) for k in range(1, _DEPTH))
        # decoder from the bottleneck up: level k receives level k+1 and the skip of level k
        self.ups = nn.ModuleList(
            UpCat(spatial_dims, f[k + 1], f[k], f[k], act=act, norm=norm, dropout=p[k])
            for k in reversed(range(_DEPTH - 1))
        )
        self.final_conv = Conv[Conv.CONV, spatial_dims](f[0], out_channels, kernel_size=1)
        _he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``, sizes divisible by 16; returns logits ``(B, out_channels, *S)``."""
        _check_input(x, self.spatial_dims, self.factor, type(self).__name__)
        skips = [self.conv_0(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, [skips.pop()])
        return self.final_conv(y)


class UNetPlusPlus(nn.Module):
    """Teaching UNet++ (Keras ``unetplusplus_model`` of RezaSaadatyar/Medical-Image-Processing).

    Nested dense-skip grid X^{i,j} of depth 4 (rows i = 0..4 of widths ``base_filters * 2**i``, i + j <= 4). Column 0
    is a plain encoder (double conv, MaxPool 2 between rows). Node X^{i,j}, j >= 1, is a double convolution of
    ``concat[ConvTranspose2x2(X^{i+1,j-1}), X^{i,0}, ..., X^{i,j-1}]``; the transposed convolution outputs
    ``base_filters * 2**i`` channels. No deep supervision: a 1x1 convolution on X^{0,4} gives the output.
    Quirk of the teaching code: X^{0,3} has ``2 * base_filters`` channels (``x03_quirk``).
    Base 16, 3 -> 1 channels, 2D: 2,280,353 parameters (3D, 1 -> 2: 6,606,258).

    Input ``(B, in_channels, *S)`` with every size in ``S`` divisible by 16; output ``(B, out_channels, *S)``
    **logits** (the Keras model applies sigmoid/softmax; here that belongs in the loss).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        base_filters: width of row 0; row i has ``base_filters * 2**i`` channels.
        act: activation type and arguments.
        norm: feature normalisation after each convolution; ``None`` (Keras default) or e.g. ``"batch"``.
        dropout: dropout after *each* convolution of a node, as in the Keras code, off by default. ``None``/0 for none,
            one rate for all rows, or five per-row rates; :data:`UNETPP_TEACHING_DROPOUT` ``(0.1, 0.2, 0.2, 0.3, 0.3)``
            reproduces ``act_dropout=True``.
        x03_quirk: give X^{0,3} ``2 * base_filters`` channels as the teaching code does; ``False`` for the uniform grid.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        base_filters: int = 16,
        act: str | tuple = "relu",
        norm: str | tuple | None = None,
        dropout: float | Sequence[float] | None = None,
        x03_quirk: bool = True,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"UNetPlusPlus: spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.factor = 2 ** (_DEPTH - 1)
        f = [base_filters * 2**i for i in range(_DEPTH)]
        p = _rates(dropout, _DEPTH, "UNetPlusPlus")

        def width(i: int, j: int) -> int:
            return 2 * f[0] if (x03_quirk and (i, j) == (0, 3)) else f[i]

        # column 0: the encoder
        self.conv_0_0 = DoubleConv(spatial_dims, in_channels, f[0], act, norm, p[0], dropout_each=True)
        for i in range(1, _DEPTH):
            self.add_module(f"conv_{i}_0", Down(spatial_dims, f[i - 1], f[i], act, norm, p[i], dropout_each=True))
        # nested nodes X^{i,j}, j >= 1
        for j in range(1, _DEPTH):
            for i in range(_DEPTH - j):
                self.add_module(
                    f"conv_{i}_{j}",
                    UpCat(
                        spatial_dims,
                        in_channels=width(i + 1, j - 1),
                        skip_channels=sum(width(i, k) for k in range(j)),
                        out_channels=width(i, j),
                        up_channels=f[i],
                        act=act,
                        norm=norm,
                        dropout=p[i],
                        dropout_each=True,
                        up_first=True,
                    ),
                )
        self.final_conv = Conv[Conv.CONV, spatial_dims](width(0, _DEPTH - 1), out_channels, kernel_size=1)
        _he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``, sizes divisible by 16; returns logits ``(B, out_channels, *S)``."""
        _check_input(x, self.spatial_dims, self.factor, type(self).__name__)
        grid: list[list[torch.Tensor]] = [[] for _ in range(_DEPTH)]
        grid[0].append(self.conv_0_0(x))
        for i in range(1, _DEPTH):
            grid[i].append(getattr(self, f"conv_{i}_0")(grid[i - 1][0]))
        for j in range(1, _DEPTH):
            for i in range(_DEPTH - j):
                grid[i].append(getattr(self, f"conv_{i}_{j}")(grid[i + 1][j - 1], grid[i][:j]))
        return self.final_conv(grid[0][_DEPTH - 1])


class ResUNet(nn.Module):
    """Teaching ResUNet (Keras ``resunet_model`` of RezaSaadatyar/Medical-Image-Processing) of pre-activation units.

    - Stem (:class:`ResidualStem`): [Conv3x3 -> norm -> act -> Conv3x3] + [Conv1x1 -> norm] at ``base_filters``.
    - Encoder: 4 :class:`ResidualUnit` of stride 2 and widths ``base_filters * (2, 4, 8, 16)``. Each unit's input is
      normalised by a BatchNorm that the network owns; that normalised tensor feeds the unit's main path and its 1x1
      shortcut and is also the decoder skip of its level (exactly as the Keras code re-assigns ``out_k``).
    - Bridge at 1/16 (:class:`PreActDoubleConv`): norm -> act -> Conv -> norm -> act -> Conv at ``16 * base_filters``,
      no residual.
    - Decoder (:class:`ResUpCat`) x4: nearest up x2 -> concat ``[up, skip]`` -> norm -> stride-1 residual unit at
      widths ``base_filters * (16, 8, 4, 2)``; a 1x1 convolution gives the output.

    Base 16, 3 -> 1 channels, 2D: 4,715,761 parameters (3D, 1 -> 2: 13,733,618).

    Input ``(B, in_channels, *S)`` with every size in ``S`` divisible by 16; output ``(B, out_channels, *S)``
    **logits** (the Keras model applies sigmoid/softmax; here that belongs in the loss).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        base_filters: width of the stem; the encoder doubles it at each of the 4 down-sampling units.
        act: activation type and arguments.
        norm: feature normalisation; ``"batch"`` as in the Keras default ``use_batchnorm=True``, ``None`` for none.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        base_filters: int = 16,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"ResUNet: spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.factor = 2 ** (_DEPTH - 1)
        f = [base_filters * 2**k for k in range(_DEPTH)]

        self.stem = ResidualStem(spatial_dims, in_channels, f[0], act, norm)
        self.enc_norms = nn.ModuleList(_norm(norm, spatial_dims, f[k]) for k in range(_DEPTH - 1))
        self.downs = nn.ModuleList(
            ResidualUnit(spatial_dims, f[k], f[k + 1], 2, act, norm, pre_norm=False) for k in range(_DEPTH - 1)
        )
        self.bridge = PreActDoubleConv(spatial_dims, f[-1], f[-1], act, norm)
        # decoder level widths 16b, 8b, 4b, 2b; the skip of the finest level is the stem output (b channels)
        dec_in = [f[-1], f[-1], f[-2], f[-3]]
        self.ups = nn.ModuleList(
            ResUpCat(spatial_dims, dec_in[n], f[_DEPTH - 2 - n], f[_DEPTH - 1 - n], act, norm)
            for n in range(_DEPTH - 1)
        )
        self.final_conv = Conv[Conv.CONV, spatial_dims](f[1], out_channels, kernel_size=1)
        _he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``, sizes divisible by 16; returns logits ``(B, out_channels, *S)``."""
        _check_input(x, self.spatial_dims, self.factor, type(self).__name__)
        h = self.stem(x)
        skips = []
        for norm, down in zip(self.enc_norms, self.downs):
            h = norm(h)  # the Keras code re-uses this normalised tensor as the skip
            skips.append(h)
            h = down(h)
        y = self.bridge(h)
        for up in self.ups:
            y = up(y, skips.pop())
        return self.final_conv(y)


class ResUNetPlusPlus(nn.Module):
    """Teaching ResUNet++ (Keras ``resunetplusplus_model`` of RezaSaadatyar/Medical-Image-Processing).

    - Stem: :class:`ResidualStem` at ``base_filters`` followed by :class:`SqueezeExcite` (ratio 8, no bias).
    - Encoder: 3 :class:`ResidualUnit` of stride 2 (widths ``base_filters * (2, 4, 8)``), each followed by SE.
    - Bridge at 1/8: :class:`SumASPP` to ``16 * base_filters`` (3x3 branches with dilations ``(6, 12, 18) *
      rate_scale`` and 1, each + norm, summed, then Conv1x1).
    - Decoder (:class:`AttentionResUpCat`) x3: attention(g = encoder feature at twice the resolution, x = decoder
      feature; no sigmoid, as in the teaching code) -> nearest up x2 -> concat ``[up, skip]`` -> residual unit + SE
      at widths ``base_filters * (8, 4, 2)``.
    - Output: :class:`SumASPP` to ``base_filters`` (same rates) -> Conv1x1 to ``out_channels``.

    Base 16, 3 -> 1 channels, 2D: 4,062,993 parameters (3D, 1 -> 2: 11,882,754; base 32: 16,228,001).

    Input ``(B, in_channels, *S)`` with every size in ``S`` divisible by 8; output ``(B, out_channels, *S)``
    **logits** (the Keras model applies sigmoid/softmax; here that belongs in the loss).

    3D caveat: with 'same' padding, a 3x3 tap that falls outside the feature map reads zero padding. Once a dilation
    reaches the feature size, only the centre tap sees data and the branch degenerates into a 1x1 convolution. The
    Keras rates suit a 2D 256^2 input (32^2 bridge); a 3D volume of 128^3 has a 16^3 bridge, where 18 is already
    useless and large dilations also inflate the padded buffers. For 3D, pass ``rate_scale`` < 1 (e.g. 0.25 gives
    dilations 2, 3, 4 and 1).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        base_filters: width of the stem; the encoder doubles it at each of the 3 down-sampling units.
        act: activation type and arguments.
        norm: feature normalisation (``"batch"`` as in the Keras code, ``None`` for none).
        rate_scale: multiplies the ASPP dilations 6, 12, 18 (rounded, at least 1); the undilated branch stays 1.
        se_reduction: squeeze-and-excitation ratio.
        attention_sigmoid: apply a sigmoid to the attention map (off, as in the teaching code).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        base_filters: int = 16,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        rate_scale: float = 1,
        se_reduction: int = 8,
        attention_sigmoid: bool = False,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"ResUNetPlusPlus: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if rate_scale <= 0:
            raise ValueError(f"ResUNetPlusPlus: rate_scale must be positive, got {rate_scale}.")
        self.spatial_dims = spatial_dims
        self.factor = 8
        f = [base_filters * 2**k for k in range(5)]
        self.dilations = tuple(max(1, int(round(d * rate_scale))) for d in (6, 12, 18)) + (1,)

        self.stem = ResidualStem(spatial_dims, in_channels, f[0], act, norm, se_reduction)
        self.downs = nn.ModuleList(
            ResidualUnit(spatial_dims, f[k], f[k + 1], 2, act, norm, True, se_reduction) for k in range(3)
        )
        self.bridge = SumASPP(spatial_dims, f[3], f[4], self.dilations, norm)
        self.ups = nn.ModuleList(
            AttentionResUpCat(spatial_dims, c_in, c_skip, c_out, act, norm, se_reduction, attention_sigmoid)
            for c_in, c_skip, c_out in ((f[4], f[2], f[3]), (f[3], f[1], f[2]), (f[2], f[0], f[1]))
        )
        self.out_aspp = SumASPP(spatial_dims, f[1], f[0], self.dilations, norm)
        self.final_conv = Conv[Conv.CONV, spatial_dims](f[0], out_channels, kernel_size=1)
        _he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``, sizes divisible by 8; returns logits ``(B, out_channels, *S)``."""
        _check_input(x, self.spatial_dims, self.factor, type(self).__name__)
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = self.bridge(skips.pop())
        for up in self.ups:
            y = up(y, skips.pop())
        return self.final_conv(self.out_aspp(y))
