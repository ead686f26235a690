"""The teaching U-Net family starts as its Keras originals (networks/unet_family.py): BatchNormalization's momentum
0.99 (PyTorch 0.01) and epsilon 1e-3, and each layer's Keras kernel initializer (He-normal, truncated as Keras draws
it, where the helpers say ``kernel_initializer='he_normal'``, Glorot-uniform elsewhere, zero biases).

The running-statistics update is checked against the Keras rule written out in NumPy on the tensors each BatchNorm
received; the initialisers against the standard deviations and bounds of the Keras formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from networks import KerasResUNet, KerasResUNetPlusPlus, KerasUNet, KerasUNetPlusPlus
from networks.blocks import SqueezeExcitation
from networks.unet_family import KERAS_BATCHNORM, keras_norm

NETS = (KerasUNet, KerasUNetPlusPlus, KerasResUNet, KerasResUNetPlusPlus)


def _bns(net: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_keras_norm_fills_in_the_keras_defaults_and_lets_given_arguments_win():
    assert KERAS_BATCHNORM == {"momentum": 0.01, "eps": 1e-3}
    assert keras_norm("batch") == ("batch", {"momentum": 0.01, "eps": 1e-3})
    assert keras_norm(("BATCH", {"eps": 1e-5})) == ("BATCH", {"momentum": 0.01, "eps": 1e-5})
    assert keras_norm(["batch", {"momentum": 0.1, "eps": 1e-5}]) == ("batch", {"momentum": 0.1, "eps": 1e-5})
    assert keras_norm(("instance", {"affine": True})) == ("instance", {"affine": True})
    # a pair as JSON gives it (a list) comes back as the tuple MONAI's factories document, batch norm or not
    assert keras_norm(["instance", {"affine": True}]) == ("instance", {"affine": True})
    assert keras_norm("group") == "group" and keras_norm(None) is None


@pytest.mark.parametrize("net_cls", NETS)
def test_batchnorm_layers_have_the_keras_momentum_and_eps(net_cls):
    net = net_cls(2, 1, 1, features=4, norm="batch")
    bns = _bns(net)
    assert bns and all(m.momentum == 0.01 and m.eps == 1e-3 for m in bns)
    kept = _bns(net_cls(2, 1, 1, features=4, norm=("batch", {"momentum": 0.1, "eps": 1e-5})))
    assert len(kept) == len(bns) and all(m.momentum == 0.1 and m.eps == 1e-5 for m in kept)
    # instance norm is not Keras's BatchNormalization: PyTorch's defaults stay
    inst = [m for m in net_cls(2, 1, 1, features=4, norm="instance").modules()
            if isinstance(m, torch.nn.modules.instancenorm._InstanceNorm)]
    assert inst and all(m.eps == 1e-5 for m in inst)


def test_resunet_family_uses_keras_batchnorm_by_default_and_unet_has_none():
    for net_cls in (KerasResUNet, KerasResUNetPlusPlus):
        bns = _bns(net_cls(3, 1, 2, features=2))
        assert bns and all(m.momentum == 0.01 and m.eps == 1e-3 for m in bns)
    assert not _bns(KerasUNet(2, 1, 1, features=4)) and not _bns(KerasUNetPlusPlus(2, 1, 1, features=4))


def test_eval_normalisation_uses_eps_1e3():
    """In eval mode a BatchNorm with running mean 0, variance v, weight 1, bias 0 maps x to x / sqrt(v + 1e-3)."""
    net = KerasResUNet(2, 1, 1, features=2).eval()
    bn = net.stem.norm1
    with torch.no_grad():
        bn.running_var.fill_(0.004)
        x = torch.full((1, bn.num_features, 2, 2), 0.5)
        expected = 0.5 / math.sqrt(0.004 + 1e-3)  # with PyTorch's eps 1e-5 it would be 0.5 / sqrt(0.00401)
        assert torch.allclose(bn(x), torch.full_like(x, expected), rtol=1e-6)


@pytest.mark.parametrize("net_cls", [KerasUNet, KerasResUNetPlusPlus])
def test_one_training_step_updates_running_mean_by_the_keras_rule(net_cls):
    """new = 0.99 * old + 0.01 * batch mean (Keras moving_mean = momentum * moving_mean + (1 - momentum) * mean),
    for every BatchNorm, from the tensor each one received, in NumPy. The variance follows PyTorch's unbiased rule
    (Keras uses the biased batch variance: the documented deviation)."""
    torch.manual_seed(0)
    net = net_cls(2, 1, 1, features=2, norm="batch").train()
    gen = torch.Generator().manual_seed(1)
    seen = {}
    for i, bn in enumerate(_bns(net)):
        with torch.no_grad():
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=gen))
        bn.register_forward_pre_hook(lambda m, args, i=i: seen.update({i: args[0].detach().double().numpy()}))
    old = [(bn.running_mean.double().numpy().copy(), bn.running_var.double().numpy().copy()) for bn in _bns(net)]
    x = torch.randn(2, 1, 16, 16, generator=gen)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    net(x).square().mean().backward()
    opt.step()
    assert len(seen) == len(old) > 10
    for i, bn in enumerate(_bns(net)):
        features = np.moveaxis(seen[i], 1, 0).reshape(bn.num_features, -1)  # (C, B * H * W)
        mean, var = features.mean(axis=1), features.var(axis=1, ddof=1)
        np.testing.assert_allclose(bn.running_mean.double().numpy(), 0.99 * old[i][0] + 0.01 * mean, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(bn.running_var.double().numpy(), 0.99 * old[i][1] + 0.01 * var, rtol=1e-5,
                                   atol=1e-6)


# ------------------------------------------------------------------------------------------------ initialisation

HE_TRUNCATION = 0.87962566103423978  # std of a standard normal truncated at +-2 (Keras divides by it)


def _fans(w: torch.Tensor, transposed: bool) -> tuple[int, int]:
    receptive = math.prod(w.shape[2:])
    c_in, c_out = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
    return c_in * receptive, c_out * receptive


def _he_modules(net: torch.nn.Module) -> set[int]:
    """ids of the layers the Keras helpers build with kernel_initializer='he_normal' (read off the Keras sources)."""
    he: list[torch.nn.Module] = []
    if isinstance(net, KerasUNet):  # unet_model: every 3x3 Conv2D; not the transposed convolutions, not the output
        he = [m for name, m in net.named_modules() if isinstance(m, torch.nn.Conv2d) and name != "final_conv"]
    elif isinstance(net, KerasUNetPlusPlus):  # unetplusplus_model: every 3x3 Conv2D and the 1x1 output
        he = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    else:  # resunet_model / resunetplusplus_model: the stem only, plus squeeze-excite dense layers in ResUNet++
        he = [net.stem.conv1, net.stem.conv2, net.stem.shortcut[0]]
        he += [m for se in net.modules() if isinstance(se, SqueezeExcitation) for m in se.modules()
               if isinstance(m, torch.nn.Linear)]
    return {id(m) for m in he}


@pytest.mark.parametrize("net_cls", NETS)
def test_initialisation_follows_the_keras_kernel_initializers(net_cls):
    torch.manual_seed(0)
    net = net_cls(2, 3, 1)  # the reference width (base 16): layers large enough for the statistics
    he = _he_modules(net)
    checked = {"he": 0, "glorot": 0}
    for m in net.modules():
        if not isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
            continue
        if m.bias is not None:
            assert not m.bias.any()
        w = m.weight.detach().double()
        fan_in, fan_out = _fans(w, isinstance(m, torch.nn.modules.conv._ConvTransposeNd))
        if id(m) in he:  # Keras he_normal: N(0, (sqrt(2 / fan_in) / 0.8796)^2) truncated at two of its stds
            bound = 2 * math.sqrt(2.0 / fan_in) / HE_TRUNCATION
            assert w.abs().max() <= bound * (1 + 1e-6)
            expected_std, kind = math.sqrt(2.0 / fan_in), "he"
        else:  # glorot_uniform: U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out))
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            assert w.abs().max() <= limit * (1 + 1e-6)
            expected_std, kind = limit / math.sqrt(3.0), "glorot"
        if w.numel() >= 2000:
            assert w.std().item() == pytest.approx(expected_std, rel=0.08), (kind, w.shape)
            checked[kind] += 1
    assert checked["he"] >= 1 and checked["glorot"] >= 3, checked
