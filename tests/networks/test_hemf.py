"""Tests for HEMF (2D reference port and its 3D axial-retention generalisation)."""

from __future__ import annotations

import re

import pytest
import torch

from networks.hemf import HEMF, AxialRetention, ChannelsFirstLayerNorm, RetentionRelPos, hemf_3d_light

SMALL = {"features": (16, 32, 64, 128), "elf_depths": 1, "egf_depths": 1, "num_heads": 2}

# (constructor arguments, input shape, expected output shape)
SHAPE_CASES = [
    ({"spatial_dims": 2, "in_channels": 3, "out_channels": 7, **SMALL}, (1, 3, 64, 64), (1, 7)),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 4, **SMALL}, (2, 1, 32, 64), (2, 4)),  # non-square
    (
        {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "sirmlp_depthwise": True,
         "reference_fusion_layers": False, **SMALL},
        (1, 3, 32, 32),
        (1, 2),
    ),
    ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2, **SMALL}, (1, 1, 32, 32, 32), (1, 2)),
]


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("args, input_shape, expected_shape", SHAPE_CASES)
def test_shape(args, input_shape, expected_shape):
    net = HEMF(**args).eval()
    with torch.no_grad():
        out = net(torch.randn(input_shape))
    assert out.shape == expected_shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "factory, expected",
    [
        (lambda: HEMF(spatial_dims=2, in_channels=3, out_channels=7), 68_269_367),  # design doc section 6
        (lambda: HEMF(spatial_dims=2, in_channels=3, out_channels=7, reference_fusion_layers=False), 66_678_263),
        (lambda: HEMF(spatial_dims=3, in_channels=3, out_channels=7), 142_436_375),  # doc: about 142.4 M
        (lambda: hemf_3d_light(in_channels=1, out_channels=2), 23_740_434),
    ],
)
def test_parameter_count(factory, expected):
    with torch.device("meta"):  # construct only, no memory or init cost
        net = factory()
    assert _count(net) == expected


def test_gradients_reach_input():
    net = HEMF(spatial_dims=2, in_channels=3, out_channels=3, **SMALL)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # only the fusion layers that the reference builds but never uses stay without gradient
    unused = {n.split(".")[2] for n, p in net.named_parameters() if p.grad is None}
    assert unused == {"up", "norm_fuse3", "fuse3", "norm_fuse2", "fuse2"}


def test_one_batch_overfit():
    torch.manual_seed(0)
    net = HEMF(spatial_dims=2, in_channels=1, out_channels=2, **SMALL)
    x, y = torch.randn(2, 1, 32, 32), torch.tensor([0, 1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_init_quirk():
    torch.manual_seed(0)
    net = HEMF(spatial_dims=2, in_channels=3, out_channels=7, **SMALL)
    assert net.local_stages[3][0].conv.weight.std().item() == pytest.approx(0.2, rel=0.05)
    assert net.global_stages[3].retentions[0].lepe.weight.std().item() == pytest.approx(0.2, rel=0.1)
    assert net.global_stages[3].retentions[0].q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert net.fusions[3].mhea_l.memory_key.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert float(net.global_stages[3].retentions[0].q_proj.bias.detach().abs().max()) == 0.0
    # fusion convolutions keep PyTorch's default (kaiming-uniform, std = 1/sqrt(3 * fan_in))
    fan_in = 128 * 9
    assert net.fusions[3].mlp.conv1.conv.weight.std().item() == pytest.approx((3 * fan_in) ** -0.5, rel=0.05)


@pytest.mark.parametrize("shape", [(2, 5, 7), (2, 5, 4, 6), (2, 5, 3, 4, 6)])
def test_channels_first_layernorm(shape):
    norm = ChannelsFirstLayerNorm(shape[1])
    x = torch.randn(shape) * 3 + 1
    y = norm(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.mean(dim=1), torch.zeros_like(y.mean(dim=1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=1, unbiased=False), torch.ones_like(y.mean(dim=1)), atol=1e-3, rtol=0)
    expected = torch.nn.functional.layer_norm(x.movedim(1, -1), (shape[1],), eps=1e-6).movedim(-1, 1)
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize(
    "spatial_dims, input_shape",
    [(2, (1, 3, 48, 64)), (2, (1, 3, 64)), (3, (1, 3, 32, 32, 40))],
)
def test_bad_input_size(spatial_dims, input_shape):
    net = HEMF(spatial_dims=spatial_dims, in_channels=3, out_channels=2, **SMALL)
    with pytest.raises(ValueError, match=re.escape(str(tuple(input_shape)))):
        net(torch.zeros(input_shape))


def test_bad_heads():
    with pytest.raises(ValueError, match="num_heads"):
        HEMF(spatial_dims=2, features=(24, 48, 96, 192), num_heads=8)  # head size 3 is odd


def test_axial_retention_3d_reduces_to_2d():
    """With D = 1 the depth pass is an identity, so 3D retention equals 2D retention with the same weights."""
    torch.manual_seed(0)
    ret2, ret3 = AxialRetention(2, 16, 2), AxialRetention(3, 16, 2)
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            getattr(ret3, name).load_state_dict(getattr(ret2, name).state_dict())
        ret3.lepe.weight.zero_()
        ret3.lepe.weight[:, :, 2] = ret2.lepe.weight
        ret3.lepe.bias.copy_(ret2.lepe.bias)
    rel2, rel3 = RetentionRelPos(16, 2), RetentionRelPos(16, 2)
    x = torch.randn(2, 4, 6, 16)
    with torch.no_grad():
        out2 = ret2(x, rel2((4, 6)))
        out3 = ret3(x[:, None], rel3((1, 4, 6)))[:, 0]
    torch.testing.assert_close(out3, out2)
