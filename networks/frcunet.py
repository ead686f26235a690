"""FRCU-Net: a segmentation network whose bottleneck re-weights a difference-of-Gaussians (DoG) frequency stack.

Reference: R. Azad, A. Bozorgpour, M. Asadi-Aghbolaghi, D. Merhof, S. Escalera, "Deep Frequency Re-calibration U-Net
for Medical Image Segmentation", ICCV Workshops 2021. The authors' Keras 2.2 code is ``new_model.py`` of
https://github.com/rezazad68/FRCU-Net (function ``mymodel``, called with ``input_shape=(256, 256, 3)``).

:class:`FRCUNet` has two encoders. ``encoder="xception"`` is the authors' network as their code builds it, layer by
layer (DeepLabv3+ Xception-65 encoder, 3-conv reduction, frequency re-calibration, post-processing, three-skip
decoder; see the class docstring for the layer map and what differs). ``encoder="unet"`` (the default, 2D and 3D) is
this project's design: a plain U-Net encoder/decoder, drawn after the paper's figure, around the authors' frequency
re-calibration module (:class:`FrequencyRecalibration`, shared by both), built from MONAI's ``TwoConv`` and ``Down``
(``monai.networks.nets.basic_unet``, which MONAI's ``BasicUNetPlusPlus`` imports too) and :class:`UpConvNormCat`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import cast

import torch
import torch.nn as nn

from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Dropout
from monai.networks.layers.utils import get_act_layer
from monai.networks.nets.basic_unet import Down, TwoConv

from .blocks.filters import FixedDepthwiseFilter, gaussian_kernel
from .blocks.keras_compat import KERAS_BN_EPS, KERAS_BN_MOMENTUM, Conv2dSame, keras_glorot_uniform_, keras_he_normal_
from .blocks.shapes import divisible_spatial, shape_text
from .blocks.squeeze_excitation import excitation_mlp
from .blocks.xception import XCEPTION65_WIDTHS, Xception65, load_xception_state_dict
from .deprecation import deprecated_alias_getattr

__all__ = [
    "UpConvNormCat",
    "NearestUpCat",
    "LevelSqueezeExcitation",
    "FrequencyRecalibration",
    "FRCUNet",
]

# renamed for one version: FRCU-Net's double convolution and down-sampling were MONAI's ``TwoConv`` and ``Down``
# written out again (MONAI's ``Down`` is imported here under its own name); ``UpCat`` named another computation than
# MONAI's ``UpCat`` and the U-Net family's
__getattr__ = deprecated_alias_getattr(
    __name__,
    {
        "DoubleConv": ("monai.networks.nets.basic_unet.TwoConv", lambda: TwoConv),
        "UpCat": ("networks.frcunet.UpConvNormCat", lambda: UpConvNormCat),
    },
)


class UpConvNormCat(nn.Module):
    """Up-Conv 2x2 (stride 2) + normalisation, concatenation ``[skip, up]``, then MONAI's ``TwoConv``.

    MONAI's ``UpCat`` (``monai.networks.nets.basic_unet``) up-samples without a normalisation (and by default halves
    the channels), so it does not build the paper's Up-Conv 2x2 + BN.
    """

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
        self.convs = TwoConv(spatial_dims, cat_chns + out_chns, out_chns, act, norm, bias)

    def forward(self, x: torch.Tensor, x_e: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: decoder features ``(B, in_chns, *S)``.
            x_e: encoder features ``(B, cat_chns, *2S)``.
        """
        return self.convs(torch.cat([x_e, self.upsample(x)], dim=1))


