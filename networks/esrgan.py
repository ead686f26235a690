"""ESRGAN generator (RRDBNet) and VGG-style discriminator for 2D and 3D super-resolution.

Two configurations are provided as presets:

- :func:`esrgan`: the published ESRGAN generator (Wang et al., ECCVW 2018; xinntao/ESRGAN and BasicSR): 23 RRDBs,
  ``features=64`` (the paper's ``nf``), ``growth_channels=32`` (``gc``), nearest + conv up-sampling, LeakyReLU 0.2,
  16,697,987 parameters for RGB ``x4``.
- :func:`se_esrgan`: the SE-ESRGAN generator of the USenhance 2023 repository Smruti0603/Uneshance_2023 (PyTorch-GAN
  ESRGAN variant): 24 RRDBs with growth 64, pixel-shuffle up-sampling, LeakyReLU 0.01 and a bias-free squeeze-excite
  block after the last up-sampling stage, 40,209,987 parameters for RGB ``x4``.

The constructors name the paper's ``nf``, ``gc`` and ``nb`` (trunk width, growth channels, number of RRDBs)
``features``, ``growth_channels`` and ``num_blocks``; the old names are accepted, with a ``DeprecationWarning``, until
version 0.2.0 (:mod:`networks.deprecation`). The squeeze-excite block is the shared
:class:`~networks.blocks.SqueezeExcitation`.

In 3D the up-sampling factor may differ per axis, e.g. ``scale=(1, 1, 4)`` up-samples only the slice axis of a
``(B, C, H, W, D)`` volume. The discriminator exposes the feature map after each stride-2 stage for feature-matching
content losses, which need no pretrained weights. Both networks compile with ``torch.jit.script`` (shapes are handled
as lists: no starred unpacking or generators in ``forward``), so ``monai.bundle ckpt_export`` needs no tracing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.networks.blocks import Convolution, SubpixelUpsample, UpSample
from monai.networks.layers.factories import Act, Conv, Pool
from monai.networks.layers.utils import get_act_layer
from monai.utils import ensure_tuple_rep

from .blocks.shapes import sizes_text
from .blocks.squeeze_excitation import SqueezeExcitation
from .deprecation import check_renamed, renamed_args

__all__ = [
    "ResidualDenseBlock",
    "RRDB",
    "SqueezeExcitation",
    "NearestConvUpsample",
    "PixelShuffleUpsample",
    "pixel_shuffle_per_axis",
    "RRDBNet",
    "DiscriminatorStage",
    "VGGStyleDiscriminator",
    "esrgan",
    "se_esrgan",
    "se_esrgan_uneshance",
]

UPSAMPLE_MODES = ("nearest_conv", "pixelshuffle")
DISCRIMINATOR_HEADS = ("fc", "patch", "gap")


def _conv3(spatial_dims: int, in_chns: int, out_chns: int, bias: bool = True) -> nn.Conv1d | nn.Conv2d | nn.Conv3d:
    """A 3x3(x3) convolution with stride 1 and "same" padding."""
    return Conv[Conv.CONV, spatial_dims](in_chns, out_chns, kernel_size=3, stride=1, padding=1, bias=bias)


def _lrelu(negative_slope: float) -> nn.Module:
    return Act[Act.LEAKYRELU](negative_slope=negative_slope, inplace=True)


def _scale_factors(scale: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """Validate ``scale`` and return one integer factor per spatial axis (each a power of two, at least 1)."""
    if isinstance(scale, Sequence) and len(scale) != spatial_dims:
        raise ValueError(f"scale must be an int or a sequence of {spatial_dims} ints, got {scale!r}.")
    factors = ensure_tuple_rep(scale, spatial_dims)
    for f in factors:
        if int(f) != f or f < 1 or int(f) & (int(f) - 1):
            raise ValueError(f"every scale factor must be a power of two (1, 2, 4, 8, ...), got scale={scale!r}.")
    return tuple(int(f) for f in factors)


def _x2_stages(factors: Sequence[int]) -> list[tuple[int, ...]]:
    """Split per-axis factors into x2 stages.

    ``(1, 1, 4) -> [(1, 1, 2), (1, 1, 2)]``; ``(2, 2, 4) -> [(2, 2, 2), (1, 1, 2)]``; ``(1, 1) -> []``.
    """
    n_stages = int(math.log2(max(factors)))
    return [tuple(2 if f > 2**k else 1 for f in factors) for k in range(n_stages)]


def pixel_shuffle_per_axis(x: torch.Tensor, factors: list[int]) -> torch.Tensor:
    """Pixel shuffle with one factor per spatial axis.

    Rearranges ``(B, C * prod(factors), S_1, ..., S_n)`` into ``(B, C, S_1 * f_1, ..., S_n * f_n)`` with the same
    channel ordering as ``torch.nn.PixelShuffle`` and :py:func:`monai.networks.utils.pixelshuffle`, to which it reduces
    when all factors are equal. ``factors`` is any sequence of ints in Python (a list in TorchScript, which compiles
    this function).
    """
    factors = [int(f) for f in factors]
    dims = len(factors)
    if x.ndim != dims + 2:
        raise ValueError(f"expected a {dims + 2}D tensor (B, C, *spatial) for factors {factors}, got {x.ndim}D.")
    batch, channels = x.shape[0], x.shape[1]
    spatial = x.shape[2:]
    divisor = 1
    for f in factors:
        divisor *= f
    if channels % divisor:
        raise ValueError(f"channels ({channels}) must be divisible by prod(factors) = {divisor}.")
    x = x.reshape([batch, channels // divisor] + factors + list(spatial))
    perm = [0, 1]
    for i in range(dims):
        perm += [2 + dims + i, 2 + i]  # (spatial_i, factor_i) pairs
    return x.permute(perm).reshape([batch, channels // divisor] + [s * f for s, f in zip(spatial, factors)])


class ResidualDenseBlock(nn.Module):
    """Residual dense block (RDB) of ESRGAN: five densely connected 3x3 convs, output ``x + 0.2 * conv5``."""

    @renamed_args(nf="features", gc="growth_channels")
    def __init__(
        self,
        spatial_dims: int,
        features: int = 64,
        growth_channels: int = 32,
        lrelu_slope: float = 0.2,
        residual_scale: float = 0.2,
        init_scale: float = 0.1,
        nf: int | None = None,
        gc: int | None = None,
    ) -> None:
        """
        Args:
            spatial_dims: number of spatial dimensions.
            features: number of input and output channels (the paper's ``nf``).
            growth_channels: the output width of convs 1-4 (the paper's ``gc``; conv ``i`` sees
                ``features + (i - 1) * growth_channels`` channels).
            lrelu_slope: negative slope of the LeakyReLU after convs 1-4 (conv 5 has no activation).
            residual_scale: the factor applied to conv 5 before the residual addition.
            init_scale: Kaiming-normal weights are multiplied by this factor ("smaller initialisation"); biases are 0.
            nf: deprecated name of ``features``.
            gc: deprecated name of ``growth_channels``.
        """
        super().__init__()
        check_renamed("ResidualDenseBlock", "features", features, "nf", nf)
        check_renamed("ResidualDenseBlock", "growth_channels", growth_channels, "gc", gc)
        c, g = features, growth_channels
        self.residual_scale = residual_scale
        self.conv1 = _conv3(spatial_dims, c, g)
        self.conv2 = _conv3(spatial_dims, c + g, g)
        self.conv3 = _conv3(spatial_dims, c + 2 * g, g)
        self.conv4 = _conv3(spatial_dims, c + 3 * g, g)
        self.conv5 = _conv3(spatial_dims, c + 4 * g, c)
        self.lrelu = _lrelu(lrelu_slope)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
            nn.init.kaiming_normal_(conv.weight)
            with torch.no_grad():
                conv.weight.mul_(init_scale)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x + self.residual_scale * x5


class RRDB(nn.Module):
    """Residual-in-residual dense block: three RDBs in sequence, output ``x + 0.2 * rdb3(rdb2(rdb1(x)))``."""

    @renamed_args(nf="features", gc="growth_channels")
    def __init__(
        self,
        spatial_dims: int,
        features: int = 64,
        growth_channels: int = 32,
        lrelu_slope: float = 0.2,
        residual_scale: float = 0.2,
        nf: int | None = None,
        gc: int | None = None,
    ) -> None:
        """
        Args:
            spatial_dims: number of spatial dimensions.
            features: number of input and output channels (the paper's ``nf``).
            growth_channels: growth channels of the dense blocks (the paper's ``gc``).
            lrelu_slope: negative slope of the LeakyReLUs inside the dense blocks.
            residual_scale: residual scaling of the RRDB and of each of its RDBs.
            nf: deprecated name of ``features``.
            gc: deprecated name of ``growth_channels``.
        """
        super().__init__()
        check_renamed("RRDB", "features", features, "nf", nf)
        check_renamed("RRDB", "growth_channels", growth_channels, "gc", gc)
        self.residual_scale = residual_scale
        self.rdb1 = ResidualDenseBlock(spatial_dims, features, growth_channels, lrelu_slope, residual_scale)
        self.rdb2 = ResidualDenseBlock(spatial_dims, features, growth_channels, lrelu_slope, residual_scale)
        self.rdb3 = ResidualDenseBlock(spatial_dims, features, growth_channels, lrelu_slope, residual_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual_scale * self.rdb3(self.rdb2(self.rdb1(x)))


class NearestConvUpsample(nn.Sequential):
    """One ESRGAN up-sampling stage: nearest interpolation by per-axis factors, 3x3 conv, LeakyReLU."""

    def __init__(self, spatial_dims: int, channels: int, factors: Sequence[int], lrelu_slope: float = 0.2) -> None:
        """
        Args:
            spatial_dims: number of spatial dimensions.
            channels: number of input and output channels.
            factors: up-sampling factor per spatial axis, e.g. ``(2, 2)`` or ``(1, 1, 2)``.
            lrelu_slope: negative slope of the LeakyReLU.
        """
        super().__init__()
        self.add_module(
            "upsample",
            UpSample(
                spatial_dims,
                channels,
                channels,
                scale_factor=tuple(factors),
                mode="nontrainable",
                pre_conv=None,
                interp_mode="nearest",
                align_corners=None,
            ),
        )
        self.add_module("conv", _conv3(spatial_dims, channels, channels))
        self.add_module("act", _lrelu(lrelu_slope))


class PixelShuffleUpsample(nn.Sequential):
    """One sub-pixel up-sampling stage: 3x3 conv to ``C * prod(factors)`` channels, pixel shuffle, LeakyReLU.

    Isotropic factors use :py:class:`monai.networks.blocks.SubpixelUpsample` (no pad-pool, ICNR init); per-axis
    factors such as ``(1, 1, 2)`` use a conv with the same ICNR initialisation and :func:`pixel_shuffle_per_axis`.
    The LeakyReLU after the shuffle equals the Uneshance order conv -> LeakyReLU -> shuffle (it is element-wise).
    """

    def __init__(self, spatial_dims: int, channels: int, factors: Sequence[int], lrelu_slope: float = 0.2) -> None:
        """
        Args:
            spatial_dims: number of spatial dimensions.
            channels: number of input and output channels.
            factors: up-sampling factor per spatial axis, e.g. ``(2, 2)`` or ``(1, 1, 2)``.
            lrelu_slope: negative slope of the LeakyReLU.
        """
        super().__init__()
        factors = tuple(factors)
        if len(set(factors)) == 1:
            self.add_module(
                "subpixel",
                SubpixelUpsample(spatial_dims, channels, channels, scale_factor=factors[0], apply_pad_pool=False),
            )
        else:
            self.add_module("subpixel", _AnisotropicSubpixel(spatial_dims, channels, factors))
        self.add_module("act", _lrelu(lrelu_slope))


class _AnisotropicSubpixel(nn.Module):
    """Conv to ``C * prod(factors)`` channels (ICNR-initialised) followed by :func:`pixel_shuffle_per_axis`."""

    def __init__(self, spatial_dims: int, channels: int, factors: tuple[int, ...]) -> None:
        super().__init__()
        self.factors = list(factors)
        self.conv_block = _conv3(spatial_dims, channels, channels * math.prod(factors))
        # ICNR (Aitken et al. 2017): all sub-pixel positions of an output channel start from the same kernel
        sub = torch.empty(channels, *self.conv_block.weight.shape[1:], device=self.conv_block.weight.device)
        nn.init.kaiming_normal_(sub)
        with torch.no_grad():
            self.conv_block.weight.copy_(sub.repeat_interleave(math.prod(factors), dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_per_axis(self.conv_block(x), self.factors)


class RRDBNet(nn.Module):
    """ESRGAN generator: RRDB trunk with a long skip, up-sampling stages, optional squeeze-excite, HR convs.

    ``conv_first -> [num_blocks x RRDB -> conv_body] + skip -> up-sampling (x2 stages) -> [SE] -> conv_hr -> LReLU ->
    conv_last``. No batch normalisation anywhere and no output activation. Works in 2D and 3D; in 3D the scale may
    differ per axis (e.g. ``(1, 1, 4)`` for slice-axis super-resolution).

    Input ``(B, in_channels, S_1, ..., S_n)``; output ``(B, out_channels, S_1 * f_1, ..., S_n * f_n)`` for per-axis
    factors ``f``.

    References:
        Wang et al., "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks", ECCV Workshops 2018,
        https://arxiv.org/abs/1809.00219 (code: xinntao/ESRGAN, XPixelGroup/BasicSR).
        Smruti0603/Uneshance_2023 (USenhance 2023): the squeeze-excite variant, see :func:`se_esrgan`.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels.
        features: trunk width, the channels of every RRDB (the paper's ``nf``).
        growth_channels: growth channels of the dense blocks (the paper's ``gc``).
        num_blocks: number of RRDBs in the trunk (the paper's ``nb``).
        scale: up-sampling factor, an int or one int per spatial axis; every factor must be a power of two.
            Each x2 step is one up-sampling stage; ``scale=1`` gives a same-size enhancement network.
        upsample: ``"nearest_conv"`` (ESRGAN: nearest x2 -> conv -> LReLU) or ``"pixelshuffle"``
            (conv to ``features * 2**n`` channels -> pixel shuffle -> LReLU).
        se_after_upsample: insert a squeeze-excite block after the last up-sampling stage (SE-ESRGAN).
        se_ratio: reduction ratio of the squeeze-excite block (at most ``features``).
        se_bias: whether the squeeze-excite FC layers have biases (Uneshance: no).
        lrelu_slope: negative slope of every LeakyReLU (ESRGAN 0.2; Uneshance 0.01, PyTorch's default).
        interpolation_skip: ``None`` (the published generators) or an ``F.interpolate`` mode (``"bicubic"`` in 2D,
            ``"trilinear"`` in 3D, ``"nearest"``, or ``"auto"`` for the one of the dimension): the network then learns
            the residual to that interpolation of its input (global residual learning, as in VDSR, Kim et al.,
            CVPR 2016), ``output = conv_last(...) + interpolate(x)``. Needs ``in_channels == out_channels``; adds no
            parameters, and ``conv_last`` starts at a tenth of its default scale so that training starts from the
            interpolation. Medical images are mostly smooth, so this makes beating interpolation the starting point
            rather than something the trunk has to learn first.
        nf: deprecated name of ``features``.
        gc: deprecated name of ``growth_channels``.
        nb: deprecated name of ``num_blocks``.
    """

    @renamed_args(nf="features", gc="growth_channels", nb="num_blocks")
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: int = 64,
        growth_channels: int = 32,
        num_blocks: int = 23,
        scale: int | Sequence[int] = 4,
        upsample: str = "nearest_conv",
        se_after_upsample: bool = False,
        se_ratio: int = 8,
        se_bias: bool = False,
        lrelu_slope: float = 0.2,
        interpolation_skip: str | None = None,
        nf: int | None = None,
        gc: int | None = None,
        nb: int | None = None,
    ) -> None:
        super().__init__()
        check_renamed("RRDBNet", "features", features, "nf", nf)
        check_renamed("RRDBNet", "growth_channels", growth_channels, "gc", gc)
        check_renamed("RRDBNet", "num_blocks", num_blocks, "nb", nb)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if se_after_upsample and se_ratio >= 1 and features // se_ratio < 1:
            raise ValueError(
                f"se_ratio must be at most the channel count, got ratio={se_ratio} for {features} channels."
            )
        if interpolation_skip == "auto":
            interpolation_skip = "bicubic" if spatial_dims == 2 else "trilinear"
        allowed_skips = {2: ("nearest", "bilinear", "bicubic"), 3: ("nearest", "trilinear")}[spatial_dims]
        if interpolation_skip is not None and interpolation_skip not in allowed_skips:
            raise ValueError(
                f"interpolation_skip must be None, 'auto' or one of {allowed_skips} in {spatial_dims}D, "
                f"got {interpolation_skip!r}."
            )
        if interpolation_skip is not None and in_channels != out_channels:
            raise ValueError(
                f"interpolation_skip needs in_channels == out_channels, got {in_channels} and {out_channels}."
            )
        self.interpolation_skip = interpolation_skip
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}.")
        self.spatial_dims = spatial_dims
        self.scale = _scale_factors(scale, spatial_dims)

        width = features
        self.conv_first = _conv3(spatial_dims, in_channels, width)
        self.body = nn.Sequential(*[RRDB(spatial_dims, width, growth_channels, lrelu_slope) for _ in range(num_blocks)])
        self.conv_body = _conv3(spatial_dims, width, width)
        stage = NearestConvUpsample if upsample == "nearest_conv" else PixelShuffleUpsample
        self.upsample = nn.Sequential(
            *[stage(spatial_dims, width, factors, lrelu_slope) for factors in _x2_stages(self.scale)]
        )
        self.se: nn.Module = (
            SqueezeExcitation(spatial_dims, width, se_ratio, bias=se_bias) if se_after_upsample else nn.Identity()
        )
        self.conv_hr = _conv3(spatial_dims, width, width)
        self.lrelu = _lrelu(lrelu_slope)
        self.conv_last = _conv3(spatial_dims, width, out_channels)
        if interpolation_skip is not None:
            with torch.no_grad():
                self.conv_last.weight.mul_(0.1)
                if self.conv_last.bias is not None:
                    self.conv_last.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.se(self.upsample(feat))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        skip = self.interpolation_skip
        if skip is not None:
            align: bool | None = None if skip == "nearest" else False
            base = F.interpolate(x.float(), size=out.shape[2:], mode=skip, align_corners=align)
            out = out + base.to(out.dtype)
        return out


@renamed_args(nf="features", gc="growth_channels", nb="num_blocks")
def esrgan(
    spatial_dims: int = 2,
    in_channels: int = 3,
    out_channels: int = 3,
    scale: int | Sequence[int] = 4,
    nf: int | None = None,
    gc: int | None = None,
    nb: int | None = None,
    **kwargs,
) -> RRDBNet:
    """The published ESRGAN generator: 23 RRDBs (``num_blocks``, the paper's nb), width 64 (``features``, nf), growth
    32 (``growth_channels``, gc), nearest + conv up-sampling, LeakyReLU 0.2, no SE.

    16,697,987 parameters for 2D RGB; 50,066,819 for 3D RGB (50,059,905 with one channel in and out).
    ``kwargs`` override any other :class:`RRDBNet` argument, e.g. the lighter 3D configuration
    ``esrgan(spatial_dims=3, in_channels=1, out_channels=1, scale=(1, 1, 4), num_blocks=8, features=32,
    growth_channels=16)`` (4,427,873). ``nf``, ``gc`` and ``nb`` are the deprecated names of ``features``,
    ``growth_channels`` and ``num_blocks``.
    """
    _check_preset_renames("esrgan", kwargs, nf, gc, nb)
    config: dict[str, Any] = {"features": 64, "growth_channels": 32, "num_blocks": 23, "upsample": "nearest_conv",
                              "se_after_upsample": False, "lrelu_slope": 0.2}
    config.update(kwargs)
    return RRDBNet(spatial_dims, in_channels, out_channels, scale=scale, **config)


@renamed_args(nf="features", gc="growth_channels", nb="num_blocks")
def se_esrgan(
    spatial_dims: int = 2,
    in_channels: int = 3,
    out_channels: int = 3,
    scale: int | Sequence[int] = 4,
    nf: int | None = None,
    gc: int | None = None,
    nb: int | None = None,
    **kwargs,
) -> RRDBNet:
    """SE-ESRGAN as released in Smruti0603/Uneshance_2023: 24 RRDBs (``num_blocks``), width 64 (``features``), growth
    64 (``growth_channels``), pixel shuffle, SE (ratio 8, no biases) after the last up-sampling stage, LeakyReLU 0.01
    everywhere.

    40,209,987 parameters for 2D RGB ``x4``, exactly the count of the reference generator (38,550,147 with
    ``num_blocks=23``).
    Differences from the reference that do not change the count: the dense-block convs get ESRGAN's Kaiming x 0.1
    initialisation (PyTorch-GAN keeps PyTorch's default) and the pixel-shuffle convs get ICNR initialisation.
    ``nf``, ``gc`` and ``nb`` are the deprecated names of ``features``, ``growth_channels`` and ``num_blocks``.
    """
    _check_preset_renames("se_esrgan", kwargs, nf, gc, nb)
    config: dict[str, Any] = {
        "features": 64,
        "growth_channels": 64,
        "num_blocks": 24,
        "upsample": "pixelshuffle",
        "se_after_upsample": True,
        "se_ratio": 8,
        "se_bias": False,
        "lrelu_slope": 0.01,
    }
    config.update(kwargs)
    return RRDBNet(spatial_dims, in_channels, out_channels, scale=scale, **config)


se_esrgan_uneshance = se_esrgan


def _check_preset_renames(owner: str, kwargs: dict, nf: int | None, gc: int | None, nb: int | None) -> None:
    """Refuse a preset call that gives a deprecated name besides its new one (``renamed_args`` put the old value
    into ``kwargs`` under the new name)."""
    for new, old, value in (("features", "nf", nf), ("growth_channels", "gc", gc), ("num_blocks", "nb", nb)):
        check_renamed(owner, new, kwargs.get(new), old, value)


class DiscriminatorStage(nn.Sequential):
    """One VGG-style discriminator stage: 3x3 conv (stride 1) then a stride-2 conv, each followed by norm and act."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        act: str | tuple,
        norm: str | tuple,
        bias: bool,
        down_kernel_size: int = 4,
        first: bool = False,
    ) -> None:
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_chns: number of input channels.
            out_chns: number of output channels.
            act: activation type and arguments.
            norm: feature normalization type and arguments.
            bias: whether the normalised convolutions have a bias term.
            down_kernel_size: kernel size of the stride-2 conv (ESRGAN VGG-128: 4; Uneshance PatchGAN: 3).
            first: the first stage's 3x3 conv has a bias and no normalisation (as in ESRGAN and Uneshance).
        """
        super().__init__()
        self.add_module(
            "conv_0",
            Convolution(
                spatial_dims,
                in_chns,
                out_chns,
                kernel_size=3,
                strides=1,
                padding=1,
                act=act,
                norm=None if first else norm,
                bias=True if first else bias,
            ),
        )
        self.add_module(
            "conv_1",
            Convolution(
                spatial_dims,
                out_chns,
                out_chns,
                kernel_size=down_kernel_size,
                strides=2,
                padding=1,
                act=act,
                norm=norm,
                bias=bias,
            ),
        )


class VGGStyleDiscriminator(nn.Module):
    """VGG-style discriminator of ESRGAN (VGG-128), for 2D and 3D, with a fully connected or a patch head.

    Stages of [3x3 conv -> norm -> LReLU -> stride-2 conv -> norm -> LReLU] at widths
    ``features * channel_mults`` (64, 128, 256, 512, 512 by default), then a head:

    - ``"fc"``: flatten -> Linear(-> ``fc_hidden``) -> LReLU -> Linear(-> 1). Locked to ``in_shape``.
      Output ``(B, 1)``. With 3 channels and ``in_shape=128`` this is ESRGAN's VGG-128 (14,499,401 parameters).
    - ``"patch"``: 3x3 conv -> 1 channel, a PatchGAN logit map ``(B, 1, *reduced_spatial)`` for any input size
      (at least ``2 ** n_stages`` per axis). With ``channel_mults=(1, 2, 4, 8)``, ``down_kernel_size=3`` and
      ``bias=True`` this is the Uneshance discriminator (4,693,697 parameters for 3 channels).
    - ``"gap"``: global average pooling -> Linear -> LReLU -> Linear, one logit ``(B, 1)`` for any input size.

    ``forward(x, return_features=True)`` returns ``(logits, features)`` where ``features`` lists the output of each
    stride-2 stage (for feature-matching losses).

    Reference:
        Wang et al., "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks", ECCV Workshops 2018,
        https://arxiv.org/abs/1809.00219.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        in_shape: spatial input size (int or one per axis); required by ``head="fc"``, ignored otherwise.
        features: width of the first stage.
        channel_mults: width multiplier of each stage; its length is the number of stride-2 stages.
        head: ``"fc"``, ``"patch"`` or ``"gap"``.
        fc_hidden: hidden units of the ``"fc"`` and ``"gap"`` heads.
        down_kernel_size: kernel size of the stride-2 convs (padding 1).
        act: activation type and arguments.
        norm: feature normalization type and arguments (not applied to the first conv).
        bias: whether the normalised convolutions have a bias term.
        base_features: deprecated name of ``features``.
    """

    @renamed_args(base_features="features")
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        in_shape: int | Sequence[int] | None = None,
        features: int = 64,
        channel_mults: Sequence[int] = (1, 2, 4, 8, 8),
        head: str = "fc",
        fc_hidden: int = 100,
        down_kernel_size: int = 4,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.2, "inplace": True}),
        norm: str | tuple = "batch",
        bias: bool = False,
        base_features: int | None = None,
    ) -> None:
        super().__init__()
        check_renamed("VGGStyleDiscriminator", "features", features, "base_features", base_features)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if head not in DISCRIMINATOR_HEADS:
            raise ValueError(f"head must be one of {DISCRIMINATOR_HEADS}, got {head!r}.")
        if not channel_mults:
            raise ValueError("channel_mults must name at least one stage.")
        self.spatial_dims = spatial_dims
        self.head_type = head
        self.down_kernel_size = down_kernel_size
        widths = [features * m for m in channel_mults]

        stages = []
        for i, width in enumerate(widths):
            chns = in_channels if i == 0 else widths[i - 1]
            stages.append(DiscriminatorStage(spatial_dims, chns, width, act, norm, bias, down_kernel_size, i == 0))
        self.stages = nn.ModuleList(stages)

        self.in_shape: tuple[int, ...] | None = None
        # in_shape as a list, what forward compares (never empty, so that TorchScript can type it; unused without fc)
        self._fixed_size = head == "fc"
        self._in_sizes = [0] * spatial_dims
        if head == "fc":
            if in_shape is None:
                raise ValueError(
                    "head='fc' needs a fixed in_shape (e.g. in_shape=128); "
                    "use head='patch' or 'gap' for inputs of any size."
                )
            self.in_shape = tuple(int(s) for s in ensure_tuple_rep(in_shape, spatial_dims))
            self._in_sizes = list(self.in_shape)
            out_shape = self.output_spatial_shape(self.in_shape)
            self.head: nn.Module = nn.Sequential(
                nn.Flatten(1),
                nn.Linear(widths[-1] * math.prod(out_shape), fc_hidden),
                get_act_layer(act),
                nn.Linear(fc_hidden, 1),
            )
        elif head == "gap":
            self.head = nn.Sequential(
                Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
                nn.Flatten(1),
                nn.Linear(widths[-1], fc_hidden),
                get_act_layer(act),
                nn.Linear(fc_hidden, 1),
            )
        else:
            self.head = _conv3(spatial_dims, widths[-1], 1)

    def output_spatial_shape(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial size after the stride-2 stages for an input of ``spatial_shape``; raises if any axis is too small."""
        return tuple(self._reduced_sizes([int(s) for s in spatial_shape]))

    def _reduced_sizes(self, sizes: list[int]) -> list[int]:
        """:meth:`output_spatial_shape` on a list (TorchScript compiles this one)."""
        out = sizes
        for _ in range(len(self.stages)):
            out = [(s + 2 - self.down_kernel_size) // 2 + 1 for s in out]
        if min(out) < 1:
            raise ValueError(
                f"input spatial shape {sizes_text(sizes)} is too small for {len(self.stages)} stride-2 stages "
                f"(need at least {int(2 ** len(self.stages))} per axis)."
            )
        return out

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """
        Args:
            x: input of shape ``(B, in_channels, *spatial)``.
            return_features: also return the feature map after each stride-2 stage.

        Returns:
            the logits (``(B, 1)`` for the fc/gap heads, ``(B, 1, *reduced_spatial)`` for the patch head), or
            ``(logits, features)`` when ``return_features`` is true.
        """
        spatial = list(x.shape[2:])
        if self._fixed_size and spatial != self._in_sizes:
            raise ValueError(
                f"VGGStyleDiscriminator(head='fc') was built for in_shape={sizes_text(self._in_sizes)} but got an "
                f"input of spatial shape {sizes_text(spatial)}; crop or resize the input, or use head='patch' or 'gap' "
                "for any size."
            )
        self._reduced_sizes(spatial)
        features: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        logits = self.head(x)
        if return_features:
            return logits, features
        return logits
