"""Tests for networks.esrgan: shapes in 2D/3D, exact parameter counts, discriminator heads, errors, gradients."""

from __future__ import annotations

import pytest
import torch
from monai.networks.utils import pixelshuffle

from networks import RRDBNet, VGGStyleDiscriminator
from networks.esrgan import SqueezeExcitation, esrgan, pixel_shuffle_per_axis, se_esrgan

TINY = {"features": 8, "growth_channels": 4, "num_blocks": 1}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# (RRDBNet kwargs, input shape, expected output shape)
GENERATOR_CASES = [
    ({"spatial_dims": 2, "in_channels": 3, "out_channels": 3, "scale": 4}, (2, 3, 16, 16), (2, 3, 64, 64)),
    (
        {"spatial_dims": 2, "in_channels": 3, "out_channels": 3, "scale": 4, "upsample": "pixelshuffle"},
        (1, 3, 16, 16),
        (1, 3, 64, 64),
    ),
    (
        {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "scale": 2, "se_after_upsample": True, "se_ratio": 2},
        (1, 1, 12, 10),
        (1, 2, 24, 20),
    ),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "scale": 1}, (1, 1, 9, 7), (1, 1, 9, 7)),
    ({"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "scale": (1, 1, 2)}, (1, 1, 8, 8, 4), (1, 1, 8, 8, 8)),
    (
        {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "scale": (1, 1, 2), "upsample": "pixelshuffle"},
        (1, 1, 8, 8, 4),
        (1, 1, 8, 8, 8),
    ),
    (
        {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "scale": (1, 1, 4), "se_after_upsample": True,
         "se_ratio": 4, "upsample": "pixelshuffle"},
        (1, 1, 4, 4, 2),
        (1, 1, 4, 4, 8),
    ),
    (
        {"spatial_dims": 3, "in_channels": 2, "out_channels": 1, "scale": 2, "upsample": "pixelshuffle",
         "se_after_upsample": True, "se_ratio": 2},
        (1, 2, 4, 4, 4),
        (1, 1, 8, 8, 8),
    ),
    ({"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "scale": (2, 2, 4)}, (1, 1, 3, 3, 2), (1, 1, 6, 6, 8)),
]


@pytest.mark.parametrize("kwargs, input_shape, expected_shape", GENERATOR_CASES)
def test_generator_shape(kwargs, input_shape, expected_shape):
    net = RRDBNet(**kwargs, **TINY).eval()
    with torch.no_grad():
        assert net(torch.randn(input_shape)).shape == expected_shape


def test_esrgan_param_count_2d():
    with torch.device("meta"):  # construct only: no memory, no initialisation cost
        net = RRDBNet(
            spatial_dims=2, in_channels=3, out_channels=3, features=64, growth_channels=32, num_blocks=23, scale=4
        )
    assert n_params(net) == 16_697_987
    assert n_params(net.body[0]) == 719_424  # one RRDB


@pytest.mark.parametrize(
    "factory, kwargs, expected",
    [
        (se_esrgan, {}, 40_209_987),  # Uneshance_2023 generator (nb 24, growth 64, bias-free SE)
        (se_esrgan, {"num_blocks": 23}, 38_550_147),
        (esrgan, {"spatial_dims": 3}, 50_066_819),
        (esrgan, {"spatial_dims": 3, "in_channels": 1, "out_channels": 1}, 50_059_905),
        (esrgan, {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "scale": (1, 1, 4), "num_blocks": 8,
                  "features": 32, "growth_channels": 16}, 4_427_873),
    ],
)
def test_preset_param_counts(factory, kwargs, expected):
    with torch.device("meta"):  # construct only: no memory, no initialisation cost
        assert n_params(factory(**kwargs)) == expected


def test_se_block_is_bias_free_by_default():
    assert n_params(SqueezeExcitation(2, 64, r=8)) == 1_024
    assert n_params(SqueezeExcitation(3, 64, r=8, bias=True)) == 1_096  # = monai ChannelSELayer(r=8)


def test_pixel_shuffle_per_axis():
    x = torch.randn(2, 2 * 8, 3, 4, 5)
    assert torch.equal(pixel_shuffle_per_axis(x, (2, 2, 2)), pixelshuffle(x, 3, 2))
    # slice-axis only: channel c * 2 + k goes to position 2 * d + k along the last axis
    x = torch.arange(6.0).view(1, 2, 1, 1, 3)  # channels [0, 1, 2] and [3, 4, 5]
    assert pixel_shuffle_per_axis(x, (1, 1, 2)).flatten().tolist() == [0, 3, 1, 4, 2, 5]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"spatial_dims": 2, "scale": 3},
        {"spatial_dims": 2, "scale": (2, 2, 2)},
        {"spatial_dims": 3, "scale": (1, 1, 6)},
        {"spatial_dims": 2, "upsample": "bicubic"},
        {"spatial_dims": 1},
    ],
)
def test_generator_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        RRDBNet(in_channels=1, out_channels=1, **TINY, **kwargs)


