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
    """``NibabelWriter`` that writes ``name.partial-XXXX.nii.gz`` beside the target, then renames it.

    It also keeps the image's spatial shape: MONAI's ``squeeze_end_dims`` (on by default in ``SaveImage``) removes
    every trailing axis of size one, so the prediction of a single-slice scan ``(X, Y, 1)`` was written 2D
    ``(X, Y)``. Here only a one-element channel axis is dropped, never a spatial axis (a 2D array stays 2D).
    """

    def set_data_array(self, data_array, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs):
        spatial_ndim = kwargs.pop("spatial_ndim", None)
        if spatial_ndim is None:  # the array's own spatial axes, at most 3 (MONAI pads every array to 3)
            spatial_ndim = min(max(len(data_array.shape) - (0 if channel_dim is None else 1), 1), 3)
        self.data_obj = self.convert_to_channel_last(data=data_array, channel_dim=channel_dim,
                                                     squeeze_end_dims=False, spatial_ndim=spatial_ndim)
        if squeeze_end_dims and self.data_obj.ndim > 1 and self.data_obj.shape[-1] == 1:
            self.data_obj = self.data_obj[..., 0]  # the channel only: (X, Y, 1, 1) -> (X, Y, 1)

    def write(self, filename: os.PathLike | str, verbose: bool = False, **obj_kwargs):
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)
