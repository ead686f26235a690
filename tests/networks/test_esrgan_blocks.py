"""ESRGAN / SE-ESRGAN building blocks, checked by value (networks/esrgan.py).

Every expected value is computed here, independently of the module under test: a NumPy cross-correlation written out
below (``np_conv``), an explicit per-index pixel shuffle, hand-set weights that make a block compute a number that can
be worked out by hand, or 1D interpolation formulas written out. Everything runs in float64 on tiny inputs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from networks.esrgan import (
    RRDB,
    NearestConvUpsample,
    PixelShuffleUpsample,
    ResidualDenseBlock,
    RRDBNet,
    SqueezeExcitation,
    VGGStyleDiscriminator,
    esrgan,
    pixel_shuffle_per_axis,
    se_esrgan,
)


DIMS = pytest.mark.parametrize("spatial_dims", [2, 3])
SHAPES = {2: (6, 5), 3: (4, 5, 3)}  # tiny spatial shapes per dimension


# ---------------------------------------------------------------------------------------------------- NumPy references


def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Stride-1 cross-correlation with zero "same" padding: ``out[b, o, p] = sum_{i, t} w[o, i, t] x[b, i, p + t - k//2]
    + bias[o]`` for ``x (B, C, *S)`` and ``w (O, C, *K)`` with odd K."""
    nd = x.ndim - 2
    kernel = w.shape[2:]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(k // 2, k // 2) for k in kernel])
    out = np.zeros((x.shape[0], w.shape[0], *x.shape[2:]))
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = xp[(slice(None), slice(None)) + tuple(slice(t, t + s) for t, s in zip(tap, x.shape[2:]))]
        out += np.einsum("oi,bi...->bo...", w[(slice(None), slice(None)) + tap], window)
    if b is not None:
        out += b.reshape(1, -1, *([1] * nd))
    return out


def lrelu(x: np.ndarray, slope: float) -> np.ndarray:
    return np.where(x >= 0, x, slope * x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def wb(conv) -> tuple[np.ndarray, np.ndarray | None]:
    """Weight and bias of a conv/linear layer as NumPy arrays."""
    return conv.weight.detach().numpy(), None if conv.bias is None else conv.bias.detach().numpy()


def np_rdb(x: np.ndarray, rdb: ResidualDenseBlock, slope: float) -> np.ndarray:
    """ESRGAN's RDB written out: conv k sees concat[x, x1, ..., x_{k-1}], LeakyReLU after convs 1-4, and the published
    residual scale 0.2 (hard-coded here on purpose, so that a changed default is noticed)."""
    feats = [x]
    for conv in (rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4):
        feats.append(lrelu(np_conv(np.concatenate(feats, axis=1), *wb(conv)), slope))
    x5 = np_conv(np.concatenate(feats, axis=1), *wb(rdb.conv5))
    return x + 0.2 * x5


def np_pixel_shuffle(x: np.ndarray, factors) -> np.ndarray:
    """Explicit index map: ``out[b, c, s_1 f_1 + k_1, ..., s_n f_n + k_n] = x[b, c * prod(f) + k, s_1, ..., s_n]`` where
    ``k`` is the row-major index of ``(k_1, ..., k_n)`` (the ``torch.nn.PixelShuffle`` convention)."""
    batch, cf, *spatial = x.shape
    r = math.prod(factors)
    out = np.empty((batch, cf // r, *(s * f for s, f in zip(spatial, factors))))
    for c in range(cf // r):
        for k, sub in enumerate(itertools.product(*(range(f) for f in factors))):
            for pos in itertools.product(*(range(s) for s in spatial)):
                dst = tuple(p * f + o for p, f, o in zip(pos, factors, sub))
                out[(slice(None), c) + dst] = x[(slice(None), c * r + k) + pos]
    return out


def np_nearest(x: np.ndarray, factors) -> np.ndarray:
    for axis, f in enumerate(factors):
        x = np.repeat(x, f, axis=2 + axis)
    return x


def np_linear_x2(x: np.ndarray, axis: int) -> np.ndarray:
    """Linear x2 with half-pixel centres (align_corners=False): output 2m is 0.75 x[m] + 0.25 x[m-1] and 2m+1 is
    0.75 x[m] + 0.25 x[m+1], the neighbour index clamped to the border."""
    x = np.moveaxis(x, axis, -1)
    prev = np.concatenate([x[..., :1], x[..., :-1]], axis=-1)
    nxt = np.concatenate([x[..., 1:], x[..., -1:]], axis=-1)
    out = np.stack([0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt], axis=-1).reshape(*x.shape[:-1], -1)
    return np.moveaxis(out, -1, axis)


def np_bicubic_x2(x: np.ndarray, axis: int, a: float = -0.75) -> np.ndarray:
    """Keys cubic convolution (a = -0.75, PyTorch's bicubic) x2 with half-pixel centres, border-replicated taps.

    Output 2m samples the input at m - 0.25 and 2m+1 at m + 0.25: taps m-2..m+1 with t = 0.75, resp. m-1..m+2 with
    t = 0.25, weighted by the cubic kernel at distances (1 + t, t, 1 - t, 2 - t).
    """

    def kernel(d):
        d = abs(d)
        return (a + 2) * d**3 - (a + 3) * d**2 + 1 if d <= 1 else a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a

    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    out = np.zeros((*x.shape[:-1], 2 * n))
    for i in range(2 * n):
        src = (i + 0.5) / 2 - 0.5
        base = math.floor(src)
        t = src - base
        for tap, dist in zip(range(base - 1, base + 3), (1 + t, t, 1 - t, 2 - t)):
            out[..., i] += kernel(dist) * x[..., min(max(tap, 0), n - 1)]
    return np.moveaxis(out, -1, axis)


def centre(spatial_dims: int) -> tuple[int, ...]:
    return (1,) * spatial_dims


def randomise(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> None:
    """Replace every parameter by N(0, std) so that no term of a block is negligible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


# ------------------------------------------------------------------------------------------------ residual dense block


@DIMS
def test_rdb_hand_worked_residual_scale(spatial_dims):
    """convs 1-4 silenced (LReLU(0) = 0) and conv5 = identity on the x slice with bias 0.5: the dense block must return
    x + 0.2 * (x + 0.5) = 1.2 x + 0.1. A residual scale of 1.0 would give 2 x + 0.5, no skip 0.2 x + 0.1."""
    nf, gc = 3, 2
    rdb = ResidualDenseBlock(spatial_dims, features=nf, growth_channels=gc).double()
    with torch.no_grad():
        for p in rdb.parameters():
            p.zero_()
        for c in range(nf):
            rdb.conv5.weight[(c, c) + centre(spatial_dims)] = 1.0
        rdb.conv5.bias.fill_(0.5)
    x = torch.randn(2, nf, *SHAPES[spatial_dims], dtype=torch.float64)
    torch.testing.assert_close(rdb(x), 1.2 * x + 0.1)


@DIMS
@pytest.mark.parametrize("slope", [0.2, 0.01])
def test_rdb_matches_numpy_dense_block(spatial_dims, slope):
    """With random weights the block equals the dense concatenation written out in NumPy (conv k sees
    [x, x1, ..., x_{k-1}] in that order, LeakyReLU of the given slope after convs 1-4, none after conv5)."""
    torch.manual_seed(0)
    rdb = ResidualDenseBlock(spatial_dims, features=3, growth_channels=2, lrelu_slope=slope).double()
    randomise(rdb)
    x = torch.randn(2, 3, *SHAPES[spatial_dims], dtype=torch.float64)
    with torch.no_grad():
        out = rdb(x).numpy()
    np.testing.assert_allclose(out, np_rdb(x.numpy(), rdb, slope), rtol=1e-10, atol=1e-12)


@DIMS
def test_rrdb_hand_worked_outer_residual(spatial_dims):
    """Each RDB with conv5 silenced is the identity, so the RRDB must return x + 0.2 * x = 1.2 x (its own 0.2 scale)."""
    rrdb = RRDB(spatial_dims, features=3, growth_channels=2).double()
    randomise(rrdb)
    with torch.no_grad():
        for rdb in (rrdb.rdb1, rrdb.rdb2, rrdb.rdb3):
            rdb.conv5.weight.zero_()
            rdb.conv5.bias.zero_()
    x = torch.randn(2, 3, *SHAPES[spatial_dims], dtype=torch.float64)
    torch.testing.assert_close(rrdb(x), 1.2 * x)


@DIMS
def test_rrdb_matches_numpy(spatial_dims):
    """Random weights: RRDB(x) = x + 0.2 * rdb3(rdb2(rdb1(x))) with each RDB written out in NumPy."""
    rrdb = RRDB(spatial_dims, features=3, growth_channels=2).double()
    randomise(rrdb, seed=1)
    x = torch.randn(1, 3, *SHAPES[spatial_dims], dtype=torch.float64)
    h = x.numpy()
    for rdb in (rrdb.rdb1, rrdb.rdb2, rrdb.rdb3):
        h = np_rdb(h, rdb, 0.2)
    with torch.no_grad():
        np.testing.assert_allclose(rrdb(x).numpy(), x.numpy() + 0.2 * h, rtol=1e-10, atol=1e-12)


@DIMS
@pytest.mark.parametrize("nb", [1, 2])
def test_trunk_long_skip_hand_worked(spatial_dims, nb):
    """Identity 'centre-tap' convs, silenced dense blocks (each RRDB is then 1.2 x): the trunk gives
    feat + conv_body(body(feat)) = (1 + 1.2**nb) feat, and conv_hr -> LReLU(0.2) -> conv_last passes it through, so
    out = LReLU((1 + 1.2**nb) x). Without the long skip it would be 1.2**nb x."""
    net = RRDBNet(spatial_dims, 1, 1, features=2, growth_channels=2, num_blocks=nb, scale=1).double()
    c = centre(spatial_dims)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.conv_first.weight[(0, 0) + c] = 1.0  # channel 0 = x, channel 1 = 0
        for conv in (net.conv_body, net.conv_hr):
            for ch in range(2):
                conv.weight[(ch, ch) + c] = 1.0
        net.conv_last.weight[(0, 0) + c] = 1.0
    x = torch.randn(2, 1, *SHAPES[spatial_dims], dtype=torch.float64)
    with torch.no_grad():
        out = net(x).numpy()
    np.testing.assert_allclose(out, lrelu((1 + 1.2**nb) * x.numpy(), 0.2), rtol=1e-12)


# ------------------------------------------------------------------------------------------------- squeeze-excitation
# (the block itself, shared with ResUNet++, is checked by value in tests/networks/test_squeeze_excitation.py)


@pytest.mark.parametrize("spatial_dims, scale, lr_shape", [(2, 2, (1, 1, 4, 6)), (3, (1, 1, 2), (1, 1, 3, 4, 2))])
def test_se_esrgan_puts_the_se_after_upsampling(spatial_dims, scale, lr_shape):
    """In the SE-ESRGAN preset the (bias-free) SE is called once, right after the up-sampling stage and before conv_hr,
    on the up-sampling output itself, i.e. at the HR resolution. The plain ESRGAN preset has no SE at all."""
    net = se_esrgan(spatial_dims, 1, 1, scale=scale, num_blocks=1, features=8, growth_channels=4).double().eval()
    assert isinstance(net.se, SqueezeExcitation) and all(m.bias is None for m in net.se.fc if hasattr(m, "bias"))
    assert sum(isinstance(m, SqueezeExcitation) for m in net.modules()) == 1
    calls = []

    def record(name):
        return lambda module, args, out: calls.append((name, args[0], out))

    for name in ("upsample", "se", "conv_hr"):
        getattr(net, name).register_forward_hook(record(name))
    with torch.no_grad():
        net(torch.randn(lr_shape, dtype=torch.float64))
    assert [c[0] for c in calls] == ["upsample", "se", "conv_hr"]
    (_, _, up_out), (_, se_in, se_out), (_, hr_in, _) = calls
    assert se_in is up_out and hr_in is se_out
    factors = (scale,) * spatial_dims if isinstance(scale, int) else scale
    assert tuple(se_in.shape[2:]) == tuple(s * f for s, f in zip(lr_shape[2:], factors))
    plain = esrgan(spatial_dims, 1, 1, num_blocks=1, features=8, growth_channels=4)
    assert not any(isinstance(m, SqueezeExcitation) for m in plain.modules())


@DIMS
def test_presets_leaky_relu_slopes(spatial_dims):
    """ESRGAN uses LeakyReLU 0.2 everywhere, the Uneshance SE-ESRGAN PyTorch's default 0.01 everywhere (trunk
    included); the slope of each dense block is what its LeakyReLU applies to a negative input."""
    for factory, slope in ((esrgan, 0.2), (se_esrgan, 0.01)):
        net = factory(spatial_dims, 1, 1, scale=2, num_blocks=2, features=8, growth_channels=4)
        assert {m.negative_slope for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)} == {slope}
        rdb = net.body[1].rdb3
        assert rdb.lrelu(torch.tensor([-1.0])).item() == pytest.approx(-slope)


# ------------------------------------------------------------------------------------------------------ up-sampling


@pytest.mark.parametrize("factors", [(2, 2), (1, 2), (2, 1), (1, 1, 2), (2, 1, 4), (2, 2, 2)])
def test_pixel_shuffle_per_axis_index_map(factors):
    """Against the explicit index map (see ``np_pixel_shuffle``) for isotropic and per-axis factors."""
    spatial = (3, 2, 2)[: len(factors)]
    x = torch.randn(2, 2 * math.prod(factors), *spatial, dtype=torch.float64)
    np.testing.assert_array_equal(pixel_shuffle_per_axis(x, factors).numpy(), np_pixel_shuffle(x.numpy(), factors))
    if len(factors) == 2 and factors[0] == factors[1]:
        torch.testing.assert_close(pixel_shuffle_per_axis(x, factors), torch.nn.PixelShuffle(factors[0])(x))


@pytest.mark.parametrize("factors", [(2, 2), (1, 2), (1, 1, 2), (2, 2, 2)])
@pytest.mark.parametrize("slope", [0.2, 0.01])
def test_nearest_conv_upsample(factors, slope):
    """NearestConvUpsample = LeakyReLU(conv3(nearest x factors)); nearest is np.repeat along each axis."""
    spatial_dims = len(factors)
    stage = NearestConvUpsample(spatial_dims, 3, factors, lrelu_slope=slope).double()
    randomise(stage, std=0.5)
    x = torch.randn(1, 3, *SHAPES[spatial_dims], dtype=torch.float64)
    expected = lrelu(np_conv(np_nearest(x.numpy(), factors), *wb(stage.conv)), slope)
    with torch.no_grad():
        np.testing.assert_allclose(stage(x).numpy(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("factors", [(2, 2), (1, 2), (1, 1, 2), (2, 2, 2)])
def test_pixel_shuffle_upsample(factors):
    """PixelShuffleUpsample = LeakyReLU(shuffle(conv3 to C * prod(factors))), isotropic (MONAI) and per-axis paths."""
    spatial_dims = len(factors)
    stage = PixelShuffleUpsample(spatial_dims, 2, factors, lrelu_slope=0.1).double()
    randomise(stage, std=0.5)
    x = torch.randn(1, 2, *SHAPES[spatial_dims], dtype=torch.float64)
    expected = lrelu(np_pixel_shuffle(np_conv(x.numpy(), *wb(stage.subpixel.conv_block)), factors), 0.1)
    with torch.no_grad():
        np.testing.assert_allclose(stage(x).numpy(), expected, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------------ interpolation skip


def _reference_interpolation(x: np.ndarray, mode: str, factors) -> np.ndarray:
    if mode == "nearest":
        return np_nearest(x, factors)
    resample = np_bicubic_x2 if mode == "bicubic" else np_linear_x2
    for axis, f in enumerate(factors):
        assert f in (1, 2)
        if f == 2:
            x = resample(x, 2 + axis)
    return x


@pytest.mark.parametrize(
    "spatial_dims, scale, skip, mode, shape",
    [
        (2, 2, "auto", "bicubic", (2, 1, 5, 4)),  # 'auto' is bicubic in 2D
        (2, 2, "nearest", "nearest", (1, 1, 3, 4)),
        (3, (1, 1, 2), "auto", "linear", (1, 1, 3, 2, 4)),  # 'auto' is trilinear in 3D: linear along the slice axis
        (3, (1, 2, 4), "nearest", "nearest", (1, 1, 2, 3, 2)),
    ],
)
def test_interpolation_skip_adds_exactly_the_interpolated_input(spatial_dims, scale, skip, mode, shape):
    """With identical weights, generator(x) - plain_generator(x) is the interpolation of x, written out in NumPy."""
    tiny = {"features": 4, "growth_channels": 2, "num_blocks": 1, "scale": scale}
    plain = RRDBNet(spatial_dims, 1, 1, **tiny).double().eval()
    net = RRDBNet(spatial_dims, 1, 1, **tiny, interpolation_skip=skip).double().eval()
    net.load_state_dict(plain.state_dict())
    x = torch.rand(shape, dtype=torch.float64)
    factors = (scale,) * spatial_dims if isinstance(scale, int) else scale
    with torch.no_grad():
        diff = (net(x) - plain(x)).numpy()
    np.testing.assert_allclose(diff, _reference_interpolation(x.numpy(), mode, factors), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- discriminator


@DIMS
def test_discriminator_first_activation_is_leaky_relu_0_2(spatial_dims):
    """First conv set to copy the input into every channel (centre tap 1, bias 0, no norm on the first conv): its
    output is then LeakyReLU(x) with the ESRGAN slope 0.2, i.e. 0.2 x on negative inputs."""
    disc = VGGStyleDiscriminator(spatial_dims, 1, head="gap", features=2, channel_mults=(1, 2)).double().eval()
    conv = disc.stages[0].conv_0.conv
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[(slice(None), 0) + centre(spatial_dims)] = 1.0
        conv.bias.zero_()
    seen = []
    disc.stages[0].conv_0.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    x = torch.randn(2, 1, *(8,) * spatial_dims, dtype=torch.float64)
    with torch.no_grad():
        disc(x)
    expected = np.repeat(lrelu(x.numpy(), 0.2), 2, axis=1)
    np.testing.assert_allclose(seen[0].numpy(), expected, rtol=1e-12)
    slopes = {m.negative_slope for m in disc.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.2}


@DIMS
@pytest.mark.parametrize("head", ["gap", "fc"])
def test_discriminator_heads_give_one_logit_per_image(spatial_dims, head):
    """The head maps the last stage's features of each image to one logit: gap = W2 lrelu(W1 mean(f) + b1) + b2,
    fc = W2 lrelu(W1 flatten(f) + b1) + b2 (flatten in C-major order), written out in NumPy from the hooked features."""
    size = (8,) * spatial_dims
    disc = VGGStyleDiscriminator(
        spatial_dims, 1, in_shape=size, head=head, features=2, channel_mults=(1, 2), fc_hidden=3
    ).double().eval()
    features = []
    disc.stages[-1].register_forward_hook(lambda m, a, out: features.append(out.numpy().copy()))
    x = torch.randn(3, 1, *size, dtype=torch.float64)
    with torch.no_grad():
        logits = disc(x)
    f = features[0]
    pooled = f.reshape(3, f.shape[1], -1).mean(-1) if head == "gap" else f.reshape(3, -1)
    (w1, b1), (w2, b2) = wb(disc.head[-3]), wb(disc.head[-1])
    expected = lrelu(pooled @ w1.T + b1, 0.2) @ w2.T + b2
    assert logits.shape == (3, 1)
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-10)
