"""Image writers that write to a temporary name and rename when complete.

MONAI's writers write straight to the final file name, so an interrupted run leaves a truncated file that looks
like a result. Upstream has no atomic option; these subclasses add it.
"""

from __future__ import annotations

import os

from monai.data import NibabelWriter

from .atomic import atomic_path

__all__ = ["AtomicNibabelWriter"]


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` that writes ``name.partial-XXXX.nii.gz`` beside the target, then renames it."""

    def write(self, filename: os.PathLike | str, verbose: bool = False, **obj_kwargs):
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)
