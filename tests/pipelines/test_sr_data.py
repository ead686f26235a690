"""Super-resolution data: degradation, datalists, 2D/3D presets, output geometry, seamless patch inference, synth."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from PIL import Image

from pipelines.data.sr import ct_sr_datalist, image_folder_sr_datalist, is_mask_file, sr_images
from pipelines.synth.ultrasound import write_ultrasound
from pipelines.transforms.degradation import (
    Degraded,
    DivisibleCropd,
    RandDegraded,
    degrade,
    resampled_affine,
)
from pipelines.transforms.sr import (
    SuperResolvedGeometryd,
    ct_sr_eval_transforms,
    ct_sr_infer_transforms,
    ct_sr_postprocessing,
    ct_sr_train_transforms,
    sr_inferer,
    us_sr_eval_transforms,
    us_sr_infer_transforms,
    us_sr_postprocessing,
    us_sr_train_transforms,
)


class NearestUp(torch.nn.Module):
    """A purely local "super-resolution network": nearest up-sampling by an integer factor per axis."""

    def __init__(self, scale) -> None:
        super().__init__()
        self.scale = tuple(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis, f in enumerate(self.scale):
            x = x.repeat_interleave(f, dim=axis + 2)
        return x


def corners(affine: np.ndarray, shape) -> np.ndarray:
    """World positions of the corners of the outer voxel edges (index -0.5 and size - 0.5 along each axis)."""
    n = len(shape)
    index = np.array(list(itertools.product(*[(-0.5, s - 0.5) for s in shape])), dtype=np.float64)
    return (np.asarray(affine)[:n, :n] @ index.T).T + np.asarray(affine)[:n, n]


def sitk_corners(image: sitk.Image) -> np.ndarray:
    size = image.GetSize()
    pts = [image.TransformContinuousIndexToPhysicalPoint(list(c))
           for c in itertools.product(*[(-0.5, s - 0.5) for s in size])]
    return np.array(sorted(pts))


@pytest.fixture(scope="module")
def busi(tmp_path_factory):
    root = tmp_path_factory.mktemp("busi")
    paths = write_ultrasound(root, n_images=8, size=(38, 50), seed=0)
    return root, paths


# ---------------------------------------------------------------------------------------------------------------------
# degradation


def test_area_is_block_mean_2d_and_3d():
    x = torch.arange(64, dtype=torch.float32).reshape(1, 8, 8) / 64
    lr = degrade(x, 4, "area")
    expected = x.reshape(1, 2, 4, 2, 4).mean(dim=(2, 4))
    assert lr.shape == (1, 2, 2)
    torch.testing.assert_close(lr, expected)
    assert lr[0, 0, 0].item() == pytest.approx(np.mean([r * 8 + c for r in range(4) for c in range(4)]) / 64)
    v = torch.rand(1, 6, 5, 8, generator=torch.Generator().manual_seed(0))
    lr3 = degrade(v, (1, 1, 2), "area")
    assert lr3.shape == (1, 6, 5, 4)
    torch.testing.assert_close(lr3, (v[..., 0::2] + v[..., 1::2]) / 2)


def test_bicubic_matches_pil_antialiased_resize():
    a = (np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8)  # rows x columns
    pil = np.asarray(Image.fromarray(a).resize((12, 10), Image.BICUBIC)).astype(np.float64)
    lr = degrade(torch.from_numpy(a.T.astype(np.float32) / 255)[None], 4, "bicubic")  # (1, W, H)
    assert lr.shape == (1, 12, 10)
    assert np.abs(lr[0].numpy().T * 255 - pil).max() < 1.0  # within one grey level of PIL's antialiased bicubic


@pytest.mark.parametrize("mode", ["area", "bicubic"])
def test_slice_axis_only_leaves_in_plane_untouched(mode):
    g = torch.Generator().manual_seed(1)
    in_plane = torch.rand(1, 7, 6, 1, generator=g)
    v = in_plane.repeat(1, 1, 1, 8)  # constant along z
    lr = degrade(v, (1, 1, 4), mode, blur_sigma=1.0)
    assert lr.shape == (1, 7, 6, 2)
    torch.testing.assert_close(lr, in_plane.repeat(1, 1, 1, 2))  # in-plane detail kept exactly
    # every (x, y) column is degraded on its own
    w = torch.rand(1, 7, 6, 8, generator=g)
    full = degrade(w, (1, 1, 4), mode, blur_sigma=1.0)
    column = degrade(w[:, 3:4, 2:3], (1, 1, 4), mode, blur_sigma=1.0)
    torch.testing.assert_close(full[:, 3:4, 2:3], column)


def test_speckle_is_multiplicative():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, 128, 128), 0.4)
    lr = degrade(flat, 2, "area", speckle_std=0.2, generator=g)
    assert lr.mean().item() == pytest.approx(0.4, rel=0.02)
    assert lr.std().item() == pytest.approx(0.4 * 0.2, rel=0.05)
    x = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(1)) * 0.4
    x[:, :16] = 0.0
    a = degrade(x, 2, "area", speckle_std=0.2, generator=torch.Generator().manual_seed(5))
    b = degrade(2 * x, 2, "area", speckle_std=0.2, generator=torch.Generator().manual_seed(5))
    clean = degrade(x, 2, "area")
    assert torch.all(a[:, :8] == 0)  # zero stays zero: no additive part
    unclipped = b < 1
    torch.testing.assert_close(b[unclipped], 2 * a[unclipped])
    assert not torch.allclose(a, clean)


def test_noise_clip_and_determinism():
    x = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(2))
    d1 = Degraded("hr", "lr", scale=2, mode="bicubic", noise_std=0.2)({"hr": x})["lr"]
    d2 = Degraded("hr", "lr", scale=2, mode="bicubic", noise_std=0.2)({"hr": x})["lr"]
    torch.testing.assert_close(d1, d2)
    assert d1.min() >= 0 and d1.max() <= 1 and (d1 == 0).any() and (d1 == 1).any()  # clipped
    r = RandDegraded("hr", "lr", scale=2, blur_sigma=(0.0, 2.0), noise_std=(0.0, 0.1), speckle_std=(0.0, 0.3))
    r.set_random_state(7)
    first = [r({"hr": x})["lr"] for _ in range(3)]
    r.set_random_state(7)
    again = [r({"hr": x})["lr"] for _ in range(3)]
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(first[0], first[1])


def test_non_divisible_shape_error_names_file_and_shape():
    img = MetaTensor(torch.rand(1, 30, 32), meta={"filename_or_obj": "/data/us/benign (3).png"})
    with pytest.raises(ValueError, match=r"benign \(3\)\.png: spatial shape \(30, 32\) is not divisible by the "
                                         r"scale \(4, 4\)"):
        Degraded(scale=4)({"hr": img})
    cropped = DivisibleCropd("hr", k=4)({"hr": img})["hr"]
    assert cropped.shape == (1, 28, 32)
    assert Degraded(scale=4)({"hr": cropped})["lr"].shape == (1, 7, 8)


def test_lr_affine_keeps_extent():
    affine = torch.tensor([[0.7, 0, 0, -10.0], [0, 0.7, 0, 5.0], [0, 0, 1.25, 30.0], [0, 0, 0, 1]],
                          dtype=torch.float64)
    hr = MetaTensor(torch.rand(1, 8, 8, 8), affine=affine)
    lr = Degraded(scale=(1, 1, 4), mode="area")({"hr": hr})["lr"]
    assert np.allclose(np.linalg.norm(lr.affine[:3, :3].numpy(), axis=0), [0.7, 0.7, 5.0])
    assert np.allclose(np.sort(corners(lr.affine, (8, 8, 2)), 0), np.sort(corners(affine, (8, 8, 8)), 0))


# ---------------------------------------------------------------------------------------------------------------------
# datalists


def test_image_folder_sr_datalist(busi, tmp_path):
    root, paths = busi
    assert len(list(root.rglob("*_mask.png"))) == 8
    dl = image_folder_sr_datalist(root, val_fraction=0.25, seed=0)
    items = dl["training"] + dl["validation"]
    assert sorted(i["hr"] for i in items) == sorted(str(p.resolve()) for p in paths)  # masks skipped
    assert len(dl["validation"]) == 2
    assert not {i["hr"] for i in dl["training"]} & {i["hr"] for i in dl["validation"]}
    assert image_folder_sr_datalist(root, val_fraction=0.25, seed=0) == dl
    assert is_mask_file("x/benign (1)_mask_1.png") and not is_mask_file("x/benign (1).png")
    assert [i["name"] for i in sr_images(root)] == sorted(p.stem for p in paths)
    (tmp_path / "empty" / "benign").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "empty" / "benign" / "a_mask.png")
    with pytest.raises(ValueError, match=r"empty: no PNG/JPEG images found"):
        image_folder_sr_datalist(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"missing: image folder not found"):
        image_folder_sr_datalist(tmp_path / "missing")


def test_ct_sr_datalist(luna16_tiny, tmp_path):
    root, scans = luna16_tiny
    dl = ct_sr_datalist(root, val_fraction=0.25, seed=0)
    assert len(dl["training"]) == 3 and len(dl["validation"]) == 1
    assert {i["seriesuid"] for i in dl["training"] + dl["validation"]} == {s.seriesuid for s in scans}
    assert all(i["hr"].endswith(".mhd") for i in dl["training"])
    assert ct_sr_datalist(root, val_fraction=0.25, seed=0) == dl
    with pytest.raises(ValueError, match=str(tmp_path) + r": no LUNA16 scans found"):
        ct_sr_datalist(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# presets


def test_us_presets(busi, tmp_path):
    root, paths = busi
    source = np.asarray(Image.open(paths[0])).astype(np.float32) / 255  # 38 rows x 50 columns
    train = us_sr_train_transforms(patch_size=(40, 40), scale=4)
    train.set_random_state(0)
    out = train({"hr": str(paths[0])})
    assert out["hr"].shape == (1, 40, 40) and out["lr"].shape == (1, 10, 10)  # padded along y (38 < 40)
    for k in ("hr", "lr"):
        assert out[k].dtype == torch.float32 and 0 <= out[k].min() and out[k].max() <= 1
    samples = us_sr_train_transforms(patch_size=(16, 16), scale=4, num_samples=3)({"hr": str(paths[1])})
    assert len(samples) == 3 and all(s["lr"].shape == (1, 4, 4) for s in samples)

    ev = us_sr_eval_transforms(scale=4)({"hr": str(paths[0])})
    assert ev["hr"].shape == (1, 48, 36) and ev["lr"].shape == (1, 12, 9)  # (x, y), cropped to multiples of 4
    torch.testing.assert_close(ev["lr"].as_tensor(), degrade(ev["hr"], 4, "bicubic"))
    torch.testing.assert_close(ev["hr"][0].numpy().T, source[1:37, 1:49])  # centred crop, values / 255

    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.stack([(source * 255).astype(np.uint8)] * 3, -1)).save(rgb)
    image = us_sr_infer_transforms()({"image": str(rgb)})["image"]
    assert image.shape == (1, 50, 38)
    np.testing.assert_allclose(image[0].numpy().T, source, atol=1e-6)
    assert str(image.meta["filename_or_obj"]).endswith("rgb.png")

    data = {"image": image, "name": "rgb", "pred": NearestUp((4, 4))(image[None])[0]}
    result = us_sr_postprocessing(tmp_path / "out", scale=4)(data)
    written = np.asarray(Image.open(tmp_path / "out" / "rgb_sr.png"))
    assert result["output_path"] == str(tmp_path / "out" / "rgb_sr.png")
    assert written.shape == (152, 200) and written.dtype == np.uint8
    np.testing.assert_array_equal(written[::4, ::4], np.round(source * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"rgb\.png: the prediction 'pred' has spatial shape \(100, 76\)"):
        SuperResolvedGeometryd("pred", "image", scale=4)({"image": image, "pred": NearestUp((2, 2))(image[None])[0]})


def test_ct_presets(luna16_tiny):
    root, scans = luna16_tiny
    path = str(scans[0].path)
    train = ct_sr_train_transforms(patch_size=(16, 16, 8), scale=(1, 1, 2), num_samples=2)
    train.set_random_state(0)
    out = train({"hr": path})
    assert len(out) == 2
    for s in out:
        assert s["hr"].shape == (1, 16, 16, 8) and s["lr"].shape == (1, 16, 16, 4)
        assert 0 <= s["lr"].min() and s["lr"].max() <= 1 and s["hr"].max() > 0.3  # body, not only air
    with pytest.raises(ValueError, match=r"patch_size \(16, 16, 7\) must have 3 sizes, each divisible"):
        ct_sr_train_transforms(patch_size=(16, 16, 7), scale=(1, 1, 2))

    ev = ct_sr_eval_transforms(scale=(1, 1, 4))({"hr": path})
    hr, lr = ev["hr"], ev["lr"]
    assert hr.shape[3] % 4 == 0 and lr.shape == (1, hr.shape[1], hr.shape[2], hr.shape[3] // 4)
    torch.testing.assert_close(lr.as_tensor(), hr.as_tensor().reshape(*hr.shape[:3], -1, 4).mean(-1))
    assert np.allclose(np.sort(corners(lr.affine, lr.shape[1:]), 0), np.sort(corners(hr.affine, hr.shape[1:]), 0))

    image = ct_sr_infer_transforms()({"image": path})["image"]
    ref = sitk.ReadImage(path)
    assert tuple(image.shape[1:]) == ref.GetSize()
    hu = sitk.GetArrayFromImage(ref)  # inference windows without clipping: -2000 HU outside the field of view
    assert image.min() == pytest.approx((hu.min() + 1000) / 1400)
    assert image.max() == pytest.approx((hu.max() + 1000) / 1400)
    assert np.all(np.diag(image.affine.numpy())[:3] > 0)  # RAS


# ---------------------------------------------------------------------------------------------------------------------
# output geometry


def test_super_resolved_geometry_keeps_extent():
    angle = 0.4
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    direction = rotation @ np.diag([1.0, -1.0, -1.0])  # rotated, with flips
    spacing = np.array([0.7, 0.9, 2.5])
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = [-12.0, 40.0, 100.0]
    shape, scale = (5, 4, 3), (2, 1, 4)
    image = MetaTensor(torch.rand(1, *shape), affine=torch.as_tensor(affine))
    pred = torch.rand(1, 10, 4, 12)
    out = SuperResolvedGeometryd("pred", "image", scale=scale)({"image": image, "pred": pred})["pred"]
    new = out.affine.numpy()
    assert isinstance(out, MetaTensor) and out.shape == (1, 10, 4, 12)
    np.testing.assert_allclose(np.linalg.norm(new[:3, :3], axis=0), spacing / scale)
    np.testing.assert_allclose(new[:3, :3] / np.linalg.norm(new[:3, :3], axis=0), direction, atol=1e-12)
    np.testing.assert_allclose(np.sort(corners(new, (10, 4, 12)), 0), np.sort(corners(affine, shape), 0), atol=1e-9)
    first = affine[:3, 3] + direction @ (-0.5 * spacing + 0.5 * spacing / scale)
    np.testing.assert_allclose(new[:3, 3], first, atol=1e-12)
    np.testing.assert_allclose(resampled_affine(new, scale).numpy(), affine, atol=1e-12)  # inverse


def test_flipped_metaimage_to_nifti_keeps_world_position(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 401, size=(5, 6, 7)).astype(np.int16)  # sitk (z, y, x)
    src = sitk.GetImageFromArray(hu)
    src.SetSpacing((0.8, 0.7, 2.5))
    src.SetOrigin((-20.0, 15.0, -100.0))
    src.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))  # flipped z, as some LUNA16 scans
    path = tmp_path / "scan.mhd"
    sitk.WriteImage(src, str(path))

    scale = (1, 1, 2)
    data = ct_sr_infer_transforms()({"image": str(path)})
    data["pred"] = sr_inferer((4, 4, 4), overlap=0.5)(data["image"][None], NearestUp(scale))[0]
    ct_sr_postprocessing(tmp_path / "out", scale=scale)(data)
    out = sitk.ReadImage(str(tmp_path / "out" / "scan_sr.nii.gz"))

    assert out.GetSize() == (7, 6, 10)
    np.testing.assert_allclose(sorted(out.GetSpacing()), sorted((0.8, 0.7, 1.25)), atol=1e-5)
    np.testing.assert_allclose(sitk_corners(out), sitk_corners(src), atol=1e-4)
    # every output voxel holds the HU of the input voxel at its world position
    values = sitk.GetArrayFromImage(out)
    for index in itertools.product(range(7), range(6), range(10)):
        world = out.TransformIndexToPhysicalPoint(index)
        i, j, k = np.round(src.TransformPhysicalPointToContinuousIndex(world)).astype(int)
        assert values[index[2], index[1], index[0]] == hu[k, j, i]


# ---------------------------------------------------------------------------------------------------------------------
# seamless patch inference


@pytest.mark.parametrize("shape,scale,roi", [((37, 29), (4, 4), (16, 16)), ((20, 18, 7), (1, 1, 2), (8, 8, 4)),
                                             ((11, 9), (2, 2), (16, 16))])
def test_patch_inference_of_local_network_is_exact(shape, scale, roi):
    x = torch.rand(1, 2, *shape, generator=torch.Generator().manual_seed(0))
    net = NearestUp(scale)
    whole = net(x)
    for overlap, mode in ((0.25, "gaussian"), (0.5, "constant")):
        patch = sr_inferer(roi, sw_batch_size=3, overlap=overlap, mode=mode)(x, net)
        assert patch.shape == whole.shape == (1, 2, *(s * f for s, f in zip(shape, scale)))
        torch.testing.assert_close(patch, whole, rtol=1e-6, atol=1e-6)  # equal up to float rounding of the blend


@pytest.mark.parametrize("interpolation_skip", [None, "bicubic"])
def test_patch_inference_of_rrdbnet_is_seamless(interpolation_skip):
    """A random-init RRDBNet (nf 8, nb 1) has a receptive field of about +-5 LR pixels, wider than the 4-pixel margin
    a 16-pixel window with 50 % overlap leaves, so windows see zero padding where the whole image has data.

    Bars, relative to the output's range: Gaussian blending keeps the mean error below 1 % (measured 0.2-0.3 %),
    ten times below naive tiling (no overlap, measured 2-3 %), and the maximum below 15 % (measured 6-9 %) away from
    the outermost 2 LR pixels, where MONAI clamps the Gaussian weights at 1e-3 so the blend there is near uniform.
    The same holds with the bundles' bicubic skip, whose windows replicate their edge where the whole image has data.
    """
    from networks.esrgan import RRDBNet

    torch.manual_seed(0)
    net = RRDBNet(2, 1, 1, features=8, growth_channels=4, num_blocks=1, scale=4,
                  interpolation_skip=interpolation_skip).eval()
    x = torch.rand(1, 1, 40, 36, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = net(x)
        patch = sr_inferer((16, 16), overlap=0.5, mode="gaussian")(x, net)
        tiled = sr_inferer((16, 16), overlap=0.0, mode="constant")(x, net)
    assert patch.shape == (1, 1, 160, 144)
    span = (whole.max() - whole.min()).item()
    error = (patch - whole).abs()[0, 0] / span
    assert error.mean() < 0.01
    assert error.mean() < 0.25 * ((tiled - whole).abs().mean() / span)
    assert error[8:-8, 8:-8].max() < 0.15
    with pytest.raises(ValueError, match="buffer_steps"):
        sr_inferer((16, 16), buffer_steps=1)


# ---------------------------------------------------------------------------------------------------------------------
# synthetic ultrasound


def test_synthetic_ultrasound(busi, tmp_path):
    root, paths = busi
    names = sorted(str(p.relative_to(root)) for p in paths)
    assert names[:2] == ["benign/benign (1).png", "benign/benign (2).png"]
    assert {p.parent.name for p in paths} == {"benign", "malignant", "normal"}
    again = write_ultrasound(tmp_path / "a", n_images=8, size=(38, 50), seed=0)
    for p, q in zip(paths, again):
        assert p.read_bytes() == q.read_bytes()
    other = write_ultrasound(tmp_path / "b", n_images=2, size=(38, 50), seed=1)
    assert other[0].read_bytes() != paths[0].read_bytes()

    start = time.perf_counter()
    big = write_ultrasound(tmp_path / "c", n_images=2, size=(256, 256), seed=3)
    assert (time.perf_counter() - start) / 2 < 1.0
    image = np.asarray(Image.open(big[0])).astype(np.float64)  # benign (1)
    mask = np.asarray(Image.open(str(big[0]).replace(".png", "_mask.png"))) > 0
    assert image.shape == (256, 256) and mask.any()
    assert image[0, 0] == 0 and image[0, -1] == 0  # outside the sector
    tissue = image[(image > 0) & ~mask]
    assert image[mask].mean() < 0.6 * tissue.mean()  # hypoechoic lesion
    assert tissue.std() / tissue.mean() > 0.3  # speckle
    normal = write_ultrasound(tmp_path / "d", n_images=4, size=(64, 64), seed=0)[3]
    assert normal.parent.name == "normal" and not np.asarray(Image.open(str(normal)[:-4] + "_mask.png")).any()
    # fine detail for x4 super-resolution: a x4 down/up-sampled copy differs clearly
    t = torch.from_numpy(image / 255).float()[None]
    blurry = F.interpolate(degrade(t, 4, "bicubic")[None], scale_factor=4, mode="bicubic")[0]
    assert (blurry - t).abs().mean() > 0.05
