"""Random training transforms move image and label together: an image that *is* its label stays equal to it.

Each phantom's image is a function of its label alone (HU 400 inside a lesion, -1000 elsewhere; an RGB lesion of
255 on 0; a BraTS head whose every modality is brighter inside the tumour), so after every random crop, flip and
rotation of the bundle's own training preset the thresholded image must equal the label voxel for voxel. A flip or
rotation applied to one key only (a learning test cannot see it: the scores move within their seed-to-seed spread)
breaks this at once. Several seeds, so that every random branch is taken.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image


def _blobs(shape, seed: int) -> np.ndarray:
    """A few asymmetric boxes: no flip or rotation maps the mask onto itself."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=np.uint8)
    for _ in range(3):
        lo = [int(rng.integers(1, s // 2)) for s in shape]
        size = [int(rng.integers(2, s // 3)) for s in shape]
        mask[tuple(slice(a, a + b) for a, b in zip(lo, size))] = 1
    return mask


def _samples(out) -> list[dict]:
    return out if isinstance(out, list) else [out]


@pytest.mark.parametrize("seed", range(4))
def test_ct_training_patches_keep_image_and_label_aligned(tmp_path, seed):
    from pipelines.transforms.ct import ct_train_transforms

    label = _blobs((40, 36, 24), seed)
    hu = np.where(label > 0, 400, -1000).astype(np.int16)
    hu[2:-2, 2:-2, 2:-2] = np.where(label[2:-2, 2:-2, 2:-2] > 0, 400, -200)  # a body, so that the crop keeps it
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(hu, affine), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "label.nii.gz"))
    transform = ct_train_transforms(pixdim=(1.0, 1.0, 2.0), patch_size=(16, 16, 8), num_samples=4)
    transform.set_random_state(seed)
    for sample in _samples(transform({"image": str(tmp_path / "ct.nii.gz"), "label": str(tmp_path / "label.nii.gz")})):
        image, mask = torch.as_tensor(sample["image"])[0], torch.as_tensor(sample["label"])[0]
        # window: 400 HU -> 1, -200 HU -> 0.57, then at most x1.1 and +-0.05: lesion > 0.85 > everything else
        assert torch.equal(image > 0.85, mask > 0.5)


@pytest.mark.parametrize("seed", range(4))
def test_isic_training_images_keep_image_and_mask_aligned(tmp_path, seed):
    from pipelines.transforms.isic import isic_train_transforms

    mask = _blobs((48, 48), seed)  # square, at the preset size: the resize is the identity
    Image.fromarray(np.repeat((mask * 255)[..., None], 3, axis=-1).astype(np.uint8)).save(tmp_path / "img.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    transform = isic_train_transforms(spatial_size=(48, 48))
    transform.set_random_state(seed)
    for draw in range(4):
        sample = transform({"image": str(tmp_path / "img.png"), "label": str(tmp_path / "mask.png")})
        image, label = torch.as_tensor(sample["image"]), torch.as_tensor(sample["label"])[0]
        for channel in image:
            assert torch.equal(channel > 0.5, label > 0.5), (seed, draw)


@pytest.mark.parametrize("seed", range(4))
def test_brats_training_patches_keep_image_and_regions_aligned(tmp_path, seed):
    from pipelines.transforms.brats import brats_train_transforms

    shape = (32, 30, 24)
    tumour = _blobs(shape, seed)
    head = np.zeros(shape, dtype=np.float32)
    head[1:-1, 1:-1, 1:-1] = 100.0
    head[tumour > 0] = 300.0
    affine = np.eye(4)
    files = []
    for modality in ("t1c", "t1", "t2", "flair"):
        nib.save(nib.Nifti1Image(head, affine), str(tmp_path / f"{modality}.nii.gz"))
        files.append(str(tmp_path / f"{modality}.nii.gz"))
    nib.save(nib.Nifti1Image(np.where(tumour > 0, 4, 0).astype(np.uint8), affine), str(tmp_path / "seg.nii.gz"))
    transform = brats_train_transforms(patch_size=(16, 16, 16), num_samples=4)
    transform.set_random_state(seed)
    for sample in _samples(transform({"image": files, "label": str(tmp_path / "seg.nii.gz")})):
        image, regions = torch.as_tensor(sample["image"]), torch.as_tensor(sample["label"])
        brain = image[0] != image[0].min()  # outside the head is the one lowest value after z-scoring
        tumour_voxels = regions[1] > 0.5  # WT: the only label is ET = 4, so TC = WT = ET
        assert torch.equal(regions[0], regions[1]) and torch.equal(regions[2], regions[1])
        for channel in image:
            inside = channel[tumour_voxels]
            outside = channel[brain & ~tumour_voxels]
            if inside.numel() and outside.numel():
                assert inside.min() > outside.max(), seed  # tumour brighter in every modality, voxel for voxel
