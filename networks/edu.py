"""E-DU: an enhanced dense U-Net whose skip connections pass a multi-scale denoise-enhancement (MDE) module.

Reference:
    H. Wang, X. Chen, R. Yu, Z. Wei, T. Yao, C. Gao, Y. Li, Z. Wang, D. Yi, Y. Wu, "E-DU: Deep neural network for
    multimodal medical image segmentation based on semantic gap compensation", Computers in Biology and Medicine, 2022,
    https://doi.org/10.1016/j.compbiomed.2022.106206

The paper's abstract fixes the idea (encoder features are filtered depthwise by spatial enhancement filters before
they meet the decoder); the filter bank, the dense-block layout and the widths are not published. The choices here
are this project's interpretation: Gaussian denoising at 3, 5 and 7 taps, each
sharpened by a difference of Gaussians (unsharp masking), fused with the raw skip by a 1x1 convolution.

Where MDE sits is not published either, and the authors' claim that MDE lowers peak memory and time per step depends
on it. :class:`EDU` builds both readings (``skip=``): MDE added on each skip of a DenseNet-block U-Net (``"mde"``,
against ``"plain"``), and MDE replacing the convolution nodes of a UNet++-style nested dense skip pathway
(``"dense_mde"``, against ``"dense"``). ``bench/edu_vs_unet.py`` measures all four (``bench/results_edu.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn as nn
from monai.networks.layers.factories import Act, Conv, Norm, Pool, split_args
from monai.networks.layers.simplelayers import LaplaceFilter

from networks.blocks.filters import FixedDepthwiseFilter, gaussian_kernel, opencv_sigma
from networks.blocks.shapes import divisible_spatial, shape_text
from networks.deprecation import deprecated_alias_getattr

__all__ = ["DenseLayer", "DenseTransitionBlock", "MDE", "NestedNode", "EDU", "SKIP_PATHWAYS"]

# renamed for one version: ``DenseBlock`` is MONAI's name of another block (monai.networks.blocks.DenseBlock, a
# container of layers whose outputs are concatenated, without E-DU's transition)
__getattr__ = deprecated_alias_getattr(
    __name__, {"DenseBlock": ("networks.edu.DenseTransitionBlock", lambda: DenseTransitionBlock)}
)

#: ``EDU(skip=...)``: the two readings of "dense U-Net with MDE skips", each with its ablation (see :class:`EDU`)
SKIP_PATHWAYS = ("mde", "plain", "dense", "dense_mde")


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
        norm_name, norm_args = split_args(norm)
        act_name, act_args = split_args(act)
        self.layers = nn.Sequential(
            Norm[norm_name, spatial_dims](in_channels, **norm_args),
            Act[act_name](**act_args),
            Conv[Conv.CONV, spatial_dims](in_channels, growth, kernel_size=3, padding=1, bias=False),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.growth = growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.dropout(self.layers(x))], dim=1)


class DenseTransitionBlock(nn.Module):
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
        norm_name, norm_args = split_args(norm)
        self.dense = nn.Sequential(*dense)
        self.transition = nn.Sequential(
            Norm[norm_name, spatial_dims](channels, **norm_args),
            Conv[Conv.CONV, spatial_dims](channels, out_channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TorchScript compiles only the concatenating path (``is_scripting()`` is a compile-time constant there)
        if not torch.jit.is_scripting():
            if not _reference_path(x):
                return self._buffered(x)
        return self.transition(self.dense(x))

    @torch.jit.unused
    def _buffered(self, x: torch.Tensor) -> torch.Tensor:
        """The dense layers on one feature buffer: the input and each layer's output are written into it once.

        Equals ``transition(dense(x))``, where every :class:`DenseLayer` concatenates its input again (quadratic
        copying); here layer ``i`` reads the first ``c_in + i * growth`` channels of the buffer as a view.
        """
        layers = [cast(DenseLayer, layer) for layer in self.dense]
        widths = [x.shape[1]] + [layer.growth for layer in layers]
        buffer = x.new_empty((x.shape[0], sum(widths)) + tuple(x.shape[2:]))
        with torch.no_grad():
            buffer[:, : widths[0]].copy_(x)
        track = torch.is_grad_enabled()
        pieces = [x]
        filled = widths[0]
        for layer in layers:
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

    - ``enhance="dog"``: ``E_k = G_k(x) + alpha * (G_k(x) - G_{k+2}(x))`` (unsharp masking by a difference of
      Gaussians);
    - ``enhance="laplacian"``: ``E_k = G_k(x) + alpha * L(G_k(x))`` with ``L`` MONAI's ``LaplaceFilter`` kernel, whose
      centre is positive (``L = -nabla^2``): adding it sharpens, as ``g - alpha * nabla^2 g`` does.

    The maps ``[x, E_k...]`` are fused by ``fusion="concat"`` (1x1 conv -> norm -> act to ``out_channels``) or
    ``fusion="sum"`` (their mean; no parameters, unless ``out_channels`` differs from C: then a 1x1 conv -> norm ->
    act projects the mean). Input ``(B, C, *spatial)``, output ``(B, out_channels, *spatial)`` (C by default).

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
        out_channels: output channels (default ``channels``); :class:`EDU`'s ``skip="dense_mde"`` nodes fuse a
            concatenation of several maps down to one level's width.
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
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if enhance not in ("dog", "laplacian"):
            raise ValueError(f"enhance must be 'dog' or 'laplacian', got {enhance!r}.")
        if fusion not in ("concat", "sum"):
            raise ValueError(f"fusion must be 'concat' or 'sum', got {fusion!r}.")
        self.scales = tuple(int(k) for k in scales)
        self.alpha = float(alpha)
        self.enhance = enhance
        self.fusion = fusion
        self.channels = channels
        self.out_channels = channels if out_channels is None else int(out_channels)

        def blur(k: int) -> FixedDepthwiseFilter:
            kernel = gaussian_kernel(k, opencv_sigma(k), spatial_dims)
            return FixedDepthwiseFilter(spatial_dims, channels, kernel, learnable=learnable_filters)

        # one filter per distinct size: with the default scales the DoG partners (5, 7, 9) overlap the scales (3, 5, 7)
        sizes = set(self.scales) | ({k + 2 for k in self.scales} if enhance == "dog" else set())
        self.gaussians = nn.ModuleDict({str(k): blur(k) for k in sorted(sizes)})
        # every attribute that forward names exists in every mode (Identity where unused), as TorchScript requires
        self.laplacian: nn.Module = nn.Identity()
        if enhance == "laplacian":
            laplace = LaplaceFilter(spatial_dims, size=3).filter.detach().float()
            self.laplacian = FixedDepthwiseFilter(spatial_dims, channels, laplace, learnable=learnable_filters)
        self.fuse: nn.Module = nn.Identity()
        fused_in = channels * (len(self.scales) + 1) if fusion == "concat" else channels
        if fusion == "concat" or self.out_channels != channels:
            norm_name, norm_args = split_args(norm)
            act_name, act_args = split_args(act)
            self.fuse = nn.Sequential(
                Conv[Conv.CONV, spatial_dims](fused_in, self.out_channels, kernel_size=1, bias=False),
                Norm[norm_name, spatial_dims](self.out_channels, **norm_args),
                Act[act_name](**act_args),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred: dict[str, torch.Tensor] = {}
        for size, gaussian in self.gaussians.items():
            blurred[size] = gaussian(x)
        maps = [x]
        for k in self.scales:
            g = blurred[str(k)]
            if self.enhance == "dog":
                maps.append(g + self.alpha * (g - blurred[str(k + 2)]))
            else:
                maps.append(g + self.alpha * self.laplacian(g))
        if self.fusion == "sum" and self.out_channels == self.channels:
            return torch.stack(maps, dim=0).mean(dim=0)
        if self.fusion == "sum":  # the mean, projected to out_channels
            return self.fuse(torch.stack(maps, dim=0).mean(dim=0))
        return self.fuse(torch.cat(maps, dim=1))


class NestedNode(nn.Module):
    """One node ``X^{i,j}`` (``j >= 1``) of a UNet++-style nested skip pathway (Zhou et al., DLMIA 2018).

    ``block(cat([up(X^{i+1,j-1}), X^{i,0}, ..., X^{i,j-1}]))``: the deeper node of the previous column up-sampled by
    ``up`` (a 2x2 transposed convolution to the level's width), then every earlier node of the same level, in
    column order (the order of MONAI's ``BasicUNetPlusPlus`` and of this project's ``KerasUNetPlusPlus``). ``block``
    maps the ``(j + 1) * width`` channels to ``width``: a :class:`DenseTransitionBlock` (``EDU(skip="dense")``) or an
    :class:`MDE` (``skip="dense_mde"``).

    Args:
        row: the level ``i`` (0 shallowest).
        col: the column ``j`` (1 the first node after the encoder).
        up: the up-sampling of ``X^{i+1,j-1}``.
        block: the node's block.
    """

    def __init__(self, row: int, col: int, up: nn.Module, block: nn.Module) -> None:
        super().__init__()
        self.row = row
        self.col = col
        self.up = up
        self.block = block

    def forward(self, deeper: torch.Tensor, same_level: list[torch.Tensor]) -> torch.Tensor:
        """``deeper``: ``X^{i+1,j-1}``; ``same_level``: ``[X^{i,0}, ..., X^{i,j-1}]``."""
        return self.block(torch.cat([self.up(deeper)] + same_level, dim=1))


class EDU(nn.Module):
    """E-DU: a dense U-Net with multi-scale denoise-enhancement (:class:`MDE`) in its skip pathway, in two readings.

    Five resolution levels of ``features`` channels (four max-pool down-samplings). Each encoder level ``X^{i,0}`` is
    a :class:`DenseTransitionBlock` (``dense_layers`` layers of growth ``width // 4`` and a 1x1 transition). Each
    decoder level up-samples the deeper decoder output by a 2x2 transposed convolution, concatenates it (first) with
    the level's skip features and applies a dense block. A 1x1 convolution gives the logits. ``skip`` chooses the skip
    pathway:

    - ``"mde"`` (default; reading 1, MDE *added* on each skip): the decoder of level ``i`` reads
      ``cat([up, MDE(X^{i,0})])``: this project's first interpretation, the lung bundle's network;
    - ``"plain"``: reading 1's ablation, ``cat([up, X^{i,0}])`` (identity skips: a plain dense U-Net);
    - ``"dense"`` (reading 2's ablation, "dense U-Net" as UNet++): a nested dense skip pathway between encoder and
      decoder, one :class:`NestedNode` ``X^{i,j}`` for every ``j >= 1`` with ``i + j <= L - 2`` (``L`` levels;
      ``(L - 1)(L - 2) / 2`` nodes, 6 for five levels), each a dense block of
      ``cat([up(X^{i+1,j-1}), X^{i,0}, ..., X^{i,j-1}])``; the decoder of level ``i`` is the last node of its row,
      ``X^{i,L-1-i}``, a dense block of ``cat([up, X^{i,0}, ..., X^{i,L-2-i}])``;
    - ``"dense_mde"`` (reading 2, MDE *replacing* the nested convolutions): the same pathway and decoder, each nested
      node's dense block (3x3 convolutions) replaced by an :class:`MDE` of the node's input (fixed depthwise filters)
      whose 1x1 fusion maps it to the level's width; the up-sampling transposed convolutions (2x2) stay.

    ``mde`` is the switch of earlier versions and keeps its meaning: ``mde=True`` is ``skip="mde"``, ``mde=False``
    ``skip="plain"`` (so ``{"mde": true}`` in a bundle's ``network_def`` builds what it always built). Given with
    ``skip``, it must agree with it (``True`` with ``"mde"``/``"dense_mde"``, ``False`` with ``"plain"``/``"dense"``).

    The up-convolutions have no bias: their output goes straight into the norms of the next dense block (or into
    MDE's filters and 1x1 fusion, then a norm), which subtract a per-channel mean (batch statistics, or per instance:
    the norms ``Norm[name](channels)`` builds here), so a bias cancels and never learns (its gradient is zero).
    A state dict of an earlier version with up-convolution biases loads into ``"mde"``/``"plain"``: each bias is
    folded into the running means of the decoder block's batch norms (the channels it fed), which gives the same
    eval-mode output.

    The authors' claim, that MDE lowers peak memory and time per training step, holds on this machine under reading
    2 only (``bench/edu_vs_unet.py``, ``bench/results_edu.md``: reference widths, one CPU thread, fp32, batch 2 of
    128^2 in 2D and of 32x32x16 in 3D; ratios with MDE / without, 2D and 3D; no GPU was measured):

    - reading 1, ``"mde"`` / ``"plain"``: it does not hold. MDE adds 349 k parameters, saved activations x1.26 and
      x1.27, the step's peak x1.17 and x1.10, time per step x1.07 and x1.13;
    - reading 2, ``"dense_mde"`` / ``"dense"``: it holds. 0.5 M and 1.8 M fewer parameters, saved activations x0.80
      and x0.79, the step's peak x0.83 and x0.84, time per step x0.82 and x0.66 (faster in every round).

    The nested pathway itself is expensive: ``"dense_mde"`` needs 1.9x (2D) and 1.7x (3D) the step peak of
    ``"mde"`` and 2.2-2.3x its time per step.

    Input ``(B, in_channels, *spatial)`` with every spatial size divisible by ``2 ** (len(features) - 1)``;
    output ``(B, out_channels, *spatial)`` logits (apply sigmoid or softmax in the loss or post-processing).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (classes, background included for softmax).
        features: widths of the resolution levels, shallow to deep.
        dense_layers: layers per dense block (encoder, decoder and ``"dense"`` nested nodes).
        mde: the earlier switch: ``True`` for ``skip="mde"``, ``False`` for ``skip="plain"``; ``None`` (default)
            leaves the choice to ``skip``.
        mde_scales: Gaussian kernel sizes of MDE.
        mde_alpha: enhancement strength of MDE.
        mde_enhance: ``"dog"`` or ``"laplacian"``.
        mde_fusion: ``"concat"`` (1x1 conv) or ``"sum"`` (parameter-free on a skip; in a ``"dense_mde"`` node the
            mean is projected to the level's width by a 1x1 conv).
        learnable_filters: make MDE's filters learnable depthwise convolutions.
        norm: MONAI norm factory spec, e.g. ``("batch", {})`` or ``("instance", {"affine": True})``.
        act: MONAI activation factory spec.
        dropout: dropout probability inside the dense layers.
        skip: ``"mde"``, ``"plain"``, ``"dense"`` or ``"dense_mde"`` (see above); ``None`` (default) follows ``mde``
            (``"mde"`` unless ``mde=False``).

    Example::

        net = EDU(spatial_dims=3, in_channels=1, out_channels=2)
        logits = net(torch.zeros(1, 1, 64, 64, 32))  # -> (1, 2, 64, 64, 32)
        nested = EDU(spatial_dims=2, in_channels=1, out_channels=2, skip="dense_mde")
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        dense_layers: int = 4,
        mde: bool | None = None,
        mde_scales: Sequence[int] = (3, 5, 7),
        mde_alpha: float = 1.0,
        mde_enhance: str = "dog",
        mde_fusion: str = "concat",
        learnable_filters: bool = False,
        norm=("batch", {}),
        act=("relu", {"inplace": True}),
        dropout: float = 0.0,
        skip: str | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError(f"features needs at least two levels, got {features}.")
        self.skip = _skip_pathway(skip, mde)
        self.nested_pathway = self.skip in ("dense", "dense_mde")
        self.spatial_dims = spatial_dims
        self.features = features
        self.divisor = 2 ** (len(features) - 1)
        levels = len(features)

        def up(level: int) -> nn.Module:
            """The 2x2 transposed convolution from level ``level + 1`` to ``level``."""
            return Conv[Conv.CONVTRANS, spatial_dims](
                features[level + 1], features[level], kernel_size=2, stride=2, bias=False
            )

        def mde_block(channels: int, out: int | None = None) -> MDE:
            return MDE(spatial_dims, channels, mde_scales, mde_alpha, mde_enhance, mde_fusion, learnable_filters,
                       norm, act, out_channels=out)

        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in features:
            self.encoders.append(DenseTransitionBlock(spatial_dims, channels, width, dense_layers, norm, act, dropout))
            channels = width
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)

        # the nested pathway X^{i,j} (j >= 1, i + j <= L - 2), column by column: a node reads the previous column
        self.nested = nn.ModuleDict()
        if self.nested_pathway:
            for j in range(1, levels - 1):
                for i in range(levels - 1 - j):
                    width, c_in = features[i], (j + 1) * features[i]
                    block = (
                        DenseTransitionBlock(spatial_dims, c_in, width, dense_layers, norm, act, dropout)
                        if self.skip == "dense"
                        else mde_block(c_in, width)
                    )
                    self.nested[f"x{i}_{j}"] = NestedNode(i, j, up(i), block)

        # the decoder, deepest level first: X^{i,L-1-i} of the nested pathway, else dense block of cat([up, skip])
        self.ups = nn.ModuleList()
        self.skips = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(levels - 1)):
            width = features[level]
            self.ups.append(up(level))
            if self.nested_pathway:
                c_in = (levels - level) * width  # up, X^{i,0}, ..., X^{i,L-2-i}
            else:
                self.skips.append(mde_block(width) if self.skip == "mde" else nn.Identity())
                c_in = 2 * width
            self.decoders.append(DenseTransitionBlock(spatial_dims, c_in, width, dense_layers, norm, act, dropout))
        self.head = Conv[Conv.CONV, spatial_dims](features[0], out_channels, kernel_size=1)
        self.register_load_state_dict_pre_hook(_fold_legacy_up_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not divisible_spatial(x, self.spatial_dims, self.divisor):
            raise ValueError(
                f"EDU expects {self.spatial_dims} spatial dimensions each divisible by {self.divisor}, "
                f"got input shape {shape_text(x)}."
            )
        skips: list[torch.Tensor] = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        if self.nested_pathway:
            return self.head(self._nested_decoder(skips))
        x = skips.pop()
        for up, skip, decoder in zip(self.ups, self.skips, self.decoders):
            x = decoder(torch.cat([up(x), skip(skips.pop())], dim=1))
        return self.head(x)

    def _nested_decoder(self, encoded: list[torch.Tensor]) -> torch.Tensor:
        """The nested pathway and its decoder on the encoder outputs ``X^{i,0}``; returns ``X^{0,L-1}``."""
        grid: list[list[torch.Tensor]] = [[e] for e in encoded]  # grid[i][j] = X^{i,j}
        for node in self.nested.values():  # column by column, so X^{i+1,j-1} and X^{i,:j} exist
            # a NestedNode: the torch stubs type ModuleDict values as Module (attributes Tensor | Module), and
            # TorchScript has neither typing.cast nor an isinstance that holds for its specialised module types
            row: int = node.row  # type: ignore[assignment]
            col: int = node.col  # type: ignore[assignment]
            grid[row].append(node(grid[row + 1][col - 1], grid[row][:col]))
        x = grid[-1][0]
        level = len(grid) - 2
        for up, decoder in zip(self.ups, self.decoders):
            x = decoder(torch.cat([up(x)] + grid[level], dim=1))
            level -= 1
        return x


def _skip_pathway(skip: str | None, mde: bool | None) -> str:
    """``EDU``'s skip pathway from ``skip`` and the earlier switch ``mde`` (see :class:`EDU`)."""
    if skip is None:
        return "plain" if mde is False else "mde"
    if skip not in SKIP_PATHWAYS:
        raise ValueError(f"EDU: skip must be one of {SKIP_PATHWAYS}, got {skip!r}.")
    if mde is not None and bool(mde) != (skip in ("mde", "dense_mde")):
        raise ValueError(
            f"EDU: mde={mde} contradicts skip={skip!r} (mde=True goes with 'mde' or 'dense_mde', mde=False with "
            "'plain' or 'dense'); give skip alone."
        )
    return skip


def _fold_legacy_up_bias(module: EDU, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: fold the up-convolution biases of an earlier version into the running means.

    Decoder ``k`` reads ``cat([ups[k](x) + b, skip])``, and each norm of its dense block normalises those first
    ``len(b)`` channels; in eval mode ``(x + b - m) / s == (x - (m - b)) / s``, so the bias goes into every running
    mean of the block (in training the batch mean removes it anyway). Norms without running statistics drop it.
    """
    for k, decoder in enumerate(module.decoders):
        key = f"{prefix}ups.{k}.bias"
        if key not in state_dict:
            continue
        bias = state_dict.pop(key)
        for name, _ in decoder.named_modules():
            mean_key = f"{prefix}decoders.{k}.{name}.running_mean"  # the norms' running means, where they keep them
            if mean_key in state_dict:
                mean = state_dict[mean_key].clone()
                mean[: bias.numel()] -= bias.to(mean.dtype)
                state_dict[mean_key] = mean
