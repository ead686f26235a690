"""Research networks as pure ``torch.nn.Module`` classes in MONAI style (``spatial_dims`` 2 or 3, no I/O).

Every constructor names its arguments ``spatial_dims``, ``in_channels``, ``out_channels`` and ``features`` (the
width, or the widths of the resolution levels); the blocks that more than one network uses live in
:mod:`networks.blocks`. The U-Net family is ``KerasUNet``, ``KerasUNetPlusPlus``, ``KerasResUNet`` and
``KerasResUNetPlusPlus`` (their layouts are the Keras teaching code's), so that none reads as MONAI's ``UNet``; the
earlier names ``UNet``, ``UNetPlusPlus``, ``ResUNet`` and ``ResUNetPlusPlus`` and the earlier argument names still
work, with a ``DeprecationWarning``, until version 0.2.0 (:mod:`networks.deprecation`).

Names are resolved lazily so that ``import networks`` stays cheap and a bundle config's
``"_target_": "networks.EDU"`` only imports the module it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EDU": "edu",
    "MDE": "edu",
    "FRCUNet": "frcunet",
    "RRDBNet": "esrgan",
    "VGGStyleDiscriminator": "esrgan",
    "HEMF": "hemf",
    "KerasUNet": "unet_family",
    "KerasUNetPlusPlus": "unet_family",
    "KerasResUNet": "unet_family",
    "KerasResUNetPlusPlus": "unet_family",
    # deprecated names of the four above (they warn when instantiated)
    "UNet": "unet_family",
    "UNetPlusPlus": "unet_family",
    "ResUNet": "unet_family",
    "ResUNetPlusPlus": "unet_family",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
