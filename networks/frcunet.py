"""FRCU-Net: a U-Net whose bottleneck re-weights a difference-of-Gaussians (DoG) frequency stack.

Reference: R. Azad, A. Bozorgpour, M. Asadi-Aghbolaghi, D. Merhof, S. Escalera, "Deep Frequency Re-calibration U-Net
for Medical Image Segmentation", ICCV Workshops 2021. The authors' Keras code is at https://github.com/rezazad68/FRCU-Net.
What follows the authors and what is this project's: the frequency re-calibration (DoG stack, sigma = 1.6 * 2^(i/3),
per-level squeeze-excite, 1x1 fusion) is the authors' bottleneck; the plain U-Net encoder/decoder around it is this
project's design (the authors' code uses a DeepLabv3+ Xception encoder).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Dropout, Pool
from monai.networks.layers.utils import get_act_layer

from .blocks.filters import FixedDepthwiseFilter, gaussian_kernel

__all__ = ["DoubleConv", "Down", "UpCat", "LevelSqueezeExcitation", "FrequencyRecalibration", "FRCUNet"]


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by normalisation and activation."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        act: str | tuple,
        norm: str | tuple,
        bias: bool,
    ) -> None:
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_chns: number of input channels.
            out_chns: number of output channels.
            act: activation type and arguments.
            norm: feature normalization type and arguments.
            bias: whether the convolutions have a bias term.
        """
        super().__init__()
        self.add_module(
            "conv_0", Convolution(spatial_dims, in_chns, out_chns, act=act, norm=norm, bias=bias, padding=1)
        )
        self.add_module(
            "conv_1", Convolution(spatial_dims, out_chns, out_chns, act=act, norm=norm, bias=bias, padding=1)
        )


class Down(nn.Sequential):
    """2x max-pooling followed by a :class:`DoubleConv`."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        act: str | tuple,
        norm: str | tuple,
        bias: bool,
    ) -> None:
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_chns: number of input channels.
            out_chns: number of output channels.
            act: activation type and arguments.
            norm: feature normalization type and arguments.
            bias: whether the convolutions have a bias term.
        """
        super().__init__()
        self.add_module("max_pooling", Pool[Pool.MAX, spatial_dims](kernel_size=2))
        self.add_module("convs", DoubleConv(spatial_dims, in_chns, out_chns, act, norm, bias))


