"""Xception-65 of DeepLabv3+ (2D) as in the Keras port FRCU-Net's authors build on, at output stride 16.

Layer by layer this follows ``model.py`` of github.com/bonlime/keras-deeplab-v3-plus (``SepConv_BN``,
``conv2d_same``, ``xception_block`` and the feature extractor of ``Deeplabv3``), which the authors copied into
``new_model.py`` of github.com/rezazad68/FRCU-Net and call with ``OS=16``; the module and key names mirror those
Keras layer names (``entry_flow_conv1_1``, ``entry_flow_block1_separable_conv1_depthwise_BN`` ->
``entry_flow_block1.separable_conv1.depthwise_bn``, ``middle_flow_unit_1`` -> ``middle_flow.0``, ...), so a Keras
weight file maps onto them by name (``python -m networks.convert_xception``). At output stride 16:

- ``entry_flow_conv1_1``: Conv3x3 ``w0`` [32] stride 2 ("same" padding as TensorFlow: (0, 1) on an even size), BN,
  ReLU; ``entry_flow_conv1_2``: Conv3x3 ``w1`` [64], BN, ReLU -> **x0** (1/2, ``w1`` channels).
- ``entry_flow_block1..3``: :class:`XceptionBlock` ``[w2] * 3`` [128], ``[w3] * 3`` [256], ``[w4] * 3`` [728], each
  with stride 2 in its last separable convolution and a 1x1 strided convolution + BN shortcut -> **x1** (1/4, ``w2``),
  **x2** (1/8, ``w3``), then 1/16.
- ``middle_flow``: ``middle_blocks`` [16] blocks ``[w4] * 3`` with an identity shortcut.
- ``exit_flow_block1``: ``[w4, w5, w5]`` [728, 1024, 1024] with a conv shortcut, dilation 1;
  ``exit_flow_block2``: ``[w6, w6, w7]`` [1536, 1536, 2048], no shortcut, dilation 2, ReLU after each BN inside the
  separable convolutions (``depth_activation``) -> the 1/16 output with ``w7`` channels.

A separable convolution (:class:`SeparableConvBN`, Keras ``SepConv_BN``) is [ReLU] -> depthwise 3x3 (dilated) -> BN ->
[ReLU] -> pointwise 1x1 -> BN -> [ReLU]: the leading ReLU without ``depth_activation``, the other two with it. BN uses
``eps=1e-3`` throughout (Keras's default and ``SepConv_BN``'s); the momentum is Keras's 0.99, PyTorch ``0.01``, by
default. Convolutions have no bias; they start from Keras's default ``glorot_uniform`` when ``keras_init``.

This is the same network as timm's ``xception65`` (``timm/models/xception_aligned.py``, non-pre-activation) with
``output_stride=16``, except the first convolution's padding (timm pads (1, 1)); its parameter count without the
classifier is 37,867,312 for RGB input. timm's ``xception65p`` is another architecture (pre-activation: BN-ReLU before
each separable convolution, no BN between depthwise and pointwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from .keras_compat import KERAS_BN_EPS, KERAS_BN_MOMENTUM, Conv2dSame, keras_glorot_uniform_

__all__ = ["SeparableConvBN", "XceptionBlock", "Xception65", "XCEPTION65_WIDTHS", "load_xception_state_dict"]

#: (entry conv1_1, entry conv1_2, entry block1, entry block2, entry block3 / middle, exit block1, exit block2 first
#: two, exit block2 last): the DeepLabv3+ Xception-65 widths
XCEPTION65_WIDTHS = (32, 64, 128, 256, 728, 1024, 1536, 2048)


class SeparableConvBN(nn.Module):
    """Keras DeepLab's ``SepConv_BN``: [ReLU] -> depthwise 3x3 -> BN -> [ReLU] -> pointwise 1x1 -> BN -> [ReLU].

    Without ``depth_activation`` only the leading ReLU is applied; with it, the ReLUs after the two BNs. Padding keeps
    the size at stride 1 (``dilation`` on each side, as "same") and pads ``dilation`` on each side at stride 2, as the
    Keras code's explicit ``ZeroPadding2D``.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels (pointwise filters).
        stride: stride of the depthwise convolution.
        dilation: dilation ("atrous rate") of the depthwise convolution.
        depth_activation: ReLU after each BN instead of one ReLU first.
        bn_eps: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum (PyTorch's convention: the weight of the batch statistics).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        depth_activation: bool = False,
        bn_eps: float = KERAS_BN_EPS,
        bn_momentum: float = KERAS_BN_MOMENTUM,
    ) -> None:
        super().__init__()
        self.pre_act = nn.Identity() if depth_activation else nn.ReLU()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, stride=stride, padding=dilation, dilation=dilation, groups=in_channels,
            bias=False,
        )
        self.depthwise_bn = nn.BatchNorm2d(in_channels, eps=bn_eps, momentum=bn_momentum)
        self.depthwise_act = nn.ReLU(inplace=True) if depth_activation else nn.Identity()
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pointwise_bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.pointwise_act = nn.ReLU(inplace=True) if depth_activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise_act(self.depthwise_bn(self.depthwise(self.pre_act(x))))
        return self.pointwise_act(self.pointwise_bn(self.pointwise(x)))


