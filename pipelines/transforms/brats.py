"""BraTS presets: four MR modalities -> normalised 4-channel input; label map <-> three overlapping regions.

Regions (channel order TC, WT, ET, as MONAI's ``brats_mri_segmentation`` bundle):

- TC, tumour core   = necrotic core (1) ∪ enhancing tumour
- WT, whole tumour  = necrotic core (1) ∪ oedema (2) ∪ enhancing tumour
- ET, enhancing     = label 4 (BraTS 2018-2021) or 3 (BraTS 2023)

The inverse (:class:`RegionsToLabelsd`, for inference outputs) writes a label map in the data set's own convention:
ET where ET, else necrotic core where TC, else oedema where WT, else 0. Nested regions come back exactly; a
prediction whose regions are not nested is resolved in that order of priority (ET > TC > WT), as BraTS submissions do.

The preprocessing is invertible (``Invertd``): load (one channel per modality, order of
:data:`pipelines.data.brats.CHANNELS`), orient to RAS, optionally resample, z-score each channel over its non-zero
(brain) voxels, crop to the brain.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Spacingd,
    SpatialPadd,
)

from pipelines.data.brats import CONVENTIONS, BraTSConvention
from pipelines.io import atomic_path
from pipelines.transforms.indices import CropCentreIndicesd
from pipelines.transforms.io import LoadVolumed, first_path

__all__ = [
    "labels_to_regions",
    "regions_to_labels",
    "LabelToRegionsd",
    "RegionsToLabelsd",
    "SaveLikeReferenced",
    "brats_preprocessing",
    "brats_train_transforms",
    "brats_eval_transforms",
    "brats_infer_transforms",
]


def _convention(name: str | BraTSConvention) -> BraTSConvention:
    if isinstance(name, BraTSConvention):
        return name
    if str(name) not in CONVENTIONS:
        raise ValueError(f"unknown BraTS convention {name!r}; choose from {sorted(CONVENTIONS)}")
    return CONVENTIONS[str(name)]


def labels_to_regions(label: torch.Tensor, convention: str | BraTSConvention = "2021") -> torch.Tensor:
    """``(1, *spatial)`` BraTS label map -> ``(3, *spatial)`` float regions TC, WT, ET (a ``MetaTensor`` stays one)."""
    conv = _convention(convention)
    x = label[0] if label.ndim > 0 and label.shape[0] == 1 else label
    et = x == conv.et
    tc = (x == conv.ncr) | et
    wt = tc | (x == conv.ed)
    regions = torch.stack([tc, wt, et]).float() if isinstance(x, torch.Tensor) else np.stack([tc, wt, et]).astype(
        np.float32)
    if isinstance(label, MetaTensor):
        regions = MetaTensor(regions, meta=label.meta, applied_operations=label.applied_operations)
    return regions


def regions_to_labels(regions: torch.Tensor, convention: str | BraTSConvention = "2021",
                      threshold: float = 0.5) -> torch.Tensor:
    """``(3, *spatial)`` regions TC, WT, ET (binary or probabilities) -> ``(1, *spatial)`` uint8 label map."""
    conv = _convention(convention)
    r = torch.as_tensor(regions)
    if r.shape[0] != 3:
        raise ValueError(f"expected 3 region channels (TC, WT, ET), got shape {tuple(r.shape)}")
    tc, wt, et = (r[i] > threshold for i in range(3))
    out = torch.zeros(r.shape[1:], dtype=torch.uint8, device=r.device)
    out[wt] = conv.ed
    out[tc] = conv.ncr
    out[et] = conv.et
    out = out[None]
    if isinstance(regions, MetaTensor):
        out = MetaTensor(out, meta=regions.meta, applied_operations=regions.applied_operations)
    return out


class LabelToRegionsd(MapTransform):
    """Convert BraTS label maps to three overlapping region channels TC, WT, ET.

    Args:
        keys: keys of the label maps ``(1, *spatial)``.
        convention: ``"2021"`` (ET = 4) or ``"2023"`` (ET = 3) when ``convention_key`` is absent from the data.
        convention_key: data key naming each item's convention (the datalists of :mod:`pipelines.data.brats` set
            ``"convention"``); it wins over ``convention``.
    """

    def __init__(self, keys: KeysCollection, convention: str = "2021", convention_key: str = "convention",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.convention = _convention(convention)
        self.convention_key = convention_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        convention = d.get(self.convention_key, self.convention)
        for key in self.key_iterator(d):
            d[key] = labels_to_regions(d[key], convention)
        return d


class RegionsToLabelsd(MapTransform):
    """Convert region channels TC, WT, ET back to a BraTS label map in the item's convention.

    Args:
        keys: keys of the regions ``(3, *spatial)`` (binary, or probabilities thresholded at ``threshold``).
        convention: default convention, as :class:`LabelToRegionsd`.
        convention_key: data key naming each item's convention.
        threshold: values above it are inside a region.
    """

    def __init__(self, keys: KeysCollection, convention: str = "2021", convention_key: str = "convention",
                 threshold: float = 0.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.convention = _convention(convention)
        self.convention_key = convention_key
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        convention = d.get(self.convention_key, self.convention)
        for key in self.key_iterator(d):
            d[key] = regions_to_labels(d[key], convention, self.threshold)
        return d


class SaveLikeReferenced(MapTransform):
    """Write a ``(1, *spatial)`` array on the grid of a reference file, atomically, as ``<name><suffix>``.

    The array must already be back on the reference's grid in the reader's index order (``Invertd`` does that);
    the output copies size, spacing, origin and direction from the reference's header, so it overlays the input
    exactly. The written path is stored in ``data["output_path"]``.

    Args:
        keys: the key to write.
        output_dir: destination folder.
        reference_key: data key of the reference file path (or a list of paths: the first is used).
        name_key: data key of the output name (e.g. the BraTS case); defaults to the reference's name.
        suffix: appended to the name, with the extension (``".nii.gz"``).
        dtype: numpy type of the written voxels.
    """

    def __init__(self, keys: KeysCollection, output_dir: str, reference_key: str = "reference",
                 name_key: str = "case", suffix: str = ".nii.gz", dtype=np.uint8) -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.reference_key = reference_key
        self.name_key = name_key
        self.suffix = suffix
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        reference = Path(first_path(d[self.reference_key]))
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(reference))
        reader.ReadImageInformation()
        name = first_path(d[self.name_key]) if self.name_key in d else reference.name.split(".")[0]
        for key in self.key_iterator(d):
            array = torch.as_tensor(d[key]).detach().cpu().numpy()
            array = array[0] if array.ndim == reader.GetDimension() + 1 else array
            if tuple(array.shape) != tuple(reader.GetSize()):
                raise ValueError(f"{reference}: prediction of shape {array.shape} is not on the input's grid "
                                 f"{tuple(reader.GetSize())} (is Invertd missing from the postprocessing?)")
            image = sitk.GetImageFromArray(np.ascontiguousarray(array.T.astype(self.dtype)))
            image.SetSpacing(reader.GetSpacing())
            image.SetOrigin(reader.GetOrigin())
            image.SetDirection(reader.GetDirection())
            path = self.output_dir / f"{name}{self.suffix}"
            with atomic_path(path) as tmp:
                sitk.WriteImage(image, str(tmp), True)
            d["output_path"] = str(path)
        return d


def brats_preprocessing(keys: Sequence[str], pixdim: Sequence[float] | None = None, image_key: str = "image",
                        label_key: str = "label", margin: int = 4) -> list:
    """Load, orient to RAS, optionally resample to ``pixdim``, labels to regions, z-score the non-zero voxels of
    each channel, crop to the brain (non-zero voxels of any channel)."""
    keys = list(keys)
    steps = [
        LoadVolumed(keys),
        EnsureTyped(keys, dtype=torch.float32, track_meta=True),
        Orientationd(keys, axcodes="RAS"),
    ]
    if pixdim is not None:
        steps.append(Spacingd(keys, pixdim=tuple(pixdim), mode=["bilinear" if k == image_key else "nearest"
                                                                  for k in keys]))
    if label_key in keys:
        steps.append(LabelToRegionsd(label_key))
    steps += [
        CropForegroundd(keys, source_key=image_key, margin=margin, allow_smaller=True),
        NormalizeIntensityd(image_key, nonzero=True, channel_wise=True),
    ]
    if label_key in keys:  # regions are 0/1: uint8 in RAM and in the disk cache, float32 again per training patch
        steps.append(CastToTyped(label_key, dtype=torch.uint8))
    return steps


def brats_train_transforms(patch_size: Sequence[int], num_samples: int = 2, pos: float = 1.0, neg: float = 1.0,
                           pixdim: Sequence[float] | None = None) -> Compose:
    """Preprocessing, then ``num_samples`` patches per case centred on tumour or brain in the ratio ``pos:neg``,
    flips on every axis and intensity jitter."""
    keys = ["image", "label"]
    return Compose(brats_preprocessing(keys, pixdim) + [
        SpatialPadd(keys, spatial_size=tuple(patch_size)),
        CropCentreIndicesd("label", image_key="image", image_threshold=0.0),
        RandCropByPosNegLabeld(keys, label_key="label", spatial_size=tuple(patch_size), pos=pos, neg=neg,
                               num_samples=num_samples, fg_indices_key="label_fg_indices",
                               bg_indices_key="label_bg_indices"),
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys, prob=0.5, spatial_axis=2),
        RandScaleIntensityd("image", factors=0.1, prob=1.0),
        RandShiftIntensityd("image", offsets=0.1, prob=1.0),
        EnsureTyped("label", dtype=torch.float32),
    ])


def brats_eval_transforms(pixdim: Sequence[float] | None = None) -> Compose:
    """Preprocessing of image and label (regions) for whole-volume validation."""
    return Compose(brats_preprocessing(["image", "label"], pixdim))


def brats_infer_transforms(pixdim: Sequence[float] | None = None) -> Compose:
    """Preprocessing of the image alone; invert it with ``Invertd(transform=this)``."""
    return Compose(brats_preprocessing(["image"], pixdim))
