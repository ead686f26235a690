"""Research networks as pure ``torch.nn.Module`` classes in MONAI style (``spatial_dims`` 2 or 3, no I/O).

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
