"""Tests of FRCU-Net (networks/frcunet.py): shapes, parameter counts, the fixed Gaussian DoG stack, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from networks import FRCUNet
from networks.blocks.filters import gaussian_kernel
from networks.frcunet import FrequencyRecalibration

SMALL = {"features": (8, 16, 32, 64, 128), "freq_channels": 16}

# (constructor arguments, input shape, expected output shape)
CASES = [
    ({"spatial_dims": 2, "in_channels": 3, "out_channels": 2, **SMALL}, (1, 3, 32, 32), (1, 2, 32, 32)),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, **SMALL}, (2, 1, 16, 48), (2, 1, 16, 48)),
    (
        {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "features": (8, 16, 32), "freq_channels": 8,
         "padding_mode": "reflect", "gauss_kernel_sizes": (3,)},
        (1, 1, 12, 20),
        (1, 3, 12, 20),
    ),
    (
        {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, **SMALL, "gauss_kernel_sizes": (3, 5)},
        (1, 1, 16, 16, 16),
        (1, 2, 16, 16, 16),
    ),
    (
        {"spatial_dims": 3, "in_channels": 2, "out_channels": 1, "features": (4, 8, 16), "freq_channels": 8,
         "gauss_kernel_sizes": (3, 5), "norm": ("instance", {"affine": True})},
        (1, 2, 8, 4, 12),
        (1, 1, 8, 4, 12),
    ),
]


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("args, input_shape, expected_shape", CASES)
def test_shape(args, input_shape, expected_shape):
    torch.manual_seed(0)
    net = FRCUNet(**args).eval()
    with torch.no_grad():
        out = net(torch.randn(input_shape))
    assert out.shape == expected_shape
    assert torch.isfinite(out).all()


# the published configuration: "FRCU-Net proposed (U-Net 64...1024, FR at 256)": 31.32 M (2D), 91.37 M (3D)
@pytest.mark.parametrize(
    "spatial_dims, in_channels, out_channels, expected",
    [
        (2, 3, 1, 31_318_657),
        (2, 1, 1, 31_317_505),
        (2, 1, 2, 31_317_570),
        (3, 1, 1, 91_366_017),
        (3, 3, 1, 91_369_473),
    ],
)
def test_default_parameter_count(spatial_dims, in_channels, out_channels, expected):
    with torch.device("meta"):  # construct only: counts need no memory and no init
        net = FRCUNet(spatial_dims, in_channels, out_channels)
    assert _n_params(net) == expected
    assert abs(expected / 1e6 - (31.32 if spatial_dims == 2 else 91.37)) < 0.01
    # the frequency module itself: shared SE MLP 256*256 + 256*32 + 32*256 and the 5*256 -> 256 fusion
    assert _n_params(net.fr) == 81_920 + 327_680


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gaussian_kernels_are_normalised_buffers(spatial_dims):
    fr = FrequencyRecalibration(spatial_dims, channels=4)
    expected_sigmas = (2.016, 2.540, 3.200, 4.032)
    assert fr.sigmas == pytest.approx(expected_sigmas, abs=1e-3)
    param_ids = {id(p) for p in fr.parameters()}
    buffer_ids = {id(b) for b in fr.buffers()}
    for blur, k, sigma in zip(fr.blurs, (3, 5, 7, 9), fr.sigmas):
        w = blur.weight
        assert w.shape == (4, 1) + (k,) * spatial_dims
        assert not w.requires_grad
        assert id(w) in buffer_ids and id(w) not in param_ids
        sums = w.flatten(1).sum(dim=1)
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-6)
        assert torch.allclose(w[0, 0], gaussian_kernel(k, sigma, spatial_dims))
    # only the SE MLP and the fusion conv are learnable
    assert _n_params(fr) == 4 * 4 + 4 * 1 + 1 * 4 + 5 * 4 * 4
    # the kernels follow .to(): dtype here (device on a GPU machine)
    fr = fr.to(torch.float64)
    assert all(blur.weight.dtype == torch.float64 for blur in fr.blurs)


def test_dog_levels():
    fr = FrequencyRecalibration(2, channels=2)
    # a constant map has no detail: every band-pass level is 0 away from the zero-padded border
    x = torch.full((1, 2, 20, 20), 3.0)
    levels = fr.pyramid(x)
    assert len(levels) == 5
    assert torch.equal(levels[0], x)
    for lv in levels[1:]:
        assert lv.shape == x.shape
        assert lv[..., 4:-4, 4:-4].abs().max() < 1e-5
    assert levels[1][..., 0, 0].abs().min() > 0.1  # the zero padding shows at the border
    # the levels telescope: L1 + ... + L4 = X - G4, G4 the 9-tap Gaussian of sigma 1.6 * 2^(4/3) with zero padding
    x = torch.randn(2, 2, 16, 16)
    levels = fr.pyramid(x)
    t = np.arange(9) - 4.0
    g = np.exp(-(t**2) / (2 * (1.6 * 2 ** (4 / 3)) ** 2))
    g4 = np.outer(g, g) / g.sum() ** 2
    blurred = np.stack([[ndimage.correlate(m, g4, mode="constant") for m in b] for b in x.numpy().astype(np.float64)])
    np.testing.assert_allclose(sum(levels[1:]).numpy(), x.numpy() - blurred, atol=1e-5)
    # with reflect padding a constant map gives 0 everywhere; fewer kernels give fewer levels
    fr3d = FrequencyRecalibration(3, channels=1, kernel_sizes=(3, 5), padding_mode="reflect")
    levels = fr3d.pyramid(torch.full((1, 1, 6, 6, 6), -2.0))
    assert len(levels) == 3
    assert max(lv.abs().max() for lv in levels[1:]) < 1e-5


def test_gradients_reach_input():
    torch.manual_seed(0)
    net = FRCUNet(2, 1, 2, features=(4, 8, 16), freq_channels=8).train()
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    net(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_bad_input_size():
    net = FRCUNet(2, 1, 1, **SMALL)
    with pytest.raises(ValueError, match=r"divisible by 16, got shape \(1, 1, 32, 40\)"):
        net(torch.randn(1, 1, 32, 40))
    with pytest.raises(ValueError, match=r"got shape \(1, 1, 32, 32, 32\)"):
        net(torch.randn(1, 1, 32, 32, 32))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"^encoder must be 'unet' or 'xception', got 'resnet'\.$"):
        FRCUNet(2, 3, 1, **SMALL, encoder="resnet")
    with pytest.raises(ValueError, match="pretrained_encoder applies to encoder='xception' only"):
        FRCUNet(2, 3, 1, **SMALL, pretrained_encoder="encoder.pt")
    with pytest.raises(ValueError, match="spatial_dims"):
        FRCUNet(1, 3, 1, **SMALL)
    with pytest.raises(ValueError, match="odd"):
        FRCUNet(2, 3, 1, **SMALL, gauss_kernel_sizes=(3, 4))
