"""E-DU: shapes, parameter counts of the reference configuration, the MDE module and gradients."""

from __future__ import annotations

import pytest
import torch

from networks import EDU, MDE
from networks.blocks import gaussian_kernel, opencv_sigma

SMALL = {"features": (4, 8, 16, 32, 64)}

CASES = [
    # (kwargs, input shape, expected output shape)
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 2, **SMALL}, (2, 1, 32, 48), (2, 2, 32, 48)),
    ({"spatial_dims": 2, "in_channels": 3, "out_channels": 1, **SMALL}, (1, 3, 16, 16), (1, 1, 16, 16)),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": (4, 8, 16)}, (1, 1, 12, 20), (1, 2, 12, 20)),
    ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2, **SMALL}, (1, 1, 16, 32, 48), (1, 2, 16, 32, 48)),
    ({"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "features": (4, 8, 16)}, (1, 4, 12, 8, 20),
     (1, 3, 12, 8, 20)),
    ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "mde": False, **SMALL}, (1, 1, 16, 16, 16),
     (1, 2, 16, 16, 16)),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "mde_enhance": "laplacian", **SMALL}, (1, 1, 16, 16),
     (1, 2, 16, 16)),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "mde_fusion": "sum", **SMALL}, (1, 1, 16, 16),
     (1, 2, 16, 16)),
    ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "norm": ("instance", {"affine": True}),
      "features": (4, 8, 16)}, (1, 1, 16, 16, 16), (1, 2, 16, 16, 16)),
]


@pytest.mark.parametrize("kwargs, in_shape, out_shape", CASES)
def test_shape(kwargs, in_shape, out_shape):
    net = EDU(**kwargs).eval()
    with torch.no_grad():
        assert net(torch.randn(in_shape)).shape == out_shape


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "spatial_dims, mde, expected",
    [(2, True, 6_457_676), (2, False, 6_108_556), (3, True, 16_365_964), (3, False, 16_016_844)],
)
def test_parameter_count_reference_configuration(spatial_dims, mde, expected):
    # the reference configuration: 2D about 6.46 M, 3D about 16.37 M (1 input channel, 2 classes); MDE fusion adds
    # 0.35 M
    # (349,120 = sum over the skips of 4C * C + 2C, C = 32..256). The up-convolutions feed batch norms and have no bias:
    # 32 + 64 + 128 + 256 = 480 fewer than the 6,458,156 / 16,366,444 of the versions that had one.
    # Every skip pathway, counted from its parts: tests/networks/test_edu_variants.py
    assert n_params(EDU(spatial_dims, 1, 2, mde=mde)) == expected


def test_mde_filters_are_buffers_and_move_with_the_module():
    mde = MDE(3, channels=4)
    assert n_params(mde) == 4 * 4 * 4 + 2 * 4  # the 1x1 fusion conv (4C -> C) and its norm only
    buffers = dict(mde.named_buffers())
    kernels = [b for name, b in buffers.items() if name.endswith("weight")]
    assert len(kernels) == 4  # sizes 3, 5, 7 and the DoG partner 9, each built once
    for kernel in kernels:
        assert torch.allclose(kernel[0].sum(), torch.tensor(1.0))
    assert not any("gaussians" in k for k in mde.state_dict())  # rebuilt from arguments, not saved
    mde = mde.to(torch.float64)
    assert all(b.dtype == torch.float64 for name, b in mde.named_buffers() if name.startswith("gaussians"))


def test_mde_learnable_filters_become_parameters():
    assert n_params(MDE(2, channels=4, learnable_filters=True)) > n_params(MDE(2, channels=4))


def test_mde_enhancement_is_identity_on_constant_interior():
    # Gaussians sum to 1, so on a constant field every enhanced map equals the field away from the zero padding
    mde = MDE(2, channels=1, fusion="sum").eval()
    x = torch.full((1, 1, 32, 32), 3.0)
    y = mde(x)
    assert torch.allclose(y[..., 8:-8, 8:-8], x[..., 8:-8, 8:-8], atol=1e-5)


def test_mde_sharpens_an_edge():
    # through MDE's forward (one scale, fusion="sum": E_3 = 2 * out - x): unsharp masking overshoots both sides of a
    # step edge, which a blur (weights >= 0 summing to 1) cannot; by-value checks of every mode: test_edu_blocks.py
    x = torch.zeros(1, 1, 16, 16)
    x[..., 8:] = 1.0
    for enhance in ("dog", "laplacian"):
        mde = MDE(2, channels=1, scales=(3,), enhance=enhance, fusion="sum").eval()
        with torch.no_grad():
            enhanced = (2 * mde(x) - x)[0, 0, 8, 2:-2]  # one row, away from the zero padding of the borders
        assert enhanced.max() > 1.01 and enhanced.min() < -0.01, enhance
        # and it is steeper at the edge (between columns 7 and 8) than the blur G_3, whose slope there is the centre
        # tap of the 1D kernel, 1 / (1 + 2 exp(-1 / 1.28)) = 0.522; g - L(g) (the old Laplacian sign) fails this
        assert enhanced[6] - enhanced[5] > 0.6, enhance


def test_gaussian_kernel_sigma_rule():
    assert opencv_sigma(3) == pytest.approx(0.8)
    assert opencv_sigma(7) == pytest.approx(1.4)
    k = gaussian_kernel(5, 1.1, 3)
    assert k.shape == (5, 5, 5) and k.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(k, k.flip(0)) and torch.equal(k, k.permute(2, 1, 0))
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(4, 1.0, 2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradients_reach_the_input(spatial_dims):
    net = EDU(spatial_dims, 1, 2, features=(4, 8, 16))
    x = torch.randn((1, 1) + (8,) * spatial_dims, requires_grad=True)
    net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_indivisible_input_is_refused_with_the_shape():
    net = EDU(3, 1, 2, **SMALL)
    with pytest.raises(ValueError, match=r"divisible by 16, got input shape \(1, 1, 16, 16, 20\)"):
        net(torch.zeros(1, 1, 16, 16, 20))


def test_one_batch_overfits():
    torch.manual_seed(0)
    net = EDU(2, 1, 2, features=(8, 16, 32))
    x = torch.randn(2, 1, 16, 16)
    y = (x > 0.5).long()[:, 0]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.2
