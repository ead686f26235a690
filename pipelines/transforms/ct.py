"""CT segmentation presets: one preprocessing chain for training, evaluation and inference.

Every step is invertible, so ``Invertd`` can bring a prediction back to the input's grid: orientation to RAS,
resampling to ``pixdim``, a Hounsfield window scaled to [0, 1], and a crop to the body (``CropForegroundd``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    EnsureTyped,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from pipelines.transforms.indices import CropCentreIndicesd
from pipelines.transforms.io import LoadVolumed

__all__ = ["ct_preprocessing", "ct_train_transforms", "ct_eval_transforms", "ct_infer_transforms", "body_mask"]

BODY_THRESHOLD = 0.05  # in the [0, 1] window: about -930 HU for the default window, above air and the FOV padding


def body_mask(image: torch.Tensor) -> torch.Tensor:
    """Voxels denser than air: the foreground that ``CropForegroundd`` keeps."""
    return image > BODY_THRESHOLD


def ct_preprocessing(
    keys: Sequence[str],
    pixdim: Sequence[float],
    hu_window: Sequence[float] = (-1000.0, 400.0),
    image_key: str = "image",
    margin: int = 4,
) -> list:
    """Load, orient to RAS, resample (``image`` bilinear, other keys nearest), window HU to [0, 1], crop to the body.

    Label keys end as ``uint8`` (their values are 0/1 after nearest resampling): a quarter of float32's bytes in RAM
    and in the disk cache; training casts each patch back to float32."""
    keys = list(keys)
    modes = ["bilinear" if k == image_key else "nearest" for k in keys]
    label_keys = [k for k in keys if k != image_key]
    return [
        LoadVolumed(keys),
        EnsureTyped(keys, dtype=torch.float32, track_meta=True),
        Orientationd(keys, axcodes="RAS"),
        Spacingd(keys, pixdim=tuple(pixdim), mode=modes),
        ScaleIntensityRanged(image_key, a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys, source_key=image_key, select_fn=body_mask, margin=margin, allow_smaller=True),
    ] + ([CastToTyped(label_keys, dtype=torch.uint8)] if label_keys else [])


def ct_train_transforms(
    pixdim: Sequence[float],
    patch_size: Sequence[int],
    num_samples: int = 4,
    pos: float = 1.0,
    neg: float = 1.0,
    hu_window: Sequence[float] = (-1000.0, 400.0),
) -> Compose:
    """Preprocessing, then ``num_samples`` patches per volume, positives and negatives in the ratio ``pos:neg``.

    Crop centres come from :class:`~pipelines.transforms.indices.CropCentreIndicesd` (nodule voxels, and body voxels
    outside nodules), computed once with the preprocessing, so a draw reads only its patches."""
    keys = ["image", "label"]
    return Compose(
        ct_preprocessing(keys, pixdim, hu_window)
        + [
            SpatialPadd(keys, spatial_size=tuple(patch_size)),
            CropCentreIndicesd("label", image_key="image", image_threshold=BODY_THRESHOLD),
            RandCropByPosNegLabeld(
                keys, label_key="label", spatial_size=tuple(patch_size), pos=pos, neg=neg,
                num_samples=num_samples, fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices",
            ),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys, prob=0.5, spatial_axis=2),
            RandRotate90d(keys, prob=0.5, max_k=3, spatial_axes=(0, 1)),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.05, prob=0.5),
            EnsureTyped("label", dtype=torch.float32),
        ]
    )


def ct_eval_transforms(pixdim: Sequence[float], hu_window: Sequence[float] = (-1000.0, 400.0)) -> Compose:
    """Preprocessing of image and label for whole-volume validation."""
    return Compose(ct_preprocessing(["image", "label"], pixdim, hu_window))


def ct_infer_transforms(pixdim: Sequence[float], hu_window: Sequence[float] = (-1000.0, 400.0)) -> Compose:
    """Preprocessing of the image alone, for inference; invert it with ``Invertd(transform=this)``."""
    return Compose(ct_preprocessing(["image"], pixdim, hu_window))
