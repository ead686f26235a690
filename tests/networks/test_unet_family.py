"""Teaching U-Net family (U-Net, UNet++, ResUNet, ResUNet++): shapes in 2D and 3D, parameter counts of the reference
configuration, gradients, input validation, the optional U-Net dropout/BN, construction from a bundle config and
TorchScript."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from networks import KerasResUNet, KerasResUNetPlusPlus, KerasUNet, KerasUNetPlusPlus
from networks.unet_family import UNET_TEACHING_DROPOUT, UNETPP_TEACHING_DROPOUT

NETS = (KerasUNet, KerasUNetPlusPlus, KerasResUNet, KerasResUNetPlusPlus)
TINY = {"features": 4}

CASES = [
    # (class, kwargs, input shape, expected output shape)
    # 2D reference width (base 16), 3 -> 1 channels
    (KerasUNet, {"spatial_dims": 2, "in_channels": 3, "out_channels": 1}, (1, 3, 32, 32), (1, 1, 32, 32)),
    (KerasUNetPlusPlus, {"spatial_dims": 2, "in_channels": 3, "out_channels": 1}, (1, 3, 32, 32), (1, 1, 32, 32)),
    (KerasResUNet, {"spatial_dims": 2, "in_channels": 3, "out_channels": 1}, (1, 3, 32, 32), (1, 1, 32, 32)),
    (KerasResUNetPlusPlus, {"spatial_dims": 2, "in_channels": 3, "out_channels": 1}, (1, 3, 32, 32), (1, 1, 32, 32)),
    # 2D, tiny width, several classes, non-square inputs; ResUNet++ only needs multiples of 8
    (KerasUNet, {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, **TINY}, (2, 1, 16, 48), (2, 3, 16, 48)),
    (KerasUNetPlusPlus, {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, **TINY}, (2, 1, 48, 16),
     (2, 3, 48, 16)),
    (KerasResUNet, {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, **TINY}, (2, 1, 16, 32), (2, 3, 16, 32)),
    (KerasResUNetPlusPlus, {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, **TINY}, (2, 1, 24, 40),
     (2, 3, 24, 40)),
    # 2D options: U-Net BN + teaching dropout, UNet++ without the X^{0,3} quirk, ResUNet++ sigmoid attention
    (KerasUNet, {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "norm": "batch",
                 "dropout": UNET_TEACHING_DROPOUT, **TINY}, (1, 3, 32, 32), (1, 1, 32, 32)),
    (KerasUNetPlusPlus, {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "x03_quirk": False,
                         "dropout": UNETPP_TEACHING_DROPOUT, **TINY}, (1, 3, 32, 32), (1, 2, 32, 32)),
    (KerasResUNetPlusPlus, {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "attention_sigmoid": True, **TINY},
     (1, 3, 16, 16), (1, 1, 16, 16)),
    # 3D, tiny width
    (KerasUNet, {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, **TINY}, (1, 1, 16, 16, 16),
     (1, 2, 16, 16, 16)),
    (KerasUNetPlusPlus, {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, **TINY}, (1, 1, 16, 16, 16),
     (1, 2, 16, 16, 16)),
    (KerasResUNet, {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, **TINY}, (1, 1, 16, 16, 16),
     (1, 2, 16, 16, 16)),
    (KerasResUNetPlusPlus, {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, **TINY}, (1, 1, 16, 16, 16),
     (1, 2, 16, 16, 16)),
    (KerasResUNetPlusPlus, {"spatial_dims": 3, "in_channels": 2, "out_channels": 3, "rate_scale": 0.25, **TINY},
     (1, 2, 8, 16, 24), (1, 3, 8, 16, 24)),
    (KerasUNet, {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "norm": ("instance", {"affine": True}),
                 "dropout": 0.1, **TINY}, (1, 1, 16, 16, 32), (1, 2, 16, 16, 32)),
]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("net_cls, kwargs, in_shape, out_shape", CASES)
def test_shape(net_cls, kwargs, in_shape, out_shape):
    net = net_cls(**kwargs).eval()
    with torch.no_grad():
        assert net(torch.randn(in_shape)).shape == out_shape


# the published counts: 1.94 / 2.28 / 4.72 / 4.06 M for base 16, 3 input channels, 1 class, 2D
REFERENCE_2D = [(KerasUNet, 1.94e6, 1_941_105), (KerasUNetPlusPlus, 2.28e6, 2_280_353),
                (KerasResUNet, 4.72e6, 4_715_761), (KerasResUNetPlusPlus, 4.06e6, 4_062_993)]
# no reference exists in 3D; these pin the counts of spatial_dims=3, 1 input channel, 2 classes
PINNED_3D = {KerasUNet: 5_644_930, KerasUNetPlusPlus: 6_606_258, KerasResUNet: 13_733_618,
             KerasResUNetPlusPlus: 11_882_754}


@pytest.mark.parametrize("net_cls, reference, exact", REFERENCE_2D)
def test_parameter_count_reference_configuration(net_cls, reference, exact):
    count = n_params(net_cls(2, 3, 1))
    assert abs(count - reference) / reference < 0.01
    assert count == exact


def test_parameter_count_resunetplusplus_base32():
    # the published count: 16.23 M at base 32
    count = n_params(KerasResUNetPlusPlus(2, 3, 1, features=32))
    assert abs(count - 16.23e6) / 16.23e6 < 0.01


@pytest.mark.parametrize("net_cls", NETS)
def test_gradients_reach_input_and_all_parameters(net_cls):
    net = net_cls(2, 2, 2, features=4).train()
    x = torch.randn(2, 2, 32, 32, requires_grad=True)
    net(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("net_cls", NETS)
def test_indivisible_input_raises_with_shape(net_cls):
    net = net_cls(2, 1, 1, features=4)
    with pytest.raises(ValueError, match=r"\(1, 1, 36, 32\)"):
        net(torch.randn(1, 1, 36, 32))
    with pytest.raises(ValueError, match=r"\(1, 1, 32, 32, 32\)"):
        net(torch.randn(1, 1, 32, 32, 32))  # 3D tensor into a 2D network


def test_resunetplusplus_rate_scale():
    assert KerasResUNetPlusPlus(2, 1, 1, features=4).dilations == (6, 12, 18, 1)
    assert KerasResUNetPlusPlus(3, 1, 1, features=4, rate_scale=0.25).dilations == (2, 3, 4, 1)
    assert KerasResUNetPlusPlus(3, 1, 1, features=4, rate_scale=2).dilations == (12, 24, 36, 1)
    with pytest.raises(ValueError, match="rate_scale"):
        KerasResUNetPlusPlus(2, 1, 1, rate_scale=0)


def test_unet_dropout_schedule_and_batchnorm_are_off_by_default():
    default = KerasUNet(2, 3, 1)
    assert not any(isinstance(m, (torch.nn.Dropout, torch.nn.BatchNorm2d)) for m in default.modules())

    net = KerasUNet(2, 3, 1, norm="batch", dropout=UNET_TEACHING_DROPOUT)
    rates = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    # encoder levels 2-5 then decoder levels 4, 3, 2; the shallowest level has none
    assert rates == [0.1, 0.2, 0.2, 0.3, 0.2, 0.2, 0.1]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 18  # 9 double convolutions
    with pytest.raises(ValueError, match="one rate per level"):
        KerasUNet(2, 3, 1, dropout=(0.1, 0.2))


def test_unetplusplus_x03_quirk():
    quirk, plain = KerasUNetPlusPlus(2, 3, 1), KerasUNetPlusPlus(2, 3, 1, x03_quirk=False)
    assert quirk.conv_0_3.convs.conv_1.conv.out_channels == 32
    assert plain.conv_0_3.convs.conv_1.conv.out_channels == 16
    assert n_params(plain) < n_params(quirk)


@pytest.mark.parametrize("name, net_cls", [(c.__name__, c) for c in NETS])
def test_bundle_config(name, net_cls):
    config = {"net": {"_target_": f"networks.{name}", "spatial_dims": 3, "in_channels": 1, "out_channels": 2}}
    net = ConfigParser(config).get_parsed_content("net")
    assert type(net) is net_cls
    assert n_params(net) == PINNED_3D[net_cls]


@pytest.mark.parametrize("net_cls", NETS)
def test_overfits_one_batch(net_cls):
    # logits out, so the sigmoid lives in the loss
    torch.manual_seed(0)
    net = net_cls(2, 1, 1, features=4).train()
    x = torch.randn(2, 1, 16, 16)
    y = torch.zeros(2, 1, 16, 16)
    y[..., 4:12, 4:12] = 1.0
    loss_fn = torch.nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("net_cls", NETS)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_torchscript_equals_eager_and_refuses_as_eager(net_cls, spatial_dims):
    """Each network scripts (``ckpt_export`` of a bundle whose network_def is overridden with one of them), gives the
    eager output, and refuses an indivisible input with the eager message."""
    kwargs = {"rate_scale": 0.25} if net_cls is KerasResUNetPlusPlus and spatial_dims == 3 else {}
    net = net_cls(spatial_dims, 1, 2, features=2, norm="batch", **kwargs).eval()
    scripted = torch.jit.script(net)
    x = torch.randn((1, 1) + (16,) * spatial_dims)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=1e-6)
    bad = torch.zeros((1, 1) + (12,) * spatial_dims)
    with pytest.raises(ValueError) as eager:
        net(bad)
    with pytest.raises(Exception) as compiled:
        scripted(bad)
    assert str(eager.value) in str(compiled.value)
