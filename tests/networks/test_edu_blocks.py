"""E-DU building blocks (networks/edu.py) checked by value: MDE in every mode, DenseLayer/DenseTransitionBlock,
EDU's wiring.

The expected MDE maps are computed in NumPy/SciPy from the formulas in MDE's docstring:
Gaussian G_k with sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8 and zero "same" padding;
DoG E_k = G_k x + a (G_k x - G_{k+2} x); Laplacian E_k = G_k x + a L(G_k x), L the centre-positive 3^d kernel
(all -1, centre 3^d - 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from networks.edu import EDU, MDE, DenseLayer, DenseTransitionBlock
from tests.networks import reference

EPS = 1e-5  # BatchNorm's default eps


def np_gaussian(k: int, dims: int) -> np.ndarray:
    """MDE's Gaussian: k taps at OpenCV's sigma."""
    return reference.np_gaussian(k, reference.np_opencv_sigma(k), dims)


def np_laplace(dims: int) -> np.ndarray:
    kernel = -np.ones((3,) * dims)
    kernel[(1,) * dims] = 3**dims - 1
    return kernel


def corr(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Zero-padded "same" correlation of every (batch, channel) map."""
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:2]):
        out[idx] = ndimage.correlate(x[idx], kernel, mode="constant", cval=0.0)
    return out


def np_mde_maps(x: np.ndarray, scales, alpha: float, enhance: str) -> list[np.ndarray]:
    """[x, E_k for k in scales] written out in NumPy."""
    dims = x.ndim - 2
    maps = [x]
    for k in scales:
        g = corr(x, np_gaussian(k, dims))
        if enhance == "dog":
            maps.append(g + alpha * (g - corr(x, np_gaussian(k + 2, dims))))
        else:
            maps.append(g + alpha * corr(g, np_laplace(dims)))
    return maps


def image(dims: int, channels: int = 2, seed: int = 0) -> torch.Tensor:
    shape = (2, channels) + ((9, 11) if dims == 2 else (7, 8, 9))
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def set_bn(bn: torch.nn.Module, mean, var, gamma, beta) -> None:
    with torch.no_grad():
        bn.running_mean.copy_(torch.as_tensor(mean, dtype=torch.float64))
        bn.running_var.copy_(torch.as_tensor(var, dtype=torch.float64))
        bn.weight.copy_(torch.as_tensor(gamma, dtype=torch.float64))
        bn.bias.copy_(torch.as_tensor(beta, dtype=torch.float64))


def np_bn(x: np.ndarray, mean, var, gamma, beta) -> np.ndarray:
    """Eval-mode batch norm over axis 1, written out."""
    shape = (1, -1) + (1,) * (x.ndim - 2)

    def r(v):
        return np.asarray(v, dtype=np.float64).reshape(shape)

    return (x - r(mean)) / np.sqrt(r(var) + EPS) * r(gamma) + r(beta)


# ---------------------------------------------------------------------------------------------------- MDE, fusion="sum"


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("enhance", ["dog", "laplacian"])
@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_mde_sum_is_the_mean_of_x_and_the_enhanced_maps(dims, enhance, alpha):
    x = image(dims)
    mde = MDE(dims, channels=2, alpha=alpha, enhance=enhance, fusion="sum").double().eval()
    with torch.no_grad():
        y = mde(x)
    expected = np.mean(np_mde_maps(x.numpy(), (3, 5, 7), alpha, enhance), axis=0)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("enhance", ["dog", "laplacian"])