def test_se_ratio_above_the_width_is_refused():
    """A squeeze-excite needs at least one hidden unit: se_ratio 16 on a trunk of 8 channels is refused by name."""
    with pytest.raises(ValueError, match="se_ratio must be at most the channel count, got ratio=16 for 8 channels"):
        RRDBNet(2, 1, 1, se_after_upsample=True, se_ratio=16, **TINY)
    RRDBNet(2, 1, 1, se_after_upsample=False, se_ratio=16, **TINY)  # no SE built: nothing to refuse


def test_dense_block_init_is_scaled():
    net = RRDBNet(2, 1, 1, features=64, growth_channels=32, num_blocks=1, scale=1)
    conv = net.body[0].rdb1.conv1
    expected_std = 0.1 * (2.0 / (64 * 9)) ** 0.5  # Kaiming normal (fan_in) x 0.1
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.1
    assert torch.count_nonzero(conv.bias) == 0


# (VGGStyleDiscriminator kwargs, input shape, expected logits shape)
DISCRIMINATOR_CASES = [
    ({"spatial_dims": 2, "in_channels": 3, "in_shape": 32, "head": "fc"}, (2, 3, 32, 32), (2, 1)),
    ({"spatial_dims": 2, "in_channels": 3, "head": "patch"}, (2, 3, 64, 96), (2, 1, 2, 3)),
    ({"spatial_dims": 2, "in_channels": 1, "head": "gap"}, (2, 1, 40, 33), (2, 1)),
    (
        {"spatial_dims": 3, "in_channels": 1, "in_shape": (16, 16, 8), "head": "fc", "channel_mults": (1, 2, 4)},
        (2, 1, 16, 16, 8),
        (2, 1),
    ),
    ({"spatial_dims": 3, "in_channels": 1, "head": "patch", "channel_mults": (1, 2, 4)}, (1, 1, 16, 24, 8),
     (1, 1, 2, 3, 1)),
]


