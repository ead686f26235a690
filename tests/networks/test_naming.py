"""One name, one meaning: no two public classes of ``networks`` share a name, none takes a name MONAI gives to another
layer or network, MONAI's blocks are used where they compute the same thing, and one squeeze-excite block serves every
network that has one.

MONAI's names are read from MONAI itself (every class defined under ``monai.networks`` once its ``nets``, ``blocks``
and ``layers`` are imported), not from a list written here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys

import torch
from monai.networks.nets.basic_unet import Down, TwoConv

import networks
from networks.blocks import SqueezeExcitation

#: the earlier names of the U-Net family, kept for one version (networks/deprecation.py), then removed
DEPRECATED_ALIASES = {"UNet", "UNetPlusPlus", "ResUNet", "ResUNetPlusPlus"}


def _project_classes() -> dict[str, list[str]]:
    """``{class name: [defining module, ...]}`` over every public class defined in a ``networks`` module."""
    found: dict[str, list[str]] = {}
    for info in pkgutil.walk_packages(networks.__path__, prefix="networks."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == module.__name__ and not name.startswith("_"):
                found.setdefault(name, []).append(module.__name__)
    return found


def _monai_network_classes() -> dict[str, str]:
    """``{class name: defining module}`` over the public classes of every loaded ``monai.networks`` module."""
    for package in ("monai.networks.nets", "monai.networks.blocks", "monai.networks.layers"):
        importlib.import_module(package)
    names: dict[str, str] = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith("monai.networks"):
            continue
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == module_name and not name.startswith("_"):
                names.setdefault(name, module_name)
    return names


def test_no_two_project_classes_share_a_name():
    shared = {name: modules for name, modules in _project_classes().items() if len(modules) > 1}
    assert not shared, f"classes defined more than once under one name: {shared}"


def test_no_project_class_takes_a_monai_name():
    ours = set(_project_classes()) - DEPRECATED_ALIASES
    monai_names = _monai_network_classes()
    assert {"UNet", "TwoConv", "Down", "UpCat", "ResidualUnit", "AttentionBlock", "DenseBlock"} <= set(monai_names)
    clashes = {name: monai_names[name] for name in ours & set(monai_names)}
    assert not clashes, f"project classes named as MONAI's (another layer): {clashes}"


def test_every_exported_name_resolves():
    for name in networks.__all__:
        assert inspect.isclass(getattr(networks, name)), name
    import networks.blocks as blocks

    for name in blocks.__all__:
        assert getattr(blocks, name) is not None, name


def test_frcunet_uses_monais_two_conv_and_down():
    """FRCU-Net's encoder double convolutions and down-samplings are MONAI's ``TwoConv`` and ``Down`` (their
    computation is pinned by the frozen FRCU-Net outputs), its post-FR double convolution too."""
    net = networks.FRCUNet(2, 1, 2, features=(4, 8, 8), freq_channels=8, gauss_kernel_sizes=(3,))
    assert type(net.conv_0) is TwoConv and type(net.post[0]) is TwoConv
    assert [type(d) for d in net.downs] == [Down, Down]
    assert all(type(up.convs) is TwoConv for up in net.ups)


def test_one_squeeze_excite_block_for_every_network():
    """SE-ESRGAN's and ResUNet++'s squeeze-excite blocks are the one shared class; FRCU-Net's level SE builds its
    excitation the same way (Linear/act layers ending in a sigmoid, no biases)."""
    from networks.esrgan import se_esrgan

    gen = se_esrgan(2, 1, 1, scale=2, features=8, growth_channels=4, num_blocks=1, se_ratio=4)
    resunetpp = networks.KerasResUNetPlusPlus(2, 1, 1, features=8)
    frcu = networks.FRCUNet(2, 1, 2, features=(4, 8, 8), freq_channels=8, gauss_kernel_sizes=(3,), se_reduction=4)
    se_types = {type(m) for net in (gen, resunetpp) for m in net.modules() if "Squeeze" in type(m).__name__}
    assert se_types == {SqueezeExcitation}
    assert sum(type(m) is SqueezeExcitation for m in resunetpp.modules()) == 1 + 3 + 3  # stem, encoder, decoder
    mlp = frcu.fr.se.mlp
    assert [type(m).__name__ for m in mlp] == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "Sigmoid"]
    assert all(m.bias is None for m in mlp if isinstance(m, torch.nn.Linear))