class NearestUpCat(nn.Module):
    """A decoder stage of the authors' code (2D): nearest 2x up-sampling, Conv2x2 + ReLU (TensorFlow "same" padding:
    (0, 1)), concatenation ``[skip, up]``, then Conv3x3 + ReLU for each width of ``conv_chns``; every convolution has
    a bias (``new_model.py``: ``UpSampling2D`` -> ``Conv2D(_, 2, activation='relu', padding='same')`` ->
    ``concatenate([x2, up1])`` -> ``Conv2D(_, 3, activation='relu', padding='same')``).
    """

    def __init__(self, in_chns: int, cat_chns: int, up_chns: int, conv_chns: Sequence[int]) -> None:
        """
        Args:
            in_chns: number of channels of the decoder tensor to up-sample.
            cat_chns: number of channels of the encoder (skip) tensor.
            up_chns: output width of the 2x2 convolution after the up-sampling.
            conv_chns: output widths of the 3x3 convolutions after the concatenation (at least one).
        """
        super().__init__()
        conv_chns = tuple(int(c) for c in conv_chns)
        if len(conv_chns) == 0:
            raise ValueError("conv_chns must hold at least one width.")
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.up_conv = Conv2dSame(in_chns, up_chns, 2)
        self.up_act = nn.ReLU(inplace=True)
        layers: list[nn.Module] = []
        c = cat_chns + up_chns
        for width in conv_chns:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
            c = width
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, x_e: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: decoder features ``(B, in_chns, H, W)``.
            x_e: encoder features ``(B, cat_chns, 2H, 2W)``.
        """
        return self.convs(torch.cat([x_e, self.up_act(self.up_conv(self.upsample(x)))], dim=1))


class LevelSqueezeExcitation(nn.Module):
    """Squeeze-and-excitation applied to each frequency level with one excitation shared by all levels.

    Per level: global average pooling, then ``C -> C -> C // reduction -> C`` fully connected layers without biases
    (activation, activation, sigmoid; :func:`~networks.blocks.squeeze_excitation.excitation_mlp`, the excitation of
    :class:`~networks.blocks.SqueezeExcitation` with the authors' extra first layer), and the level is multiplied by
    the resulting channel weights. The levels' pooled vectors go through the shared MLP as one ``(B, L, C)`` batch.
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
        self.mlp = excitation_mlp(channels, (channels, max(1, channels // reduction)), act, bias=False)

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """
        Args:
            levels: tensors of the same shape ``(B, C, *spatial)``.

        Returns:
            the levels, each multiplied by its own channel weights ``(B, C)``.
        """
        spatial = list(range(2, levels[0].ndim))
        pooled = torch.stack([lv.mean(dim=spatial) for lv in levels], dim=1)  # (B, L, C)
        weights = self.mlp(pooled)
        view = [weights.shape[0], weights.shape[2]] + [1] * len(spatial)
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

    The authors' layers (``new_model.py``: ``Dense0``/``Dense1``/``Dense2`` and the ``Conv3D`` after the concatenation)
    use ``kernel_initializer='he_normal'``; with ``keras_init`` (the default) the three MLP layers and the fusion
    start from Keras 2.2's ``he_normal`` (:func:`~networks.blocks.keras_compat.keras_he_normal_`, fan-in of the
    ``(n + 1) C`` inputs for the fusion, as the Conv3D's ``1 x 1 x (n + 1) x C``), else from PyTorch's defaults.
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
        keras_init: bool = True,
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
            keras_init: initialise the MLP and the fusion as the authors' Keras ``he_normal`` (else PyTorch's).
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
        if keras_init:
            for m in self.se.mlp:
                if isinstance(m, nn.Linear):
                    keras_he_normal_(m.weight)
            keras_he_normal_(self.fuse.weight)

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The DoG levels ``[X, X - G1, G1 - G2, ...]`` of ``x``, each of the shape of ``x``."""
        blurred = [x] + [blur(x) for blur in self.blurs]
        return [x] + [blurred[i] - blurred[i + 1] for i in range(len(self.blurs))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.se(self.pyramid(x))
        return self.fuse_act(self.fuse(torch.cat(levels, dim=1)))


class FRCUNet(nn.Module):
    """Deep Frequency Re-calibration U-Net (FRCU-Net), Azad et al., ICCVW 2021 (https://github.com/rezazad68/FRCU-Net).

    Two encoders share the authors' frequency re-calibration bottleneck (:class:`FrequencyRecalibration`):

    **encoder="xception"** (2D only): the authors' network as ``new_model.py`` (``mymodel``) builds it. Module, Keras
    layer(s) in ``new_model.py``, defaults:

    - ``encoder``: :class:`~networks.blocks.xception.Xception65`, the DeepLabv3+ Xception-65 (``entry_flow_*``,
      ``middle_flow_unit_1..16``, ``exit_flow_block1/2``; ``OS=16``: entry block 3 strided, exit blocks at rates 1
      and 2) with the skips x0 (1/2, 64 ch), x1 (1/4, 128), x2 (1/8, 256) and the 1/16 output (2048).
    - ``reduction``: ``aspp0b4b`` Conv3x3 2048 -> 1024 + ReLU, ``aspp0bb`` 1024 -> 512 + ReLU, ``aspp0bbbb``
      512 -> ``freq_channels`` [256], ``aspp0_BN`` (eps 1e-5), ReLU; no biases (``reduction_features``).
    - ``fr``: ``Sigma1..4_layer`` (frozen Gaussians 3/5/7/9, sigma 1.6 * 2^(i/3)), the ``Subtract`` levels L0..L4,
      ``Dense0/1/2`` (256 -> 256 -> 32 -> 256, shared by the levels), ``multiply``, and ``Conv3D(256, (1, 1, 5))`` +
      ReLU over the stacked levels, here the identical 1x1 convolution over their concatenation.
    - ``post``: 2x (Conv3x3 256 + bias + ReLU), ``concat_projection_BN`` (eps 1e-5), ReLU, Dropout 0.1.
    - ``ups``: three :class:`NearestUpCat`: up-sample, Conv2x2 256 (``up1``), concat x2 (``mrg1``), 2x Conv3x3 256;
      up, Conv2x2 256, concat x1, 2x Conv3x3 256; up, Conv2x2 128, concat x0, Conv3x3 128 (``decoder_features``).
    - ``head``: up-sample, Conv3x3 128, 2x Conv3x3 64, Conv3x3 2 + ReLU, Conv1x1 to ``out_channels``.

    Parameters at the defaults (``in_channels=3, out_channels=1``, the authors' model): **68,612,533**, the trainable
    count of the Keras model, derived layer by layer from ``new_model.py`` (Keras was not run here): encoder
    37,867,312 (equal to timm's ``xception65`` without its classifier), reduction 24,773,120, FR 409,600, post
    1,180,672, ``ups`` and ``head`` 4,381,829. Keras's "Total params" adds 41,984 frozen Gaussian weights and 186,224
    BatchNorm moving means and variances (buffers here): 68,840,741.

    What differs from the authors' code, and why: the output is ``out_channels`` logits from the last 1x1 convolution
    (theirs: one sigmoid channel; apply the sigmoid in the loss); the input is any ``(B, in_channels, H, W)`` with H
    and W multiples of 16, where theirs is fixed at 256 x 256 x 3 by ``Reshape((16, 16, 1, 256))`` around the Conv3D;
    the weights start at random, where theirs load the PASCAL-VOC DeepLabv3+ checkpoint by layer name (which also
    fills ``aspp0_BN`` and ``concat_projection_BN``, names that DeepLab shares) and cannot be downloaded here:
    ``pretrained_encoder`` loads the encoder from a local file instead (timm's ``xception65`` or Keras weights
    converted by ``python -m networks.convert_xception``). With ``keras_bn`` (the default) every BatchNorm has
    Keras's momentum (0.99, PyTorch ``momentum=0.01``) and the authors' epsilon (1e-3 in the Xception part, 1e-5 in
    ``aspp0_BN`` and ``concat_projection_BN``); ``keras_bn=False`` keeps PyTorch's (momentum 0.1, eps 1e-5). Keras's
    momentum suits the authors' schedule (about 15,000 steps: 100 epochs of 1,815 images in batches of 12); after
    ``n`` steps the running statistics hold ``1 - 0.99 ** n`` of the data, so a short training evaluates on
    statistics that lag the weights: in ``bench/results_isic.md`` (70 steps, 51 %) the held-out Dice is 0.00 with
    Keras's momentum and 0.94 with PyTorch's. With ``keras_init`` (the default) the
    layers the authors create with ``kernel_initializer='he_normal'`` (the SE MLP, the fusion, the post-processing and
    decoder convolutions) start from Keras's ``he_normal`` and every other convolution from Keras's
    ``glorot_uniform``, biases at zero; ``keras_init=False`` keeps PyTorch's initialisers. ``features``, ``norm``,
    ``act`` and ``bias`` do not apply: the layers are BatchNorm and ReLU as the authors'.

    **encoder="unet"** (the default; 2D and 3D): this project's design. The paper's figure (``Figures/
    proposed_method2.png`` in the authors' repository) shows a generic encoder, three copy skips and a decoder of
    Up-Conv 2x2 + BN and Conv3x3 + ReLU at 512, 256, 128, 64, 64; the authors' code has three skips and the layers
    above. This variant takes the figure's widths, a plain U-Net encoder and a fourth, full-resolution skip that
    neither has. Only ``fr`` is the authors'. Layout (defaults in brackets):

    - encoder: MONAI's ``TwoConv`` at ``features[0]`` [64], then MONAI's ``Down`` (max-pool 2, ``TwoConv``) for each of
      ``features[1:]`` [128, 256, 512, 1024]; each conv is Conv3x3 + norm + act.
    - bottleneck: Conv1x1 ``features[-1] -> freq_channels`` [1024 -> 256] + norm + act,
      :class:`FrequencyRecalibration`, 2x (Conv3x3 ``freq_channels -> freq_channels`` + norm + act), dropout.
    - decoder: for each of ``reversed(features[:-1])`` [512, 256, 128, 64], :class:`UpConvNormCat` (Up-Conv 2x2 +
      norm to that width, concatenation with the skip, ``TwoConv``): four skips, the first at full resolution.
    - head: Conv1x1 to ``out_channels`` (logits; apply sigmoid or softmax in the loss).

    The post-FR convolutions stay at ``freq_channels`` and the first up-convolution maps ``freq_channels`` to
    ``features[-2]``: 31.32 M parameters in 2D, 91.37 M in 3D at the defaults. The 3D version, the ``padding_mode``
    options and the normalisation (``norm``, PyTorch's BatchNorm defaults; pass e.g.
    ``("batch", {"momentum": 0.01, "eps": 1e-3})`` for Keras's) are this project's choices; ``keras_init`` only
    sets the FR layers' initialisation here and ``keras_bn`` does not apply.

    Input ``(B, in_channels, *spatial)`` with every spatial size divisible by ``2 ** (len(features) - 1)`` (unet) or
    16 (xception); output ``(B, out_channels, *spatial)``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3 (2 for ``encoder="xception"``).
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        features: unet encoder widths, one per resolution level; the last is the bottleneck width.
        freq_channels: width of the frequency re-calibration module.
        gauss_kernel_sizes: odd sizes of the fixed Gaussian kernels; ``len + 1`` frequency levels. Use e.g. ``(3, 5)``
            for a small 3D bottleneck.
        sigma0: base sigma of the Gaussians; the i-th (1-based) has ``sigma0 * sigma_step ** i``.
        sigma_step: ratio between consecutive sigmas.
        se_reduction: reduction of the second hidden layer of the shared squeeze-excitation MLP.
        padding_mode: padding of the Gaussian filters, ``"zeros"`` (the authors') or ``"reflect"``/``"replicate"``.
        norm: unet: feature normalization type and arguments.
        act: unet: activation type and arguments.
        dropout: dropout rate after the post-FR convolutions (0.1 in the authors' code).
        bias: unet: whether the convolutions followed by a normalisation have a bias term (the head always has one).
        encoder: ``"unet"`` (this project's design) or ``"xception"`` (the authors' network, 2D).
        xception_features: xception: the eight Xception-65 widths
            :data:`~networks.blocks.xception.XCEPTION65_WIDTHS` (32, 64, 128, 256, 728, 1024, 1536, 2048).
        middle_blocks: xception: number of middle-flow blocks (16).
        reduction_features: xception: widths of the 3x3 convolutions + ReLU between the encoder output and the last
            reduction convolution to ``freq_channels`` ((1024, 512)).
        decoder_features: xception: five widths ``(d0, d1, d2, d3, d4)``: the three decoder stages (2x2 and 3x3
            convolutions at d0, d1, d2), then after the last up-sampling a Conv3x3 at d2, two at d3 and one at d4,
            each + ReLU, before the 1x1 head ((256, 256, 128, 64, 2)).
        keras_bn: xception: Keras's BatchNorm momentum and the authors' epsilon (see above); ``False`` keeps PyTorch's.
        keras_init: Keras's initialisers where the authors' layers are (see above); ``False`` keeps PyTorch's.
            unet: the FR layers only.
        pretrained_encoder: xception: path of a local state dict in :class:`~networks.blocks.xception.Xception65`'s
            key names, loaded into ``encoder`` (never downloaded); ``None`` keeps the random initialisation.
    """

    __constants__ = ["use_xception"]

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
        xception_features: Sequence[int] = XCEPTION65_WIDTHS,
        middle_blocks: int = 16,
        reduction_features: Sequence[int] = (1024, 512),
        decoder_features: Sequence[int] = (256, 256, 128, 64, 2),
        keras_bn: bool = True,
        keras_init: bool = True,
        pretrained_encoder: str | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if encoder not in ("unet", "xception"):
            raise ValueError(f"encoder must be 'unet' or 'xception', got {encoder!r}.")
        if encoder == "xception" and spatial_dims != 2:
            raise ValueError(
                f"FRCUNet encoder='xception' is 2D only (the authors' Xception-65 has no 3D form), got spatial_dims="
                f"{spatial_dims}; use encoder='unet' in 3D."
            )
        if pretrained_encoder is not None and encoder != "xception":
            raise ValueError(
                "FRCUNet pretrained_encoder applies to encoder='xception' only; the unet encoder has none."
            )
        self.spatial_dims = spatial_dims
        self.use_xception = encoder == "xception"
        self.encoder_name = encoder
        self.shape_hint = "(B, C, " + ", ".join(["S"] * spatial_dims) + ")"
        fr = partial(
            FrequencyRecalibration,
            kernel_sizes=gauss_kernel_sizes,
            sigma0=sigma0,
            sigma_step=sigma_step,
            se_reduction=se_reduction,
            padding_mode=padding_mode,
            keras_init=keras_init,
        )
        if self.use_xception:
            self._build_xception(
                in_channels, out_channels, freq_channels, fr, dropout, xception_features, middle_blocks,
                reduction_features, decoder_features, keras_bn, keras_init,
            )
            if pretrained_encoder is not None:
                load_xception_state_dict(self.encoder, pretrained_encoder)
            return

        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError(f"features needs at least 2 widths (one down-sampling), got {features}.")
        self.features = features
        self.divisor = 2 ** (len(features) - 1)

        self.conv_0 = TwoConv(spatial_dims, in_channels, features[0], act, norm, bias)
        self.downs = nn.ModuleList(
            Down(spatial_dims, c_in, c_out, act, norm, bias) for c_in, c_out in zip(features[:-1], features[1:])
        )
        self.reduce = Convolution(
            spatial_dims, features[-1], freq_channels, kernel_size=1, act=act, norm=norm, bias=bias, padding=0
        )
        self.fr = fr(spatial_dims, freq_channels, act=act)
        self.post = nn.Sequential(
            TwoConv(spatial_dims, freq_channels, freq_channels, act, norm, bias),
            Dropout[Dropout.DROPOUT, spatial_dims](dropout),
        )
        decoder_widths = features[-2::-1]
        self.ups = nn.ModuleList()
        c_in = freq_channels
        for width in decoder_widths:
            self.ups.append(UpConvNormCat(spatial_dims, c_in, width, width, act, norm, bias))
            c_in = width
        self.final_conv = Conv[Conv.CONV, spatial_dims](features[0], out_channels, kernel_size=1)

    def _build_xception(
        self,
        in_channels: int,
        out_channels: int,
        freq_channels: int,
        fr: Callable[..., FrequencyRecalibration],
        dropout: float,
        xception_features: Sequence[int],
        middle_blocks: int,
        reduction_features: Sequence[int],
        decoder_features: Sequence[int],
        keras_bn: bool,
        keras_init: bool,
    ) -> None:
        """The authors' layers (see the class docstring); ``fr`` builds the :class:`FrequencyRecalibration`
        (``fr(spatial_dims, channels, act=...)``, the other arguments bound)."""
        dec = tuple(int(c) for c in decoder_features)
        if len(dec) != 5 or min(dec) < 1:
            raise ValueError(f"decoder_features must hold 5 positive widths, got {tuple(decoder_features)}.")
        momentum = KERAS_BN_MOMENTUM if keras_bn else 0.1
        self.divisor = 16
        self.encoder: Xception65 = Xception65(
            in_channels,
            xception_features,
            middle_blocks,
            bn_eps=KERAS_BN_EPS if keras_bn else 1e-5,
            bn_momentum=momentum,
            keras_init=keras_init,
        )
        widths = self.encoder.widths
        layers: list[tuple[str, nn.Module]] = []
        c = widths[7]
        for i, width in enumerate(tuple(int(w) for w in reduction_features)):
            layers += [(f"conv_{i}", nn.Conv2d(c, width, 3, padding=1, bias=False)), (f"act_{i}", nn.ReLU(True))]
            c = width
        n = len(reduction_features)
        layers += [
            (f"conv_{n}", nn.Conv2d(c, freq_channels, 3, padding=1, bias=False)),
            ("bn", nn.BatchNorm2d(freq_channels, eps=1e-5, momentum=momentum)),
            ("act", nn.ReLU(True)),
        ]
        self.reduction = nn.Sequential(OrderedDict(layers))
        self.fr = fr(2, freq_channels, act="relu")
        self.post = nn.Sequential(
            OrderedDict(
                [
                    ("conv_0", nn.Conv2d(freq_channels, freq_channels, 3, padding=1)),
                    ("act_0", nn.ReLU(True)),
                    ("conv_1", nn.Conv2d(freq_channels, freq_channels, 3, padding=1)),
                    ("act_1", nn.ReLU(True)),
                    ("bn", nn.BatchNorm2d(freq_channels, eps=1e-5, momentum=momentum)),
                    ("act", nn.ReLU(True)),
                    ("dropout", nn.Dropout(dropout)),
                ]
            )
        )
        # skips in the order the decoder pops them: x2 (1/8), x1 (1/4), x0 (1/2)
        self.ups = nn.ModuleList(
            [
                NearestUpCat(freq_channels, widths[3], dec[0], (dec[0], dec[0])),
                NearestUpCat(dec[0], widths[2], dec[1], (dec[1], dec[1])),
                NearestUpCat(dec[1], widths[1], dec[2], (dec[2],)),
            ]
        )
        self.head = nn.Sequential(
            OrderedDict(
                [
                    ("upsample", nn.Upsample(scale_factor=2, mode="nearest")),
                    ("conv_0", nn.Conv2d(dec[2], dec[2], 3, padding=1)),
                    ("act_0", nn.ReLU(True)),
                    ("conv_1", nn.Conv2d(dec[2], dec[3], 3, padding=1)),
                    ("act_1", nn.ReLU(True)),
                    ("conv_2", nn.Conv2d(dec[3], dec[3], 3, padding=1)),
                    ("act_2", nn.ReLU(True)),
                    ("conv_3", nn.Conv2d(dec[3], dec[4], 3, padding=1)),
                    ("act_3", nn.ReLU(True)),
                    ("final_conv", nn.Conv2d(dec[4], out_channels, 1)),
                ]
            )
        )
        if keras_init:
            # he_normal where new_model.py says kernel_initializer='he_normal' (FR does its own), else glorot_uniform
            he_normal = [
                m for part in (self.post, self.ups, self.head) for m in part.modules() if isinstance(m, nn.Conv2d)
            ]
            final_conv = cast(nn.Conv2d, self.head.final_conv)
            he_normal.remove(final_conv)
            for m in self.reduction.modules():
                if isinstance(m, nn.Conv2d):
                    keras_glorot_uniform_(m.weight)
            keras_glorot_uniform_(final_conv.weight)
            for m in he_normal:
                keras_he_normal_(m.weight)
            for m in he_normal + [final_conv]:
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: input ``(B, in_channels, *spatial)``; each spatial size divisible by ``2 ** (len(features) - 1)``
                (unet) or 16 (xception).

        Returns:
            logits ``(B, out_channels, *spatial)``.
        """
        if not divisible_spatial(x, self.spatial_dims, self.divisor):
            raise ValueError(
                f"FRCUNet expects input {self.shape_hint} with every spatial size divisible by {self.divisor}, "
                f"got shape {shape_text(x)}."
            )
        if self.use_xception:
            return self._forward_xception(x)
        return self._forward_unet(x)

    def _forward_unet(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.conv_0(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = self.post(self.fr(self.reduce(skips.pop())))
        for up in self.ups:
            y = up(y, skips.pop())
        return self.final_conv(y)

    def _forward_xception(self, x: torch.Tensor) -> torch.Tensor:
        x0, x1, x2, y = self.encoder(x)
        y = self.post(self.fr(self.reduction(y)))
        skips = [x0, x1, x2]
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)
