"""E-DU: an enhanced dense U-Net whose skip connections pass a multi-scale denoise-enhancement (MDE) module.

Reference:
    H. Wang, X. Chen, R. Yu, Z. Wei, T. Yao, C. Gao, Y. Li, Z. Wang, D. Yi, Y. Wu, "E-DU: Deep neural network for
    multimodal medical image segmentation based on semantic gap compensation", Computers in Biology and Medicine, 2022,
    https://doi.org/10.1016/j.compbiomed.2022.106206

The paper's abstract fixes the idea (encoder features are filtered depthwise by spatial enhancement filters before
they meet the decoder); the filter bank, the dense-block layout and the widths are not published. The choices here
are this project's interpretation: Gaussian denoising at 3, 5 and 7 taps, each
sharpened by a difference of Gaussians (unsharp masking), fused with the raw skip by a 1x1 convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Act, Conv, Norm, Pool
from monai.networks.layers.simplelayers import LaplaceFilter
from monai.utils import ensure_tuple_rep

from networks.blocks.filters import FixedDepthwiseFilter, gaussian_kernel, opencv_sigma

__all__ = ["DenseLayer", "DenseBlock", "MDE", "EDU"]


class DenseLayer(nn.Module):
    """One DenseNet layer: norm -> act -> conv3x3 to ``growth`` channels, concatenated to its input.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input (all previous maps of the block).
        growth: channels this layer adds.
        norm: MONAI norm factory spec.
        act: MONAI activation factory spec.
        dropout: dropout probability after the convolution.
    """

    def __init__(self, spatial_dims: int, in_channels: int, growth: int, norm, act, dropout: float = 0.0) -> None:
        super().__init__()
        norm_name, norm_args = _split(norm)
        act_name, act_args = _split(act)
        self.layers = nn.Sequential(
            Norm[norm_name, spatial_dims](in_channels, **norm_args),
            Act[act_name](**act_args),
            Conv[Conv.CONV, spatial_dims](in_channels, growth, kernel_size=3, padding=1, bias=False),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.growth = growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.dropout(self.layers(x))], dim=1)


class DenseBlock(nn.Module):
    """``layers`` dense layers of growth ``out_channels // 4`` followed by a transition (norm -> conv1x1).

    The layers share one feature buffer of ``in_channels + layers * growth`` channels: the input and each layer's
    new maps are written into it once, and layer ``i`` reads its first ``in_channels + i * growth`` channels as a
    view, where chaining :class:`DenseLayer` would concatenate the growing input again at every layer. The values
    and gradients are those of ``transition(dense(x))``; batch norm's saved inputs are views of the one buffer
    instead of one concatenation per layer. Channels-last inputs and traced, scripted or compiled code take the
    concatenating path.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: channels after the transition.
        layers: number of dense layers.
        norm: MONAI norm factory spec.
        act: MONAI activation factory spec.
        dropout: dropout probability inside the dense layers.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        layers: int = 4,
        norm=("batch", {}),
        act=("relu", {"inplace": True}),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        growth = max(out_channels // 4, 1)
        dense = []
        channels = in_channels
        for _ in range(layers):
            dense.append(DenseLayer(spatial_dims, channels, growth, norm, act, dropout))
            channels += growth
        norm_name, norm_args = _split(norm)
        self.dense = nn.Sequential(*dense)
        self.transition = nn.Sequential(
            Norm[norm_name, spatial_dims](channels, **norm_args),
            Conv[Conv.CONV, spatial_dims](channels, out_channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _reference_path(x):
            return self.transition(self.dense(x))
        return self._buffered(x)

    def _buffered(self, x: torch.Tensor) -> torch.Tensor:
        """The dense layers on one feature buffer: the input and each layer's output are written into it once.

        Equals ``transition(dense(x))``, where every :class:`DenseLayer` concatenates its input again (quadratic
        copying); here layer ``i`` reads the first ``c_in + i * growth`` channels of the buffer as a view.
        """
        widths = [x.shape[1]] + [layer.growth for layer in self.dense]
        buffer = x.new_empty((x.shape[0], sum(widths)) + tuple(x.shape[2:]))
        with torch.no_grad():
            buffer[:, : widths[0]].copy_(x)
        track = torch.is_grad_enabled()
        pieces = [x]
        filled = widths[0]
        for layer in self.dense:
            features = _DenseFeatures.apply([buffer], *pieces) if track else buffer[:, :filled]
            new = layer.dropout(layer.layers(features))
            with torch.no_grad():
                buffer[:, filled : filled + layer.growth].copy_(new)
            pieces.append(new)
            filled += layer.growth
        return self.transition(_DenseFeatures.apply([buffer], *pieces) if track else buffer)


class _DenseFeatures(torch.autograd.Function):
    """The first channels of a dense block's buffer, with the gradient that ``torch.cat(pieces)`` would have.

    The pieces (the block input and the layer outputs so far) are already written into the buffer; forward returns a
    view, backward splits the gradient into one slice per piece, as ``torch.cat``'s backward does. The view is taken
    from ``buffer.data``, an alias with its own version counter: the later layers write the next channels of the
    buffer, and those writes must not invalidate the views that batch norm saved for backward, whose channels they
    never touch (each forward allocates a new buffer, so saved channels are never overwritten).
    """

    @staticmethod
    def forward(ctx, holder: list, *pieces: torch.Tensor) -> torch.Tensor:
        ctx.widths = [p.shape[1] for p in pieces]
        return holder[0].data[:, : sum(ctx.widths)]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (None, *torch.split(grad, ctx.widths, dim=1))


def _reference_path(x: torch.Tensor) -> bool:
    """Concatenate as :class:`DenseLayer` does: in traced/scripted/compiled code (no custom function, no aliasing)
    and for channels-last inputs, whose channel prefixes are strided (measured 2x slower to train than concatenation).
    """
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return True
    channels_last = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
    return not x.is_contiguous() and x.is_contiguous(memory_format=channels_last)


class MDE(nn.Module):
    """Multi-scale denoise-enhancement module for one skip connection.

    For each scale k of ``scales`` the skip tensor is denoised by a fixed depthwise Gaussian ``G_k`` (sigma by the
    OpenCV size rule) and enhanced:

    - ``enhance="dog"``: ``E_k = G_k(x) + alpha * (G_k(x) - G_{k+2}(x))`` (unsharp masking by a difference of Gaussians);
    - ``enhance="laplacian"``: ``E_k = G_k(x) + alpha * L(G_k(x))`` with ``L`` MONAI's ``LaplaceFilter`` kernel, whose
      centre is positive (``L = -nabla^2``): adding it sharpens, as ``g - alpha * nabla^2 g`` does.

    The maps ``[x, E_k...]`` are fused by ``fusion="concat"`` (1x1 conv -> norm -> act back to C channels) or
    ``fusion="sum"`` (their mean; no parameters). Input and output: ``(B, C, *spatial)``, same shape.

    Args:
        spatial_dims: 2 or 3.
        channels: channels C of the skip tensor.
        scales: odd Gaussian kernel sizes.
        alpha: enhancement strength.
        enhance: ``"dog"`` or ``"laplacian"``.
        fusion: ``"concat"`` or ``"sum"``.
        learnable_filters: make the filters depthwise parameters initialised from the fixed kernels.
        norm: MONAI norm factory spec of the fusion.
        act: MONAI activation factory spec of the fusion.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        scales: Sequence[int] = (3, 5, 7),
        alpha: float = 1.0,
        enhance: str = "dog",
        fusion: str = "concat",
        learnable_filters: bool = False,
        norm=("batch", {}),
        act=("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        if enhance not in ("dog", "laplacian"):
            raise ValueError(f"enhance must be 'dog' or 'laplacian', got {enhance!r}.")
        if fusion not in ("concat", "sum"):
            raise ValueError(f"fusion must be 'concat' or 'sum', got {fusion!r}.")
        self.scales = tuple(int(k) for k in scales)
        self.alpha = alpha
        self.enhance = enhance
        self.fusion = fusion

        def blur(k: int) -> FixedDepthwiseFilter:
            kernel = gaussian_kernel(k, opencv_sigma(k), spatial_dims)
            return FixedDepthwiseFilter(spatial_dims, channels, kernel, learnable=learnable_filters)

        # one filter per distinct size: with the default scales the DoG partners (5, 7, 9) overlap the scales (3, 5, 7)
        sizes = set(self.scales) | ({k + 2 for k in self.scales} if enhance == "dog" else set())
        self.gaussians = nn.ModuleDict({str(k): blur(k) for k in sorted(sizes)})
        if enhance == "laplacian":
            laplace = LaplaceFilter(spatial_dims, size=3).filter.detach().float()
            self.laplacian = FixedDepthwiseFilter(spatial_dims, channels, laplace, learnable=learnable_filters)
        if fusion == "concat":
            norm_name, norm_args = _split(norm)
            act_name, act_args = _split(act)
            self.fuse = nn.Sequential(
                Conv[Conv.CONV, spatial_dims](channels * (len(self.scales) + 1), channels, kernel_size=1, bias=False),
                Norm[norm_name, spatial_dims](channels, **norm_args),
                Act[act_name](**act_args),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = {k: gaussian(x) for k, gaussian in self.gaussians.items()}
        maps = [x]
        for k in self.scales:
            g = blurred[str(k)]
            if self.enhance == "dog":
                maps.append(g + self.alpha * (g - blurred[str(k + 2)]))
            else:
                maps.append(g + self.alpha * self.laplacian(g))
        if self.fusion == "sum":
            return torch.stack(maps, dim=0).mean(dim=0)
        return self.fuse(torch.cat(maps, dim=1))


class EDU(nn.Module):
    """E-DU: dense U-Net whose skip connections pass an :class:`MDE` module.

    Five resolution levels of ``features`` channels (four max-pool down-samplings). Each encoder level is a
    :class:`DenseBlock` (``dense_layers`` layers of growth ``width // 4`` and a 1x1 transition). Each decoder level
    up-samples by a 2x2 transposed convolution, concatenates ``MDE(skip)`` (or the raw skip when ``mde=False``) and
    applies a dense block. A 1x1 convolution gives the logits.

    Input ``(B, in_channels, *spatial)`` with every spatial size divisible by ``2 ** (len(features) - 1)``;
    output ``(B, out_channels, *spatial)`` logits (apply sigmoid or softmax in the loss or post-processing).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (classes, background included for softmax).
        features: widths of the resolution levels, shallow to deep.
        dense_layers: layers per dense block.
        mde: pass the skips through MDE (``False`` gives a plain dense U-Net, for ablation).
        mde_scales: Gaussian kernel sizes of MDE.
        mde_alpha: enhancement strength of MDE.
        mde_enhance: ``"dog"`` or ``"laplacian"``.
        mde_fusion: ``"concat"`` (1x1 conv) or ``"sum"`` (parameter-free).
        learnable_filters: make MDE's filters learnable depthwise convolutions.
        norm: MONAI norm factory spec, e.g. ``("batch", {})`` or ``("instance", {"affine": True})``.
        act: MONAI activation factory spec.
        dropout: dropout probability inside the dense layers.

    Example::

        net = EDU(spatial_dims=3, in_channels=1, out_channels=2)
        logits = net(torch.zeros(1, 1, 64, 64, 32))  # -> (1, 2, 64, 64, 32)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        dense_layers: int = 4,
        mde: bool = True,
        mde_scales: Sequence[int] = (3, 5, 7),
        mde_alpha: float = 1.0,
        mde_enhance: str = "dog",
        mde_fusion: str = "concat",
        learnable_filters: bool = False,
        norm=("batch", {}),
        act=("relu", {"inplace": True}),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError(f"features needs at least two levels, got {features}.")
        self.spatial_dims = spatial_dims
        self.features = features
        self.divisor = 2 ** (len(features) - 1)

        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in features:
            self.encoders.append(DenseBlock(spatial_dims, channels, width, dense_layers, norm, act, dropout))
            channels = width
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)

        self.ups = nn.ModuleList()
        self.skips = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(len(features) - 1)):
            width, deeper = features[level], features[level + 1]
            self.ups.append(Conv[Conv.CONVTRANS, spatial_dims](deeper, width, kernel_size=2, stride=2))
            self.skips.append(
                MDE(spatial_dims, width, mde_scales, mde_alpha, mde_enhance, mde_fusion, learnable_filters, norm, act)
                if mde
                else nn.Identity()
            )
            self.decoders.append(DenseBlock(spatial_dims, 2 * width, width, dense_layers, norm, act, dropout))
        self.head = Conv[Conv.CONV, spatial_dims](features[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        if len(spatial) != self.spatial_dims or any(s % self.divisor for s in spatial):
            raise ValueError(
                f"EDU expects {self.spatial_dims} spatial dimensions each divisible by {self.divisor}, "
                f"got input shape {tuple(x.shape)}."
            )
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, skip, decoder in zip(self.ups, self.skips, self.decoders):
            x = decoder(torch.cat([up(x), skip(skips.pop())], dim=1))
        return self.head(x)


def _split(spec) -> tuple[str, dict]:
    """A MONAI factory spec (``"name"`` or ``("name", {args})``) as ``(name, args)``."""
    if isinstance(spec, str):
        return spec, {}
    name, args = spec
    return name, dict(args)
