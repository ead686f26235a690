"""FRCU-Net building blocks (networks/frcunet.py) checked by value: the DoG stack, the per-level squeeze-excitation,
the frequency re-calibration fusion and the skip wiring of UpConvNormCat and FRCUNet.

Expected values come from NumPy/SciPy: Gaussian taps exp(-x^2 / 2 sigma_i^2) with sigma_i = sigma0 * step^i
(i = 1..n, as the FR module's docstring says), ``scipy.ndimage.correlate`` for the blurs, and the SE MLP written as
matrix products of its weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from networks.frcunet import FRCUNet, FrequencyRecalibration, LevelSqueezeExcitation, UpConvNormCat
from tests.networks.reference import np_gaussian

SCIPY_MODE = {"zeros": "constant", "reflect": "mirror", "replicate": "nearest"}


def corr(x: np.ndarray, kernel: np.ndarray, mode: str = "zeros") -> np.ndarray:
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:2]):
        out[idx] = ndimage.correlate(x[idx], kernel, mode=SCIPY_MODE[mode], cval=0.0)
    return out


def np_pyramid(x: np.ndarray, sizes, sigma0: float, step: float, mode: str = "zeros") -> list[np.ndarray]:
    """[X, X - G1, G1 - G2, ..., G(n-1) - Gn] with G_i = gaussian(k_i, sigma0 * step**i) applied to X."""
    dims = x.ndim - 2
    blurred = [x] + [corr(x, np_gaussian(k, sigma0 * step**i, dims), mode) for i, k in enumerate(sizes, start=1)]
    return [x] + [blurred[i] - blurred[i + 1] for i in range(len(sizes))]


def np_se_weights(level: np.ndarray, mlp: torch.nn.Sequential) -> np.ndarray:
    """sigmoid(W3 relu(W2 relu(W1 mean(level)))) per batch element, shape (B, C)."""
    w1, w2, w3 = (m.weight.detach().numpy() for m in mlp if isinstance(m, torch.nn.Linear))
    pooled = level.reshape(level.shape[0], level.shape[1], -1).mean(axis=2)
    h = np.maximum(pooled @ w1.T, 0)
    h = np.maximum(h @ w2.T, 0)
    return 1 / (1 + np.exp(-(h @ w3.T)))


def image(shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


SPATIAL = {2: (10, 13), 3: (7, 8, 9)}


# ------------------------------------------------------------------------------------------------------ the DoG stack


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize(
    "sizes, sigma0, step, mode",
    [((3, 5, 7, 9), 1.6, 2 ** (1 / 3), "zeros"), ((3, 5), 1.0, 1.5, "zeros"), ((5, 3, 7), 0.7, 1.3, "reflect")],
)
def test_pyramid_is_the_dog_stack(dims, sizes, sigma0, step, mode):
    x = image((2, 3) + SPATIAL[dims])
    fr = FrequencyRecalibration(dims, 3, kernel_sizes=sizes, sigma0=sigma0, sigma_step=step, padding_mode=mode).double()
    assert fr.sigmas == pytest.approx([sigma0 * step**i for i in range(1, len(sizes) + 1)])
    with torch.no_grad():
        levels = fr.pyramid(x)
    expected = np_pyramid(x.numpy(), sizes, sigma0, step, mode)
    assert len(levels) == len(sizes) + 1
    assert torch.equal(levels[0], x)
    for got, want in zip(levels, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)


def test_default_sigmas_by_hand():
    # 1.6 * 2^(i/3), i = 1..4
    assert FrequencyRecalibration(2, 1).sigmas == pytest.approx((2.01587, 2.53984, 3.2, 4.03175), abs=1e-5)


# -------------------------------------------------------------------------------------- per-level squeeze-excitation


@pytest.mark.parametrize("dims", [2, 3])
def test_level_se_scales_each_level_by_its_own_weights(dims):
    """Each level l is multiplied by sigmoid(MLP(mean of level l)) from ONE shared MLP; levels with different content
    get different weights (scaling every level by level 0's weights fails here)."""
    torch.manual_seed(0)
    c, n_levels = 8, 4
    se = LevelSqueezeExcitation(c, reduction=4).double()
    linears = [m for m in se.mlp if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(c, c), (2, c), (c, 2)]
    assert all(m.bias is None for m in linears)
    assert sum(p.numel() for p in se.parameters()) == c * c + 2 * c + c * 2  # one MLP, not one per level
    with torch.no_grad():  # larger weights than the default init, so the sigmoids spread out
        for m in linears:
            m.weight.mul_(3.0)
    shape = (2, c) + SPATIAL[dims]
    offsets = torch.linspace(-1, 1, c, dtype=torch.float64).reshape((1, c) + (1,) * dims)
    levels = [image(shape, seed=k) + (k - 1.5) * offsets for k in range(n_levels)]
    with torch.no_grad():
        out = se(levels)
    assert len(out) == n_levels
    weights = [np_se_weights(lv.numpy(), se.mlp) for lv in levels]
    assert np.abs(weights[1] - weights[0]).max() > 0.05  # the levels really get different weights
    for lv, got, w in zip(levels, out, weights):
        expected = lv.numpy() * w.reshape(w.shape + (1,) * dims)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_level_se_refuses_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        LevelSqueezeExcitation(4, reduction=0)
    assert LevelSqueezeExcitation(4, reduction=8).mlp[2].out_features == 1  # max(1, C // reduction)


# ----------------------------------------------------------------------------------------- frequency re-calibration


@pytest.mark.parametrize("dims", [2, 3])
def test_frequency_recalibration_forward(dims):
    """relu(W_fuse @ cat([L_0 s_0, ..., L_n s_n])) per voxel: the pyramid, the SE and the fusion all in NumPy."""
    torch.manual_seed(1)
    c, sizes = 4, (3, 5)
    fr = FrequencyRecalibration(dims, c, kernel_sizes=sizes, se_reduction=2).double().eval()
    assert fr.fuse.kernel_size == (1,) * dims and fr.fuse.bias is None
    assert (fr.fuse.in_channels, fr.fuse.out_channels) == ((len(sizes) + 1) * c, c)
    x = image((2, c) + SPATIAL[dims], seed=5)
    with torch.no_grad():
        y = fr(x)
    levels = np_pyramid(x.numpy(), sizes, 1.6, 2 ** (1 / 3))
    scaled = [lv * np_se_weights(lv, fr.se.mlp).reshape((2, c) + (1,) * dims) for lv in levels]
    w = fr.fuse.weight.detach().numpy().reshape(c, (len(sizes) + 1) * c)
    expected = np.maximum(np.einsum("oc,bc...->bo...", w, np.concatenate(scaled, axis=1)), 0)
    assert (expected == 0).any() and (expected > 0).any()
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------- skip wiring


@pytest.mark.parametrize("dims", [2, 3])
def test_upcat_concatenates_skip_then_upsampled(dims):
    torch.manual_seed(0)
    up = UpConvNormCat(dims, 6, 3, 4, act="relu", norm=("batch", {}), bias=False).double().eval()
    seen = {}
    up.upsample.register_forward_hook(lambda m, i, o: seen.__setitem__("up", o))
    up.convs.register_forward_hook(lambda m, i, o: seen.__setitem__("convs_in", i[0]))
    x = image((1, 6) + (3,) * dims)
    x_e = image((1, 3) + (6,) * dims, seed=1)
    with torch.no_grad():
        y = up(x, x_e)
    assert seen["up"].shape == (1, 4) + (6,) * dims  # 2x2 stride-2 up-convolution to out_chns
    assert torch.equal(seen["convs_in"], torch.cat([x_e, seen["up"]], dim=1))
    assert y.shape == (1, 4) + (6,) * dims


@pytest.mark.parametrize("dims", [2, 3])
def test_frcunet_wiring(dims):
    """Forward hooks: encoder -> reduce -> FR -> post -> decoders, each UpConvNormCat taking the encoder map of its
    level (deepest first) as skip; the head reads the last decoder."""
    torch.manual_seed(0)
    net = FRCUNet(dims, 1, 2, features=(4, 8, 16), freq_channels=4, gauss_kernel_sizes=(3,)).double().eval()
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            seen[name] = (inputs, output)

        return hook

    modules = {"enc0": net.conv_0, "reduce": net.reduce, "fr": net.fr, "post": net.post, "head": net.final_conv}
    modules.update({f"enc{i + 1}": d for i, d in enumerate(net.downs)})
    modules.update({f"up{i}": u for i, u in enumerate(net.ups)})
    for name, m in modules.items():
        m.register_forward_hook(keep(name))
    x = image((1, 1) + (8,) * dims)
    with torch.no_grad():
        net(x)
    out = {k: v[1] for k, v in seen.items()}
    assert torch.equal(seen["reduce"][0][0], out["enc2"])
    assert torch.equal(seen["fr"][0][0], out["reduce"])
    assert torch.equal(seen["post"][0][0], out["fr"])
    assert torch.equal(seen["up0"][0][0], out["post"]) and torch.equal(seen["up0"][0][1], out["enc1"])
    assert torch.equal(seen["up1"][0][0], out["up0"]) and torch.equal(seen["up1"][0][1], out["enc0"])
    assert torch.equal(seen["head"][0][0], out["up1"])
