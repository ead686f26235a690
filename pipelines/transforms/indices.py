"""Crop-centre candidates computed once per case, so that patch sampling never reads a whole volume.

``RandCropByPosNegLabeld`` without precomputed indices scans the whole label (and image) on every draw: on a
memory-mapped 512 x 512 x 300 CT that reads the full volume to cut one 96 x 96 x 64 patch. MONAI's
``FgBgToIndicesd`` computes the indices once, but keeps all of them: the background of a CT is tens of millions of
voxels (hundreds of MB of int64 per case). Here at most ``max_indices`` of each kind are kept, an evenly spread,
seeded sample (nnU-Net keeps a sample of foreground locations per class for the same reason), which upstream lacks.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.transforms import MapTransform
from monai.transforms.utils import map_binary_to_indices

__all__ = ["CropCentreIndicesd", "sample_indices"]


def sample_indices(indices: np.ndarray, max_indices: int, seed: int = 0) -> np.ndarray:
    """At most ``max_indices`` of ``indices``, drawn without replacement by a generator seeded with ``seed``,
    in increasing order; all of them when there are no more than that."""
    indices = np.asarray(indices)
    if len(indices) <= max_indices:
        return indices
    chosen = np.random.default_rng(seed).choice(len(indices), size=max_indices, replace=False)
    return indices[np.sort(chosen)]


class CropCentreIndicesd(MapTransform):
    """Store flattened foreground and background voxel indices of ``label`` as ``<label>_fg_indices`` and
    ``<label>_bg_indices``, for ``RandCropByPosNegLabeld(fg_indices_key=..., bg_indices_key=...)``.

    Foreground is ``label > 0`` in any channel; with ``image_key``, both kinds are restricted to voxels where the
    image exceeds ``image_threshold`` in any channel (``map_binary_to_indices``'s rule, as the crop uses without
    indices). Deterministic: the same case always gives the same indices.
    """

    def __init__(
        self,
        label_key: str = "label",
        image_key: str | None = "image",
        image_threshold: float = 0.0,
        max_indices: int = 100_000,
        seed: int = 0,
    ) -> None:
        super().__init__([label_key])
        self.label_key, self.image_key = label_key, image_key
        self.image_threshold, self.max_indices, self.seed = float(image_threshold), int(max_indices), int(seed)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        label = d[self.label_key]
        image = d[self.image_key] if self.image_key is not None else None
        fg, bg = map_binary_to_indices(label, image, self.image_threshold)
        fg = np.asarray(fg.cpu() if isinstance(fg, torch.Tensor) else fg, dtype=np.int64)
        bg = np.asarray(bg.cpu() if isinstance(bg, torch.Tensor) else bg, dtype=np.int64)
        d[f"{self.label_key}_fg_indices"] = sample_indices(fg, self.max_indices, self.seed)
        d[f"{self.label_key}_bg_indices"] = sample_indices(bg, self.max_indices, self.seed + 1)
        return d
