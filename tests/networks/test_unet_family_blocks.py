"""U-Net family building blocks, checked by value (networks/unet_family.py).

UNet++'s nested skips are checked with hooks on every node (X^{i,j} must receive up(X^{i+1,j-1}) and
X^{i,0..j-1} in the documented order); the blocks (KerasUpCat, residual units, the summed ASPP and the ResUNet++
attention gate) are compared with their equations written out in NumPy (float64, batch norms in eval mode
with random running statistics) and with hand-set weights whose result can be worked out by hand. The squeeze-excite
block is the shared one (tests/networks/test_squeeze_excitation.py); here it is checked inside the residual units.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from networks.blocks import SqueezeExcitation
from networks.unet_family import (
    AttentionResUpCat,
    KerasAttentionBlock,
    KerasResidualUnit,
    KerasResUNet,
    KerasResUNetPlusPlus,
    KerasUNetPlusPlus,
    KerasUpCat,
    ResidualStem,
    ResUpCat,
    SumASPP,
)

DIMS = pytest.mark.parametrize("spatial_dims", [2, 3])


# ---------------------------------------------------------------------------------------------------- NumPy references


def npy(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, stride: int = 1, dilation: int = 1):
    """Cross-correlation with zero "same" padding ``dilation * (k - 1) // 2`` (odd k):
    ``out[b, o, p] = sum_{i, t} w[o, i, t] x_pad[b, i, stride * p + dilation * t] + bias[o]``."""
    nd = x.ndim - 2
    kernel = w.shape[2:]
    pads = [dilation * (k - 1) // 2 for k in kernel]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pads])
    out_shape = [(s + 2 * p - dilation * (k - 1) - 1) // stride + 1 for s, p, k in zip(x.shape[2:], pads, kernel)]
    out = np.zeros((x.shape[0], w.shape[0], *out_shape))
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = tuple(slice(dilation * t, dilation * t + stride * (n - 1) + 1, stride) for t, n in zip(tap, out_shape))
        patch = xp[(slice(None), slice(None)) + window]
        out += np.einsum("oi,bi...->bo...", w[(slice(None), slice(None)) + tap], patch)
    if b is not None:
        out += b.reshape(1, -1, *([1] * nd))
    return out


def conv(x: np.ndarray, layer: torch.nn.Module) -> np.ndarray:
    return np_conv(x, npy(layer.weight), None if layer.bias is None else npy(layer.bias), layer.stride[0],
                   layer.dilation[0])


def conv_transpose2(x: np.ndarray, layer: torch.nn.Module) -> np.ndarray:
    """Transposed conv, kernel 2 stride 2: ``out[b, o, 2p + t] = sum_i x[b, i, p] w[i, o, t] + bias[o]``."""
    w = npy(layer.weight)
    nd = x.ndim - 2
    out = np.zeros((x.shape[0], w.shape[1], *(2 * s for s in x.shape[2:])))
    for tap in itertools.product(range(2), repeat=nd):
        dst = (slice(None), slice(None)) + tuple(slice(t, None, 2) for t in tap)
        out[dst] = np.einsum("io,bi...->bo...", w[(slice(None), slice(None)) + tap], x)
    return out + npy(layer.bias).reshape(1, -1, *([1] * nd))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def bn(x: np.ndarray, norm: torch.nn.Module) -> np.ndarray:
    """Batch norm in eval mode; the identity where the block was built with ``norm=None``."""
    if isinstance(norm, torch.nn.Identity):
        return x
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = npy(norm.running_mean).reshape(shape), npy(norm.running_var).reshape(shape)
    return (x - mean) / np.sqrt(var + norm.eps) * npy(norm.weight).reshape(shape) + npy(norm.bias).reshape(shape)


def nearest2(x: np.ndarray) -> np.ndarray:
    for axis in range(2, x.ndim):
        x = np.repeat(x, 2, axis=axis)
    return x


def maxpool2(x: np.ndarray) -> np.ndarray:
    shape = list(x.shape[:2])
    for s in x.shape[2:]:
        shape += [s // 2, 2]
    return x.reshape(shape).max(axis=tuple(range(3, len(shape), 2)))


def np_se(x: np.ndarray, se: SqueezeExcitation) -> np.ndarray:
    """x * sigmoid(W2 relu(W1 mean(x))), no biases."""
    hidden = relu(x.reshape(*x.shape[:2], -1).mean(-1) @ npy(se.fc[0].weight).T)
    gate = sigmoid(hidden @ npy(se.fc[2].weight).T)
    return x * gate.reshape(*gate.shape, *([1] * (x.ndim - 2)))


def np_double_conv(x: np.ndarray, block) -> np.ndarray:
    """Two [Conv3x3 -> ReLU] (no norm, no dropout: the Keras default)."""
    for layer in (block.conv_0, block.conv_1):
        x = relu(conv(x, layer.conv))
    return x


def np_residual_unit(x: np.ndarray, unit: KerasResidualUnit) -> np.ndarray:
    """[(norm0) -> ReLU -> Conv3x3 s -> BN -> ReLU -> Conv3x3] + [Conv1x1 s -> BN], then SE where present; the
    shortcut sees the raw input."""
    y = conv(relu(bn(conv(relu(bn(x, unit.norm0)), unit.conv1), unit.norm1)), unit.conv2)
    out = y + bn(conv(x, unit.shortcut[0]), unit.shortcut[1])
    return out if isinstance(unit.se, torch.nn.Identity) else np_se(out, unit.se)


def np_attention(g: np.ndarray, x: np.ndarray, block: KerasAttentionBlock, sigmoid_gate: bool) -> np.ndarray:
    """a = Conv(ReLU(BN(MaxPool2(Conv(ReLU(BN(g)))) + Conv(ReLU(BN(x)))))) (-> sigmoid); output a * x."""

    def path(t, seq):
        return conv(relu(bn(t, seq[0])), seq[2])

    a = path(maxpool2(path(g, block.g_path)) + path(x, block.x_path), block.gc_path)
    return (sigmoid(a) if sigmoid_gate else a) * x


def randomise(module: torch.nn.Module, std: float = 0.5, seed: int = 0) -> None:
    """Every parameter N(0, std), batch-norm weights around 1, random running statistics (use in eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.add_(1.0)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------------------ UNet++


@DIMS
@pytest.mark.parametrize("x03_quirk", [True, False])
def test_unetplusplus_nested_skips(spatial_dims, x03_quirk):
    """Hooks on every node: X^{i,j} (j >= 1) is called with x = X^{i+1,j-1} and skips = [X^{i,0}, ..., X^{i,j-1}] (the
    very tensors those nodes returned), its double conv sees concat[up(X^{i+1,j-1}), X^{i,0}, ..., X^{i,j-1}] in that
    order, it has base * 2**i channels (2 * base at X^{0,3} with the quirk), and the output conv reads X^{0,4}."""
    base = 2
    net = KerasUNetPlusPlus(spatial_dims, 1, 2, features=base, x03_quirk=x03_quirk).double().eval()
    nodes = {(i, j): getattr(net, f"conv_{i}_{j}") for j in range(5) for i in range(5 - j)}
    outputs, inputs, cat_inputs, up_outputs = {}, {}, {}, {}
    for key, node in nodes.items():
        node.register_forward_hook(lambda m, a, out, key=key: outputs.__setitem__(key, out))
        if key[1] >= 1:
            node.register_forward_pre_hook(lambda m, a, key=key: inputs.__setitem__(key, a))
            node.convs.register_forward_pre_hook(lambda m, a, key=key: cat_inputs.__setitem__(key, a[0]))
            node.up.register_forward_hook(lambda m, a, out, key=key: up_outputs.__setitem__(key, out))
    final_in = []
    net.final_conv.register_forward_pre_hook(lambda m, a: final_in.append(a[0]))
    with torch.no_grad():
        net(rand(1, 1, *(16,) * spatial_dims))

    assert set(outputs) == set(nodes)
    for (i, j), out in outputs.items():
        expected = 2 * base if (x03_quirk and (i, j) == (0, 3)) else base * 2**i
        assert out.shape[1] == expected, (i, j)
        assert tuple(out.shape[2:]) == (16 // 2**i,) * spatial_dims
        if j == 0:
            continue
        x, skips = inputs[(i, j)]
        assert x is outputs[(i + 1, j - 1)], (i, j)
        assert len(skips) == j and all(s is outputs[(i, k)] for k, s in enumerate(skips)), (i, j)
        assert up_outputs[(i, j)].shape[1] == base * 2**i
        expected_cat = torch.cat([up_outputs[(i, j)], *(outputs[(i, k)] for k in range(j))], dim=1)
        assert torch.equal(cat_inputs[(i, j)], expected_cat), (i, j)
    assert final_in[0] is outputs[(0, 4)]


@DIMS
@pytest.mark.parametrize("up_first", [True, False])
def test_upcat_matches_numpy(spatial_dims, up_first):
    """KerasUpCat: ConvTranspose 2x2 stride 2 (no activation), concat with two skips ([up, s1, s2] for UNet++,
    [s1, s2, up] for U-Net), then [Conv3x3 -> ReLU] x 2."""
    block = KerasUpCat(spatial_dims, 4, 3, 2, up_channels=2, up_first=up_first).double()
    randomise(block)
    x = rand(2, 4, *(2,) * spatial_dims)
    skips = [rand(2, 1, *(4,) * spatial_dims, seed=1), rand(2, 2, *(4,) * spatial_dims, seed=2)]
    up = conv_transpose2(x.numpy(), block.up)
    parts = [up, *(s.numpy() for s in skips)] if up_first else [*(s.numpy() for s in skips), up]
    expected = np_double_conv(np.concatenate(parts, axis=1), block.convs)
    with torch.no_grad():
        np.testing.assert_allclose(block(x, skips).numpy(), expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------- residual units


@DIMS
@pytest.mark.parametrize("pre_norm", [False, True])
@pytest.mark.parametrize("strides", [1, 2])
def test_residual_unit_with_silent_residual_path_returns_the_shortcut(spatial_dims, pre_norm, strides):
    """conv2 zeroed (weight and bias): F(x) = 0, so the unit returns BN(Conv1x1_s(x)) of the raw input; the 1x1 conv
    with stride s reads every s-th voxel."""
    unit = KerasResidualUnit(spatial_dims, 3, 4, strides=strides, pre_norm=pre_norm).double().eval()
    randomise(unit)
    with torch.no_grad():
        unit.conv2.weight.zero_()
        unit.conv2.bias.zero_()
    x = rand(2, 3, *(4,) * spatial_dims)
    sub = x.numpy()[(slice(None), slice(None)) + (slice(None, None, strides),) * spatial_dims]
    w, b = npy(unit.shortcut[0].weight).reshape(4, 3), npy(unit.shortcut[0].bias)
    expected = bn(np.einsum("oi,bi...->bo...", w, sub) + b.reshape(1, -1, *([1] * spatial_dims)), unit.shortcut[1])
    with torch.no_grad():
        np.testing.assert_allclose(unit(x).numpy(), expected, rtol=1e-10, atol=1e-12)


@DIMS
@pytest.mark.parametrize("pre_norm, strides, se_reduction", [(False, 2, None), (True, 2, 2), (True, 1, None)])
def test_residual_unit_matches_numpy(spatial_dims, pre_norm, strides, se_reduction):
    """Output = F(x) + shortcut(x) (then SE): the pre-activation unit written out in NumPy."""
    unit = KerasResidualUnit(spatial_dims, 3, 4, strides, pre_norm=pre_norm, se_reduction=se_reduction).double().eval()
    randomise(unit, seed=1)
    x = rand(2, 3, *(4,) * spatial_dims)
    with torch.no_grad():
        np.testing.assert_allclose(unit(x).numpy(), np_residual_unit(x.numpy(), unit), rtol=1e-10, atol=1e-12)


@DIMS
@pytest.mark.parametrize("se_reduction", [None, 2])
def test_residual_stem_matches_numpy(spatial_dims, se_reduction):
    """Stem: [Conv3x3 -> BN -> ReLU -> Conv3x3] + [Conv1x1 -> BN], then SE (ResUNet++)."""
    stem = ResidualStem(spatial_dims, 2, 4, se_reduction=se_reduction).double().eval()
    randomise(stem, seed=2)
    x = rand(2, 2, *(4,) * spatial_dims).numpy()
    out = conv(relu(bn(conv(x, stem.conv1), stem.norm1)), stem.conv2) + bn(conv(x, stem.shortcut[0]), stem.shortcut[1])
    expected = out if se_reduction is None else np_se(out, stem.se)
    with torch.no_grad():
        np.testing.assert_allclose(stem(torch.from_numpy(x)).numpy(), expected, rtol=1e-10, atol=1e-12)


@DIMS
def test_resupcat_matches_numpy(spatial_dims):
    """ResUNet decoder level: nearest x2 -> concat [up, skip] -> BN -> residual unit whose shortcut sees that BN."""
    block = ResUpCat(spatial_dims, 3, 2, 4).double().eval()
    randomise(block, seed=3)
    x, skip = rand(1, 3, *(2,) * spatial_dims), rand(1, 2, *(4,) * spatial_dims, seed=1)
    normed = bn(np.concatenate([nearest2(x.numpy()), skip.numpy()], axis=1), block.norm)
    with torch.no_grad():
        np.testing.assert_allclose(block(x, skip).numpy(), np_residual_unit(normed, block.res), rtol=1e-10, atol=1e-12)


@DIMS
def test_resunet_encoder_normalised_tensor_is_unit_input_and_skip(spatial_dims):
    """ResUNet re-uses the normalised encoder output: what enters down[k] (main path and shortcut) is exactly the
    output of enc_norms[k], and the same tensor is the skip of decoder level 3 - k."""
    net = KerasResUNet(spatial_dims, 1, 1, features=2).double().eval()
    normed, unit_in, skip_in = {}, {}, {}
    for k in range(4):
        net.enc_norms[k].register_forward_hook(lambda m, a, out, k=k: normed.__setitem__(k, out))
        net.downs[k].register_forward_pre_hook(lambda m, a, k=k: unit_in.__setitem__(k, a[0]))
        net.ups[3 - k].register_forward_pre_hook(lambda m, a, k=k: skip_in.__setitem__(k, a[1]))
    with torch.no_grad():
        net(rand(1, 1, *(16,) * spatial_dims))
    for k in range(4):
        assert unit_in[k] is normed[k] and skip_in[k] is normed[k]


# ------------------------------------------------------------------------------------------------------------- ASPP


@DIMS
def test_sum_aspp_sums_every_branch(spatial_dims):
    """Zero kernels, branch biases 1, 10, 100, 1000, no norm, identity projection: the output is 1111 everywhere, so
    every branch is added exactly once (dropping one removes a digit)."""
    aspp = SumASPP(spatial_dims, 2, 3, dilations=(6, 12, 18, 1), norm=None).double()
    with torch.no_grad():
        for branch, bias in zip(aspp.branches, (1.0, 10.0, 100.0, 1000.0)):
            branch[0].weight.zero_()
            branch[0].bias.fill_(bias)
        aspp.project.weight.copy_(torch.eye(3).reshape(3, 3, *(1,) * spatial_dims))
        aspp.project.bias.zero_()
    out = aspp(rand(1, 2, *(5,) * spatial_dims))
    torch.testing.assert_close(out, torch.full_like(out, 1111.0))


@DIMS
@pytest.mark.parametrize("branch", [0, 1, 2])
def test_sum_aspp_dilation_rates(spatial_dims, branch):
    """Only one branch active with a single corner tap (offset -1 per axis) of weight 1: an impulse at the centre moves
    by exactly the branch's dilation d along every axis (out[p] = x[p - d])."""
    dilations = (1, 2, 3)
    aspp = SumASPP(spatial_dims, 1, 1, dilations=dilations, norm=None).double()
    with torch.no_grad():
        for p in aspp.parameters():
            p.zero_()
        aspp.branches[branch][0].weight[(0, 0) + (0,) * spatial_dims] = 1.0
        aspp.project.weight.fill_(1.0)
    x = torch.zeros(1, 1, *(9,) * spatial_dims, dtype=torch.float64)
    x[(0, 0) + (4,) * spatial_dims] = 1.0
    expected = torch.zeros_like(x)
    expected[(0, 0) + (4 + dilations[branch],) * spatial_dims] = 1.0
    torch.testing.assert_close(aspp(x), expected)


@DIMS
def test_sum_aspp_matches_numpy(spatial_dims):
    """Random weights, batch norm (eval): project(sum_d BN_d(Conv3x3_dilation_d(x)))."""
    aspp = SumASPP(spatial_dims, 2, 3, dilations=(1, 2, 3)).double().eval()
    randomise(aspp, seed=4)
    x = rand(1, 2, *(5,) * spatial_dims)
    total = sum(bn(conv(x.numpy(), b[0]), b[1]) for b in aspp.branches)
    with torch.no_grad():
        np.testing.assert_allclose(aspp(x).numpy(), conv(total, aspp.project), rtol=1e-10, atol=1e-12)


def test_resunetplusplus_aspp_modules_use_the_documented_dilations():
    """Bridge and output ASPP: 3x3 branches with dilations 6, 12, 18, 1 (x rate_scale), each padded to 'same'."""
    for scale, expected in ((1, (6, 12, 18, 1)), (0.25, (2, 3, 4, 1))):
        net = KerasResUNetPlusPlus(3, 1, 1, features=2, rate_scale=scale)
        for aspp in (net.bridge, net.out_aspp):
            assert [b[0].dilation for b in aspp.branches] == [(d,) * 3 for d in expected]
            assert [b[0].padding for b in aspp.branches] == [(d,) * 3 for d in expected]


# --------------------------------------------------------------------------------------------------- attention gate


@DIMS
@pytest.mark.parametrize("use_sigmoid", [False, True])
def test_attention_gate_hand_worked(spatial_dims, use_sigmoid):
    """Last conv of the gate zeroed with bias 2: the attention map is 2 everywhere (sigmoid(2) with the sigmoid), and
    the block returns that map times x."""
    block = KerasAttentionBlock(spatial_dims, 2, 3, sigmoid=use_sigmoid).double().eval()
    randomise(block)
    with torch.no_grad():
        block.gc_path[2].weight.zero_()
        block.gc_path[2].bias.fill_(2.0)
    g, x = rand(1, 2, *(4,) * spatial_dims), rand(1, 3, *(2,) * spatial_dims, seed=1)
    factor = 1 / (1 + np.exp(-2.0)) if use_sigmoid else 2.0
    torch.testing.assert_close(block(g, x), factor * x)


@DIMS
@pytest.mark.parametrize("use_sigmoid", [False, True])
def test_attention_gate_matches_numpy(spatial_dims, use_sigmoid):
    """Random weights: g-path (BN, ReLU, Conv, MaxPool 2) + x-path (BN, ReLU, Conv) -> BN, ReLU, Conv -> gate * x."""
    block = KerasAttentionBlock(spatial_dims, 2, 3, sigmoid=use_sigmoid).double().eval()
    randomise(block, seed=5)
    g, x = rand(2, 2, *(4,) * spatial_dims), rand(2, 3, *(2,) * spatial_dims, seed=1)
    with torch.no_grad():
        out = block(g, x).numpy()
    np.testing.assert_allclose(out, np_attention(g.numpy(), x.numpy(), block, use_sigmoid), rtol=1e-10, atol=1e-12)


@DIMS
def test_attention_res_upcat_matches_numpy(spatial_dims):
    """ResUNet++ decoder level: attention(g = skip, x) -> nearest x2 -> concat [up, skip] -> residual unit + SE."""
    block = AttentionResUpCat(spatial_dims, 4, 2, 4, se_reduction=2).double().eval()
    randomise(block, seed=6)
    x, skip = rand(1, 4, *(2,) * spatial_dims), rand(1, 2, *(4,) * spatial_dims, seed=1)
    attended = np_attention(skip.numpy(), x.numpy(), block.attention, False)
    cat = np.concatenate([nearest2(attended), skip.numpy()], axis=1)
    with torch.no_grad():
        out = block(x, skip).numpy()
    np.testing.assert_allclose(out, np_residual_unit(cat, block.res), rtol=1e-10, atol=1e-12)
