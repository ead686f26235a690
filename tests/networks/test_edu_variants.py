"""E-DU's skip pathways (``EDU(skip=...)``): both readings of the paper and their ablations.

``"mde"``/``"plain"``: MDE added on each skip of the DenseNet-block U-Net, or identity skips. ``"dense"``: a
UNet++-style nested pathway of dense blocks X^{i,j} between encoder and decoder; ``"dense_mde"``: the same pathway
with each nested dense block replaced by MDE (fixed depthwise filters + 1x1 fusion). Parameter counts are derived by
hand below; the wiring is checked with forward hooks against the encoder outputs; the up-convolutions have no bias,
and a state dict that has them loads with the same eval-mode output.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from networks import EDU
from networks.edu import MDE, DenseTransitionBlock, NestedNode

VARIANTS = ("mde", "plain", "dense", "dense_mde")
TINY = {"features": (4, 8, 16), "dense_layers": 2}


def dense_block(c_in: int, c_out: int, layers: int, taps: int) -> int:
    """Parameters of a DenseTransitionBlock: per layer BN (2 per channel) + 3^d conv to growth g = c_out // 4 (no bias)
    on c_in + l * g channels; then the transition's BN and 1x1 conv (no bias) on c_in + layers * g channels."""
    g = max(c_out // 4, 1)
    total = sum(2 * (c_in + k * g) + taps * (c_in + k * g) * g for k in range(layers))
    return total + 2 * (c_in + layers * g) + (c_in + layers * g) * c_out


def test_dense_block_formula_written_out_in_2d():
    # the formula against the sums written by hand (3x3 convs: 9 taps)
    assert dense_block(1, 4, 2, 9) == (2 + 9) + (4 + 18) + (6 + 12) == 51  # g = 1
    assert dense_block(4, 8, 2, 9) == (8 + 72) + (12 + 108) + (16 + 64) == 280  # g = 2
    assert dense_block(8, 16, 2, 9) == (16 + 288) + (24 + 432) + (32 + 256) == 1048  # g = 4
    assert dense_block(16, 8, 2, 9) == (32 + 288) + (36 + 324) + (40 + 160) == 880
    assert dense_block(8, 4, 2, 9) == (16 + 72) + (18 + 81) + (20 + 40) == 247
    assert dense_block(12, 4, 2, 9) == (24 + 108) + (26 + 117) + (28 + 56) == 359


def expected_parameters(spatial_dims: int, skip: str) -> int:
    """TINY (features 4, 8, 16; 2 dense layers), 1 input channel, 2 classes, counted from the parts."""
    taps, up = (9, 4) if spatial_dims == 2 else (27, 8)  # 3^d conv taps; 2^d taps of the 2x2 up-convolution
    encoders = dense_block(1, 4, 2, taps) + dense_block(4, 8, 2, taps) + dense_block(8, 16, 2, taps)
    head = 4 * 2 + 2  # 1x1 conv with bias
    ups = 16 * 8 * up + 8 * 4 * up  # decoder up-convolutions 16 -> 8 and 8 -> 4, no bias
    if skip in ("mde", "plain"):
        decoders = dense_block(2 * 8, 8, 2, taps) + dense_block(2 * 4, 4, 2, taps)  # cat([up, skip])
        mde = (4 * 8 * 8 + 2 * 8) + (4 * 4 * 4 + 2 * 4)  # MDE(C): 1x1 conv 4C -> C, BN; filters are buffers
        return encoders + ups + decoders + head + (mde if skip == "mde" else 0)
    # three levels: one nested node X^{0,1} = block(cat([up(X^{1,0}), X^{0,0}])), 8 -> 4 channels, its own 8 -> 4 up
    nested_up = 8 * 4 * up
    # a dense block, or MDE: its 1x1 fusion of x and 3 enhanced maps (4 * 8 -> 4 channels) and BN
    node = dense_block(8, 4, 2, taps) if skip == "dense" else 4 * 8 * 4 + 2 * 4
    # decoders: X^{1,1} = block(cat([up(X^{2,0}), X^{1,0}])) 16 -> 8
    # and X^{0,2} = block(cat([up(X^{1,1}), X^{0,0}, X^{0,1}])) 12 -> 4
    decoders = dense_block(16, 8, 2, taps) + dense_block(12, 4, 2, taps)
    return encoders + nested_up + node + ups + decoders + head


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("skip", VARIANTS)
def test_parameter_count_derived_by_hand(spatial_dims, skip):
    assert n_params(EDU(spatial_dims, 1, 2, skip=skip, **TINY)) == expected_parameters(spatial_dims, skip)


def test_parameter_counts_in_numbers():
    # the 2D sums of expected_parameters written out: encoders 51 + 280 + 1048 = 1379, decoder ups 512 + 128 = 640
    assert expected_parameters(2, "plain") == 1379 + 640 + 880 + 247 + 10 == 3156
    assert expected_parameters(2, "mde") == 3156 + 272 + 72 == 3500
    assert expected_parameters(2, "dense") == 1379 + (128 + 247) + 640 + 880 + 359 + 10 == 3643
    assert expected_parameters(2, "dense_mde") == 3643 - 247 + 136 == 3532
    assert [expected_parameters(3, s) for s in VARIANTS] == [7524, 7180, 8245, 7828]


@pytest.mark.parametrize("skip", VARIANTS)
@pytest.mark.parametrize(
    "spatial_dims, in_shape", [(2, (2, 1, 16, 24)), (3, (1, 1, 8, 16, 24))], ids=["2d", "3d"]
)
def test_output_shape(skip, spatial_dims, in_shape):
    net = EDU(spatial_dims, 1, 3, features=(4, 8, 8, 8), dense_layers=1, skip=skip).eval()
    with torch.no_grad():
        assert net(torch.randn(in_shape)).shape == (in_shape[0], 3) + in_shape[2:]


@pytest.mark.parametrize("levels, nodes", [(2, []), (3, [(0, 1)]), (4, [(0, 1), (1, 1), (0, 2)]),
                                           (5, [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (0, 3)])])
@pytest.mark.parametrize("skip", ["dense", "dense_mde"])
def test_nested_pathway_has_the_unetpp_nodes(levels, nodes, skip):
    # X^{i,j} for j >= 1 and i + j <= L - 2, column by column: (L - 1)(L - 2) / 2 nodes; the decoders are X^{i,L-1-i}
    features = tuple(4 * 2**i for i in range(levels))
    net = EDU(2, 1, 2, features=features, dense_layers=1, skip=skip)
    assert len(nodes) == (levels - 1) * (levels - 2) // 2
    assert list(net.nested) == [f"x{i}_{j}" for i, j in nodes]
    assert [(n.row, n.col) for n in net.nested.values()] == nodes
    assert sum(isinstance(m, NestedNode) for m in net.modules()) == len(nodes)
    for (i, j), node in zip(nodes, net.nested.values()):
        width = features[i]
        # the block reads (j + 1) maps of the level's width and gives one
        if skip == "dense":
            assert isinstance(node.block, DenseTransitionBlock)
            assert node.block.dense[0].layers[0].num_features == (j + 1) * width
            assert node.block.transition[1].out_channels == width
        else:  # MDE of the (j + 1) maps: the 1x1 fusion reads them and their 3 enhanced versions
            assert isinstance(node.block, MDE) and node.block.channels == (j + 1) * width
            assert (node.block.fuse[0].in_channels, node.block.fuse[0].out_channels) == (4 * (j + 1) * width, width)
        assert (node.up.in_channels, node.up.out_channels) == (features[i + 1], width)
    assert len(net.decoders) == len(net.ups) == levels - 1 and len(net.skips) == 0
    # decoder of level i reads the up-sampled deeper decoder and X^{i,0}, ..., X^{i,L-2-i}: (L - i) widths
    for k, decoder in enumerate(net.decoders):
        level = levels - 2 - k
        assert decoder.dense[0].layers[0].num_features == (levels - level) * features[level]


@pytest.mark.parametrize("skip", ["mde", "plain"])
def test_direct_skips_have_no_nested_pathway(skip):
    net = EDU(2, 1, 2, skip=skip, **TINY)
    assert len(net.nested) == 0 and len(net.skips) == 2
    assert all(isinstance(s, MDE if skip == "mde" else nn.Identity) for s in net.skips)
    assert [d.dense[0].layers[0].num_features for d in net.decoders] == [16, 8]  # cat([up, skip]): 2 widths


def _convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)]