def test_mde_alpha_zero_is_plain_blur_and_alpha_scales_the_detail(enhance):
    """alpha = 0 gives mean(x, G_3 x) for one scale; the output is affine in alpha, out(2) - out(1) = out(1) - out(0)"""
    x = image(2, channels=1)
    outs = {}
    for alpha in (0.0, 1.0, 2.0):
        with torch.no_grad():
            outs[alpha] = MDE(2, 1, scales=(3,), alpha=alpha, enhance=enhance, fusion="sum").double()(x).numpy()
    blur = corr(x.numpy(), np_gaussian(3, 2))
    np.testing.assert_allclose(outs[0.0], (x.numpy() + blur) / 2, rtol=1e-6, atol=1e-7)
    detail = outs[1.0] - outs[0.0]
    assert np.abs(detail).max() > 0.05  # alpha = 1 adds something
    np.testing.assert_allclose(outs[2.0] - outs[1.0], detail, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("enhance", ["dog", "laplacian"])
def test_mde_sharpens_a_step_edge(dims, enhance):
    """E_3 of a step edge is steeper at the edge than the blur G_3, and overshoots on both sides (unsharp masking).

    One scale and fusion="sum" give out = (x + E_3) / 2, so E_3 = 2 out - x. The blurred profile comes from NumPy. The
    Laplacian mode once subtracted L(g), which flattened the edge (slope 0.52 -> negative): this test fails on that.
    """
    shape = (1, 1) + (12,) * dims
    x = torch.zeros(shape, dtype=torch.float64)
    x[..., 6:] = 1.0
    with torch.no_grad():
        out = MDE(dims, 1, scales=(3,), alpha=1.0, enhance=enhance, fusion="sum").double()(x)
    enhanced = (2 * out - x)[(0, 0) + (6,) * (dims - 1)][2:-2].numpy()  # a line across the edge, off the border
    blurred = corr(x.numpy(), np_gaussian(3, dims))[(0, 0) + (6,) * (dims - 1)][2:-2]
    # the edge lies between indices 5 and 6 of the line, which are 3 and 4 after the crop [2:-2]
    blur_slope = blurred[4] - blurred[3]
    enhanced_slope = enhanced[4] - enhanced[3]
    assert blur_slope == pytest.approx(np_gaussian(3, 1)[1], rel=1e-6)  # centre tap of the 1D kernel: 0.5205
    assert enhanced_slope > blur_slope + 0.1
    assert enhanced.max() > 1.05 and enhanced.min() < -0.05
    assert blurred.max() <= 1 + 1e-9 and blurred.min() >= -1e-9


def test_mde_is_identity_on_a_constant_interior():
    # every kernel sums to 1 (the Laplacian to 0), so away from the zero padding every map equals the field
    # (the widest kernel, G_9, reaches 4 voxels; G_7 followed by L reaches 4 as well)
    x = torch.full((1, 1, 12, 12, 12), 3.0, dtype=torch.float64)
    inner = (..., slice(4, -4), slice(4, -4), slice(4, -4))
    for enhance in ("dog", "laplacian"):
        with torch.no_grad():
            y = MDE(3, 1, enhance=enhance, fusion="sum").double()(x)
        torch.testing.assert_close(y[inner], x[inner], rtol=0, atol=1e-6)
        assert (y[..., 0, 0, 0] - 3.0).abs() > 0.5  # the zero padding shows at the corner


# ------------------------------------------------------------------------------------------------- MDE, fusion="concat"


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("enhance", ["dog", "laplacian"])
@pytest.mark.parametrize("pick", [0, 1, 2, 3])
def test_mde_concat_fuses_x_e3_e5_e7_in_that_order(dims, enhance, pick):
    """A one-hot 1x1 conv selects map ``pick`` of [x, E_3, E_5, E_7]; out channel 0 reads that map's channel 1 and out
    channel 1 its channel 0 (catches a channel-interleaved concat). BN (eval, set stats) and ReLU are written out."""
    channels = 2
    x = image(dims, channels)
    mde = MDE(dims, channels, enhance=enhance, fusion="concat").double().eval()
    conv, bn = mde.fuse[0], mde.fuse[1]
    assert conv.in_channels == 4 * channels and conv.out_channels == channels and conv.bias is None
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, pick * channels + 1] = 1.0
        conv.weight[1, pick * channels + 0] = 1.0
    stats = ([0.3, -0.2], [2.0, 0.5], [1.5, 0.7], [-0.1, 0.2])  # mean, var, gamma, beta
    set_bn(bn, *stats)
    with torch.no_grad():
        y = mde(x)
    chosen = np_mde_maps(x.numpy(), (3, 5, 7), 1.0, enhance)[pick][:, ::-1]
    expected = np.maximum(np_bn(chosen, *stats), 0.0)
    assert (expected == 0).any() and (expected > 0).any()  # the ReLU matters on this input
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_mde_refuses_unknown_modes():
    with pytest.raises(ValueError, match="enhance"):
        MDE(2, 1, enhance="sobel")
    with pytest.raises(ValueError, match="fusion"):
        MDE(2, 1, fusion="max")


