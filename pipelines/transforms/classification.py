"""2D image-classification presets (dermoscopy, endoscopy, CT slices saved as PNG): HEMF's recipe in MONAI transforms.

- Training: load as RGB -> random resized crop (area 8-100 %, aspect 3/4-4/3) to ``image_size`` -> horizontal flip
  -> ``(x / 255 - 0.5) / 0.5``.
- Evaluation and inference: load as RGB -> resize the shorter side to ``resize_size`` (keeping the aspect ratio)
  -> centre crop ``image_size`` -> the same normalisation. The reference uses 256 -> 224.

MONAI lacks torchvision's ``RandomResizedCrop`` (``RandSpatialCropd(random_size=True)`` draws each side on its own, so
the aspect ratio is not bounded, and it does not resize) and a "shorter side to N" resize; both are here.
Images are read with PIL in (row, column) order, so arrays are ``(C, H, W)`` as displayed and a horizontal flip is
``spatial_axis=1``. Grayscale and RGBA files are converted to RGB, so one network serves every folder of images.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    RandFlipd,
    Randomizable,
    Resize,
    ScaleIntensityRanged,
    SpatialCrop,
)

__all__ = [
    "to_rgb",
    "RandResizedCropd",
    "ResizeShortSided",
    "classification_train_transforms",
    "classification_eval_transforms",
    "classification_infer_transforms",
]


def to_rgb(image):
    """PIL converter for ``PILReader``: any mode (L, RGBA, P, I;16...) to 8-bit RGB."""
    if image.mode == "I;16" or image.mode == "I":
        array = np.asarray(image, dtype=np.float32)
        lo, hi = float(array.min()), float(array.max())
        from PIL import Image

        image = Image.fromarray(((array - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _loader(keys: KeysCollection) -> list:
    return [
        LoadImaged(keys, reader=PILReader(converter=to_rgb, reverse_indexing=False), image_only=True),
        EnsureChannelFirstd(keys, channel_dim=-1),
    ]


def _normalise(keys: KeysCollection, mean: float, std: float) -> ScaleIntensityRanged:
    # (x / 255 - mean) / std in one affine map: 255 * mean -> 0, 255 * (mean + std) -> 1
    return ScaleIntensityRanged(keys, a_min=255.0 * mean, a_max=255.0 * (mean + std), b_min=0.0, b_max=1.0)


class RandResizedCropd(Randomizable, MapTransform):
    """torchvision's ``RandomResizedCrop`` for channel-first 2D images: crop a random area fraction in ``scale`` with a
    log-uniform aspect ratio in ``ratio``, then resize it to ``size``.

    Ten tries to fit the crop in the image; if none fits, a centre crop with the aspect ratio clamped into ``ratio``.

    Args:
        keys: keys of the images to crop (the same crop for all).
        size: output ``(H, W)`` or one int for a square.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height).
        mode: interpolation of the resize.
    """

    def __init__(self, keys: KeysCollection, size: Sequence[int] | int, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), mode: str = "bilinear", allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.resize = Resize(self.size, mode=mode, anti_aliasing=True)
        self._box: tuple[int, int, int, int] = (0, 0, 1, 1)

    def randomize(self, shape: Sequence[int]) -> None:
        height, width = int(shape[0]), int(shape[1])
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self.R.uniform(*self.scale)
            aspect = math.exp(self.R.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(self.R.randint(0, height - h + 1))
                left = int(self.R.randint(0, width - w + 1))
                self._box = (top, left, h, w)
                return
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        self._box = ((height - h) // 2, (width - w) // 2, h, w)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first = next(self.key_iterator(d), None)
        if first is None:
            return d
        self.randomize(d[first].shape[1:])
        top, left, h, w = self._box
        crop = SpatialCrop(roi_start=(top, left), roi_end=(top + h, left + w))
        for key in self.key_iterator(d):
            d[key] = self.resize(crop(d[key]))
        return d


class ResizeShortSided(MapTransform):
    """Resize channel-first 2D images so that the shorter side is ``size``, keeping the aspect ratio
    (torchvision's ``Resize(int)``)."""

    def __init__(self, keys: KeysCollection, size: int, mode: str = "bilinear", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.size = int(size)
        self.mode = mode

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            height, width = d[key].shape[1:3]
            factor = self.size / min(height, width)
            shape = (max(self.size, int(round(height * factor))), max(self.size, int(round(width * factor))))
            d[key] = Resize(shape, mode=self.mode, anti_aliasing=True)(d[key])
        return d


def classification_train_transforms(
    image_size: int = 224,
    scale: Sequence[float] = (0.08, 1.0),
    flip_prob: float = 0.5,
    mean: float = 0.5,
    std: float = 0.5,
    keys: KeysCollection = "image",
) -> Compose:
    """Training: load RGB, random resized crop to ``image_size``, horizontal flip, normalise with ``mean`` / ``std``.

    The label (an int in the datalist) is left alone: the data loader collates it into a ``LongTensor``.
    """
    return Compose([
        *_loader(keys),
        RandResizedCropd(keys, image_size, scale=scale),
        RandFlipd(keys, prob=flip_prob, spatial_axis=1),
        _normalise(keys, mean, std),
        EnsureTyped(keys, dtype=torch.float32),
    ])


def classification_eval_transforms(
    image_size: int = 224,
    resize_size: int = 256,
    mean: float = 0.5,
    std: float = 0.5,
    keys: KeysCollection = "image",
) -> Compose:
    """Evaluation and inference: load RGB, shorter side to ``resize_size``, centre crop ``image_size``, normalise."""
    return Compose([
        *_loader(keys),
        ResizeShortSided(keys, resize_size),
        CenterSpatialCropd(keys, image_size),
        _normalise(keys, mean, std),
        EnsureTyped(keys, dtype=torch.float32),
    ])


classification_infer_transforms = classification_eval_transforms
