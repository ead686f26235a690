"""ISIC skin lesion presets: RGB image resized to a fixed size, mask binarised; PNG masks written at original size.

Images are read by MONAI's PIL reader, which returns arrays indexed (x, y): a W x H image becomes ``(3, W, H)``
after ``EnsureChannelFirst``. Intensities are scaled from 0..255 to 0..1; masks (0/255) become 0/1. ``Resized`` is
invertible, so ``Invertd`` brings a prediction back to the image's original size for writing.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    ScaleIntensityRanged,
)
from PIL import Image

from pipelines.io import atomic_path
from pipelines.transforms.io import first_path

__all__ = ["isic_preprocessing", "isic_train_transforms", "isic_eval_transforms", "isic_infer_transforms",
           "SavePNGMaskd"]


def isic_preprocessing(keys: Sequence[str], spatial_size: Sequence[int], image_key: str = "image",
                       label_key: str = "label") -> list:
    """Load, scale the image to [0, 1], binarise the mask at 128, resize (image bilinear, mask nearest)."""
    keys = list(keys)
    steps = [
        LoadImaged(keys, image_only=True, ensure_channel_first=True),
        EnsureTyped(keys, dtype=torch.float32, track_meta=True),
        ScaleIntensityRanged(image_key, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
    ]
    if label_key in keys:
        steps.append(AsDiscreted(label_key, threshold=128.0))
    steps.append(Resized(keys, spatial_size=tuple(spatial_size),
                         mode=["bilinear" if k == image_key else "nearest" for k in keys]))
    return steps


def isic_train_transforms(spatial_size: Sequence[int]) -> Compose:
    """Preprocessing, then flips, 90-degree rotations and brightness/contrast jitter."""
    keys = ["image", "label"]
    return Compose(isic_preprocessing(keys, spatial_size) + [
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandRotate90d(keys, prob=0.5, max_k=3),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.05, prob=0.5),
    ])


def isic_eval_transforms(spatial_size: Sequence[int]) -> Compose:
    """Preprocessing of image and mask for validation (at the training size, as the paper evaluates)."""
    return Compose(isic_preprocessing(["image", "label"], spatial_size))


def isic_infer_transforms(spatial_size: Sequence[int]) -> Compose:
    """Preprocessing of the image alone; invert it with ``Invertd(transform=this)``."""
    return Compose(isic_preprocessing(["image"], spatial_size))


class SavePNGMaskd(MapTransform):
    """Write a binary ``(1, W, H)`` mask (PIL reader's axis order) as an 8-bit 0/255 PNG, atomically.

    The output is ``<output_dir>/<data[name_key]><suffix>`` (ISIC's ``ISIC_<id>_segmentation.png`` by default); when
    ``reference_key`` names the source image, the mask must have its size (``Invertd`` first). The written path is
    stored in ``data["output_path"]``.
    """

    def __init__(self, keys: KeysCollection, output_dir: str, name_key: str = "name",
                 suffix: str = "_segmentation.png", reference_key: str | None = "source",
                 threshold: float = 0.5) -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.name_key = name_key
        self.suffix = suffix
        self.reference_key = reference_key
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        name = first_path(d[self.name_key])
        for key in self.key_iterator(d):
            mask = torch.as_tensor(d[key]).detach().cpu().numpy()
            mask = (mask[0] if mask.ndim == 3 else mask) > self.threshold
            mask = np.ascontiguousarray(mask.T)  # (W, H) -> rows x columns
            if self.reference_key and self.reference_key in d:
                source = first_path(d[self.reference_key])
                with Image.open(source) as image:
                    if image.size != (mask.shape[1], mask.shape[0]):
                        raise ValueError(f"{source}: mask of {mask.shape[1]}x{mask.shape[0]} pixels does not match the "
                                         f"image's {image.size[0]}x{image.size[1]} (is Invertd missing?)")
            path = self.output_dir / f"{name}{self.suffix}"
            with atomic_path(path) as tmp:
                Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")
            d["output_path"] = str(path)
        return d