class UpCat(nn.Module):
    """Up-Conv 2x2 (stride 2) + normalisation, concatenation with the encoder feature map, :class:`DoubleConv`."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        cat_chns: int,
        out_chns: int,
        act: str | tuple,
        norm: str | tuple,
        bias: bool,
    ) -> None:
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_chns: number of channels of the decoder tensor to up-sample.
            cat_chns: number of channels of the encoder (skip) tensor.
            out_chns: number of output channels; the up-convolution also maps to this width.
            act: activation type and arguments (used in the double convolution).
            norm: feature normalization type and arguments.
            bias: whether the convolutions have a bias term.
        """
        super().__init__()
        self.upsample = Convolution(
            spatial_dims,
            in_chns,
            out_chns,
            strides=2,
            kernel_size=2,
            act=None,
            norm=norm,
            bias=bias,
            is_transposed=True,
            padding=0,
            output_padding=0,
        )
        self.convs = DoubleConv(spatial_dims, cat_chns + out_chns, out_chns, act, norm, bias)

    def forward(self, x: torch.Tensor, x_e: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: decoder features ``(B, in_chns, *S)``.
            x_e: encoder features ``(B, cat_chns, *2S)``.
        """
        return self.convs(torch.cat([x_e, self.upsample(x)], dim=1))


class LevelSqueezeExcitation(nn.Module):
    """Squeeze-and-excitation applied to each frequency level with one MLP shared by all levels.

    Per level: global average pooling, then ``C -> C -> C // reduction -> C`` fully connected layers without biases
    (activation, activation, sigmoid), and the level is multiplied by the resulting channel weights.
    """

    def __init__(self, channels: int, reduction: int = 8, act: str | tuple = "relu") -> None:
        """
        Args:
            channels: number of channels C of every level.
            reduction: the second hidden layer has ``max(1, C // reduction)`` units.
            act: activation type and arguments of the two hidden layers (ReLU in the paper).
        """
        super().__init__()
        if reduction < 1:
            raise ValueError(f"se reduction must be >= 1, got {reduction}.")
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels, bias=False),
            get_act_layer(act),
            nn.Linear(channels, hidden, bias=False),
            get_act_layer(act),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """
        Args:
            levels: tensors of the same shape ``(B, C, *spatial)``.

        Returns:
            the levels, each multiplied by its own channel weights ``(B, C)``.
        """
        spatial = tuple(range(2, levels[0].ndim))
        pooled = torch.stack([lv.mean(dim=spatial) for lv in levels], dim=1)  # (B, L, C)
        weights = self.mlp(pooled)
        view = weights.shape[:1] + weights.shape[2:] + (1,) * len(spatial)
        return [lv * weights[:, i].reshape(view) for i, lv in enumerate(levels)]


class FrequencyRecalibration(nn.Module):
    """Frequency re-calibration (FR) module: a same-resolution DoG stack, re-weighted per level and fused.

    With ``G_i = gaussian_i(X)`` (fixed depthwise kernels of size ``kernel_sizes[i-1]`` and
    ``sigma_i = sigma0 * sigma_step ** i``, i = 1..n, all applied to ``X``), the levels are
    ``L0 = X, L1 = X - G1, L2 = G1 - G2, ..., Ln = G(n-1) - Gn``; the low-pass residual ``Gn`` is not a level.
    Each level is re-weighted by :class:`LevelSqueezeExcitation` (one shared MLP), and the ``n + 1`` levels are fused
    by concatenation, a 1x1 convolution without bias (``(n + 1) C -> C``) and an activation. This equals the
    reference code's Conv3D with kernel ``(1, 1, n + 1)`` over the stacked levels.

    The Gaussian kernels are buffers (not parameters) and the module works for any spatial size.
    Input and output: ``(B, C, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        kernel_sizes: Sequence[int] = (3, 5, 7, 9),
        sigma0: float = 1.6,
        sigma_step: float = 2 ** (1 / 3),
        se_reduction: int = 8,
        padding_mode: str = "zeros",
        act: str | tuple = "relu",
    ) -> None:
        """
        Args:
            spatial_dims: number of spatial dimensions, 2 or 3.
            channels: number of channels C of the input.
            kernel_sizes: odd kernel size of each Gaussian, at least one; ``len(kernel_sizes) + 1`` levels.
                ``(3, 5)`` suits a small 3D bottleneck.
            sigma0: base sigma; the i-th Gaussian (1-based) has ``sigma0 * sigma_step ** i``.
            sigma_step: ratio between consecutive sigmas (``2 ** (1 / 3)``, giving 2.016, 2.540, 3.200, 4.032).
            se_reduction: reduction of the second hidden layer of the shared squeeze-excitation MLP.
            padding_mode: ``"zeros"`` (as the reference's "same" padding), ``"reflect"`` or ``"replicate"``.
            act: activation type and arguments of the SE hidden layers and of the fusion.
        """
        super().__init__()
        kernel_sizes = tuple(int(k) for k in kernel_sizes)
        if len(kernel_sizes) == 0:
            raise ValueError("kernel_sizes must hold at least one kernel size.")
        self.sigmas = tuple(sigma0 * sigma_step**i for i in range(1, len(kernel_sizes) + 1))
        self.blurs = nn.ModuleList(
            FixedDepthwiseFilter(spatial_dims, channels, gaussian_kernel(k, s, spatial_dims), padding_mode)
            for k, s in zip(kernel_sizes, self.sigmas)
        )
        self.se = LevelSqueezeExcitation(channels, se_reduction, act)
        self.fuse = Conv[Conv.CONV, spatial_dims](channels * (len(kernel_sizes) + 1), channels, 1, bias=False)
        self.fuse_act = get_act_layer(act)

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The DoG levels ``[X, X - G1, G1 - G2, ...]`` of ``x``, each of the shape of ``x``."""
        blurred = [x] + [blur(x) for blur in self.blurs]
        return [x] + [blurred[i] - blurred[i + 1] for i in range(len(self.blurs))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.se(self.pyramid(x))
        return self.fuse_act(self.fuse(torch.cat(levels, dim=1)))


class FRCUNet(nn.Module):
    """Deep Frequency Re-calibration U-Net (FRCU-Net), following the paper's figure with a plain U-Net encoder.

    Azad et al., "Deep Frequency Re-calibration U-Net for Medical Image Segmentation", ICCVW 2021
    (https://github.com/rezazad68/FRCU-Net).

    Layout (defaults in brackets):

    - encoder: :class:`DoubleConv` at ``features[0]`` [64], then :class:`Down` (max-pool 2, double conv) for each of
      ``features[1:]`` [128, 256, 512, 1024]; each conv is Conv3x3 + norm + act.
    - bottleneck: Conv1x1 ``features[-1] -> freq_channels`` [1024 -> 256] + norm + act,
      :class:`FrequencyRecalibration`, 2x (Conv3x3 ``freq_channels -> freq_channels`` + norm + act), dropout.
    - decoder: for each of ``reversed(features[:-1])`` [512, 256, 128, 64], :class:`UpCat` (Up-Conv 2x2 + norm to that
      width, concatenation with the skip, double conv).
    - head: Conv1x1 to ``out_channels`` (logits; apply sigmoid or softmax in the loss).

    The post-FR convolutions stay at ``freq_channels`` and the first up-convolution maps ``freq_channels`` to
    ``features[-2]`` (nothing maps back to ``features[-1]``); this is the reading that reproduces the design's
    parameter counts (about 31.32 M in 2D, 91.37 M in 3D).

    The reference code's Xception-65 DeepLabv3+ encoder (``encoder="xception"``) is not provided: it is 2D only, its
    value in the paper comes from PASCAL-VOC weights that cannot be downloaded here, and its bottleneck reshape is tied
    to 256 x 256 inputs. Passing it raises ``NotImplementedError``.

    Input ``(B, in_channels, *spatial)`` with every spatial size divisible by ``2 ** (len(features) - 1)``;
    output ``(B, out_channels, *spatial)``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        features: encoder widths, one per resolution level; the last is the bottleneck width.
        freq_channels: width of the frequency re-calibration module.
        gauss_kernel_sizes: odd sizes of the fixed Gaussian kernels; ``len + 1`` frequency levels. Use e.g. ``(3, 5)``
            for a small 3D bottleneck.
        sigma0: base sigma of the Gaussians; the i-th (1-based) has ``sigma0 * sigma_step ** i``.
        sigma_step: ratio between consecutive sigmas.
        se_reduction: reduction of the second hidden layer of the shared squeeze-excitation MLP.
        padding_mode: padding of the Gaussian filters, ``"zeros"`` (reference) or ``"reflect"``/``"replicate"``.
        norm: feature normalization type and arguments.
        act: activation type and arguments.
        dropout: dropout rate after the post-FR convolutions (0.1 in the reference code).
        bias: whether the convolutions followed by a normalisation have a bias term (the head always has one).
        encoder: ``"unet"``; ``"xception"`` is not provided (see above).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        freq_channels: int = 256,
        gauss_kernel_sizes: Sequence[int] = (3, 5, 7, 9),
        sigma0: float = 1.6,
        sigma_step: float = 2 ** (1 / 3),
        se_reduction: int = 8,
        padding_mode: str = "zeros",
        norm: str | tuple = ("batch", {"affine": True}),
        act: str | tuple = ("relu", {"inplace": True}),
        dropout: float = 0.1,
        bias: bool = False,
        encoder: str = "unet",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if encoder == "xception":
            raise NotImplementedError(
                "FRCUNet(encoder='xception') is not provided: the reference Xception-65 DeepLabv3+ encoder is 2D only "
                "and needs PASCAL-VOC weights that cannot be downloaded; use encoder='unet'."
            )
        if encoder != "unet":
            raise ValueError(f"encoder must be 'unet', got {encoder!r}.")
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError(f"features needs at least 2 widths (one down-sampling), got {features}.")
        self.spatial_dims = spatial_dims
        self.features = features
        self.divisor = 2 ** (len(features) - 1)

        self.conv_0 = DoubleConv(spatial_dims, in_channels, features[0], act, norm, bias)
        self.downs = nn.ModuleList(
            Down(spatial_dims, c_in, c_out, act, norm, bias) for c_in, c_out in zip(features[:-1], features[1:])
        )
        self.reduce = Convolution(
            spatial_dims, features[-1], freq_channels, kernel_size=1, act=act, norm=norm, bias=bias, padding=0
        )
        self.fr = FrequencyRecalibration(
            spatial_dims,
            freq_channels,
            kernel_sizes=gauss_kernel_sizes,
            sigma0=sigma0,
            sigma_step=sigma_step,
            se_reduction=se_reduction,
            padding_mode=padding_mode,
            act=act,
        )
        self.post = nn.Sequential(
            DoubleConv(spatial_dims, freq_channels, freq_channels, act, norm, bias),
            Dropout[Dropout.DROPOUT, spatial_dims](dropout),
        )
        decoder_widths = features[-2::-1]
        self.ups = nn.ModuleList()
        c_in = freq_channels
        for width in decoder_widths:
            self.ups.append(UpCat(spatial_dims, c_in, width, width, act, norm, bias))
            c_in = width
        self.final_conv = Conv[Conv.CONV, spatial_dims](features[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: input ``(B, in_channels, *spatial)``; each spatial size divisible by ``2 ** (len(features) - 1)``.

        Returns:
            logits ``(B, out_channels, *spatial)``.
        """
        if x.ndim != self.spatial_dims + 2 or any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(
                f"FRCUNet expects input (B, C, {', '.join(['S'] * self.spatial_dims)}) with every spatial size "
                f"divisible by {self.divisor}, got shape {tuple(x.shape)}."
            )
        skips = [self.conv_0(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = self.post(self.fr(self.reduce(skips.pop())))
        for up in self.ups:
            y = up(y, skips.pop())
        return self.final_conv(y)