@pytest.mark.parametrize("kwargs, input_shape, expected_shape", DISCRIMINATOR_CASES)
def test_discriminator_shape_and_features(kwargs, input_shape, expected_shape):
    net = VGGStyleDiscriminator(**kwargs, features=4).eval()
    with torch.no_grad():
        logits, features = net(torch.randn(input_shape), return_features=True)
        assert net(torch.randn(input_shape)).shape == expected_shape
    assert logits.shape == expected_shape
    mults = kwargs.get("channel_mults", (1, 2, 4, 8, 8))
    assert len(features) == len(mults)
    for i, (feat, mult) in enumerate(zip(features, mults)):
        assert feat.shape[:2] == (input_shape[0], 4 * mult)
        assert tuple(feat.shape[2:]) == tuple(s // 2 ** (i + 1) for s in input_shape[2:])


def test_discriminator_param_counts():
    with torch.device("meta"):
        assert n_params(VGGStyleDiscriminator(2, 3, in_shape=128)) == 14_499_401  # ESRGAN VGG-128
        uneshance = VGGStyleDiscriminator(
            2, 3, head="patch", channel_mults=(1, 2, 4, 8), down_kernel_size=3, bias=True
        )
        assert n_params(uneshance) == 4_693_697  # Uneshance_2023 PatchGAN


def test_discriminator_errors():
    with pytest.raises(ValueError, match="in_shape"):
        VGGStyleDiscriminator(2, 3, head="fc")
    net = VGGStyleDiscriminator(2, 3, in_shape=32, features=4)
    with pytest.raises(ValueError, match=r"in_shape=\(32, 32\).*\(48, 32\)"):
        net(torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match="too small"):
        VGGStyleDiscriminator(2, 3, head="patch", features=4)(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        VGGStyleDiscriminator(2, 3, in_shape=16, features=4)
    with pytest.raises(ValueError, match="head"):
        VGGStyleDiscriminator(2, 3, head="mlp")


@pytest.mark.parametrize("spatial_dims, lr_shape, scale", [(2, (1, 1, 8, 8), 2), (3, (1, 1, 8, 8, 4), (1, 1, 2))])
def test_gradients_flow(spatial_dims, lr_shape, scale):
    gen = RRDBNet(spatial_dims, 1, 1, scale=scale, upsample="pixelshuffle", se_after_upsample=True, se_ratio=2, **TINY)
    disc = VGGStyleDiscriminator(spatial_dims, 1, head="patch", features=4, channel_mults=(1, 2))
    logits, features = disc(gen(torch.randn(lr_shape)), return_features=True)
    (logits.mean() + sum(f.mean() for f in features)).backward()
    for name, p in [*gen.named_parameters(), *disc.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in gen.parameters())


def test_one_batch_overfit():
    torch.manual_seed(0)
    net = RRDBNet(2, 1, 1, scale=2, **TINY)
    lr, hr = torch.rand(1, 1, 6, 6), torch.rand(1, 1, 12, 12)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = torch.nn.functional.l1_loss(net(lr), hr)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize(
    "spatial_dims, scale, skip, shape, mode",
    [
        (2, 4, "auto", (1, 1, 6, 5), "bicubic"),
        (2, 2, "bilinear", (2, 1, 5, 7), "bilinear"),
        (3, (1, 1, 2), "auto", (1, 1, 4, 5, 3), "trilinear"),
        (3, (1, 1, 4), "nearest", (1, 1, 3, 3, 2), "nearest"),
    ],
)
def test_interpolation_skip_adds_the_interpolated_input(spatial_dims, scale, skip, shape, mode):
    """With the residual branch silenced the generator returns exactly the interpolation of its input; the skip adds
    no parameters; and the branch starts small, so the untrained output is close to the interpolation."""
    torch.manual_seed(0)
    plain = RRDBNet(spatial_dims, 1, 1, scale=scale, **TINY)
    net = RRDBNet(spatial_dims, 1, 1, scale=scale, interpolation_skip=skip, **TINY).eval()
    assert n_params(net) == n_params(plain)
    x = torch.rand(shape)
    factors = (scale,) * spatial_dims if isinstance(scale, int) else scale
    size = tuple(s * f for s, f in zip(shape[2:], factors))
    expected = torch.nn.functional.interpolate(
        x, size=size, mode=mode, align_corners=None if mode == "nearest" else False
    )
    with torch.no_grad():
        untrained = net(x)
        assert untrained.shape == expected.shape
        assert (untrained - expected).abs().mean() < 0.5 * (plain(x) - expected).abs().mean()
        net.conv_last.weight.zero_()
        net.conv_last.bias.zero_()
        torch.testing.assert_close(net(x), expected)


def test_interpolation_skip_errors():
    with pytest.raises(ValueError, match="in_channels == out_channels, got 1 and 2"):
        RRDBNet(2, 1, 2, scale=2, interpolation_skip="bicubic", **TINY)
    with pytest.raises(ValueError, match="one of \\('nearest', 'trilinear'\\) in 3D, got 'bicubic'"):
        RRDBNet(3, 1, 1, scale=2, interpolation_skip="bicubic", **TINY)