def test_dense_mde_has_no_learnable_3x3_convs_in_the_nested_pathway():
    net = EDU(3, 1, 2, features=(4, 8, 16, 32, 64), dense_layers=1, skip="dense_mde")
    for name, node in net.nested.items():
        kernels = sorted({tuple(m.kernel_size) for m in _convs(node)})
        assert kernels == [(1, 1, 1), (2, 2, 2)], name  # the 1x1 fusion and the 2x2 up-convolution only
        # every weight of a spatial kernel larger than 2 is a fixed buffer (the Gaussians), none a parameter
        assert all(p.ndim < 5 or max(p.shape[2:]) <= 2 for p in node.parameters()), name
        assert len([b for n, b in node.named_buffers() if n.startswith("block.gaussians")]) == 4  # sizes 3, 5, 7, 9
    dense = EDU(3, 1, 2, features=(4, 8, 16, 32, 64), dense_layers=1, skip="dense")
    for name, node in dense.nested.items():  # where the dense reading has its learnable 3x3x3 convolutions
        assert (3, 3, 3) in {tuple(m.kernel_size) for m in _convs(node)}, name
        assert node.block.dense[0].layers[2].weight.requires_grad, name
    # outside the nested blocks the two are the same network: same state-dict keys and shapes
    def outside(n):
        return {k: v.shape for k, v in n.state_dict().items() if ".block." not in k}

    assert outside(net) == outside(dense)