class XceptionBlock(nn.Module):
    """Keras DeepLab's ``xception_block``: three :class:`SeparableConvBN` (stride in the last) and a shortcut.

    ``skip_connection_type``: ``"conv"`` adds a 1x1 convolution of ``stride`` (no bias) + BN of the input, ``"sum"``
    adds the input itself, ``"none"`` adds nothing.

    Args:
        in_channels: number of input channels.
        depth_list: the three separable convolutions' output widths.
        skip_connection_type: ``"conv"``, ``"sum"`` or ``"none"``.
        stride: stride of the last separable convolution (and of the conv shortcut).
        dilation: dilation of the three depthwise convolutions.
        depth_activation: see :class:`SeparableConvBN`.
        bn_eps: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum (PyTorch's convention).
    """

    def __init__(
        self,
        in_channels: int,
        depth_list: Sequence[int],
        skip_connection_type: str,
        stride: int = 1,
        dilation: int = 1,
        depth_activation: bool = False,
        bn_eps: float = KERAS_BN_EPS,
        bn_momentum: float = KERAS_BN_MOMENTUM,
    ) -> None:
        super().__init__()
        depth_list = tuple(int(d) for d in depth_list)
        if len(depth_list) != 3:
            raise ValueError(f"depth_list must hold 3 widths, got {depth_list}.")
        if skip_connection_type not in ("conv", "sum", "none"):
            raise ValueError(f"skip_connection_type must be 'conv', 'sum' or 'none', got {skip_connection_type!r}.")
        if skip_connection_type == "sum" and (stride != 1 or depth_list[-1] != in_channels):
            raise ValueError(
                f"a 'sum' shortcut needs stride 1 and depth_list[-1] == in_channels ({in_channels}), "
                f"got stride {stride} and {depth_list}."
            )
        widths = (in_channels,) + depth_list
        self.separable_conv1 = SeparableConvBN(
            widths[0], widths[1], 1, dilation, depth_activation, bn_eps, bn_momentum
        )
        self.separable_conv2 = SeparableConvBN(
            widths[1], widths[2], 1, dilation, depth_activation, bn_eps, bn_momentum
        )
        self.separable_conv3 = SeparableConvBN(
            widths[2], widths[3], stride, dilation, depth_activation, bn_eps, bn_momentum
        )
        self.skip_connection_type = skip_connection_type
        self.add_shortcut = skip_connection_type != "none"
        if skip_connection_type == "conv":
            self.shortcut: nn.Module = nn.Conv2d(in_channels, depth_list[-1], 1, stride=stride, bias=False)
            self.shortcut_bn: nn.Module = nn.BatchNorm2d(depth_list[-1], eps=bn_eps, momentum=bn_momentum)
        else:
            self.shortcut = nn.Identity()
            self.shortcut_bn = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.separable_conv3(self.separable_conv2(self.separable_conv1(x)))
        if self.add_shortcut:
            residual = residual + self.shortcut_bn(self.shortcut(x))
        return residual


