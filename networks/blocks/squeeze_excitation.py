"""Channel squeeze-and-excitation (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018), shared by the networks.

- :func:`excitation_mlp`: the excitation, ``Linear -> act [-> Linear -> act ...] -> Linear -> sigmoid`` from C
  channels through the hidden widths back to C, optionally without biases.
- :class:`SqueezeExcitation`: ``x * excitation(mean over space of x)``, for any number of spatial dimensions; the SE
  block of SE-ESRGAN (after the last up-sampling) and of ResUNet++ (after each residual unit).

FRCU-Net's frequency re-calibration weights each of its DoG levels with one excitation shared by the levels, through
two hidden layers (:class:`networks.frcunet.LevelSqueezeExcitation`); it builds that excitation with
:func:`excitation_mlp`.

MONAI's ``monai.networks.blocks.ChannelSELayer`` computes the same with biases (``SqueezeExcitation(bias=True)``
equals it, parameter for parameter: the state-dict keys are the same). What it lacks, hence this block: bias-free
linear layers (the Uneshance SE-ESRGAN, the Keras ResUNet++ and FRCU-Net have none), more than one hidden layer, and
a hidden width floored at one channel (it refuses ``C // r < 1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from monai.networks.layers.factories import Pool
from monai.networks.layers.utils import get_act_layer

__all__ = ["excitation_mlp", "SqueezeExcitation"]


def excitation_mlp(
    channels: int, hidden_channels: Sequence[int], act: str | tuple = ("relu", {"inplace": True}), bias: bool = False
) -> nn.Sequential:
    """``Linear(C, h_1) -> act -> ... -> Linear(h_n, C) -> Sigmoid`` on the last axis (channel weights in (0, 1)).

    Args:
        channels: number of channels C, in and out.
        hidden_channels: the widths ``h_1 .. h_n`` of the hidden layers, at least one, each at least 1.
        act: activation type and arguments of the hidden layers (MONAI spec).
        bias: whether the linear layers have biases.
    """
    widths = [int(channels)] + [int(h) for h in hidden_channels]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(
            f"an excitation needs at least one hidden layer and positive widths, got {channels} channels and hidden "
            f"widths {tuple(hidden_channels)}."
        )
    layers: list[nn.Module] = []
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(c_in, c_out, bias=bias), get_act_layer(act)]
    layers += [nn.Linear(widths[-1], channels, bias=bias), nn.Sigmoid()]
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """``x * sigmoid(W_2 act(W_1 mean(x)))`` per image and channel, ``(B, C, *spatial)`` in and out.

    The hidden layer has ``max(1, C // r)`` units. With ``bias=True`` it is MONAI's ``ChannelSELayer(spatial_dims,
    in_channels, r)`` (see the module docstring).

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        in_channels: number of channels C.
        r: reduction ratio, at least 1.
        act: activation type and arguments of the hidden layer (MONAI spec).
        bias: whether the two linear layers have biases.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        r: int = 8,
        act: str | tuple = ("relu", {"inplace": True}),
        bias: bool = False,
    ) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"the squeeze-excitation reduction r must be at least 1, got {r}.")
        self.avg_pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.fc = excitation_mlp(in_channels, [max(1, in_channels // r)], act, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        w = self.fc(self.avg_pool(x).view(b, c)).view([b, c] + [1] * (x.ndim - 2))
        return x * w
