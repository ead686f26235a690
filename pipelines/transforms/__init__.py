"""Task presets built from MONAI transforms, and the few transforms MONAI lacks."""

from .io import LoadVolumed

__all__ = ["LoadVolumed"]
