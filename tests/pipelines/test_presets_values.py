"""Transform presets on phantoms whose correct output is worked out by hand: CT (window, orientation, resampling,
body crop), BraTS regions and z-scoring, ISIC scaling/threshold/resize, SR degradation (area, bicubic, CT preset).

Phantoms are written into ``tmp_path`` with SimpleITK (MetaImage/NIfTI) or PIL (PNG). SimpleITK stores LPS world
coordinates: the RAS world point of index ``i`` is ``diag(-1, -1, 1) @ (origin + direction @ diag(spacing) @ i)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from pipelines.transforms.brats import brats_eval_transforms, labels_to_regions, regions_to_labels
from pipelines.transforms.ct import ct_eval_transforms, ct_infer_transforms
from pipelines.transforms.degradation import degrade
from pipelines.transforms.isic import isic_eval_transforms
from pipelines.transforms.sr import ct_sr_eval_transforms


def write_volume(path, array_xyz, spacing, origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    """Write an ``(x, y, z)``-indexed array with SimpleITK (which wants ``(z, y, x)``)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_xyz).T))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    sitk.WriteImage(image, str(path))
    return str(path)


def ras_world(index, spacing, origin, direction):
    """RAS world point of an ITK index, by the formula in the module docstring."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    lps = np.asarray(origin) + d @ (np.asarray(spacing) * np.asarray(index, dtype=np.float64))
    return lps * np.array([-1.0, -1.0, 1.0])


# ----------------------------------------------------------------------------------------------------------- CT
# Phantom A: 24 x 20 x 3 voxels of 0.8 x 0.8 x 2.5 mm, direction diag(1, 1, -1): in RAS every axis runs backwards
# (x, y because LPS -> RAS, z because of the direction), so Orientation("RAS") maps ITK index (x, y, z) to
# (23 - x, 19 - y, 2 - z). Air -1000 HU; a 40 HU body box x 6..15, y 5..12 (all slices); inside it lung -500,
# -300, bone 1000 and 400 HU voxels; a -900 HU voxel (just above the ~-930 HU body threshold) at x = 17 widens the
# body; a -950 HU voxel (below it) at x = 2 and a -2000 HU FOV-padding voxel lie outside the body.
# Body in RAS: x' 6..17, y' 7..14, z' 0..2; crop margin 4 (clipped to the image): x' [2, 22), y' [3, 19), z' [0, 3)
# -> output (20, 16, 3) and ITK (x, y, z) lands at (21 - x, 16 - y, 2 - z).
# Window [-1000, 400] -> [0, 1], clipped: v = clip((HU + 1000) / 1400, 0, 1).
CT_A = dict(spacing=(0.8, 0.8, 2.5), origin=(10.0, -20.0, 30.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))
CT_A_VOXELS = {  # ITK index: (HU, output index, windowed value)
    (7, 6, 1): (-500, (14, 10, 1), 5 / 14),
    (8, 6, 1): (-300, (13, 10, 1), 0.5),
    (9, 6, 1): (1000, (12, 10, 1), 1.0),  # clipped (unclipped 10/7)
    (10, 6, 1): (400, (11, 10, 1), 1.0),
    (17, 9, 1): (-900, (4, 7, 1), 1 / 14),
    (2, 9, 1): (-950, (19, 7, 1), 1 / 28),
    (3, 4, 0): (-2000, (18, 12, 2), 0.0),  # clipped (unclipped -5/7)
    (4, 4, 0): (-1000, (17, 12, 2), 0.0),
    (12, 10, 0): (40, (9, 6, 2), 26 / 35),
}


def _ct_phantom_a(tmp_path):
    hu = np.full((24, 20, 3), -1000, dtype=np.int16)
    hu[6:16, 5:13, :] = 40
    for index, (value, _, _) in CT_A_VOXELS.items():
        hu[index] = value
    label = np.zeros_like(hu, dtype=np.uint8)
    label[7, 6, 1] = 1  # the -500 HU voxel
    return (write_volume(tmp_path / "ct.mha", hu, **CT_A), write_volume(tmp_path / "ct_label.mha", label, **CT_A), hu)


def test_ct_preset_window_orientation_and_body_crop(tmp_path):
    image_path, label_path, hu = _ct_phantom_a(tmp_path)
    out = ct_eval_transforms(pixdim=CT_A["spacing"])({"image": image_path, "label": label_path})
    image, label = out["image"], out["label"]
    assert tuple(image.shape) == (1, 20, 16, 3) and tuple(label.shape) == (1, 20, 16, 3)
    for itk_index, (value, out_index, expected) in CT_A_VOXELS.items():
        assert image[(0, *out_index)].item() == pytest.approx(expected, abs=1e-6), (value, itk_index)
    # the whole volume: the window written out, RAS flips, then the crop box
    expected = np.clip((hu.astype(np.float64) + 1000) / 1400, 0, 1)[::-1, ::-1, ::-1][2:22, 3:19, 0:3]
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-6)
    # the label marker follows the same voxel, and the affine maps it to its world point
    assert label.sum().item() == 1 and label[0, 14, 10, 1].item() == 1
    world = ras_world((7, 6, 1), **CT_A)
    np.testing.assert_allclose((image.affine.numpy() @ [14, 10, 1, 1])[:3], world, atol=1e-5)
    np.testing.assert_allclose(image.affine.numpy(), [[0.8, 0, 0, -26.8], [0, 0.8, 0, 7.2], [0, 0, 2.5, 25.0],
                                                      [0, 0, 0, 1]], atol=1e-5)
    # inference preset: the same image without a label
    infer = ct_infer_transforms(pixdim=CT_A["spacing"])({"image": image_path})["image"]
    np.testing.assert_allclose(infer.numpy(), image.numpy(), atol=0)


# Phantom B: 9 x 6 x 4 voxels of 0.5 x 1 x 3 mm, identity direction (x, y flip in RAS: x' = 8 - x, y' = 5 - y).
# Resampled to 1 mm: shape ((9-1) * 0.5 + 1, 6, (4-1) * 3 + 1) = (5, 6, 10), first voxel centre kept, so new
# (i, j, k) sits at oriented (2i, j, k/3). The image is linear in the oriented indices, HU = -300 + 10 x' + 200 z'
# (-300..380: inside the window and above the body threshold, so nothing is cropped or clipped), and trilinear
# interpolation of a linear field is exact: v(i, k) = (700 + 20 i + 200 k / 3) / 1400. A one-voxel label at ITK
# (4, 2, 2) = oriented (4, 3, 2) -> new i = 2, j = 3; nearest along z takes k with round(k / 3) = 2: k = 5, 6, 7
# (bilinear would give 1/3, 2/3).
CT_B = dict(spacing=(0.5, 1.0, 3.0), origin=(0.0, 0.0, 0.0))


def test_ct_preset_resampling_shape_values_and_label_nearest(tmp_path):
    x, y, z = np.meshgrid(np.arange(9), np.arange(6), np.arange(4), indexing="ij")
    hu = (-300 + 10 * (8 - x) + 200 * z).astype(np.int16)
    label = np.zeros((9, 6, 4), dtype=np.uint8)
    label[4, 2, 2] = 1
    data = {"image": write_volume(tmp_path / "b.nii.gz", hu, **CT_B),
            "label": write_volume(tmp_path / "b_label.nii.gz", label, **CT_B)}
    out = ct_eval_transforms(pixdim=(1.0, 1.0, 1.0))(data)
    image, lab = out["image"], out["label"]
    assert tuple(image.shape) == (1, 5, 6, 10) and tuple(lab.shape) == (1, 5, 6, 10)
    i, _, k = np.meshgrid(np.arange(5), np.arange(6), np.arange(10), indexing="ij")
    np.testing.assert_allclose(image[0].numpy(), (700 + 20 * i + 200 * k / 3) / 1400, atol=1e-5)
    expected_label = np.zeros((5, 6, 10))
    expected_label[2, 3, 5:8] = 1
    np.testing.assert_array_equal(lab[0].numpy(), expected_label)
    # the marker's centre (new index (2, 3, 6)) is still at the world point of ITK voxel (4, 2, 2)
    world = ras_world((4, 2, 2), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), **CT_B)
    np.testing.assert_allclose((lab.affine.numpy() @ [2, 3, 6, 1])[:3], world, atol=1e-5)
    np.testing.assert_allclose(np.diag(lab.affine.numpy())[:3], (1.0, 1.0, 1.0), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------- BraTS
@pytest.mark.parametrize("convention, et", [("2021", 4), ("2023", 3)])
def test_brats_regions_by_hand_both_conventions(convention, et):
    """4x3 label map (0 background, 1 necrotic core, 2 oedema, ET = 4 or 3):
         0 1 2        TC = NCR | ET       WT = any tumour     ET
         2 et 1       0 1 0               0 1 1               0 0 0
         et 2 0       0 1 1               1 1 1               0 1 0
         0 0 et       1 0 0               1 1 0               1 0 0
                      0 0 1               0 0 1               0 0 1
    """
    label = torch.tensor([[0, 1, 2], [2, et, 1], [et, 2, 0], [0, 0, et]])[None]
    regions = labels_to_regions(label, convention)
    tc = [[0, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1]]
    wt = [[0, 1, 1], [1, 1, 1], [1, 1, 0], [0, 0, 1]]
    en = [[0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]]
    np.testing.assert_array_equal(regions.numpy(), np.array([tc, wt, en], dtype=np.float32))
    np.testing.assert_array_equal(regions_to_labels(regions, convention).numpy(), label.numpy())
    # the other convention's ET value is not ET here (2021 has no label 3; 2023's 4 does not exist)
    other = 3 if et == 4 else 4
    assert labels_to_regions(torch.tensor([[[other]]]), convention).flatten().tolist() == [0, 0, 0]


def test_brats_preset_zscores_brain_voxels_and_keeps_regions_aligned(tmp_path):
    """One case of 4 modalities, 12 x 10 x 6 voxels, brain = box x 2..9, y 2..7, z 1..4 (value k-dependent, > 0),
    outside 0. Crop: brain bbox + margin 4 clipped to the volume -> nothing removed along any axis. Each channel c
    is z-scored over its non-zero voxels, (v - mean) / std (population std), and 0 stays 0. A 2021 label map with
    ET (4) at one brain voxel gives TC = WT = ET there."""
    shape = (12, 10, 6)
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    brain = (x >= 2) & (x <= 9) & (y >= 2) & (y <= 7) & (z >= 1) & (z <= 4)
    paths, raw = [], []
    for c in range(4):
        v = np.where(brain, (c + 1) * 10 + x + 2 * y + 3 * z * (c + 1), 0).astype(np.float32)
        raw.append(v)
        paths.append(write_volume(tmp_path / f"m{c}.nii.gz", v, spacing=(1.0, 1.0, 1.0)))
    label = np.zeros(shape, dtype=np.uint8)
    label[3, 4, 2] = 4
    label[5, 4, 2] = 2
    item = {"image": paths, "label": write_volume(tmp_path / "seg.nii.gz", label, spacing=(1.0, 1.0, 1.0))}
    out = brats_eval_transforms()(item)
    image, regions = out["image"], out["label"]
    assert tuple(image.shape) == (4, *shape) and tuple(regions.shape) == (3, *shape)
    for c in range(4):
        v = raw[c][::-1, ::-1]  # identity ITK direction: x and y flip in RAS
        nz = v[v != 0]
        expected = np.where(v != 0, (v - nz.mean()) / nz.std(), 0.0)
        np.testing.assert_allclose(image[c].numpy(), expected, atol=1e-5)
    # label voxel ITK (3, 4, 2) -> RAS (8, 5, 2); ED at (5, 4, 2) -> (6, 5, 2): WT only
    assert [regions[r, 8, 5, 2].item() for r in range(3)] == [1, 1, 1]
    assert [regions[r, 6, 5, 2].item() for r in range(3)] == [0, 1, 0]
    assert regions.sum().item() == 4


# ----------------------------------------------------------------------------------------------------------- ISIC
def test_isic_preset_scaling_threshold_and_resize(tmp_path):
    """A 6 x 4 (W x H) RGB image and mask, resized to 3 x 2. MONAI's PIL reader indexes (x, y), so the tensors are
    (C, W, H). Image: /255, then bilinear down-sampling by exactly 2 (align_corners=False, no antialiasing) samples
    between the pixel centres of each 2 x 2 block: the block mean. Mask: >= 128 -> 1, then nearest picks pixel
    (2i, 2j) of each block (127 -> 0, 128 -> 1)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)  # rows (y) x columns (x) x RGB
    mask = np.array([[255, 0, 127, 255, 128, 0],
                     [0, 0, 255, 255, 255, 0],
                     [0, 255, 255, 0, 0, 255],
                     [255, 255, 255, 0, 255, 255]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    Image.fromarray(mask, mode="L").save(tmp_path / "mask.png")
    out = isic_eval_transforms([3, 2])({"image": str(tmp_path / "img.png"), "label": str(tmp_path / "mask.png")})
    image, label = out["image"], out["label"]
    assert tuple(image.shape) == (3, 3, 2) and tuple(label.shape) == (1, 3, 2)
    blocks = rgb.astype(np.float64).reshape(2, 2, 3, 2, 3).mean(axis=(1, 3)) / 255  # (y/2, x/2, C)
    np.testing.assert_allclose(image.numpy(), blocks.transpose(2, 1, 0), atol=1e-6)
    # mask pixels (x, y) = (0, 0) 255, (2, 0) 127, (4, 0) 128, (0, 2) 0, (2, 2) 255, (4, 2) 0
    np.testing.assert_array_equal(label[0].numpy(), [[1, 0], [0, 1], [1, 0]])
    # no resize: exactly pixel / 255 in (x, y) order
    same = isic_eval_transforms([6, 4])({"image": str(tmp_path / "img.png"), "label": str(tmp_path / "mask.png")})
    np.testing.assert_allclose(same["image"].numpy(), rgb.transpose(2, 1, 0) / 255, atol=1e-7)
    np.testing.assert_array_equal(same["label"][0].numpy(), (mask.T >= 128).astype(np.float32))


# ----------------------------------------------------------------------------------------------- SR degradation
def test_area_degradation_is_the_block_mean_with_anisotropic_factors():
    """4 x 6 image, factors (2, 3): each output pixel is the mean of a 2 x 3 block, written out by hand for the first
    block: rows 0-1, columns 0-2 of 0..23 / 24 -> (0 + 1 + 2 + 6 + 7 + 8) / 6 / 24 = 4 / 24."""
    x = np.arange(24, dtype=np.float64).reshape(4, 6) / 24
    lr = degrade(torch.from_numpy(x)[None], (2, 3), "area")
    assert tuple(lr.shape) == (1, 2, 2)
    np.testing.assert_allclose(lr[0].numpy(), x.reshape(2, 2, 2, 3).mean(axis=(1, 3)), atol=1e-7)
    assert lr[0, 0, 0].item() == pytest.approx(4 / 24, abs=1e-7)
    # 3D, slice axis only: pairs of slices averaged, in-plane untouched
    v = np.random.default_rng(0).random((1, 3, 2, 6))
    lr3 = degrade(torch.from_numpy(v), (1, 1, 2), "area")
    np.testing.assert_allclose(lr3.numpy(), (v[..., 0::2] + v[..., 1::2]) / 2, atol=1e-6)


def test_bicubic_degradation_matches_pil_float_resize_2d_and_slice_axis():
    """PIL's BICUBIC resize of float ("F") images is the antialiased cubic (a = -0.5, kernel stretched by the factor):
    in 2D with factors (4, 2), and in 3D along the slice axis only (each (x, y) column resized as a 1-row image)."""
    rng = np.random.default_rng(1)
    a = (rng.random((12, 16)) * 0.6 + 0.2).astype(np.float32)  # rows (y) x columns (x), kept inside [0, 1]
    pil = np.asarray(Image.fromarray(a, mode="F").resize((4, 6), Image.BICUBIC))
    lr = degrade(torch.from_numpy(np.ascontiguousarray(a.T))[None], (4, 2), "bicubic")  # (1, x, y)
    np.testing.assert_allclose(lr[0].numpy().T, pil, atol=1e-6)
    v = (rng.random((1, 3, 2, 16)) * 0.6 + 0.2).astype(np.float32)
    lr3 = degrade(torch.from_numpy(v), (1, 1, 4), "bicubic")
    columns = [[np.asarray(Image.fromarray(v[0, i, j][None], mode="F").resize((4, 1), Image.BICUBIC))[0]
                for j in range(2)] for i in range(3)]
    np.testing.assert_allclose(lr3[0].numpy(), np.array(columns), atol=1e-6)


def test_ct_sr_eval_preset_windows_orients_and_averages_slice_pairs(tmp_path):
    """CT SR validation preset: RAS orientation, window [-1000, 400] clipped, then LR = mean of slice pairs (area,
    scale (1, 1, 2)). Phantom 4 x 3 x 4 voxels, direction diag(1, 1, -1), so in RAS every axis is reversed;
    HU = -1000 + 100 * (x + 3 y) + 350 * z, from -1000 up to 1850 (clipped at 400)."""
    x, y, z = np.meshgrid(np.arange(4), np.arange(3), np.arange(4), indexing="ij")
    hu = (-1000 + 100 * (x + 3 * y) + 350 * z).astype(np.int16)
    path = write_volume(tmp_path / "thin.mha", hu, spacing=(0.7, 0.7, 1.25), direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))
    out = ct_sr_eval_transforms(scale=(1, 1, 2))({"hr": path})
    hr = np.clip((hu.astype(np.float64) + 1000) / 1400, 0, 1)[::-1, ::-1, ::-1]
    np.testing.assert_allclose(out["hr"][0].numpy(), hr, atol=1e-6)
    np.testing.assert_allclose(out["lr"][0].numpy(), (hr[..., 0::2] + hr[..., 1::2]) / 2, atol=1e-6)
    assert tuple(out["lr"].shape) == (1, 4, 3, 2)
