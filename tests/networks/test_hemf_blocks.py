"""HEMF building blocks, checked by value (networks/hemf.py, networks/blocks/attention.py).

The formulas come from the module docstrings (the port of Esgjgd/HEMF): vision retention with a per-head Manhattan
decay ``gamma_h ** |i - j|`` (``gamma_h = 1 - 2 ** -(1 + 3 h / heads)``) and an xPos/RoPE rotation of q and k,
multi-head external attention (softmax over tokens, then L1 over memory slots), the fusion block's
``x = LN(x); x = LN(x * MHEA(x)); x = x * SA(x); x = x * CA(x)``, the SIRMLP and the pooled/normalised linear head.
Each is written out below in NumPy (float64) from those equations; the tests compare the modules against them with
random weights, and some hand-worked cases make the key terms visible.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.special import erf

from networks.blocks.attention import MultiHeadExternalAttention
from networks.hemf import (
    HEMF,
    SIRMLP,
    AxialRetention,
    ChannelsFirstLayerNorm,
    EGFBlock,
    ELFBlock,
    HEFBlock,
    RetentionRelPos,
    _rotate_every_two,
    _theta_shift,
)

DIMS = pytest.mark.parametrize("spatial_dims", [2, 3])


# ---------------------------------------------------------------------------------------------------- NumPy references


def npy(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, groups: int = 1) -> np.ndarray:
    """Stride-1 grouped cross-correlation, zero "same" padding (odd kernels); ``x (B, C, *S)``, ``w (O, C/g, *K)``."""
    nd = x.ndim - 2
    kernel = w.shape[2:]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(k // 2, k // 2) for k in kernel])
    out = np.zeros((x.shape[0], w.shape[0], *x.shape[2:]))
    cin, cout = w.shape[1], w.shape[0] // groups
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = xp[(slice(None), slice(None)) + tuple(slice(t, t + s) for t, s in zip(tap, x.shape[2:]))]
        for g in range(groups):
            wt = w[(slice(g * cout, (g + 1) * cout), slice(None)) + tap]
            out[:, g * cout : (g + 1) * cout] += np.einsum("oi,bi...->bo...", wt, window[:, g * cin : (g + 1) * cin])
    if b is not None:
        out += b.reshape(1, -1, *([1] * nd))
    return out


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm_last(x: np.ndarray, norm: torch.nn.Module) -> np.ndarray:
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + norm.eps) * npy(norm.weight) + npy(norm.bias)


def layer_norm_channels(x: np.ndarray, norm: torch.nn.Module) -> np.ndarray:
    """LayerNorm over axis 1 of (B, C, *S)."""
    return np.moveaxis(layer_norm_last(np.moveaxis(x, 1, -1), norm), -1, 1)


def batch_norm_eval(x: np.ndarray, bn: torch.nn.Module) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = npy(bn.running_mean).reshape(shape), npy(bn.running_var).reshape(shape)
    return (x - mean) / np.sqrt(var + bn.eps) * npy(bn.weight).reshape(shape) + npy(bn.bias).reshape(shape)


def linear(x: np.ndarray, layer: torch.nn.Linear) -> np.ndarray:
    return x @ npy(layer.weight).T + (0 if layer.bias is None else npy(layer.bias))


def conv(x: np.ndarray, layer: torch.nn.Module) -> np.ndarray:
    b = None if layer.bias is None else npy(layer.bias)
    return np_conv(x, npy(layer.weight), b, groups=layer.groups)


def gammas(num_heads: int, initial_value: float = 1.0, heads_range: float = 3.0) -> np.ndarray:
    """Per-head decay rates of the retention: gamma_h = 1 - 2 ** -(initial + range * h / heads)."""
    return 1.0 - 2.0 ** -(initial_value + heads_range * np.arange(num_heads) / num_heads)


def decay_mask(length: int, gamma: np.ndarray) -> np.ndarray:
    """(heads, L, L) log-decay mask: log(gamma_h ** |i - j|)."""
    dist = np.abs(np.arange(length)[:, None] - np.arange(length)[None, :])
    return dist[None] * np.log(gamma)[:, None, None]


def rope(x: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    """xPos/RoPE rotation of ``x (B, heads, *S, d)``: channel pair j of flattened position n is multiplied, as the
    complex number x_{2j} + i x_{2j+1}, by exp(i n theta_j) with theta_j = 10000 ** -linspace(0, 1, d/2)[j]."""
    d = x.shape[-1]
    theta = 10000.0 ** -np.linspace(0, 1, d // 2)
    n = np.arange(math.prod(spatial)).reshape(spatial)
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * n[..., None] * theta)
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def np_axial_retention(x: np.ndarray, ret: AxialRetention) -> np.ndarray:
    """Decomposed retention of channels-last ``x (B, *S, C)``: q, k (scaled by d**-0.5) rotated; then for the last
    axis first, ``v <- softmax_j(q_i . k_j + log gamma_h**|i-j|) v_j`` along that axis only; out_proj(v + LePE(v0))."""
    b, *spatial = x.shape[:-1]
    c, heads = x.shape[-1], ret.num_heads
    d, n = c // heads, len(spatial)
    v0 = linear(x, ret.v_proj)
    lepe = np.moveaxis(conv(np.moveaxis(v0, -1, 1), ret.lepe), 1, -1)

    def split(t):  # (B, *S, C) -> (B, heads, *S, d), channel = h * d + e
        return np.moveaxis(t.reshape(b, *spatial, heads, d), -2, 1)

    q = rope(split(linear(x, ret.q_proj)), tuple(spatial))
    k = rope(split(linear(x, ret.k_proj) * d**-0.5), tuple(spatial))
    v = split(v0)
    letters = "xyz"[:n]
    gamma = gammas(heads)
    for axis in reversed(range(n)):
        qi = "bh" + letters.replace(letters[axis], "i") + "e"
        kj = "bh" + letters.replace(letters[axis], "j") + "e"
        others = letters.replace(letters[axis], "")
        logits = np.einsum(f"{qi},{kj}->bh{others}ij", q, k)
        mask = decay_mask(spatial[axis], gamma).reshape(heads, *([1] * (n - 1)), spatial[axis], spatial[axis])
        attn = softmax(logits + mask, axis=-1)
        v = np.einsum(f"bh{others}ij,{kj}->{qi}", attn, v)
    out = np.moveaxis(v, 1, -2).reshape(b, *spatial, c)
    return linear(out + lepe, ret.out_proj)


def np_mhea(x: np.ndarray, mhea: MultiHeadExternalAttention) -> np.ndarray:
    """Multi-head external attention of ``x (B, C, *S)``: per head (channels h*d .. h*d+d-1) and token n,
    a = softmax_n(M_k t_n), a <- a / sum_s a, out_n = M_v a_n; plus x if the shortcut is on."""
    b, c = x.shape[:2]
    heads = mhea.heads
    tokens = x.reshape(b, heads, c // heads, -1)  # (B, heads, d, N)
    attn = softmax(np.einsum("bhdn,sd->bhns", tokens, npy(mhea.memory_key.weight)), axis=2)
    attn = attn / attn.sum(axis=3, keepdims=True)
    out = np.einsum("bhns,ds->bhdn", attn, npy(mhea.memory_value.weight)).reshape(x.shape)
    return out + x if mhea.shortcut else out


def np_spatial_attention(x: np.ndarray, sa) -> np.ndarray:
    pooled = np.concatenate([x.mean(1, keepdims=True), x.max(1, keepdims=True)], axis=1)
    return sigmoid(conv(pooled, sa.conv))


def np_channel_attention(x: np.ndarray, ca) -> np.ndarray:
    w1 = npy(ca.mlp[0].weight).reshape(ca.mlp[0].out_channels, -1)
    w2 = npy(ca.mlp[2].weight).reshape(ca.mlp[2].out_channels, -1)
    flat = x.reshape(*x.shape[:2], -1)

    def mlp(v):
        return np.maximum(v @ w1.T, 0) @ w2.T

    gate = sigmoid(mlp(flat.mean(-1)) + mlp(flat.max(-1)))
    return gate.reshape(*x.shape[:2], *([1] * (x.ndim - 2)))


def np_attend(x: np.ndarray, norm, mhea, sa, ca) -> np.ndarray:
    """HEF attention path: x = LN(x); x = LN(x * MHEA(x)) (the same LN); x = x * SA(x); x = x * CA(x)."""
    x = layer_norm_channels(x, norm)
    x = layer_norm_channels(x * np_mhea(x, mhea), norm)
    x = x * np_spatial_attention(x, sa)
    return x * np_channel_attention(x, ca)


def np_conv_bn(x: np.ndarray, block) -> np.ndarray:
    """A MONAI ``Convolution`` of this file's ``_conv_norm``: conv, then batch norm (eval) where it has one."""
    y = conv(x, block.conv)
    return batch_norm_eval(y, block.adn.N) if hasattr(block, "adn") and hasattr(block.adn, "N") else y