# ------------------------------------------------------------------------------------- DenseLayer, DenseTransitionBlock


@pytest.mark.parametrize("dims", [2, 3])
def test_dense_layer_concatenates_input_then_conv_relu_bn(dims):
    """out = cat([x, conv3x3(relu(bn(x)))]); the conv is a random 3^d kernel, computed with scipy per channel pair."""
    torch.manual_seed(0)
    c, growth = 3, 2
    layer = DenseLayer(dims, c, growth, norm=("batch", {}), act=("relu", {})).double().eval()
    bn, conv = layer.layers[0], layer.layers[2]
    stats = ([0.5, -0.3, 0.1], [0.5, 2.0, 1.0], [1.2, 0.8, -0.5], [0.1, -0.2, 0.3])  # mean, var, gamma, beta
    set_bn(bn, *stats)
    w = conv.weight.detach().numpy()  # random init; read once, the expected value uses NumPy only
    assert w.shape == (growth, c) + (3,) * dims
    x = image(dims, c)
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (2, c + growth) + x.shape[2:]
    assert torch.equal(y[:, :c], x)  # the input first, bit for bit

    h = np.maximum(np_bn(x.numpy(), *stats), 0.0)
    new = np.zeros((2, growth) + x.shape[2:])
    for b in range(2):
        for o in range(growth):
            for i in range(c):
                new[b, o] += ndimage.correlate(h[b, i], w[o, i], mode="constant", cval=0.0)
    np.testing.assert_allclose(y[:, c:].numpy(), new, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("out_channels, growth", [(8, 2), (12, 3), (3, 1)])
def test_dense_block_growth_and_channel_counts(dims, out_channels, growth):
    """growth = out_channels // 4 (at least 1); after L layers C + L * growth channels, the first C being the input."""
    c, n_layers = 3, 3
    block = DenseTransitionBlock(dims, c, out_channels, layers=n_layers).double().eval()
    assert len(block.dense) == n_layers
    for i, layer in enumerate(block.dense):
        conv = layer.layers[2]
        assert (conv.in_channels, conv.out_channels) == (c + i * growth, growth)
    x = image(dims, c)
    with torch.no_grad():
        h = block.dense(x)
        first = block.dense[0](x)
        y = block(x)
    assert h.shape[1] == c + n_layers * growth
    assert torch.equal(h[:, :c], x)
    assert torch.equal(h[:, : c + growth], first)  # each layer keeps what came before, in order
    assert y.shape == (2, out_channels) + x.shape[2:]


@pytest.mark.parametrize("dims", [2, 3])
def test_dense_block_transition_is_norm_then_1x1_conv_without_activation(dims):
    """transition(h) = W @ bn(h) per voxel (no ReLU: the BN output is partly negative and must stay so)."""
    torch.manual_seed(0)
    c, out = 2, 4
    block = DenseTransitionBlock(dims, c, out, layers=2).double().eval()
    bn, conv = block.transition[0], block.transition[-1]
    n = c + 2 * (out // 4)
    assert isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) and bn.num_features == n
    assert conv.kernel_size == (1,) * dims and conv.bias is None and conv.out_channels == out
    rng = np.random.default_rng(0)
    stats = (rng.normal(size=n), rng.uniform(0.5, 2, n), rng.normal(size=n), rng.normal(size=n))
    set_bn(bn, *stats)
    w = rng.normal(size=(out, n))
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w).reshape(conv.weight.shape))
    h = image(dims, n, seed=3)
    with torch.no_grad():
        y = block.transition(h)
    expected = np.einsum("oc,bc...->bo...", w, np_bn(h.numpy(), *stats))
    assert (expected < -0.1).any()
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-10, atol=1e-10)