@pytest.mark.parametrize("skip", VARIANTS)
def test_up_convolutions_have_no_bias(skip):
    net = EDU(2, 1, 2, features=(4, 8, 8, 8), dense_layers=1, skip=skip)
    ups = [m for m in net.modules() if isinstance(m, nn.modules.conv._ConvTransposeNd)]
    assert len(ups) == {"mde": 3, "plain": 3, "dense": 6, "dense_mde": 6}[skip]
    assert all(m.bias is None for m in ups)
    assert not any(".up.bias" in k or k.startswith("ups.") and k.endswith(".bias") for k in net.state_dict())


@pytest.mark.parametrize("skip", VARIANTS)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradients_reach_every_parameter_and_the_input(skip, spatial_dims):
    torch.manual_seed(0)
    net = EDU(spatial_dims, 1, 2, features=(4, 8, 8), dense_layers=1, skip=skip)
    x = torch.randn((2, 1) + (8,) * spatial_dims, requires_grad=True)
    net(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    silent = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, silent


@pytest.mark.parametrize("skip", ["dense", "dense_mde"])
def test_nested_wiring_by_hooks(skip):
    """Node X^{i,j} receives (X^{i+1,j-1}, [X^{i,0}, ..., X^{i,j-1}]), its block cat([up(X^{i+1,j-1}), X^{i,0}, ...]);
    the decoder of level i reads cat([up(deeper decoder), X^{i,0}, ..., X^{i,L-2-i}]); the head the last decoder."""
    levels = 4
    net = EDU(2, 1, 2, features=(4, 8, 8, 8), dense_layers=1, skip=skip).double().eval()
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            seen[name] = (inputs, output)

        return hook

    for i, enc in enumerate(net.encoders):
        enc.register_forward_hook(keep(f"enc{i}"))
    for name, node in net.nested.items():
        node.register_forward_hook(keep(name))
        node.up.register_forward_hook(keep(f"{name}.up"))
        node.block.register_forward_hook(keep(f"{name}.block"))
    for k, (up, dec) in enumerate(zip(net.ups, net.decoders)):
        up.register_forward_hook(keep(f"up{k}"))
        dec.register_forward_hook(keep(f"dec{k}"))
    net.head.register_forward_hook(keep("head"))
    with torch.no_grad():
        net(torch.randn(1, 1, 16, 8, dtype=torch.float64))

    grid = {(i, 0): seen[f"enc{i}"][1] for i in range(levels)}
    for name, node in net.nested.items():
        i, j = node.row, node.col
        (deeper, same_level), out = seen[name]
        assert torch.equal(deeper, grid[(i + 1, j - 1)])
        assert len(same_level) == j and all(torch.equal(a, grid[(i, c)]) for c, a in enumerate(same_level))
        assert torch.equal(seen[f"{name}.up"][0][0], deeper)
        expected = torch.cat([seen[f"{name}.up"][1]] + [grid[(i, c)] for c in range(j)], dim=1)
        assert torch.equal(seen[f"{name}.block"][0][0], expected)
        grid[(i, j)] = out
    x = grid[(levels - 1, 0)]
    for k in range(levels - 1):
        level = levels - 2 - k
        assert torch.equal(seen[f"up{k}"][0][0], x)
        expected = torch.cat([seen[f"up{k}"][1]] + [grid[(level, c)] for c in range(levels - 1 - level)], dim=1)
        assert torch.equal(seen[f"dec{k}"][0][0], expected)
        x = seen[f"dec{k}"][1]
    assert torch.equal(seen["head"][0][0], x)


def test_skip_composes_with_the_earlier_mde_switch():
    assert EDU(2, 1, 2, **TINY).skip == "mde"
    assert EDU(2, 1, 2, mde=True, **TINY).skip == "mde"  # the lung bundle's network_def: {"mde": true}
    assert EDU(2, 1, 2, mde=False, **TINY).skip == "plain"
    assert EDU(2, 1, 2, mde=True, skip="dense_mde", **TINY).skip == "dense_mde"
    assert EDU(2, 1, 2, mde=False, skip="dense", **TINY).skip == "dense"
    with pytest.raises(ValueError, match=r"^EDU: mde=False contradicts skip='mde'"):
        EDU(2, 1, 2, mde=False, skip="mde")
    with pytest.raises(ValueError, match=r"^EDU: mde=True contradicts skip='dense'"):
        EDU(2, 1, 2, mde=True, skip="dense")
    choices = r"\('mde', 'plain', 'dense', 'dense_mde'\)"
    with pytest.raises(ValueError, match=rf"^EDU: skip must be one of {choices}, got 'x'\.$"):
        EDU(2, 1, 2, skip="x")


@pytest.mark.parametrize("skip", ["mde", "plain"])
def test_state_dict_with_up_biases_loads_with_the_same_output(skip):
    """An earlier version's state dict (ups.k.bias present) loads strictly; in eval mode the network then gives what
    the earlier network gave: the same weights with each bias added to its up-convolution's output (a forward hook)."""
    torch.manual_seed(0)
    net = EDU(2, 1, 2, skip=skip, **TINY).double()
    net.train()
    with torch.no_grad():  # running statistics that are not zero/one, so that the bias matters in eval mode
        for _ in range(3):
            net(torch.randn(2, 1, 16, 16, dtype=torch.float64) + 0.5)
    net.eval()
    biases = [torch.randn(up.out_channels, dtype=torch.float64) for up in net.ups]
    old_state = dict(net.state_dict())
    old_state.update({f"ups.{k}.bias": b for k, b in enumerate(biases)})
    handles = [
        up.register_forward_hook(lambda m, i, o, b=b: o + b.view(1, -1, 1, 1)) for up, b in zip(net.ups, biases)
    ]
    x = torch.randn(1, 1, 16, 24, dtype=torch.float64)
    with torch.no_grad():
        with_bias = net(x)
        for h in handles:
            h.remove()
        without = net(x)
    assert (with_bias - without).abs().max() > 1e-3  # the bias changes the eval output

    loaded = EDU(2, 1, 2, skip=skip, **TINY).double().eval()
    loaded.load_state_dict(old_state)  # strict: no unexpected keys
    assert "ups.0.bias" in old_state  # the caller's dict is left as it was
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), with_bias, rtol=1e-12, atol=1e-12)
    # wrapped in another module (prefixed keys) it loads the same way
    outer = nn.Sequential(EDU(2, 1, 2, skip=skip, **TINY).double().eval())
    outer.load_state_dict({f"0.{k}": v for k, v in old_state.items()})
    with torch.no_grad():
        torch.testing.assert_close(outer(x), with_bias, rtol=1e-12, atol=1e-12)


def test_every_variant_scripts_with_the_eager_output():
    for skip in VARIANTS:
        net = EDU(2, 1, 2, features=(4, 8, 8), dense_layers=1, skip=skip).eval()
        x = torch.randn(1, 1, 8, 12)
        scripted = torch.jit.script(net)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-6)
