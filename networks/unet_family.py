"""The teaching U-Net family: U-Net, UNet++, ResUNet and ResUNet++ as in RezaSaadatyar/Medical-Image-Processing.

Source: the Keras helpers ``Code/Functions/{unet,unetplusplus,resunet,resunetplusplus}_model.py`` of the course
repository RezaSaadatyar/Medical-Image-Processing (Keras teaching code). The classes reproduce those
layouts layer for layer (widths, kernel sizes, biases, concatenation order, the quirks listed below), so that with the
default ``features=16`` (widths 16, 32, 64, 128, 256), ``in_channels=3`` and ``out_channels=1`` the 2D parameter
counts match the Keras models (1.94 M, 2.28 M, 4.72 M, 4.06 M). Convolutions, pooling and normalisation come from
MONAI factories, so ``spatial_dims=3`` gives the 3D analogue.

Names: the networks are :class:`KerasUNet`, :class:`KerasUNetPlusPlus`, :class:`KerasResUNet` and
:class:`KerasResUNetPlusPlus`, so that none reads as MONAI's ``UNet`` (a ``"_target_": "UNet"`` is MONAI's); the
blocks whose names MONAI uses for other layers are ``Keras``-prefixed too (:class:`KerasDoubleConv`,
:class:`KerasDown`, :class:`KerasUpCat`, :class:`KerasResidualUnit`, :class:`KerasAttentionBlock`). The level widths
are ``features``, five widths or one int ``b`` for the Keras helpers' doubling ``(b, 2b, 4b, 8b, 16b)``. The earlier
names (``UNet``, ``UNetPlusPlus``, ``ResUNet``, ``ResUNetPlusPlus``, ``base_filters``, the blocks' ``DoubleConv``,
``Down``, ``UpCat``, ``ResidualUnit``, ``AttentionBlock``) still work, with a ``DeprecationWarning``, until version
0.2.0 (:mod:`networks.deprecation`); the squeeze-excite block is the shared :class:`~networks.blocks.SqueezeExcitation`.

Deliberate deviations from the Keras code, all of which leave the parameter counts unchanged:

- **Outputs are logits.** The Keras models end in sigmoid (one class) or softmax; here the last layer is a plain 1x1
  convolution. Put the activation in the loss (``DiceLoss(sigmoid=True)``, ``DiceCELoss(softmax=True)``, ...) and in the
  post-processing (``Activations``), as MONAI networks do.
- **No input scaling inside the network.** The Keras models divide the input by 255 when its maximum exceeds 1; that
  is a transform (``ScaleIntensityRange``/``ScaleIntensity``), not a layer.

Equal to the Keras originals by default:

- **BatchNorm statistics.** ``norm="batch"`` builds Keras ``BatchNormalization()`` layers: ``momentum=0.01`` (Keras
  ``momentum=0.99`` weights the *old* running value, PyTorch's ``momentum`` the new batch one: running = 0.99 * running
  + 0.01 * batch) and ``eps=1e-3`` (PyTorch: 0.1 and 1e-5). ``norm=("batch", {"momentum": 0.1, "eps": 1e-5})`` keeps
  PyTorch's; any argument given in the tuple wins over the Keras value (:func:`keras_norm`). Other norms are left as
  they are. (Keras updates the running variance with the biased batch variance, PyTorch with the unbiased one; that
  difference of ``n / (n - 1)`` is not reproduced.)
- **Initialisation.** Each layer gets the ``kernel_initializer`` of its Keras counterpart: He-normal (Keras's truncated
  normal, :func:`keras_he_normal_`) where the helpers ask for ``'he_normal'``, Glorot-uniform (the Keras default)
  everywhere else, zero biases. U-Net: every 3x3 convolution He, the transposed convolutions and the 1x1 output
  Glorot. UNet++: every 3x3 convolution and the 1x1 output He (the deep-supervision heads, which Keras lacks, too),
  the transposed convolutions Glorot. ResUNet and ResUNet++: the stem's two 3x3 convolutions and its 1x1 shortcut He,
  and in ResUNet++ the squeeze-excite dense layers He; every other convolution Glorot. Normalisation layers start at
  weight 1, bias 0 in both frameworks.

UNet++ deep supervision (Zhou et al., DLMIA 2018), off by default: ``deep_supervision=True`` adds a 1x1 head on each of
X^{0,1}, X^{0,2}, X^{0,3} besides the X^{0,4} output. In training mode the network returns the list of the four heads'
logits (``monai.losses.DeepSupervisionLoss`` takes it as is; :func:`pipelines.losses.deep_supervision_loss` wraps a
bundle's loss); in eval mode ``ds_mode="accurate"`` returns the average of the four heads and ``ds_mode="fast"`` the
head ``ds_head`` alone, computing only the nodes that head depends on (the pruned UNet++).

Quirks kept on purpose, each behind an argument so that the textbook variant is one flag away:

- UNet++ node X^{0,3} has ``2 * features[0]`` channels (``x03_quirk=True``).
- The ResUNet++ attention block multiplies by the raw convolution output, with no sigmoid (``attention_sigmoid=False``).
- ResUNet re-uses the batch-normalised encoder output both as the input of the next residual unit (main path *and*
  1x1 shortcut) and as the decoder skip; ResUNet++ instead feeds its shortcut with the un-normalised input.

Inputs must have every spatial size divisible by the total down-sampling factor (16 for U-Net, UNet++ and ResUNet,
8 for ResUNet++); ``forward`` raises ``ValueError`` naming the shape otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Pool, split_args
from monai.networks.layers.utils import get_act_layer, get_norm_layer

from .blocks.keras_compat import KERAS_BN_EPS, KERAS_BN_MOMENTUM, keras_he_normal_  # noqa: F401 (re-exported)
from .blocks.shapes import shape_text, sizes_text
from .blocks.squeeze_excitation import SqueezeExcitation
from .deprecation import check_renamed, deprecated_alias_getattr, deprecated_class, renamed_args

__all__ = [
    "UNET_TEACHING_DROPOUT",
    "UNETPP_TEACHING_DROPOUT",
    "KERAS_BATCHNORM",
    "keras_norm",
    "keras_he_normal_",
    "KerasDoubleConv",
    "KerasDown",
    "KerasUpCat",
    "ResidualStem",
    "KerasResidualUnit",
    "PreActDoubleConv",
    "ResUpCat",
    "SumASPP",
    "KerasAttentionBlock",
    "AttentionResUpCat",
    "KerasUNet",
    "KerasUNetPlusPlus",
    "KerasResUNet",
    "KerasResUNetPlusPlus",
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


#: Keras ``BatchNormalization()`` defaults in PyTorch terms: Keras ``momentum=0.99`` is the weight of the old running
#: value, PyTorch's ``momentum`` the weight of the new batch statistic, so 0.99 becomes 0.01; Keras ``epsilon=1e-3``.
KERAS_BATCHNORM: dict[str, float] = {"momentum": KERAS_BN_MOMENTUM, "eps": KERAS_BN_EPS}

_BATCH_NORMS = ("BATCH", "SYNCBATCH")  # MONAI Norm factory names of batch normalisation


def keras_norm(norm: str | tuple | list | None) -> str | tuple | None:
    """A MONAI norm spec with the Keras BatchNorm defaults filled in (:data:`KERAS_BATCHNORM`).

    ``"batch"`` becomes ``("batch", {"momentum": 0.01, "eps": 0.001})``; arguments given in a tuple win, so
    ``("batch", {"momentum": 0.1, "eps": 1e-5})`` keeps PyTorch's defaults. Other norms and ``None`` are returned as
    they are (a list, as JSON gives a pair, as a tuple). (MONAI's factories have no per-network default arguments,
    hence this helper.)
    """
    if norm is None:
        return None
    name, args = split_args(norm)
    if str(name).upper() not in _BATCH_NORMS:
        return tuple(norm) if isinstance(norm, list) else norm
    return (name, {**KERAS_BATCHNORM, **args})


def _norm(norm: str | tuple | None, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer from a MONAI factory spec (Keras defaults for batch norm, :func:`keras_norm`), or
    ``nn.Identity`` when ``norm`` is ``None``."""
    spec = keras_norm(norm)
    if spec is None:
        return nn.Identity()
    return get_norm_layer(name=spec, spatial_dims=spatial_dims, channels=channels)


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