# -------------------------------------------------------------------------------------------------------- EDU wiring

FEATURES = (4, 8, 16)


def _pair(dims: int):
    """EDU with parameter-free MDE (fusion="sum") and the same network without MDE, with identical weights."""
    torch.manual_seed(0)
    with_mde = EDU(dims, 1, 2, features=FEATURES, mde_fusion="sum").double().eval()
    without = EDU(dims, 1, 2, features=FEATURES, mde=False).double().eval()
    without.load_state_dict(with_mde.state_dict())  # MDE "sum" has no state: every key matches
    return with_mde, without


@pytest.mark.parametrize("dims", [2, 3])
def test_edu_skips_pass_through_mde(dims):
    with_mde, without = _pair(dims)
    x = torch.randn((1, 1) + (8,) * dims, dtype=torch.float64)
    with torch.no_grad():
        a, b = with_mde(x), without(x)
        assert (a - b).abs().max() > 1e-4  # MDE changes the result
        with_mde.skips = torch.nn.ModuleList(torch.nn.Identity() for _ in with_mde.skips)
        torch.testing.assert_close(with_mde(x), b, rtol=0, atol=0)  # and it is the only difference


@pytest.mark.parametrize("dims", [2, 3])
def test_edu_decoder_input_is_up_then_mde_of_the_matching_skip(dims):
    """Forward hooks: decoder i receives cat([ups[i](deeper), skips[i](encoder output of that level)]) in this order,
    the encoder levels taken deepest first; the head reads the last decoder."""
    with_mde, _ = _pair(dims)
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0], output)

        return hook

    for i, enc in enumerate(with_mde.encoders):
        enc.register_forward_hook(keep(f"enc{i}"))
    for i, (up, skip, dec) in enumerate(zip(with_mde.ups, with_mde.skips, with_mde.decoders)):
        up.register_forward_hook(keep(f"up{i}"))
        skip.register_forward_hook(keep(f"skip{i}"))
        dec.register_forward_hook(keep(f"dec{i}"))
    with_mde.head.register_forward_hook(keep("head"))
    x = torch.randn((1, 1) + (8,) * dims, dtype=torch.float64)
    with torch.no_grad():
        with_mde(x)
    n = len(FEATURES)
    assert torch.equal(seen["up0"][0], seen[f"enc{n - 1}"][1])  # the bottleneck output is up-sampled first
    for i in range(n - 1):
        level = n - 2 - i
        assert torch.equal(seen[f"skip{i}"][0], seen[f"enc{level}"][1])
        expected = torch.cat([seen[f"up{i}"][1], seen[f"skip{i}"][1]], dim=1)
        assert torch.equal(seen[f"dec{i}"][0], expected)
        if i + 1 < n - 1:
            assert torch.equal(seen[f"up{i + 1}"][0], seen[f"dec{i}"][1])
    assert torch.equal(seen["head"][0], seen[f"dec{n - 2}"][1])


def test_edu_refuses_bad_inputs_with_the_shape():
    net = EDU(2, 1, 2, features=FEATURES)
    with pytest.raises(ValueError, match=r"2 spatial dimensions each divisible by 4, got input shape \(1, 1, 8, 6\)"):
        net(torch.zeros(1, 1, 8, 6))
    with pytest.raises(ValueError, match=r"got input shape \(1, 1, 8, 8, 8\)"):
        net(torch.zeros(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="spatial_dims"):
        EDU(1, 1, 2)
    with pytest.raises(ValueError, match="at least two levels"):
        EDU(2, 1, 2, features=(4,))
