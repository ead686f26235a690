"""Tests of FRCUNet(encoder="xception"), the authors' network (networks/frcunet.py, networks/blocks/xception.py,
networks/blocks/keras_compat.py, networks/convert_xception.py).

Independent references: the parameter count is derived by hand from the layers of the authors' ``new_model.py`` (the
arithmetic is written out below) and checked against timm's ``xception65`` encoder count (37,867,312, from timm 1.0.31
``xception65(output_stride=16)`` without ``head``); ``tests/data/xception65_timm_tiny.npz`` holds a reduced-width
state dict of timm's own ``XceptionAligned`` and timm's outputs on an input (made by
``tests/data/make_xception65_timm_tiny.py``), which the converted weights must reproduce; padding, concatenation order
and initialiser statistics are checked against hand computations.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from networks import FRCUNet
from networks.blocks.keras_compat import Conv2dSame, keras_he_normal_
from networks.blocks.xception import Xception65, XceptionBlock
from networks.convert_xception import convert, keras_to_project, project_to_keras, timm_to_project
from networks.frcunet import NearestUpCat

REPO = Path(__file__).resolve().parents[2]
TIMM_TINY = REPO / "tests" / "data" / "xception65_timm_tiny.npz"

# reduced widths for fast tests: Xception (stem 2/4, entry 4/6/8, exit 10, 12/14), 1 middle block
TINY = {
    "xception_features": (2, 4, 4, 6, 8, 10, 12, 14),
    "middle_blocks": 1,
    "reduction_features": (8,),
    "freq_channels": 8,
    "gauss_kernel_sizes": (3, 5),
    "se_reduction": 4,
    "decoder_features": (8, 8, 4, 4, 2),
}


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _timm_tiny() -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """The timm-named state dict rebuilt from the flat array of the data file, and the file's arrays."""
    with np.load(TIMM_TINY, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    state, offset = {}, 0
    for key, shape, dtype in json.loads(str(arrays["timm_index"])):
        n = math.prod(shape)
        values = torch.from_numpy(arrays["timm_values"][offset : offset + n].copy())
        state[key] = values.reshape(shape).to(getattr(torch, dtype))
        offset += n
    assert offset == arrays["timm_values"].size
    return state, arrays


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """The tiny timm file saved as timm saves it (torch.save of the state dict) and converted by the CLI."""
    tmp_path = tmp_path_factory.mktemp("xception")
    state, arrays = _timm_tiny()
    src, dst = tmp_path / "xception65_tiny.pth", tmp_path / "encoder.pt"
    torch.save(state, src)
    proc = subprocess.run(
        [sys.executable, "-m", "networks.convert_xception", str(src), str(dst)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "xception_features=(2, 4, 4, 6, 8, 10, 12, 14), middle_blocks=1" in proc.stdout
    return dst, arrays


# --- the encoder -------------------------------------------------------------------------------------------------


def test_xception_skips_strides_and_channels_at_the_authors_widths():
    """x0 1/2 64 ch, x1 1/4 128, x2 1/8 256, output 1/16 2048 (the skips new_model.py concatenates)."""
    torch.manual_seed(0)
    enc = Xception65(3).eval()
    with torch.no_grad():
        x0, x1, x2, out = enc(torch.randn(1, 3, 32, 48))
    assert tuple(x0.shape) == (1, 64, 16, 24)
    assert tuple(x1.shape) == (1, 128, 8, 12)
    assert tuple(x2.shape) == (1, 256, 4, 6)
    assert tuple(out.shape) == (1, 2048, 2, 3)
    # output stride 16: exit flow at stride 1, rate 1 then rate 2 (as OS=16 in the Keras code)
    assert enc.exit_flow_block1.separable_conv3.depthwise.stride == (1, 1)
    assert enc.exit_flow_block1.separable_conv1.depthwise.dilation == (1, 1)
    assert all(enc.exit_flow_block2.get_submodule(f"separable_conv{i}").depthwise.dilation == (2, 2) for i in (1, 2, 3))
    assert len(enc.middle_flow) == 16


def test_xception_matches_timm_xception65(converted):
    """timm's own XceptionAligned (reduced widths, random weights) and this Xception65 loaded from the converted file
    give the same x0, x1, x2 and output (odd input: TensorFlow's and timm's first-conv padding agree there)."""
    dst, arrays = converted
    net = FRCUNet(2, 3, 1, encoder="xception", **TINY, pretrained_encoder=str(dst))
    enc = net.encoder.double().eval()
    with torch.no_grad():
        outputs = enc(torch.from_numpy(arrays["input"]).double())
    for name, value in zip(("x0", "x1", "x2", "out"), outputs):
        np.testing.assert_allclose(value.numpy(), arrays[name], rtol=0, atol=1e-10 * np.abs(arrays[name]).max())
    assert int(net.encoder.entry_flow_conv1_1_bn.num_batches_tracked) == 7  # buffers come along


def test_first_conv_pads_as_tensorflow_same():
    """Keras Conv2D(3, strides=2, padding='same') on an even size pads 0 before and 1 after (PyTorch's padding=1
    would be symmetric); a 2x2 'same' convolution pads 0 before and 1 after."""
    torch.manual_seed(0)
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False).double()
    x = torch.randn(1, 1, 8, 6, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-12)
    assert not torch.allclose(conv(x), F.conv2d(x, conv.weight, stride=2, padding=1))
    odd = torch.randn(1, 1, 7, 7, dtype=torch.float64)  # odd: pads 1 and 1
    torch.testing.assert_close(conv(odd), F.conv2d(odd, conv.weight, stride=2, padding=1), rtol=0, atol=1e-12)


def test_xception_block_shortcuts():
    """'conv': a strided 1x1 conv + BN is added; 'sum': the input; 'none': nothing (zeroed separable convs show it)."""
    x = torch.randn(1, 4, 8, 8)
    for kind, expected in (("sum", x), ("none", torch.zeros(1, 4, 8, 8))):
        block = XceptionBlock(4, [4, 4, 4], kind).eval()
        for i in (1, 2, 3):
            torch.nn.init.zeros_(block.get_submodule(f"separable_conv{i}").pointwise_bn.weight)
        with torch.no_grad():
            torch.testing.assert_close(block(x), expected)
    block = XceptionBlock(4, [6, 6, 6], "conv", stride=2).eval()
    torch.nn.init.zeros_(block.separable_conv3.pointwise_bn.weight)
    with torch.no_grad():
        bn = block.shortcut_bn
        expected = (F.conv2d(x, block.shortcut.weight, stride=2) - bn.running_mean[:, None, None]) / torch.sqrt(
            bn.running_var[:, None, None] + 1e-3
        )
        torch.testing.assert_close(block(x), expected)
    with pytest.raises(ValueError, match="'sum' shortcut needs stride 1"):
        XceptionBlock(4, [6, 6, 6], "sum")


# --- the decoder -------------------------------------------------------------------------------------------------


def test_decoder_concatenates_three_skips_in_the_authors_order():
    """Three decoder stages, fed x2, x1, x0 of the encoder (no full-resolution skip); the unet variant has four."""
    torch.manual_seed(0)
    net = FRCUNet(2, 3, 2, encoder="xception", **TINY).eval()
    seen, skips = [], []
    net.encoder.register_forward_hook(lambda m, i, o: skips.extend(o[:3]))
    for up in net.ups:
        up.register_forward_hook(lambda m, i, o: seen.append(i[1]))
    with torch.no_grad():
        out = net(torch.randn(1, 3, 32, 32))
    assert tuple(out.shape) == (1, 2, 32, 32)
    assert len(seen) == 3 and seen[0] is skips[2] and seen[1] is skips[1] and seen[2] is skips[0]
    assert [tuple(s.shape[2:]) for s in seen] == [(4, 4), (8, 8), (16, 16)]
    assert sum(isinstance(m, NearestUpCat) for m in net.modules()) == 3
    assert len(FRCUNet(2, 3, 2, features=(4, 8, 16, 32, 64), freq_channels=8).ups) == 4


def test_nearest_upcat_by_hand():
    """Nearest 2x up-sampling, 2x2 conv padded (0, 1), ReLU, then [skip, up] concatenated in that order."""
    up = NearestUpCat(1, 2, 3, (1,)).double()
    with torch.no_grad():
        up.up_conv.weight.fill_(0.0)
        up.up_conv.weight[0].fill_(1.0)  # first up channel: sum of the 2x2 window; the others 0
        up.up_conv.bias.zero_()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    big = np.kron(x[0, 0].numpy(), np.ones((2, 2)))
    padded = np.pad(big, ((0, 1), (0, 1)))
    window = np.array([[padded[i : i + 2, j : j + 2].sum() for j in range(4)] for i in range(4)])
    assert window[0, 0] == 4 and window[3, 3] == 4 and window[1, 1] == 10  # hand: 1+1+1+1, 4, 1+2+3+4
    with torch.no_grad():
        torch.testing.assert_close(up.up_conv(up.upsample(x))[0, 0], torch.from_numpy(window))
    skip = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    conv = up.convs[0]
    up_map = torch.cat([torch.from_numpy(window)[None, None], torch.zeros(1, 2, 4, 4, dtype=torch.float64)], dim=1)
    expected = F.relu(F.conv2d(torch.cat([skip, up_map], dim=1), conv.weight, conv.bias, padding=1))
    with torch.no_grad():
        torch.testing.assert_close(up(x, skip), expected)


# --- parameter count ---------------------------------------------------------------------------------------------


def _authors_parameter_count(c_in: int, w: tuple, middle: int, red: tuple, f: int, n_gauss: int, se_red: int,
                             dec: tuple, c_out: int) -> dict:
    """Trainable parameters of new_model.py's layers, by hand (Keras: conv kernels + biases, BN gamma + beta)."""
    def sep(a, b):  # SepConv_BN: depthwise 3x3 (9a), BN (2a), pointwise (ab), BN (2b)
        return 9 * a + 2 * a + a * b + 2 * b

    def block(a, d, conv_shortcut):  # xception_block: 3 SepConv_BN (+ 1x1 conv shortcut + BN)
        n = sep(a, d[0]) + sep(d[0], d[1]) + sep(d[1], d[2])
        return n + (a * d[2] + 2 * d[2] if conv_shortcut else 0)

    encoder = (
        9 * c_in * w[0] + 2 * w[0]  # entry_flow_conv1_1 + BN
        + 9 * w[0] * w[1] + 2 * w[1]  # entry_flow_conv1_2 + BN
        + block(w[1], [w[2]] * 3, True) + block(w[2], [w[3]] * 3, True) + block(w[3], [w[4]] * 3, True)
        + middle * block(w[4], [w[4]] * 3, False)
        + block(w[4], [w[4], w[5], w[5]], True) + block(w[5], [w[6], w[6], w[7]], False)
    )
    widths = (w[7],) + red + (f,)
    reduction = sum(9 * a * b for a, b in zip(widths[:-1], widths[1:])) + 2 * f  # aspp0b4b, aspp0bb, aspp0bbbb, BN
    hidden = max(1, f // se_red)
    fr = f * f + f * hidden + hidden * f + (n_gauss + 1) * f * f  # Dense0/1/2 (no bias), Conv3D (1, 1, 5) no bias
    post = 2 * (9 * f * f + f) + 2 * f  # 2x Conv2D 3x3 + bias, concat_projection_BN
    d0, d1, d2, d3, d4 = dec
    decoder = (
        (4 * f * d0 + d0) + (9 * (w[3] + d0) * d0 + d0) + (9 * d0 * d0 + d0)  # up1, conv on mrg1, conv
        + (4 * d0 * d1 + d1) + (9 * (w[2] + d1) * d1 + d1) + (9 * d1 * d1 + d1)  # up2, mrg2
        + (4 * d1 * d2 + d2) + (9 * (w[1] + d2) * d2 + d2)  # up3, mrg3
        + (9 * d2 * d2 + d2) + (9 * d2 * d3 + d3) + (9 * d3 * d3 + d3) + (9 * d3 * d4 + d4)  # after the last up
        + (d4 * c_out + c_out)  # Conv2D(1, 1)
    )
    return {"encoder": encoder, "reduction": reduction, "fr": fr, "post": post, "decoder": decoder,
            "total": encoder + reduction + fr + post + decoder}


def test_parameter_count_equals_the_authors_model():
    """68,612,533 at the defaults (in 3, out 1 = new_model.py's model), by hand; encoder = timm's 37,867,312."""
    expected = _authors_parameter_count(3, (32, 64, 128, 256, 728, 1024, 1536, 2048), 16, (1024, 512), 256, 4, 8,
                                        (256, 256, 128, 64, 2), 1)
    assert expected["encoder"] == 37_867_312  # timm 1.0.31 xception65(output_stride=16) without head
    assert expected["total"] == 68_612_533
    with torch.device("meta"):
        net = FRCUNet(2, 3, 1, encoder="xception")
    assert _n_params(net) == expected["total"]
    assert _n_params(net.encoder) == expected["encoder"]
    assert _n_params(net.reduction) == expected["reduction"] == 24_773_120
    assert _n_params(net.fr) == expected["fr"] == 409_600
    assert _n_params(net.post) == expected["post"]
    assert _n_params(net.ups) + _n_params(net.head) == expected["decoder"]
    # the frozen Gaussians (Keras non-trainable weights): 256 channels x (9 + 25 + 49 + 81) taps
    gauss = sum(b.numel() for name, b in net.named_buffers() if "blurs" in name)
    assert gauss == 256 * (9 + 25 + 49 + 81) == 41_984


def test_parameter_count_tiny_by_hand():
    net = FRCUNet(2, 3, 2, encoder="xception", **TINY)
    expected = _authors_parameter_count(3, TINY["xception_features"], 1, (8,), 8, 2, 4, (8, 8, 4, 4, 2), 2)
    assert _n_params(net) == expected["total"]


# --- arguments, BatchNorm, initialisation ------------------------------------------------------------------------


def test_3d_refusal_and_bad_input_size():
    with pytest.raises(ValueError) as info:
        FRCUNet(3, 1, 1, encoder="xception")
    assert str(info.value) == (
        "FRCUNet encoder='xception' is 2D only (the authors' Xception-65 has no 3D form), got spatial_dims=3; "
        "use encoder='unet' in 3D."
    )
    net = FRCUNet(2, 3, 1, encoder="xception", **TINY)
    with pytest.raises(ValueError, match=r"divisible by 16, got shape \(1, 3, 24, 32\)\.$"):
        net(torch.randn(1, 3, 24, 32))
    with pytest.raises(ValueError, match="decoder_features must hold 5 positive widths"):
        FRCUNet(2, 3, 1, encoder="xception", **{**TINY, "decoder_features": (8, 8, 4)})


def test_batchnorm_keras_defaults_and_pytorch_option():
    """Keras momentum 0.99 (PyTorch 0.01); eps 1e-3 in the Xception, 1e-5 in aspp0_BN / concat_projection_BN."""
    net = FRCUNet(2, 3, 1, encoder="xception", **TINY)
    enc_bns = [m for m in net.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(enc_bns) == 2 + 6 * 3 * 2 + 4  # stem 2, 6 blocks x 3 separable x 2, 4 conv shortcuts
    assert all(m.momentum == 0.01 and m.eps == 1e-3 for m in enc_bns)
    for bn in (net.reduction.bn, net.post.bn):
        assert bn.momentum == 0.01 and bn.eps == 1e-5
    torch_net = FRCUNet(2, 3, 1, encoder="xception", **TINY, keras_bn=False)
    assert all(m.momentum == 0.1 and m.eps == 1e-5 for m in torch_net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # keras_bn does not touch the initialisation: the same seed gives the same weights
    torch.manual_seed(0)
    a = FRCUNet(2, 3, 1, encoder="xception", **TINY).state_dict()
    torch.manual_seed(0)
    b = FRCUNet(2, 3, 1, encoder="xception", **TINY, keras_bn=False).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_keras_he_normal_statistics():
    """Keras 2.2 he_normal: truncated at 2 sigma of the underlying normal, standard deviation sqrt(2 / fan_in)."""
    torch.manual_seed(0)
    w = keras_he_normal_(torch.empty(512, 128, 3, 3))
    fan_in = 128 * 9
    assert float(w.std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.01)
    assert float(w.abs().max()) <= 2 * math.sqrt(2 / fan_in) / 0.87962566103423978 + 1e-7
    assert float(w.abs().max()) > 1.9 * math.sqrt(2 / fan_in) / 0.87962566103423978


def test_initialisation_follows_the_authors_layers():
    """he_normal for the SE MLP, the fusion, post and decoder convs (biases 0); glorot_uniform elsewhere."""
    torch.manual_seed(0)
    kw = {**TINY, "freq_channels": 64, "reduction_features": (64,), "decoder_features": (64, 64, 32, 32, 2)}
    net = FRCUNet(2, 3, 1, encoder="xception", **kw).requires_grad_(False)

    def he_std(weight):
        return math.sqrt(2 / math.prod(weight.shape[1:]))

    for layer in (net.fr.se.mlp[0], net.fr.fuse, net.post.conv_0, net.ups[0].convs[0], net.head.conv_0):
        assert float(layer.weight.std()) == pytest.approx(he_std(layer.weight), rel=0.06)
        assert float(layer.weight.abs().max()) <= 2 * he_std(layer.weight) / 0.87962566103423978 + 1e-7
    for layer in (net.post.conv_0, net.ups[2].up_conv, net.head.conv_3):
        assert float(layer.bias.abs().max()) == 0.0
    for layer in (net.reduction.conv_0, net.encoder.exit_flow_block2.separable_conv3.pointwise):
        fan_in, fan_out = math.prod(layer.weight.shape[1:]), layer.weight.shape[0] * math.prod(layer.weight.shape[2:])
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert 0.9 * limit < float(layer.weight.abs().max()) <= limit
    # PyTorch's default (kaiming_uniform a=sqrt(5): U(-1 / sqrt(fan_in), 1 / sqrt(fan_in))) with keras_init=False
    fuse = FRCUNet(2, 3, 1, encoder="xception", **kw, keras_init=False).fr.fuse.weight.detach()
    fan_in = math.prod(fuse.shape[1:])
    assert float(fuse.std()) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.06)


# --- pretrained encoder and converter ----------------------------------------------------------------------------


def test_pretrained_encoder_errors(converted, tmp_path):
    dst, _ = converted
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match=rf"^pretrained_encoder '{missing}': no such file\.$"):
        FRCUNet(2, 3, 1, encoder="xception", **TINY, pretrained_encoder=str(missing))
    state = torch.load(dst, weights_only=True)
    broken = dict(state)
    del broken["entry_flow_block2.separable_conv2.pointwise_bn.running_var"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError) as info:
        FRCUNet(2, 3, 1, encoder="xception", **TINY, pretrained_encoder=str(tmp_path / "broken.pt"))
    text = str(info.value)
    assert "\n" not in text and str(tmp_path / "broken.pt") in text
    assert "missing key 'entry_flow_block2.separable_conv2.pointwise_bn.running_var'" in text
    with pytest.raises(ValueError, match=r"key 'entry_flow_conv1_1\.weight' has shape \(2, 3, 3, 3\), the encoder "
                                         r"expects \(2, 1, 3, 3\)"):
        FRCUNet(2, 1, 1, encoder="xception", **TINY, pretrained_encoder=str(dst))
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"unexpected key 'extra\.weight'"):
        FRCUNet(2, 3, 1, encoder="xception", **TINY, pretrained_encoder=str(tmp_path / "extra.pt"))
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"text\.pt': not a PyTorch state dict"):
        FRCUNet(2, 3, 1, encoder="xception", **TINY, pretrained_encoder=str(tmp_path / "text.pt"))


def test_converter_refuses_bad_files_with_one_line(tmp_path):
    state, _ = _timm_tiny()
    preact = {"blocks.0.norm.weight": torch.ones(4), **state}
    torch.save(preact, tmp_path / "p.pth")
    proc = subprocess.run([sys.executable, "-m", "networks.convert_xception", str(tmp_path / "p.pth"),
                           str(tmp_path / "out.pt")], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and not (tmp_path / "out.pt").exists()
    assert proc.stderr.count("\n") == 1 and "'blocks.0.norm.weight'" in proc.stderr and "xception65p" in proc.stderr
    odd = {**state, "blocks.0.stack.conv1.bn_dw.weird": torch.ones(1)}
    torch.save(odd, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"odd\.pth': key 'blocks\.0\.stack\.conv1\.bn_dw\.weird' is not a timm"):
        convert(tmp_path / "odd.pth", tmp_path / "out.pt")
    short = {k: v for k, v in state.items() if k != "blocks.3.stack.conv2.conv_pw.weight"}
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"missing key 'middle_flow\.0\.separable_conv2\.pointwise\.weight'"):
        convert(tmp_path / "short.pth", tmp_path / "out.pt")


def test_timm_key_mapping_by_hand():
    """A few of timm's names (timm/models/xception_aligned.py) and this project's, written out."""
    state, _ = _timm_tiny()
    mapped = timm_to_project(state)
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    assert n_blocks == 6  # 3 entry + 1 middle + 2 exit
    pairs = {
        "stem.0.conv.weight": "entry_flow_conv1_1.weight",
        "stem.1.bn.running_var": "entry_flow_conv1_2_bn.running_var",
        "blocks.0.shortcut.conv.weight": "entry_flow_block1.shortcut.weight",
        "blocks.2.shortcut.bn.bias": "entry_flow_block3.shortcut_bn.bias",
        "blocks.3.stack.conv2.bn_dw.weight": "middle_flow.0.separable_conv2.depthwise_bn.weight",
        "blocks.4.stack.conv3.conv_pw.weight": "exit_flow_block1.separable_conv3.pointwise.weight",
        "blocks.5.stack.conv1.conv_dw.weight": "exit_flow_block2.separable_conv1.depthwise.weight",
    }
    for timm_key, ours in pairs.items():
        assert mapped[ours] is state[timm_key]
    assert not any(k.startswith("head") for k in mapped) and "head.fc.weight" in state


def test_keras_names_and_layouts(tmp_path):
    """Keras layer names (new_model.py / DeepLab model.py) map by name, kernels transposed from (kh, kw, in, out)
    and depthwise (kh, kw, in, 1); other layers (ASPP, decoder, FRCU-Net's own) are skipped."""
    kernel = np.arange(3 * 3 * 2 * 5, dtype=np.float32).reshape(3, 3, 2, 5)
    depthwise = np.arange(3 * 3 * 4, dtype=np.float32).reshape(3, 3, 4, 1)
    weights = {
        "entry_flow_conv1_1/kernel:0": kernel,
        "middle_flow_unit_16_separable_conv3_pointwise_BN/moving_variance:0": np.ones(7, np.float32),
        "exit_flow_block1_separable_conv1_depthwise/depthwise_kernel:0": depthwise,
        "exit_flow_block1_shortcut_BN/gamma:0": np.full(3, 2.0, np.float32),
        "aspp0/kernel:0": kernel,
        "decoder_conv0_depthwise/depthwise_kernel:0": depthwise,
        "aspp0_BN/gamma:0": np.ones(3, np.float32),
    }
    out = keras_to_project(weights)
    assert out["entry_flow_conv1_1.weight"][4, 1, 2, 0] == kernel[2, 0, 1, 4]  # (out, in, kh, kw)
    assert out["exit_flow_block1.separable_conv1.depthwise.weight"].shape == (4, 1, 3, 3)
    assert out["exit_flow_block1.separable_conv1.depthwise.weight"][3, 0, 1, 2] == depthwise[1, 2, 3, 0]
    assert out["middle_flow.15.separable_conv3.pointwise_bn.running_var"].shape == (7,)
    assert int(out["middle_flow.15.separable_conv3.pointwise_bn.num_batches_tracked"]) == 0
    assert torch.equal(out["exit_flow_block1.shortcut_bn.weight"], torch.full((3,), 2.0))
    assert not any(k.startswith(("aspp", "decoder")) for k in out)
    # a whole encoder written in Keras names converts back to the same weights
    state, _ = _timm_tiny()
    ours = timm_to_project(state)
    np.savez(tmp_path / "keras.npz", **project_to_keras(ours))
    convert(tmp_path / "keras.npz", tmp_path / "from_keras.pt", source="keras")
    back = torch.load(tmp_path / "from_keras.pt", weights_only=True)
    for key, value in ours.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(back[key], value), key


def test_scripted_equals_eager():
    torch.manual_seed(0)
    net = FRCUNet(2, 3, 1, encoder="xception", **TINY).eval()
    x = torch.randn(2, 3, 32, 48)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def test_gradients_reach_input_and_every_parameter():
    net = FRCUNet(2, 3, 1, encoder="xception", **TINY)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    net(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("workflow", ["train", "inference"])
def test_isic_bundle_selects_the_encoder_by_override(workflow):
    """The shipped ISIC bundle builds the unet variant (31,318,657) and, with ``encoder=xception``, the authors'."""
    from monai.bundle import ConfigParser

    from pipelines.bundle import workflow_configs

    counts = {}
    for encoder in ("unet", "xception"):
        parser = ConfigParser()
        parser.read_config([str(p) for p in workflow_configs(REPO / "bundles" / "isic_skin_frcunet_segmentation",
                                                             workflow)])
        parser["encoder"] = encoder
        with torch.device("meta"):
            counts[encoder] = _n_params(parser.get_parsed_content("network_def"))
    assert counts == {"unet": 31_318_657, "xception": 68_612_533}
