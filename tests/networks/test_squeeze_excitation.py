"""The shared squeeze-and-excitation block (networks/blocks/squeeze_excitation.py), checked by value.

Expected values are written out in NumPy (``x * sigmoid(W2 relu(W1 mean(x) + b1) + b2)``), worked out by hand from
hand-set weights, or computed by MONAI's own ``ChannelSELayer`` with the same weights (it is the biased case). Every
network that has a squeeze-excite uses this block: SE-ESRGAN, ResUNet++ (residual units and stem), and FRCU-Net's
level SE builds its excitation with ``excitation_mlp``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from networks.blocks import SqueezeExcitation, excitation_mlp

DIMS = pytest.mark.parametrize("spatial_dims", [1, 2, 3])
SHAPES = {1: (7,), 2: (6, 5), 3: (4, 5, 3)}


def _weights(linear: torch.nn.Linear) -> tuple[np.ndarray, np.ndarray | float]:
    return linear.weight.detach().numpy(), 0.0 if linear.bias is None else linear.bias.detach().numpy()


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter N(0, 1): larger than the default init, so that the gates spread over (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


@DIMS
@pytest.mark.parametrize("bias", [False, True])
def test_squeeze_excitation_formula(spatial_dims, bias):
    """SE(x) = x * sigmoid(W2 relu(W1 mean(x) + b1) + b2), per image and channel, written out in NumPy."""
    se = SqueezeExcitation(spatial_dims, in_channels=8, r=4, bias=bias).double()
    _randomise(se)
    x = torch.randn(2, 8, *SHAPES[spatial_dims], dtype=torch.float64) + 0.5
    (w1, b1), (w2, b2) = _weights(se.fc[0]), _weights(se.fc[2])
    assert w1.shape == (2, 8) and w2.shape == (8, 2)  # C // r hidden units
    assert (se.fc[0].bias is None) == (not bias) and (se.fc[2].bias is None) == (not bias)
    hidden = np.maximum(x.numpy().reshape(2, 8, -1).mean(-1) @ w1.T + b1, 0)
    gate = 1 / (1 + np.exp(-(hidden @ w2.T + b2)))
    assert gate.min() < 0.3 and gate.max() > 0.7  # the check has teeth: the gates are not all 1/2
    expected = x.numpy() * gate.reshape(2, 8, *([1] * spatial_dims))
    with torch.no_grad():
        np.testing.assert_allclose(se(x).numpy(), expected, rtol=1e-12)


@DIMS
def test_squeeze_excitation_hand_worked(spatial_dims):
    """W1 = 1 (hidden = relu(sum of the channel means)), W2 = 0: every gate is sigmoid(0) = 1/2, so SE halves its
    input; W2 = 1 on x = 1 everywhere with 4 channels: hidden = 4, gate sigmoid(4)."""
    se = SqueezeExcitation(spatial_dims, in_channels=4, r=4).double()
    with torch.no_grad():
        se.fc[0].weight.fill_(1.0)
        se.fc[2].weight.zero_()
    x = torch.randn(1, 4, *SHAPES[spatial_dims], dtype=torch.float64)
    torch.testing.assert_close(se(x), 0.5 * x)
    with torch.no_grad():
        se.fc[2].weight.fill_(1.0)
    ones = torch.ones(1, 4, *SHAPES[spatial_dims], dtype=torch.float64)
    torch.testing.assert_close(se(ones), torch.full_like(ones, 1 / (1 + np.exp(-4.0))))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_biased_squeeze_excitation_is_monais_channel_se_layer(spatial_dims):
    """With biases the block is MONAI's ChannelSELayer: the same state-dict keys and shapes, and the same output from
    the same weights (the reason this block exists is the bias-free case MONAI lacks)."""
    from monai.networks.blocks import ChannelSELayer

    ours = SqueezeExcitation(spatial_dims, 16, r=4, bias=True).double()
    _randomise(ours, seed=3)
    monai_se = ChannelSELayer(spatial_dims, 16, r=4).double()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in monai_se.state_dict().items()}
    monai_se.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, *SHAPES[spatial_dims], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), monai_se(x), rtol=0, atol=1e-15)


def test_hidden_width_floor_and_refusals():
    """The hidden layer has max(1, C // r) units (ResUNet++ at tiny widths needs the floor); r < 1 is refused."""
    assert SqueezeExcitation(2, 4, r=8).fc[0].out_features == 1
    assert SqueezeExcitation(2, 64, r=8).fc[0].out_features == 8
    assert sum(p.numel() for p in SqueezeExcitation(2, 64, r=8).parameters()) == 1_024  # Uneshance: 64 -> 8 -> 64
    with pytest.raises(ValueError, match="reduction r must be at least 1, got 0"):
        SqueezeExcitation(2, 4, r=0)


def test_excitation_mlp_layers():
    """Linear -> act per hidden width, then Linear back to C and a sigmoid; no biases unless asked; refusals."""
    mlp = excitation_mlp(6, (6, 2), act="relu")
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "Sigmoid"]
    assert [tuple(m.weight.shape) for m in mlp if isinstance(m, torch.nn.Linear)] == [(6, 6), (2, 6), (6, 2)]
    assert all(m.bias is None for m in mlp if isinstance(m, torch.nn.Linear))
    assert all(m.bias is not None for m in excitation_mlp(6, (3,), bias=True) if isinstance(m, torch.nn.Linear))
    with pytest.raises(ValueError, match="at least one hidden layer"):
        excitation_mlp(6, ())
    with pytest.raises(ValueError, match="positive widths"):
        excitation_mlp(6, (0,))


def test_squeeze_excitation_scripts():
    """TorchScript compiles the block (every network that holds it scripts) and gives the eager output."""
    se = SqueezeExcitation(3, 8, r=2).eval()
    x = torch.randn(2, 8, 4, 5, 3)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(se)(x), se(x), rtol=0, atol=0)
