"""UNet++ deep supervision (networks/unet_family.py): the four heads in training, the accurate (averaged) and fast
(one head, pruned) modes in eval, the loss wiring with MONAI's DeepSupervisionLoss in a SupervisedTrainer step and
the lung bundle's documented override, TorchScript.

Every expected value is computed here from the heads themselves (their mean, their sigmoid/softmax average in NumPy,
a BCE written out in NumPy), never by the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from networks import KerasUNetPlusPlus
from tests.conftest import LUNG_BUNDLE

TINY = {"in_channels": 1, "out_channels": 2, "features": 2}
NODES = [f"conv_{i}_{j}" for j in range(5) for i in range(5 - j)]  # the 15 nodes X^{i,j}, i + j <= 4


def _randomise_bn(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BatchNorm running statistics and affine parameters, so eval mode is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return net


def _net(spatial_dims: int = 2, seed: int = 0, **kwargs) -> KerasUNetPlusPlus:
    torch.manual_seed(seed)
    return KerasUNetPlusPlus(spatial_dims, **TINY, deep_supervision=True, **kwargs)


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 1, 16, 32)), (3, (1, 1, 16, 16, 16))])
def test_training_returns_four_heads_of_the_output_shape(spatial_dims, shape):
    net = _net(spatial_dims).train()
    heads = net(_x(*shape))
    assert isinstance(heads, list) and len(heads) == 4
    assert all(h.shape == (shape[0], 2, *shape[2:]) for h in heads)
    # four distinct 1x1 heads: X^{0,1}, X^{0,2}, X^{0,3} (2 * base channels: the X^{0,3} quirk) and X^{0,4}
    widths = [net.final_conv_0_1.in_channels, net.final_conv_0_2.in_channels, net.final_conv_0_3.in_channels,
              net.final_conv.in_channels]
    assert widths == [2, 2, 4, 2]
    assert len({h.data_ptr() for h in heads}) == 4


def test_each_head_is_its_own_1x1_convolution_of_its_node():
    """Head j is final_conv_0_j (final_conv for j = 4) applied to X^{0,j}, captured by hooks on the nodes and applied
    here as the 1x1 convolution written out in NumPy."""
    net = _randomise_bn(_net(norm="batch")).eval()
    nodes = {}
    for j in range(1, 5):
        getattr(net, f"conv_0_{j}").register_forward_hook(lambda m, i, o, j=j: nodes.update({j: o.double().numpy()}))
    with torch.no_grad():
        heads = net.heads(_x(2, 1, 16, 16))
    convs = [net.final_conv_0_1, net.final_conv_0_2, net.final_conv_0_3, net.final_conv]
    for j, (head, conv) in enumerate(zip(heads, convs), start=1):
        w = conv.weight.detach().double().numpy()[:, :, 0, 0]
        b = conv.bias.detach().double().numpy()
        expected = np.einsum("oc,bchw->bohw", w, nodes[j]) + b[None, :, None, None]
        np.testing.assert_allclose(head.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=f"head {j}")


def test_without_deep_supervision_one_tensor_and_the_same_state_dict_keys():
    plain = KerasUNetPlusPlus(2, **TINY)
    assert isinstance(plain.train()(_x(2, 1, 16, 16)), torch.Tensor)
    ds = _net()
    extra = sorted(set(ds.state_dict()) - set(plain.state_dict()))
    assert extra == [f"final_conv_0_{j}.{p}" for j in (1, 2, 3) for p in ("bias", "weight")]
    assert set(plain.state_dict()) <= set(ds.state_dict())


@pytest.mark.parametrize("head", [1, 2, 3, 4, -1, -3])
def test_fast_mode_equals_the_chosen_head_of_the_full_pass(head):
    j = head if head > 0 else 5 + head
    x = _x(2, 1, 16, 32)
    # without norm and dropout the training-mode pass is deterministic: its heads are the full pass
    full_net = _net()
    full = full_net.train()(x)
    fast_net = _net(ds_mode="fast", ds_head=head)
    fast_net.load_state_dict(full_net.state_dict())
    with torch.no_grad():
        assert torch.equal(fast_net.eval()(x), full[j - 1].detach())
    # with batch norm in eval mode: against heads(), the full grid in the same mode
    bn_full = _randomise_bn(_net(norm="batch", seed=3)).eval()
    bn_fast = _net(norm="batch", ds_mode="fast", ds_head=head)
    bn_fast.load_state_dict(bn_full.state_dict())
    with torch.no_grad():
        assert torch.equal(bn_fast.eval()(x), bn_full.heads(x)[j - 1])


@pytest.mark.parametrize("head, expected", [(1, 3), (2, 6), (3, 10), (4, 15)])
def test_fast_mode_runs_only_the_nodes_of_its_pruned_network(head, expected):
    """Hooks on the 15 nodes: the fast mode runs X^{i,k} for i + k <= head only, i.e. (j + 1)(j + 2) / 2 nodes."""
    net = _net(ds_mode="fast", ds_head=head).eval()
    called = []
    for name in NODES:
        getattr(net, name).register_forward_hook(lambda m, i, o, name=name: called.append(name))
    with torch.no_grad():
        net(_x(1, 1, 16, 16))
    i_plus_k = [int(n.split("_")[1]) + int(n.split("_")[2]) for n in called]
    assert len(called) == expected == len(set(called))
    assert max(i_plus_k) == head
    called.clear()
    net.ds_mode = "accurate"  # the accurate mode runs the whole grid
    with torch.no_grad():
        net(_x(1, 1, 16, 16))
    assert len(called) == 15


def test_accurate_mode_is_the_mean_of_the_heads():
    net = _randomise_bn(_net(norm="batch")).eval()
    x = _x(2, 1, 16, 32)
    with torch.no_grad():
        heads = [h.numpy().astype(np.float64) for h in net.heads(x)]
        out = net(x).numpy()
    np.testing.assert_allclose(out, np.mean(heads, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, heads[-1], atol=1e-3)  # not just the last head


def _np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _np_softmax(z, axis=1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("average", ["sigmoid", "softmax"])
def test_accurate_mode_averages_probabilities_when_asked(average):
    net = _randomise_bn(_net(norm="batch", ds_average=average)).eval()
    x = _x(2, 1, 16, 16)
    with torch.no_grad():
        heads = [h.double().numpy() for h in net.heads(x)]
        out = net(x).double()
    act = _np_sigmoid if average == "sigmoid" else _np_softmax
    expected = np.mean([act(h) for h in heads], axis=0)  # the paper's average of the heads' probabilities
    got = torch.sigmoid(out).numpy() if average == "sigmoid" else torch.softmax(out, dim=1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if average == "softmax":  # the output is the log of the mean probabilities itself, not just up to a shift
        np.testing.assert_allclose(np.exp(out.numpy()), expected, rtol=1e-5, atol=1e-6)


def test_probability_average_hand_worked_and_finite_for_saturated_heads():
    net = _net(ds_average="sigmoid")
    z = torch.tensor([[[[40.0]]], [[[40.0]]]])  # two heads of one pixel
    # logit(mean(sigmoid(40), sigmoid(40))) = 40, although sigmoid(40) rounds to 1 in float32
    assert torch.allclose(net.average_heads([z[0:1], z[1:2]]), torch.tensor(40.0))
    # mean of sigmoid(a) and sigmoid(-a) is 1/2 for any a: logit 0
    a = torch.tensor([[[[3.0]]]])
    assert torch.allclose(net.average_heads([a, -a]), torch.tensor(0.0), atol=1e-6)
    net.ds_average = "softmax"
    # two classes, head 1 certain of class 0, head 2 certain of class 1: the mean is (1/2, 1/2)
    h1, h2 = torch.tensor([[[[60.0]], [[-60.0]]]]), torch.tensor([[[[-60.0]], [[60.0]]]])
    out = net.average_heads([h1, h2])
    assert torch.isfinite(out).all()
    assert torch.allclose(torch.softmax(out, dim=1), torch.full((1, 2, 1, 1), 0.5))


@pytest.mark.parametrize("kwargs, match", [
    ({"ds_mode": "fastest"}, "ds_mode"), ({"ds_head": 0}, "ds_head"), ({"ds_head": 5}, "ds_head"),
    ({"ds_average": "mean"}, "ds_average"), ({"deep_supervision": "true"}, r"deep_supervision.*\$True"),
])
def test_bad_settings_are_refused_in_one_line(kwargs, match):
    args = {"deep_supervision": True, **kwargs}
    with pytest.raises(ValueError, match=match) as info:
        KerasUNetPlusPlus(2, **TINY, **args)
    assert "\n" not in str(info.value)


def test_head_four_is_the_network_without_deep_supervision():
    """The X^{0,4} head keeps the name final_conv: the plain network loads a deep-supervision checkpoint's weights
    (without the extra heads) and gives the fast mode's head 4."""
    ds = _randomise_bn(_net(norm="batch", ds_mode="fast", ds_head=4)).eval()
    plain = KerasUNetPlusPlus(2, **TINY, norm="batch").eval()
    plain.load_state_dict({k: v for k, v in ds.state_dict().items() if not k.startswith("final_conv_0_")})
    x = _x(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(plain(x), ds(x))


def _np_bce_with_logits(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


@pytest.mark.parametrize("weight_mode, weights", [(None, [1, 1, 1, 1]), ("exp", [1, 0.5, 0.25, 0.125])])
def test_supervised_trainer_step_sums_the_heads_losses(weight_mode, weights):
    """One SupervisedTrainer iteration with the factory's loss: the loss is sum_k w_k BCE(head_k, y), BCE in NumPy on
    the heads the trainer's forward produced; equal weights (the UNet++ paper's) by default."""
    from monai.engines import SupervisedTrainer
    from monai.engines.utils import IterationEvents

    from pipelines.losses import deep_supervision_loss

    torch.manual_seed(0)
    net = KerasUNetPlusPlus(2, 1, 1, features=2, deep_supervision=True)
    x, y = _x(2, 1, 16, 16), (_x(2, 1, 16, 16, seed=5) > 0).float()
    bce = torch.nn.BCEWithLogitsLoss()
    loss = deep_supervision_loss(bce) if weight_mode is None else deep_supervision_loss(bce, weight_mode=weight_mode)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=[{"image": x, "label": y}], network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=loss, decollate=False,
    )
    seen = {}
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED,
                              lambda e: seen.update(heads=[h.detach().numpy().copy() for h in e.state.output["pred"]]))
    trainer.run()
    assert len(seen["heads"]) == 4
    expected = sum(w * _np_bce_with_logits(h, y.numpy()) for w, h in zip(weights, seen["heads"]))
    assert trainer.state.output["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_lung_bundle_override_as_documented_trains_one_step():
    """The lung bundle README's deep-supervision override, parsed as ``monai.bundle run`` parses its command line
    (fire), on a hand-made SupervisedTrainer step with the bundle's loss, post-processing and train metric."""
    from fire.parser import DefaultParseValue
    from monai.bundle import ConfigParser
    from monai.engines import SupervisedTrainer
    from monai.handlers import MeanDice, from_engine

    readme = (LUNG_BUNDLE / "docs" / "README.md").read_text()
    net_text = ('{"_target_": "networks.KerasUNetPlusPlus", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, '
                '"deep_supervision": "$True"}')
    loss_text = '{"_target_": "pipelines.losses.deep_supervision_loss", "loss": "@loss"}'
    post_text = ('$monai.transforms.Compose([monai.transforms.Lambdad("pred", lambda p: p[-1]), '
                 '@train#postprocessing])')
    for text in (net_text, loss_text, post_text):
        assert text in readme, f"the README no longer shows {text}"
    parser = ConfigParser()
    parser.read_config(str(LUNG_BUNDLE / "configs" / "train.json"))
    net_def = DefaultParseValue(net_text)
    net_def["features"] = 2  # tiny, for the test
    parser["network_def"] = net_def
    parser["train#trainer#loss_function"] = DefaultParseValue(loss_text)
    parser["train#trainer#postprocessing"] = DefaultParseValue(post_text)
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, KerasUNetPlusPlus) and net.deep_supervision is True
    loss = parser.get_parsed_content("train#trainer#loss_function")
    post = parser.get_parsed_content("train#trainer#postprocessing")
    assert type(loss).__name__ == "DeepSupervisionLoss" and type(loss.loss).__name__ == "DiceCELoss"

    x, y = _x(2, 1, 16, 16, 16), (_x(2, 1, 16, 16, 16, seed=7) > 0.5).float()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=[{"image": x, "label": y}], network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=loss, postprocessing=post,
        key_train_metric={"train_mean_dice": MeanDice(include_background=False,
                                                      output_transform=from_engine(["pred", "label"]))},
    )
    trainer.run()
    first = trainer.state.output[0]  # decollated: one dict per case
    assert np.isfinite(float(first["loss"]))
    assert 0.0 <= trainer.state.metrics["train_mean_dice"] <= 1.0
    # the post-processed prediction is the X^{0,4} head, one-hot: (2 classes, *S) per case
    assert first["pred"].shape == (2, 16, 16, 16)


def test_torchscript_in_both_modes():
    """One scripted network (every branch of forward is compiled) run in each setting: without deep supervision,
    training (four heads), accurate with each average, fast with each head; equal to eager."""
    torch.manual_seed(0)
    net = KerasUNetPlusPlus(2, **TINY, norm="batch", deep_supervision=True)
    scripted = torch.jit.script(net)
    x = _x(2, 1, 16, 16)
    settings = [(False, "accurate", 4, "logits")] + [(True, "accurate", 4, a) for a in ("logits", "sigmoid", "softmax")]
    settings += [(True, "fast", j, "logits") for j in (1, 2, 3, 4)]
    for deep, mode, head, average in settings:
        for module in (net, scripted):
            module.deep_supervision, module.ds_mode, module.ds_head, module.ds_average = deep, mode, head, average
        for training in (True, False):
            net.train(training)
            scripted.train(training)
            with torch.no_grad():
                eager, script = net(x), scripted(x)
            eager = eager if isinstance(eager, list) else [eager]
            script = script if isinstance(script, list) else [script]
            assert len(eager) == len(script) == (4 if deep and training else 1)
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(eager, script)), (deep, mode, head, training)