def _level_widths(features: int | Sequence[int], name: str) -> list[int]:
    """The five level widths: ``features`` itself, or ``b * 2**k`` (k = 0..4) for an int ``b``."""
    if isinstance(features, bool):
        raise ValueError(f"{name}: features must be an int or {_DEPTH} ints, got {features!r}.")
    if isinstance(features, int):
        widths = [features * 2**k for k in range(_DEPTH)]
    else:
        widths = [int(f) for f in features]
        if len(widths) != _DEPTH:
            raise ValueError(f"{name}: features needs one width per level ({_DEPTH}), got {tuple(features)}.")
    if min(widths) < 1:
        raise ValueError(f"{name}: features must be positive, got {features!r}.")
    return widths


def _check_input(x: torch.Tensor, spatial_dims: int, factor: int, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, C, *spatial)`` with every spatial size divisible by ``factor``."""
    if x.dim() != spatial_dims + 2:
        raise ValueError(
            f"{name} (spatial_dims={spatial_dims}) expects a {spatial_dims + 2}D input (B, C, *spatial), "
            f"got shape {shape_text(x)}."
        )
    spatial = list(x.shape[2:])
    for s in spatial:
        if s % factor != 0:
            times = 0
            f = factor
            while f > 1:
                f = f // 2
                times += 1
            raise ValueError(
                f"{name}: input shape {shape_text(x)} has spatial size {sizes_text(spatial)}, which is not "
                f"divisible by {factor} (the network down-samples {times} times by 2); pad or crop the input, e.g. "
                f"with DivisiblePadd(k={factor})."
            )


def _keras_init(module: nn.Module, he_normal: Sequence[nn.Module]) -> None:
    """Keras initialisation: Glorot-uniform weights (the Keras default) and zero biases for every convolution,
    transposed convolution and linear layer of ``module``, then He-normal weights for the layers in ``he_normal`` and
    every layer inside them (the ones the Keras helpers build with ``kernel_initializer='he_normal'``)."""
    layers = (nn.modules.conv._ConvNd, nn.Linear)
    for m in module.modules():
        if isinstance(m, layers):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for group in he_normal:
        for m in group.modules():
            if isinstance(m, layers):
                keras_he_normal_(m.weight)


# --------------------------------------------------------------------------------------------------------------------
# U-Net / UNet++ blocks
# --------------------------------------------------------------------------------------------------------------------


class KerasDoubleConv(nn.Sequential):
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
            norm: feature normalisation type and arguments; ``None`` for none (the Keras default); batch norm gets
                the Keras defaults (:func:`keras_norm`).
            dropout: dropout rate; 0 for none.
            dropout_each: apply the dropout after each convolution (UNet++) rather than once after the block (U-Net).
        """
        super().__init__()
        drop = dropout if dropout > 0 else None
        norm = keras_norm(norm)
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