def np_sirmlp(x: np.ndarray, mlp: SIRMLP) -> np.ndarray:
    """r = BN(Conv1(x)); y = BN(GELU(Conv3(r)) + r); out = BN(Conv1(GELU(Conv1(y)))) through 4C hidden channels."""
    r = np_conv_bn(x, mlp.conv_s)
    y = batch_norm_eval(gelu(np_conv_bn(r, mlp.conv1)) + r, mlp.norm1)
    return np_conv_bn(gelu(np_conv_bn(y, mlp.conv2)), mlp.conv3)


def np_avg_pool2(x: np.ndarray) -> np.ndarray:
    nd = x.ndim - 2
    shape = list(x.shape[:2])
    for s in x.shape[2:]:
        shape += [s // 2, 2]
    return x.reshape(shape).mean(axis=tuple(3 + 2 * i for i in range(nd)))


def np_hef(local: np.ndarray, glob: np.ndarray, previous: np.ndarray | None, blk: HEFBlock) -> np.ndarray:
    """The fusion block of the HEFBlock docstring, in eval mode (batch norms use their running statistics)."""
    w_local, w_global = np_conv_bn(local, blk.w_l), np_conv_bn(glob, blk.w_g)
    if previous is not None:
        shortcut = np_avg_pool2(np.maximum(np_conv_bn(previous, blk.up), 0))
        cat = np.concatenate([shortcut, w_local, w_global], axis=1)
        x_f = gelu(np_conv_bn(layer_norm_channels(cat, blk.norm_fuse3), blk.fuse3))
    else:
        shortcut = 0.0
        cat = np.concatenate([w_local, w_global], axis=1)
        x_f = gelu(np_conv_bn(layer_norm_channels(cat, blk.norm_fuse2), blk.fuse2))
    local = np_attend(local, blk.norm_l, blk.mhea_l, blk.sa_l, blk.ca_l)
    glob = np_attend(glob, blk.norm_g, blk.mhea_g, blk.sa_g, blk.ca_g)
    fused = np_sirmlp(layer_norm_channels(np.concatenate([glob, local, x_f], axis=1), blk.norm_out), blk.mlp)
    return shortcut + fused


def randomise(module: torch.nn.Module, std: float = 0.5, seed: int = 0) -> None:
    """Every parameter N(0, std) (LayerNorm/BatchNorm weights around 1) and random batch-norm running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            if isinstance(m, (torch.nn.LayerNorm, ChannelsFirstLayerNorm, torch.nn.modules.batchnorm._BatchNorm)):
                m.weight.add_(1.0)


# --------------------------------------------------------------------------------------------------------- retention


def test_rotate_every_two_and_theta_shift_hand_worked():
    """[x0, x1, x2, x3] -> [-x1, x0, -x3, x2]; theta shift = x cos + rot(x) sin rotates each pair by its angle:
    (1, 0) by 90 degrees is (0, 1), (3, 4) by 180 degrees is (-3, -4)."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert _rotate_every_two(x).tolist() == [-2.0, 1.0, -4.0, 3.0]
    angles = torch.tensor([math.pi / 2, math.pi / 2, math.pi, math.pi], dtype=torch.float64)
    shifted = _theta_shift(torch.tensor([1.0, 0.0, 3.0, 4.0], dtype=torch.float64), angles.sin(), angles.cos())
    torch.testing.assert_close(shifted, torch.tensor([0.0, 1.0, -3.0, -4.0], dtype=torch.float64))


@pytest.mark.parametrize("spatial", [(3, 4), (2, 3, 4)])
def test_rel_pos_decay_masks_and_angles(spatial):
    """RetentionRelPos: one (heads, L, L) mask per axis equal to log(gamma_h ** |i - j|), and sin/cos of
    n * theta_j with theta_j repeated for both channels of a pair, n the flattened position."""
    heads, dim = 4, 16
    (sin, cos), masks = RetentionRelPos(dim, heads)(spatial)
    assert len(masks) == len(spatial)
    for mask, length in zip(masks, spatial):
        np.testing.assert_allclose(npy(mask), decay_mask(length, gammas(heads)), rtol=1e-6, atol=1e-7)
    # head 0 decays by exactly one half per step: exp(mask) = 1, 1/2, 1/4, ...
    np.testing.assert_allclose(np.exp(npy(masks[-1][0, 0])), [1.0, 0.5, 0.25, 0.125], rtol=1e-6)
    theta = np.repeat(10000.0 ** -np.linspace(0, 1, dim // heads // 2), 2)
    phase = np.arange(math.prod(spatial)).reshape(spatial)[..., None] * theta
    np.testing.assert_allclose(npy(sin), np.sin(phase), atol=1e-5)
    np.testing.assert_allclose(npy(cos), np.cos(phase), atol=1e-5)


@pytest.mark.parametrize(
    "spatial_dims, spatial, axis", [(2, (1, 3), 1), (2, (3, 1), 0), (3, (1, 1, 3), 2), (3, (3, 1, 1), 0)]
)
def test_retention_with_silent_queries_is_the_normalised_decay(spatial_dims, spatial, axis):
    """q = k = 0, v and out_proj identities, LePE off: the logits are the decay mask alone, so retention along the
    only axis of length 3 averages the values with weights gamma_h ** |i - j| / sum_j. Head 0 (gamma 1/2) gives rows
    [1, 1/2, 1/4] / 1.75, [1/2, 1, 1/2] / 2, [1/4, 1/2, 1] / 1.75; head 1 has gamma = 1 - 2**-2.5. Without the
    mask every row would be the plain mean."""
    ret = AxialRetention(spatial_dims, dim=4, num_heads=2).double()
    with torch.no_grad():
        for p in ret.parameters():
            p.zero_()
        ret.v_proj.weight.copy_(torch.eye(4))
        ret.out_proj.weight.copy_(torch.eye(4))
    rel_pos = RetentionRelPos(4, 2).double()(spatial)
    x = torch.randn(2, *spatial, 4, dtype=torch.float64)
    with torch.no_grad():
        out = ret(x, rel_pos).numpy().reshape(2, 3, 4)
    xs = x.numpy().reshape(2, 3, 4)
    for head, gamma in enumerate((0.5, 1 - 2**-2.5)):
        weights = gamma ** np.abs(np.arange(3)[:, None] - np.arange(3)[None, :])
        weights /= weights.sum(1, keepdims=True)
        ch = slice(2 * head, 2 * head + 2)
        # the decay buffers are float32, hence the tolerance
        np.testing.assert_allclose(out[..., ch], np.einsum("ij,bjc->bic", weights, xs[..., ch]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spatial_dims, spatial", [(2, (3, 4)), (3, (2, 3, 4))])
def test_axial_retention_matches_numpy(spatial_dims, spatial):
    """Random weights: AxialRetention equals the written-out retention (rotated q/k, per-axis decayed softmax passes
    W then H (then D), LePE on v, output projection)."""
    ret = AxialRetention(spatial_dims, dim=8, num_heads=2, lepe_kernel_size=3).double()
    randomise(ret)
    x = torch.randn(2, *spatial, 8, dtype=torch.float64)
    with torch.no_grad():
        out = ret(x, RetentionRelPos(8, 2).double()(spatial)).numpy()
    np.testing.assert_allclose(out, np_axial_retention(x.numpy(), ret), rtol=1e-5, atol=1e-6)  # float32 buffers


@DIMS
def test_egf_block_post_norm_layers_with_shared_norms(spatial_dims):
    """EGF block (depth 2): per layer x = LN1(x + Ret(x)), x = LN2(x + Linear(x)), the two LNs shared by the layers."""
    spatial = (2, 3) if spatial_dims == 2 else (2, 2, 3)
    block = EGFBlock(spatial_dims, dim=8, num_heads=2, depth=2, lepe_kernel_size=3).double()
    randomise(block, seed=2)
    x = torch.randn(1, 8, *spatial, dtype=torch.float64)
    h = np.moveaxis(x.numpy(), 1, -1)
    for ret, ffn in zip(block.retentions, block.ffns):
        h = layer_norm_last(h + np_axial_retention(h, ret), block.norm1)
        h = layer_norm_last(h + linear(h, ffn), block.norm2)
    with torch.no_grad():
        np.testing.assert_allclose(block(x).numpy(), np.moveaxis(h, -1, 1), rtol=1e-5, atol=1e-6)


@DIMS
def test_elf_block(spatial_dims):
    """ELF block: x + GELU(PW(DW3(LN(Conv3(x))))) with PW a Linear over channels."""
    block = ELFBlock(spatial_dims, channels=4).double()
    randomise(block, seed=3)
    x = torch.randn(2, 4, *(3,) * spatial_dims, dtype=torch.float64)
    y = conv(layer_norm_channels(conv(x.numpy(), block.conv), block.norm), block.dwconv)
    expected = x.numpy() + gelu(np.moveaxis(linear(np.moveaxis(y, 1, -1), block.pwconv), -1, 1))
    with torch.no_grad():
        np.testing.assert_allclose(block(x).numpy(), expected, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------------------------- external attention


@DIMS
@pytest.mark.parametrize("shortcut", [False, True])
def test_multi_head_external_attention_matches_numpy(spatial_dims, shortcut):
    """MHEA with random memories: softmax over the tokens, L1 over the memory slots, shared memories for all heads."""
    mhea = MultiHeadExternalAttention(8, heads=2, memory_size=5, shortcut=shortcut).double()
    randomise(mhea, std=1.0)
    x = torch.randn(2, 8, *((3, 4) if spatial_dims == 2 else (2, 3, 2)), dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(mhea(x).numpy(), np_mhea(x.numpy(), mhea), rtol=1e-10, atol=1e-12)


def _hef(spatial_dims: int, seed: int = 0) -> HEFBlock:
    blk = HEFBlock(spatial_dims, 8, previous_channels=4, num_heads=2, memory_size=4, ca_ratio=4, sa_kernel_size=3)
    blk = blk.double().eval()
    randomise(blk, seed=seed)
    return blk


@DIMS
def test_attention_path_multiplies_by_mhea(spatial_dims):
    """Hand-set: memory values zero, so MHEA(x) = 0; x * MHEA(x) = 0 and LN(0) = 0 (LN bias zeroed), so the whole
    attention path returns exactly zero. With x + MHEA(x) it would return LN(LN(x)) * SA * CA, which is not zero."""
    blk = _hef(spatial_dims)
    with torch.no_grad():
        blk.mhea_l.memory_value.weight.zero_()
        blk.norm_l.bias.zero_()
    x = torch.randn(2, 8, *(4,) * spatial_dims, dtype=torch.float64)
    with torch.no_grad():
        out = HEFBlock._attend(x, blk.norm_l, blk.mhea_l, blk.sa_l, blk.ca_l)
    assert torch.count_nonzero(out) == 0


@DIMS
def test_attention_path_matches_numpy(spatial_dims):
    """x = LN(x); x = LN(x * MHEA(x)); x = x * SA(x); x = x * CA(x), random weights, written out in NumPy."""
    blk = _hef(spatial_dims, seed=1)
    x = torch.randn(2, 8, *(4,) * spatial_dims, dtype=torch.float64)
    with torch.no_grad():
        out = HEFBlock._attend(x, blk.norm_g, blk.mhea_g, blk.sa_g, blk.ca_g).numpy()
    np.testing.assert_allclose(out, np_attend(x.numpy(), blk.norm_g, blk.mhea_g, blk.sa_g, blk.ca_g), rtol=1e-8,
                               atol=1e-10)


@DIMS
@pytest.mark.parametrize("with_previous", [False, True])
def test_hef_block_matches_numpy(spatial_dims, with_previous):
    """The whole fusion block (eval mode) against its docstring written out: concat orders [F', W_l L, W_g G] and
    [G', L', X], the pooled shortcut from the previous stage (none at the first stage) and the SIRMLP."""
    blk = _hef(spatial_dims, seed=2)
    size = (4,) * spatial_dims
    local = torch.randn(2, 8, *size, dtype=torch.float64)
    glob = torch.randn(2, 8, *size, dtype=torch.float64)
    previous = torch.randn(2, 4, *(8,) * spatial_dims, dtype=torch.float64) if with_previous else None
    with torch.no_grad():
        out = blk(local, glob, previous).numpy()
    expected = np_hef(local.numpy(), glob.numpy(), None if previous is None else previous.numpy(), blk)
    np.testing.assert_allclose(out, expected, rtol=1e-8, atol=1e-10)


@DIMS
@pytest.mark.parametrize("depthwise", [False, True])
def test_sirmlp_matches_numpy(spatial_dims, depthwise):
    """SIRMLP (eval mode): squeeze conv + BN, inverted residual around the 3x3 (dense or depthwise), 4C expansion."""
    mlp = SIRMLP(spatial_dims, 6, 4, 3, depthwise=depthwise).double().eval()
    randomise(mlp, seed=4)
    assert mlp.conv1.conv.groups == (4 if depthwise else 1)
    x = torch.randn(2, 6, *(3,) * spatial_dims, dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(mlp(x).numpy(), np_sirmlp(x.numpy(), mlp), rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------------------------------- classifier head


@DIMS
def test_classifier_head_pools_normalises_and_projects(spatial_dims):
    """The last fusion output is replaced (by a forward hook) with a known tensor F of shape (B, C, 2, ..., 2); the
    logits must be Linear(LN(mean over the spatial positions of F)) with the model's head weights."""
    net = HEMF(spatial_dims, in_channels=1, out_channels=3, features=(8, 16), elf_depths=1, egf_depths=1, num_heads=2,
               memory_size=4, ca_ratio=4, sa_kernel_size=3).double().eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        net.norm.weight.copy_(1 + 0.5 * torch.randn(16, generator=gen))
        net.norm.bias.copy_(0.5 * torch.randn(16, generator=gen))
        net.head.weight.copy_(torch.randn(3, 16, generator=gen))
        net.head.bias.copy_(torch.randn(3, generator=gen))
    fused = torch.randn(2, 16, *(2,) * spatial_dims, generator=gen, dtype=torch.float64)
    net.fusions[-1].register_forward_hook(lambda module, args, out: fused)
    with torch.no_grad():
        logits = net(torch.randn(2, 1, *(16,) * spatial_dims, dtype=torch.float64)).numpy()
    pooled = fused.numpy().reshape(2, 16, -1).mean(-1)
    expected = linear(layer_norm_last(pooled, net.norm), net.head)
    np.testing.assert_allclose(logits, expected, rtol=1e-10)
