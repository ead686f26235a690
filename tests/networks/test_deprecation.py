"""The earlier constructor and class names (networks/deprecation.py): accepted for one version with a
``DeprecationWarning`` that names the new one, building exactly the network the new names build.

The reference for "the same network" is the network built with the new names from the same seed: the same
state-dict keys and shapes and the same initial weights (the frozen outputs, ``test_frozen_outputs.py``, are built with
the earlier names and pin what those networks compute). Giving an old and a new name together is refused.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.utils import DeprecatedError

import networks
import networks.deprecation as deprecation
from networks.edu import DenseTransitionBlock
from networks.esrgan import RRDB, ResidualDenseBlock, RRDBNet, VGGStyleDiscriminator, esrgan, se_esrgan
from networks.hemf import HEMF, hemf_3d_light
from networks.unet_family import KerasResUNet, KerasResUNetPlusPlus, KerasUNet, KerasUNetPlusPlus

REPO = Path(__file__).resolve().parents[2]
HEMF_TINY = {"elf_depths": 1, "egf_depths": 1, "num_heads": 2, "memory_size": 4, "ca_ratio": 4}

# (factory, arguments both calls share, {old name: value}, {new name: value})
RENAMED = [
    (RRDBNet, {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "scale": 2},
     {"nf": 8, "gc": 4, "nb": 2}, {"features": 8, "growth_channels": 4, "num_blocks": 2}),
    (esrgan, {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "scale": (1, 1, 2)},
     {"nf": 8, "gc": 4, "nb": 1}, {"features": 8, "growth_channels": 4, "num_blocks": 1}),
    (se_esrgan, {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "scale": 2, "se_ratio": 4},
     {"nf": 8, "gc": 4, "nb": 1}, {"features": 8, "growth_channels": 4, "num_blocks": 1}),
    (ResidualDenseBlock, {"spatial_dims": 2}, {"nf": 5, "gc": 3}, {"features": 5, "growth_channels": 3}),
    (RRDB, {"spatial_dims": 3}, {"nf": 5, "gc": 3}, {"features": 5, "growth_channels": 3}),
    (VGGStyleDiscriminator, {"spatial_dims": 2, "in_channels": 1, "head": "patch", "channel_mults": (1, 2)},
     {"base_features": 4}, {"features": 4}),
    (HEMF, {"spatial_dims": 2, "in_channels": 1, **HEMF_TINY},
     {"num_classes": 3, "widths": (8, 16)}, {"out_channels": 3, "features": (8, 16)}),
    (hemf_3d_light, {"in_channels": 1, "num_heads": 2, "memory_size": 4, "ca_ratio": 4},
     {"num_classes": 3, "widths": (8, 16)}, {"out_channels": 3, "features": (8, 16)}),
] + [
    (cls, {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}, {"base_filters": 2}, {"features": 2})
    for cls in (KerasUNet, KerasUNetPlusPlus, KerasResUNet, KerasResUNetPlusPlus)
]
CLASSES = [("UNet", KerasUNet), ("UNetPlusPlus", KerasUNetPlusPlus), ("ResUNet", KerasResUNet),
           ("ResUNetPlusPlus", KerasResUNetPlusPlus)]
BLOCKS = [
    ("networks.edu", "DenseBlock", DenseTransitionBlock),
    ("networks.frcunet", "DoubleConv", "monai.networks.nets.basic_unet.TwoConv"),
    ("networks.frcunet", "UpCat", "networks.frcunet.UpConvNormCat"),
    ("networks.unet_family", "DoubleConv", "networks.unet_family.KerasDoubleConv"),
    ("networks.unet_family", "Down", "networks.unet_family.KerasDown"),
    ("networks.unet_family", "UpCat", "networks.unet_family.KerasUpCat"),
    ("networks.unet_family", "ResidualUnit", "networks.unet_family.KerasResidualUnit"),
    ("networks.unet_family", "AttentionBlock", "networks.unet_family.KerasAttentionBlock"),
]


def _build(factory, seed: int = 0, **kwargs) -> tuple[torch.nn.Module, list[warnings.WarningMessage]]:
    """``factory(**kwargs)`` after ``torch.manual_seed(seed)``, with the deprecation warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(seed)
        net = factory(**kwargs)
    ours = [w for w in caught if issubclass(w.category, DeprecationWarning) and "0.1.0" in str(w.message)]
    return net, ours