class KerasDown(nn.Sequential):
    """MaxPool 2 followed by a :class:`KerasDoubleConv`."""

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
            dropout: dropout rate of the :class:`KerasDoubleConv`.
            dropout_each: see :class:`KerasDoubleConv`.
        """
        super().__init__()
        self.add_module("pool", Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2))
        self.add_module(
            "convs", KerasDoubleConv(spatial_dims, in_channels, out_channels, act, norm, dropout, dropout_each)
        )


class KerasUpCat(nn.Module):
    """ConvTranspose 2x2 stride 2 (no activation), concatenation with one or more skips, then a
    :class:`KerasDoubleConv`."""

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
            out_channels: output channels of the :class:`KerasDoubleConv`.
            up_channels: output channels of the transposed convolution; defaults to ``out_channels``.
            act: activation type and arguments.
            norm: feature normalisation type and arguments, or ``None``.
            dropout: dropout rate of the :class:`KerasDoubleConv`.
            dropout_each: see :class:`KerasDoubleConv`.
            up_first: concatenate as ``[up, *skips]`` (UNet++) instead of ``[*skips, up]`` (U-Net).
        """
        super().__init__()
        up_channels = out_channels if up_channels is None else up_channels
        self.up_first = up_first
        self.up = Conv[Conv.CONVTRANS, spatial_dims](in_channels, up_channels, kernel_size=2, stride=2)
        self.convs = KerasDoubleConv(
            spatial_dims, up_channels + skip_channels, out_channels, act, norm, dropout, dropout_each
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``; ``skips``: tensors ``(B, c_k, *2S)``; returns ``(B, out_channels, *2S)``."""
        up = self.up(x)
        parts = [up] + skips if self.up_first else skips + [up]
        return self.convs(torch.cat(parts, dim=1))


# --------------------------------------------------------------------------------------------------------------------
# ResUNet / ResUNet++ blocks
# --------------------------------------------------------------------------------------------------------------------


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
            se_reduction: add a :class:`~networks.blocks.SqueezeExcitation` (no biases) with this ratio after the sum
                (ResUNet++); ``None`` for none.
        """
        super().__init__()
        self.conv1 = _conv(spatial_dims, in_channels, out_channels, 3)
        self.norm1 = _norm(norm, spatial_dims, out_channels)
        self.act1 = get_act_layer(act)
        self.conv2 = _conv(spatial_dims, out_channels, out_channels, 3)
        self.shortcut = nn.Sequential(
            _conv(spatial_dims, in_channels, out_channels, 1), _norm(norm, spatial_dims, out_channels)
        )
        self.se = SqueezeExcitation(spatial_dims, out_channels, se_reduction, act) if se_reduction else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``; returns ``(B, out_channels, *S)``."""
        y = self.conv2(self.act1(self.norm1(self.conv1(x))))
        return self.se(y + self.shortcut(x))


class KerasResidualUnit(nn.Module):
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
            se_reduction: add a :class:`~networks.blocks.SqueezeExcitation` (no biases) with this ratio after the sum;
                ``None`` for none.
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
        self.se = SqueezeExcitation(spatial_dims, out_channels, se_reduction, act) if se_reduction else nn.Identity()

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
    """ResUNet decoder level: nearest up x2 -> concat ``[up, skip]`` -> norm -> :class:`KerasResidualUnit` (shortcut on
    the normalised concatenation)."""

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
        self.res = KerasResidualUnit(
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
        for i, branch in enumerate(self.branches):  # (TorchScript cannot call the modules of a sliced ModuleList)
            if i > 0:
                y = y + branch(x)
        return self.project(y)


class KerasAttentionBlock(nn.Module):
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
    """ResUNet++ decoder level: :class:`KerasAttentionBlock` (g = skip) -> nearest up x2 -> concat ``[up, skip]`` ->
    :class:`KerasResidualUnit` with SE."""

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
            attention_sigmoid: see :class:`KerasAttentionBlock`.
        """
        super().__init__()
        self.attention = KerasAttentionBlock(spatial_dims, skip_channels, in_channels, act, norm, attention_sigmoid)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.res = KerasResidualUnit(
            spatial_dims, in_channels + skip_channels, out_channels, 1, act, norm, True, se_reduction
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``, ``skip``: ``(B, skip_channels, *2S)``; returns ``(B, out_channels, *2S)``"""
        a = self.up(self.attention(skip, x))
        return self.res(torch.cat([a, skip], dim=1))


# --------------------------------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------------------------------


class KerasUNet(nn.Module):
    """Teaching U-Net (Keras ``unet_model`` of RezaSaadatyar/Medical-Image-Processing).

    Five levels of widths ``features`` (16, 32, 64, 128, 256); each level is 2x [Conv3x3 -> (norm) -> act]; MaxPool 2
    between levels; decoder levels are ConvTranspose 2x2 s2 (no activation) -> concat ``[skip, up]`` -> the same double
    convolution; a 1x1 convolution gives the output.
    Base 16, 3 -> 1 channels, 2D: 1,941,105 parameters (3D, 1 -> 2: 5,644,930).

    Input ``(B, in_channels, *S)`` with every size in ``S`` divisible by 16; output ``(B, out_channels, *S)``
    **logits** (the Keras model applies sigmoid/softmax; here that belongs in the loss).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        features: the five level widths, or an int ``b`` for ``(b, 2b, 4b, 8b, 16b)`` (the Keras helpers'
            doubling).
        act: activation type and arguments.
        norm: feature normalisation after each convolution; ``None`` (the Keras default ``use_batchnorm=False``) or a
            MONAI spec such as ``"batch"`` (Keras's ``use_batchnorm=True``, its momentum and eps: :func:`keras_norm`).
        dropout: dropout after each level's double convolution, off by default. ``None``/0 for none, one rate for all
            levels, or five per-level rates (level 1 .. bottleneck); a decoder level re-uses the rate of its encoder
            level. :data:`UNET_TEACHING_DROPOUT` ``(0, 0.1, 0.2, 0.2, 0.3)`` reproduces ``act_dropout=True``.
        base_filters: deprecated name of ``features`` (an int ``b``).
    """

    @renamed_args(base_filters="features")
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: int | Sequence[int] = 16,
        act: str | tuple = "relu",
        norm: str | tuple | None = None,
        dropout: float | Sequence[float] | None = None,
        base_filters: int | None = None,
    ):
        super().__init__()
        check_renamed("KerasUNet", "features", features, "base_filters", base_filters)
        if spatial_dims not in (2, 3):
            raise ValueError(f"KerasUNet: spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.factor = 2 ** (_DEPTH - 1)
        self._name = type(self).__name__
        f = _level_widths(features, "KerasUNet")
        p = _rates(dropout, _DEPTH, "KerasUNet")

        self.conv_0 = KerasDoubleConv(spatial_dims, in_channels, f[0], act, norm, p[0])
        self.downs = nn.ModuleList(KerasDown(spatial_dims, f[k - 1], f[k], act, norm, p[k]) for k in range(1, _DEPTH))
        # decoder from the bottleneck up: level k receives level k+1 and the skip of level k
        ups = [
            KerasUpCat(spatial_dims, f[k + 1], f[k], f[k], act=act, norm=norm, dropout=p[k])
            for k in reversed(range(_DEPTH - 1))
        ]
        self.ups = nn.ModuleList(ups)
        self.final_conv = Conv[Conv.CONV, spatial_dims](f[0], out_channels, kernel_size=1)
        # Keras: He for every 3x3 convolution; Glorot for the transposed convolutions and the 1x1 output
        _keras_init(self, [self.conv_0, self.downs, *(up.convs for up in ups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``, sizes divisible by 16; returns logits ``(B, out_channels, *S)``."""
        _check_input(x, self.spatial_dims, self.factor, self._name)
        skips = [self.conv_0(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, [skips.pop()])
        return self.final_conv(y)


class KerasUNetPlusPlus(nn.Module):
    """Teaching UNet++ (Keras ``unetplusplus_model`` of RezaSaadatyar/Medical-Image-Processing), with optional deep
    supervision (Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image Segmentation", DLMIA 2018).

    Nested dense-skip grid X^{i,j} of depth 4 (rows i = 0..4 of widths ``features[i]``, i + j <= 4). Column 0
    is a plain encoder (double conv, MaxPool 2 between rows). Node X^{i,j}, j >= 1, is a double convolution of
    ``concat[ConvTranspose2x2(X^{i+1,j-1}), X^{i,0}, ..., X^{i,j-1}]``; the transposed convolution outputs
    ``features[i]`` channels. A 1x1 convolution on X^{0,4} gives the output (``final_conv``), as in Keras.
    Quirk of the teaching code: X^{0,3} has ``2 * features[0]`` channels (``x03_quirk``).
    Base 16, 3 -> 1 channels, 2D: 2,280,353 parameters (3D, 1 -> 2: 6,606,258).

    **Deep supervision** (``deep_supervision=True``; the Keras helper has none): three more 1x1 heads,
    ``final_conv_0_1``, ``final_conv_0_2``, ``final_conv_0_3``, on X^{0,1}, X^{0,2}, X^{0,3} (the X^{0,4} head stays
    ``final_conv``, so its weights load into a network without deep supervision and back).

    - Training mode: the list ``[head_1, head_2, head_3, head_4]`` of the heads' logits, each ``(B, out_channels, *S)``,
      in column order (as MONAI's ``BasicUNetPlusPlus``). ``monai.losses.DeepSupervisionLoss`` accepts that list as
      is (it weights a list or tuple head by head; a stacked tensor, DynUNet's form, it would treat as one
      prediction); :func:`pipelines.losses.deep_supervision_loss` wraps a bundle's loss with the paper's equal weights.
    - Eval mode, ``ds_mode="accurate"``: the average of the four heads. The paper averages the heads' sigmoid
      outputs; here the output stays logits, so ``ds_average`` says what is averaged: ``"logits"`` (default, the mean
      of the logits, activation-agnostic), ``"sigmoid"`` or ``"softmax"`` (the logits of the mean of the heads'
      sigmoid / softmax probabilities: ``sigmoid(output)`` / ``softmax(output)`` is exactly the paper's average,
      computed in log space so that saturated heads stay finite).
    - Eval mode, ``ds_mode="fast"``: head ``ds_head`` alone, and only the nodes X^{i,k} with i + k <= ``ds_head``
      are computed (the pruned UNet++ of that depth: 3, 6, 10 or 15 of the 15 nodes).

    Input ``(B, in_channels, *S)`` with every size in ``S`` divisible by 16; output ``(B, out_channels, *S)``
    **logits** (the Keras model applies sigmoid/softmax; here that belongs in the loss).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        features: the five row widths (row i has ``features[i]`` channels), or an int ``b`` for
            ``(b, 2b, 4b, 8b, 16b)`` (the Keras helpers' doubling).
        act: activation type and arguments.
        norm: feature normalisation after each convolution; ``None`` (Keras default) or e.g. ``"batch"`` (Keras
            BatchNorm defaults, :func:`keras_norm`).
        dropout: dropout after *each* convolution of a node, as in the Keras code, off by default. ``None``/0 for none,
            one rate for all rows, or five per-row rates; :data:`UNETPP_TEACHING_DROPOUT` ``(0.1, 0.2, 0.2, 0.3, 0.3)``
            reproduces ``act_dropout=True``.
        x03_quirk: give X^{0,3} ``2 * features[0]`` channels as the teaching code does; ``False`` for the uniform grid.
        deep_supervision: add the heads on X^{0,1..3} and return all four heads in training mode.
        ds_mode: with deep supervision, the eval-mode output: ``"accurate"`` (average of the heads) or ``"fast"`` (one
            head, pruned forward).
        ds_head: the head of the fast mode: j of X^{0,j}, 1..4, or -1..-4 counted from the last (-1 is X^{0,4}).
        ds_average: what the accurate mode averages: ``"logits"``, ``"sigmoid"`` or ``"softmax"`` probabilities.
        base_filters: deprecated name of ``features`` (an int ``b``).
    """

    if TYPE_CHECKING:
        # the nodes X^{i,j} and the extra heads, registered under these names by ``add_module`` in ``__init__``.
        # Declared for the type checker only: TorchScript reads class annotations at run time and cannot resolve
        # postponed ones (``from __future__ import annotations``).
        conv_0_0: KerasDoubleConv
        conv_1_0: KerasDown
        conv_2_0: KerasDown
        conv_3_0: KerasDown
        conv_4_0: KerasDown
        conv_0_1: KerasUpCat
        conv_1_1: KerasUpCat
        conv_2_1: KerasUpCat
        conv_3_1: KerasUpCat
        conv_0_2: KerasUpCat
        conv_1_2: KerasUpCat
        conv_2_2: KerasUpCat
        conv_0_3: KerasUpCat
        conv_1_3: KerasUpCat
        conv_0_4: KerasUpCat
        final_conv_0_1: nn.Module  # a 1x1 convolution with deep supervision, else nn.Identity
        final_conv_0_2: nn.Module
        final_conv_0_3: nn.Module

    @renamed_args(base_filters="features")
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: int | Sequence[int] = 16,
        act: str | tuple = "relu",
        norm: str | tuple | None = None,
        dropout: float | Sequence[float] | None = None,
        x03_quirk: bool = True,
        deep_supervision: bool = False,
        ds_mode: str = "accurate",
        ds_head: int = -1,
        ds_average: str = "logits",
        base_filters: int | None = None,
    ):
        super().__init__()
        check_renamed("KerasUNetPlusPlus", "features", features, "base_filters", base_filters)
        if spatial_dims not in (2, 3):
            raise ValueError(f"KerasUNetPlusPlus: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if not isinstance(deep_supervision, bool):
            raise ValueError(
                f"KerasUNetPlusPlus: deep_supervision must be True or False, got {deep_supervision!r} "
                f"({type(deep_supervision).__name__}); on the monai.bundle command line write \"$True\"."
            )
        if ds_mode not in ("accurate", "fast"):
            raise ValueError(f"KerasUNetPlusPlus: ds_mode must be 'accurate' or 'fast', got {ds_mode!r}.")
        if ds_average not in ("logits", "sigmoid", "softmax"):
            raise ValueError(
                f"KerasUNetPlusPlus: ds_average must be 'logits', 'sigmoid' or 'softmax', got {ds_average!r}."
            )
        if isinstance(ds_head, bool) or not isinstance(ds_head, int) or not (1 <= abs(ds_head) <= _DEPTH - 1):
            raise ValueError(f"KerasUNetPlusPlus: ds_head must be 1..4 (X^{{0,j}}) or -1..-4, got {ds_head!r}.")
        self.spatial_dims = spatial_dims
        self.factor = 2 ** (_DEPTH - 1)
        self.deep_supervision = deep_supervision
        self.ds_mode = ds_mode
        self.ds_head = ds_head if ds_head > 0 else _DEPTH + ds_head  # j of X^{0,j}
        self.ds_average = ds_average
        self._name = type(self).__name__
        f = _level_widths(features, "KerasUNetPlusPlus")
        p = _rates(dropout, _DEPTH, "KerasUNetPlusPlus")

        def width(i: int, j: int) -> int:
            return 2 * f[0] if (x03_quirk and (i, j) == (0, 3)) else f[i]

        # column 0: the encoder
        self.conv_0_0 = KerasDoubleConv(spatial_dims, in_channels, f[0], act, norm, p[0], dropout_each=True)
        for i in range(1, _DEPTH):
            self.add_module(
                f"conv_{i}_0", KerasDown(spatial_dims, f[i - 1], f[i], act, norm, p[i], dropout_each=True)
            )
        # nested nodes X^{i,j}, j >= 1
        for j in range(1, _DEPTH):
            for i in range(_DEPTH - j):
                self.add_module(
                    f"conv_{i}_{j}",
                    KerasUpCat(
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
        # deep-supervision heads on X^{0,1..3}; parameter-free placeholders without it (TorchScript needs the names)
        for j in range(1, _DEPTH - 1):
            head = Conv[Conv.CONV, spatial_dims](width(0, j), out_channels, kernel_size=1)
            self.add_module(f"final_conv_0_{j}", head if self.deep_supervision else nn.Identity())
        # Keras: He for every 3x3 convolution and the 1x1 output (the extra heads alike); Glorot for the transposed
        # convolutions
        he = [getattr(self, f"conv_{i}_0") for i in range(_DEPTH)]
        he += [m.convs for m in self.children() if isinstance(m, KerasUpCat)]
        he += [self.final_conv] + [getattr(self, f"final_conv_0_{j}") for j in range(1, _DEPTH - 1)]
        _keras_init(self, he)

    def _top_row(self, x: torch.Tensor, depth: int) -> list[torch.Tensor]:
        """``[X^{0,1}, ..., X^{0,depth}]``, computing only the nodes X^{i,k} with i + k <= ``depth``, one
        anti-diagonal after the other (each node needs only nodes of the earlier anti-diagonals)."""
        x00 = self.conv_0_0(x)
        x10 = self.conv_1_0(x00)
        x01 = self.conv_0_1(x10, [x00])
        if depth == 1:
            return [x01]
        x20 = self.conv_2_0(x10)
        x11 = self.conv_1_1(x20, [x10])
        x02 = self.conv_0_2(x11, [x00, x01])
        if depth == 2:
            return [x01, x02]
        x30 = self.conv_3_0(x20)
        x21 = self.conv_2_1(x30, [x20])
        x12 = self.conv_1_2(x21, [x10, x11])
        x03 = self.conv_0_3(x12, [x00, x01, x02])
        if depth == 3:
            return [x01, x02, x03]
        x40 = self.conv_4_0(x30)
        x31 = self.conv_3_1(x40, [x30])
        x22 = self.conv_2_2(x31, [x20, x21])
        x13 = self.conv_1_3(x22, [x10, x11, x12])
        x04 = self.conv_0_4(x13, [x00, x01, x02, x03])
        return [x01, x02, x03, x04]

    def _head(self, feature: torch.Tensor, j: int) -> torch.Tensor:
        """The 1x1 head of X^{0,j} applied to ``feature``."""
        if j == 1:
            return self.final_conv_0_1(feature)
        if j == 2:
            return self.final_conv_0_2(feature)
        if j == 3:
            return self.final_conv_0_3(feature)
        return self.final_conv(feature)

    def heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits of every head, ``[head_1, ..., head_4]`` (the full grid, in the current train/eval mode); only
        ``[head_4]`` without deep supervision."""
        _check_input(x, self.spatial_dims, self.factor, self._name)
        top = self._top_row(x, 4)
        if not self.deep_supervision:
            return [self.final_conv(top[-1])]
        out: list[torch.Tensor] = []
        for j in range(len(top)):
            out.append(self._head(top[j], j + 1))
        return out

    def average_heads(self, heads: list[torch.Tensor]) -> torch.Tensor:
        """The accurate mode's combination of the heads' logits (see ``ds_average``), itself logits."""
        stacked = torch.stack(heads, dim=0)
        if self.ds_average == "sigmoid":
            # logit(mean_k sigmoid(z_k)) = log(mean_k sigmoid(z_k)) - log(mean_k sigmoid(-z_k)): the 1/K cancels
            return torch.logsumexp(F.logsigmoid(stacked), dim=0) - torch.logsumexp(F.logsigmoid(-stacked), dim=0)
        if self.ds_average == "softmax":
            # log(mean_k softmax(z_k)), whose softmax is the mean itself (it sums to one over the channels)
            return torch.logsumexp(torch.log_softmax(stacked, dim=2), dim=0) - math.log(len(heads))
        return stacked.mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``x``: ``(B, in_channels, *S)``, sizes divisible by 16; returns logits ``(B, out_channels, *S)``, or with
        deep supervision in training mode the list of the four heads' logits."""
        if not self.deep_supervision:
            _check_input(x, self.spatial_dims, self.factor, self._name)
            return self.final_conv(self._top_row(x, 4)[-1])
        if self.training:
            return self.heads(x)
        if self.ds_mode == "fast":
            _check_input(x, self.spatial_dims, self.factor, self._name)
            return self._head(self._top_row(x, self.ds_head)[-1], self.ds_head)
        return self.average_heads(self.heads(x))


class KerasResUNet(nn.Module):
    """Teaching ResUNet (Keras ``resunet_model`` of RezaSaadatyar/Medical-Image-Processing) of pre-activation units.

    - Stem (:class:`ResidualStem`): [Conv3x3 -> norm -> act -> Conv3x3] + [Conv1x1 -> norm] at ``features[0]``.
    - Encoder: 4 :class:`KerasResidualUnit` of stride 2 and widths ``features[1:]``. Each unit's input is
      normalised by a BatchNorm that the network owns; that normalised tensor feeds the unit's main path and its 1x1
      shortcut and is also the decoder skip of its level (exactly as the Keras code re-assigns ``out_k``).
    - Bridge at 1/16 (:class:`PreActDoubleConv`): norm -> act -> Conv -> norm -> act -> Conv at ``features[4]``,
      no residual.
    - Decoder (:class:`ResUpCat`) x4: nearest up x2 -> concat ``[up, skip]`` -> norm -> stride-1 residual unit at
      widths ``features[4], features[3], features[2], features[1]``; a 1x1 convolution gives the output.

    Base 16, 3 -> 1 channels, 2D: 4,715,761 parameters (3D, 1 -> 2: 13,733,618).

    Input ``(B, in_channels, *S)`` with every size in ``S`` divisible by 16; output ``(B, out_channels, *S)``
    **logits** (the Keras model applies sigmoid/softmax; here that belongs in the loss).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        features: the five level widths (the stem, then each of the 4 down-sampling units), or an int ``b`` for
            ``(b, 2b, 4b, 8b, 16b)`` (the Keras helpers' doubling).
        act: activation type and arguments.
        norm: feature normalisation; ``"batch"`` as in the Keras default ``use_batchnorm=True`` (with the Keras
            BatchNorm momentum and eps, :func:`keras_norm`), ``None`` for none.
        base_filters: deprecated name of ``features`` (an int ``b``).
    """

    @renamed_args(base_filters="features")
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: int | Sequence[int] = 16,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        base_filters: int | None = None,
    ):
        super().__init__()
        check_renamed("KerasResUNet", "features", features, "base_filters", base_filters)
        if spatial_dims not in (2, 3):
            raise ValueError(f"KerasResUNet: spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.factor = 2 ** (_DEPTH - 1)
        self._name = type(self).__name__
        f = _level_widths(features, "KerasResUNet")

        self.stem = ResidualStem(spatial_dims, in_channels, f[0], act, norm)
        self.enc_norms = nn.ModuleList(_norm(norm, spatial_dims, f[k]) for k in range(_DEPTH - 1))
        self.downs = nn.ModuleList(
            KerasResidualUnit(spatial_dims, f[k], f[k + 1], 2, act, norm, pre_norm=False) for k in range(_DEPTH - 1)
        )
        self.bridge = PreActDoubleConv(spatial_dims, f[-1], f[-1], act, norm)
        # decoder level widths f[4], f[4], f[3], f[2] in; the skip of the finest level is the stem output (f[0])
        dec_in = [f[-1], f[-1], f[-2], f[-3]]
        self.ups = nn.ModuleList(
            ResUpCat(spatial_dims, dec_in[n], f[_DEPTH - 2 - n], f[_DEPTH - 1 - n], act, norm)
            for n in range(_DEPTH - 1)
        )
        self.final_conv = Conv[Conv.CONV, spatial_dims](f[1], out_channels, kernel_size=1)
        # Keras: He for the stem's convolutions and shortcut only; Glorot everywhere else
        _keras_init(self, [self.stem.conv1, self.stem.conv2, self.stem.shortcut])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``, sizes divisible by 16; returns logits ``(B, out_channels, *S)``."""
        _check_input(x, self.spatial_dims, self.factor, self._name)
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


class KerasResUNetPlusPlus(nn.Module):
    """Teaching ResUNet++ (Keras ``resunetplusplus_model`` of RezaSaadatyar/Medical-Image-Processing).

    - Stem: :class:`ResidualStem` at ``features[0]`` followed by :class:`~networks.blocks.SqueezeExcitation` (ratio 8,
      no bias).
    - Encoder: 3 :class:`KerasResidualUnit` of stride 2 (widths ``features[1:4]``), each followed by SE.
    - Bridge at 1/8: :class:`SumASPP` to ``features[4]`` (3x3 branches with dilations ``(6, 12, 18) *
      rate_scale`` and 1, each + norm, summed, then Conv1x1).
    - Decoder (:class:`AttentionResUpCat`) x3: attention(g = encoder feature at twice the resolution, x = decoder
      feature; no sigmoid, as in the teaching code) -> nearest up x2 -> concat ``[up, skip]`` -> residual unit + SE
      at widths ``features[3], features[2], features[1]``.
    - Output: :class:`SumASPP` to ``features[0]`` (same rates) -> Conv1x1 to ``out_channels``.

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
        features: the five level widths (the stem, the 3 down-sampling units and the bridge), or an int ``b`` for
            ``(b, 2b, 4b, 8b, 16b)`` (the Keras helpers' doubling).
        act: activation type and arguments.
        norm: feature normalisation (``"batch"`` as in the Keras code, with its BatchNorm momentum and eps:
            :func:`keras_norm`; ``None`` for none).
        rate_scale: multiplies the ASPP dilations 6, 12, 18 (rounded, at least 1); the undilated branch stays 1.
        se_reduction: squeeze-and-excitation ratio.
        attention_sigmoid: apply a sigmoid to the attention map (off, as in the teaching code).
        base_filters: deprecated name of ``features`` (an int ``b``).
    """

    @renamed_args(base_filters="features")
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: int | Sequence[int] = 16,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        rate_scale: float = 1,
        se_reduction: int = 8,
        attention_sigmoid: bool = False,
        base_filters: int | None = None,
    ):
        super().__init__()
        check_renamed("KerasResUNetPlusPlus", "features", features, "base_filters", base_filters)
        if spatial_dims not in (2, 3):
            raise ValueError(f"KerasResUNetPlusPlus: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if rate_scale <= 0:
            raise ValueError(f"KerasResUNetPlusPlus: rate_scale must be positive, got {rate_scale}.")
        self.spatial_dims = spatial_dims
        self.factor = 8
        self._name = type(self).__name__
        f = _level_widths(features, "KerasResUNetPlusPlus")
        self.dilations = tuple(max(1, int(round(d * rate_scale))) for d in (6, 12, 18)) + (1,)

        self.stem = ResidualStem(spatial_dims, in_channels, f[0], act, norm, se_reduction)
        self.downs = nn.ModuleList(
            KerasResidualUnit(spatial_dims, f[k], f[k + 1], 2, act, norm, True, se_reduction) for k in range(3)
        )
        self.bridge = SumASPP(spatial_dims, f[3], f[4], self.dilations, norm)
        self.ups = nn.ModuleList(
            AttentionResUpCat(spatial_dims, c_in, c_skip, c_out, act, norm, se_reduction, attention_sigmoid)
            for c_in, c_skip, c_out in ((f[4], f[2], f[3]), (f[3], f[1], f[2]), (f[2], f[0], f[1]))
        )
        self.out_aspp = SumASPP(spatial_dims, f[1], f[0], self.dilations, norm)
        self.final_conv = Conv[Conv.CONV, spatial_dims](f[0], out_channels, kernel_size=1)
        # Keras: He for the stem's convolutions and shortcut and for the squeeze-excite dense layers; Glorot elsewhere
        se = [m for m in self.modules() if isinstance(m, SqueezeExcitation)]
        _keras_init(self, [self.stem.conv1, self.stem.conv2, self.stem.shortcut, *se])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, *S)``, sizes divisible by 8; returns logits ``(B, out_channels, *S)``."""
        _check_input(x, self.spatial_dims, self.factor, self._name)
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = self.bridge(skips.pop())
        for up in self.ups:
            y = up(y, skips.pop())
        return self.final_conv(self.out_aspp(y))


# --------------------------------------------------------------------------------------------------------------------
# the earlier names, for one version
# --------------------------------------------------------------------------------------------------------------------


@deprecated_class("networks.KerasUNet")
class UNet(KerasUNet):
    """Deprecated name of :class:`KerasUNet` (removed in 0.2.0; MONAI's ``UNet`` is another network)."""


@deprecated_class("networks.KerasUNetPlusPlus")
class UNetPlusPlus(KerasUNetPlusPlus):
    """Deprecated name of :class:`KerasUNetPlusPlus` (removed in 0.2.0)."""


@deprecated_class("networks.KerasResUNet")
class ResUNet(KerasResUNet):
    """Deprecated name of :class:`KerasResUNet` (removed in 0.2.0)."""


@deprecated_class("networks.KerasResUNetPlusPlus")
class ResUNetPlusPlus(KerasResUNetPlusPlus):
    """Deprecated name of :class:`KerasResUNetPlusPlus` (removed in 0.2.0)."""


# the blocks named as MONAI names other layers (monai.networks.nets.basic_unet's TwoConv, Down and UpCat,
# monai.networks.blocks.ResidualUnit, monai.networks.nets.attentionunet.AttentionBlock)
__getattr__ = deprecated_alias_getattr(
    __name__,
    {
        "DoubleConv": ("networks.unet_family.KerasDoubleConv", lambda: KerasDoubleConv),
        "Down": ("networks.unet_family.KerasDown", lambda: KerasDown),
        "UpCat": ("networks.unet_family.KerasUpCat", lambda: KerasUpCat),
        "ResidualUnit": ("networks.unet_family.KerasResidualUnit", lambda: KerasResidualUnit),
        "AttentionBlock": ("networks.unet_family.KerasAttentionBlock", lambda: KerasAttentionBlock),
    },
)