class Xception65(nn.Module):
    """The DeepLabv3+ Xception-65 feature extractor at output stride 16 (2D; see the module docstring).

    ``forward`` returns ``(x0, x1, x2, out)``: x0 at 1/2 with ``widths[1]`` channels, x1 at 1/4 with ``widths[2]``,
    x2 at 1/8 with ``widths[3]`` and the 1/16 output with ``widths[7]`` (64, 128, 256, 2048 by default): the skips
    FRCU-Net's decoder concatenates (the entry conv, ``entry_flow_block1`` and ``entry_flow_block2`` outputs).
    Spatial sizes: any; x0 has ``ceil(n / 2)``, and each of the three stride-2 blocks halves rounding up.

    Args:
        in_channels: number of input channels.
        widths: the eight widths of :data:`XCEPTION65_WIDTHS` (32, 64, 128, 256, 728, 1024, 1536, 2048).
        middle_blocks: number of middle-flow blocks (16).
        bn_eps: BatchNorm epsilon (1e-3 as Keras DeepLab; PyTorch's default is 1e-5).
        bn_momentum: BatchNorm momentum in PyTorch's convention (0.01 = Keras's 0.99; PyTorch's default is 0.1).
        keras_init: start every convolution from Keras's default ``glorot_uniform`` (else PyTorch's default).
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = XCEPTION65_WIDTHS,
        middle_blocks: int = 16,
        bn_eps: float = KERAS_BN_EPS,
        bn_momentum: float = KERAS_BN_MOMENTUM,
        keras_init: bool = True,
    ) -> None:
        super().__init__()
        w = tuple(int(c) for c in widths)
        if len(w) != 8 or min(w) < 1:
            raise ValueError(f"widths must hold 8 positive widths (as {XCEPTION65_WIDTHS}), got {tuple(widths)}.")
        if middle_blocks < 0:
            raise ValueError(f"middle_blocks must be >= 0, got {middle_blocks}.")
        self.in_channels = int(in_channels)
        self.widths = w
        self.middle_blocks = int(middle_blocks)
        block = partial(XceptionBlock, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.entry_flow_conv1_1 = Conv2dSame(in_channels, w[0], 3, stride=2, bias=False)
        self.entry_flow_conv1_1_bn = nn.BatchNorm2d(w[0], eps=bn_eps, momentum=bn_momentum)
        self.entry_flow_conv1_1_act = nn.ReLU(inplace=True)
        self.entry_flow_conv1_2 = Conv2dSame(w[0], w[1], 3, bias=False)
        self.entry_flow_conv1_2_bn = nn.BatchNorm2d(w[1], eps=bn_eps, momentum=bn_momentum)
        self.entry_flow_conv1_2_act = nn.ReLU(inplace=True)
        self.entry_flow_block1 = block(w[1], [w[2]] * 3, "conv", stride=2)
        self.entry_flow_block2 = block(w[2], [w[3]] * 3, "conv", stride=2)
        self.entry_flow_block3 = block(w[3], [w[4]] * 3, "conv", stride=2)
        self.middle_flow = nn.Sequential(*[block(w[4], [w[4]] * 3, "sum") for _ in range(middle_blocks)])
        self.exit_flow_block1 = block(w[4], [w[4], w[5], w[5]], "conv", dilation=1)
        self.exit_flow_block2 = block(w[5], [w[6], w[6], w[7]], "none", dilation=2, depth_activation=True)
        if keras_init:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    keras_glorot_uniform_(m.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            x: ``(B, in_channels, H, W)``.

        Returns:
            ``(x0, x1, x2, out)`` at 1/2, 1/4, 1/8 and 1/16 of the input size.
        """
        x = self.entry_flow_conv1_1_act(self.entry_flow_conv1_1_bn(self.entry_flow_conv1_1(x)))
        x0 = self.entry_flow_conv1_2_act(self.entry_flow_conv1_2_bn(self.entry_flow_conv1_2(x)))
        x1 = self.entry_flow_block1(x0)
        x2 = self.entry_flow_block2(x1)
        x = self.middle_flow(self.entry_flow_block3(x2))
        x = self.exit_flow_block2(self.exit_flow_block1(x))
        return x0, x1, x2, x


def load_xception_state_dict(encoder: nn.Module, path: str | Path, setting: str = "pretrained_encoder") -> None:
    """Load the state dict in ``path`` (``torch.save`` of a dict of tensors in this project's :class:`Xception65` key
    names, e.g. written by ``python -m networks.convert_xception``) into ``encoder``, strictly.

    Nothing is downloaded. Every problem is one ``ValueError`` line naming ``setting``, the file and the first bad key
    (in the encoder's key order: missing or of another shape; then the first key the encoder does not have).
    """
    path = Path(path)
    where = f"{setting} {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where}: no such file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a cut-off file, a pickle of code, not a torch file: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{where}: not a PyTorch state dict ({type(e).__name__}: {first}).") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where}: expected a dict of tensors (a state dict), got {type(state).__name__}.")
    hint = (
        "this project's Xception-65 key names are needed: convert timm or Keras weights with "
        "python -m networks.convert_xception"
    )
    expected = encoder.state_dict()
    problem = state_dict_mismatch(expected, state)
    if problem is not None:
        kind, key = problem
        if kind == "shape":
            raise ValueError(
                f"{where}: key {key!r} has shape {tuple(state[key].shape)}, the encoder expects "
                f"{tuple(expected[key].shape)} (other in_channels, widths or middle_blocks?)."
            )
        raise ValueError(f"{where}: {kind} key {key!r} ({hint}).")
    encoder.load_state_dict(state, strict=True)


def state_dict_mismatch(expected: dict, state: dict) -> tuple[str, str] | None:
    """The first way ``state`` does not fit ``expected`` (a module's ``state_dict()``): ``("missing", key)`` or
    ``("shape", key)`` in ``expected``'s order, then ``("unexpected", key)``; ``None`` when it fits. The loader
    above and :mod:`networks.convert_xception` word their own messages from it."""
    for key, value in expected.items():
        if key not in state:
            return "missing", key
        if tuple(state[key].shape) != tuple(value.shape):
            return "shape", key
    for key in state:
        if key not in expected:
            return "unexpected", key
    return None