def _assert_same_network(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert [(k, tuple(v.shape)) for k, v in sa.items()] == [(k, tuple(v.shape)) for k, v in sb.items()]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_package_version_is_pyprojects():
    """The deprecations count versions against this package's version, which must be pyproject.toml's."""
    version = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert version is not None and deprecation.PACKAGE_VERSION == version.group(1)
    assert deprecation.DEPRECATED_SINCE == deprecation.PACKAGE_VERSION != deprecation.REMOVED_IN


@pytest.mark.parametrize("factory, common, old, new", RENAMED, ids=lambda v: getattr(v, "__name__", None))
def test_old_argument_names_warn_and_build_the_same_network(factory, common, old, new):
    net_new, warned_new = _build(factory, **common, **new)
    assert warned_new == []
    net_old, warned_old = _build(factory, **common, **old)
    messages = [str(w.message) for w in warned_old]
    for (old_name, _), new_name in zip(old.items(), new):
        assert any(f"Argument `{old_name}`" in m and f"Use `{new_name}` instead" in m and "0.2.0" in m
                   for m in messages), (old_name, messages)
    _assert_same_network(net_old, net_new)


@pytest.mark.parametrize("factory, common, old, new", RENAMED, ids=lambda v: getattr(v, "__name__", None))
def test_old_and_new_name_together_are_refused(factory, common, old, new):
    """Each old name given besides its new one (with another value) is an error naming both."""
    for old_name, new_name in zip(old, new):
        other = {**new, new_name: _different(new[new_name])}
        with pytest.raises(ValueError, match=rf"got both {new_name}=.* and its deprecated name {old_name}=.*; give "
                                             rf"{new_name} alone\."):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                factory(**common, **other, **{old_name: old[old_name]})


def _different(value):
    return tuple(2 * v for v in value) if isinstance(value, tuple) else value + 1


@pytest.mark.parametrize("old_name, new_cls", CLASSES)
def test_old_class_names_warn_when_instantiated_and_build_the_same_network(old_name, new_cls):
    old_cls = getattr(networks, old_name)
    assert old_cls is not new_cls and issubclass(old_cls, new_cls) and old_cls.__name__ == old_name
    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": 2}
    net_new, warned_new = _build(new_cls, **kwargs)
    assert warned_new == []
    net_old, warned_old = _build(old_cls, **kwargs)
    assert [f"Class `{old_name}`" in str(w.message) and f"Use `networks.{new_cls.__name__}` instead" in str(w.message)
            for w in warned_old] == [True]
    _assert_same_network(net_old, net_new)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net_old.eval()(x), net_new.eval()(x), rtol=0, atol=0)
    torch.jit.script(net_old)  # the alias scripts as the network does


@pytest.mark.parametrize("old_name, new_cls", CLASSES)
def test_a_config_with_the_old_target_still_builds(old_name, new_cls):
    """A bundle override ``{"_target_": "networks.UNet", "base_filters": 2}`` (old class and argument) keeps working."""
    config = {"net": {"_target_": f"networks.{old_name}", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                      "base_filters": 2}}
    net, warned = _build(lambda: ConfigParser(config).get_parsed_content("net"))
    messages = [str(w.message) for w in warned]
    assert any(f"Class `{old_name}`" in m for m in messages) and any("Argument `base_filters`" in m for m in messages)
    assert type(net).__name__ == old_name and isinstance(net, new_cls)  # what bundle tests check by name
    _assert_same_network(net, _build(new_cls, spatial_dims=2, in_channels=1, out_channels=2, features=2)[0])


@pytest.mark.parametrize("module_name, old_name, new", BLOCKS)
def test_old_block_names_resolve_with_a_warning(module_name, old_name, new):
    module = __import__(module_name, fromlist=["_"])
    with pytest.warns(DeprecationWarning, match=rf"{module_name}\.{old_name} has been deprecated.*Use `"):
        resolved = getattr(module, old_name)
    expected_name = new.__name__ if isinstance(new, type) else new.rsplit(".", 1)[1]
    assert resolved.__name__ == expected_name and resolved.__name__ != old_name
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchBlock'"):
        _ = module.NoSuchBlock


def test_old_names_raise_from_the_removal_version(monkeypatch):
    """From REMOVED_IN on, MONAI's decorators raise instead of warning (checked on a fresh decoration)."""
    monkeypatch.setattr(deprecation, "PACKAGE_VERSION", deprecation.REMOVED_IN)

    @deprecation.renamed_args(old="new")
    def f(new: int = 0, old: int | None = None) -> int:
        return new

    assert f(new=3) == 3
    with pytest.raises(DeprecatedError, match="Argument `old` was removed in version 0.2.0"):
        f(old=3)

    @deprecation.deprecated_class("New")
    class Old(torch.nn.Module):
        pass

    with pytest.raises(DeprecatedError, match=r"Class `\S*Old` was removed in version 0.2.0"):
        Old()


@pytest.mark.parametrize("cls", [KerasUNet, KerasUNetPlusPlus, KerasResUNet, KerasResUNetPlusPlus])
def test_keras_family_features_int_is_the_doubling_sequence(cls):
    """``features=b`` (the Keras helpers' filters, earlier ``base_filters``) is ``(b, 2b, 4b, 8b, 16b)``; other
    widths build a network of those widths."""
    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}
    _assert_same_network(_build(cls, **kwargs, features=3)[0], _build(cls, **kwargs, features=(3, 6, 12, 24, 48))[0])
    net = cls(**kwargs, features=(2, 3, 5, 7, 11)).eval()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert {c.out_channels for c in convs} >= {3, 5, 7, 11}  # (2 appears as the head's out_channels too)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: features needs one width per level \(5\), got \(4, 8\)"):
        cls(**kwargs, features=(4, 8))
    with pytest.raises(ValueError, match=rf"{cls.__name__}: features must be positive"):
        cls(**kwargs, features=0)
