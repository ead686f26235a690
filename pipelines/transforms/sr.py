"""Super-resolution presets: ``{"hr"} -> {"hr", "lr"}`` pairs for training and validation, ``{"image"}`` for inference.

Intensities: 8-bit images are divided by 255 ([0, 1]). CT is normalised by its window (``hu_window``, default
-1000..400 HU, mapped linearly to 0..1): clipped to it for training and validation, where the network learns that
range, but **not clipped at inference**, so the output covers the input's whole range (bone at 1500 HU comes out
near 1500 HU, air outside the field of view at -2000 HU as -2000 HU). The CT inferer
(:func:`pipelines.inferers.sr_inferer` with ``passthrough_window=(0, 1)``,
:class:`~pipelines.inferers.WindowPassthrough`) gives the network the input clipped to the window it was trained on
and adds the up-sampled part outside the window back to its output; the postprocessing inverts the normalisation
without clipping. The low-resolution input is made from the high-resolution image by
:mod:`pipelines.transforms.degradation`, so every HR size must be a multiple of the scale: training crops patches of
such a size, validation crops the image to a multiple (:class:`~pipelines.transforms.degradation.DivisibleCropd`).

- **2D ultrasound** (grayscale PNG/JPEG): loaded as one channel by MONAI's PIL reader (colour and 16-bit files are
  converted to 8-bit grayscale), so arrays are indexed ``(x, y)``: a ``W x H`` image is ``(1, W, H)``.
  Training degrades with a random mix of bicubic/area down-sampling, blur, noise and multiplicative speckle;
  validation uses fixed bicubic down-sampling only (the Uneshance_2023 protocol), so its PSNR is comparable.
- **3D CT** (LUNA16 MetaImage, or any volume :class:`~pipelines.transforms.io.LoadVolumed` reads): oriented to RAS
  so the slice axis is the last one, and degraded along it only (``scale=(1, 1, k)``: ``k`` thin slices averaged
  into one thick slice).

Output geometry. A super-resolved output of spatial size ``input * scale`` covers exactly the input's physical
extent: :class:`SuperResolvedGeometryd` gives it spacing ``input_spacing / scale`` per axis with the outer edge of
the first voxel where the input's is (see :func:`~pipelines.transforms.degradation.resampled_affine`). The CT
postprocessing maps the window's 0..1 back to Hounsfield units (values outside it included) and writes a NIfTI whose
world position matches the input's, whatever the input's direction matrix.

Seamless inference on images larger than a training patch: the SR inferer, its window passthrough and its device
planning live with every other inference wrapper in :mod:`pipelines.inferers` (``sr_inferer``,
``SuperResolutionInferer``, ``WindowPassthrough``, ``WindowPassthroughInferer``); they stay importable from here.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, PILReader
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    CropForegroundd,
    EnsureTyped,
    Lambdad,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandFlipd,
    RandSpatialCropd,
    RandSpatialCropSamplesd,
    SaveImaged,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from PIL import Image

from pipelines.inferers import WindowPassthrough, WindowPassthroughInferer, sr_inferer  # noqa: F401 - old path
from pipelines.io import AtomicNibabelWriter, atomic_path
from pipelines.transforms.ct import body_mask
from pipelines.transforms.degradation import (
    Degraded,
    DivisibleCropd,
    RandDegraded,
    resampled_affine,
    scale_factors,
)
from pipelines.transforms.io import LoadVolumed, first_path

__all__ = [
    "to_grayscale",
    "load_grayscale",
    "ReadableImaged",
    "SuperResolvedGeometryd",
    "SaveSRPNGd",
    "WindowPassthrough",
    "WindowPassthroughInferer",
    "sr_inferer",
    "us_sr_train_transforms",
    "us_sr_eval_transforms",
    "us_sr_infer_transforms",
    "us_sr_postprocessing",
    "ct_sr_preprocessing",
    "ct_sr_train_transforms",
    "ct_sr_eval_transforms",
    "ct_sr_infer_transforms",
    "ct_sr_postprocessing",
]


# ---------------------------------------------------------------------------------------------------------------------
# shared pieces


def to_grayscale(image: Image.Image) -> Image.Image:
    """PIL converter: any PNG/JPEG to 8-bit grayscale (``L``). 16-bit images are scaled by 255 / 65535."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(array / 257.0), 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "L" else image.convert("L")


class ReadableImaged(MapTransform):
    """Check that each file in ``keys`` opens and decodes with PIL; ``ValueError`` naming the file otherwise.

    MONAI's ``LoadImage`` tries every other reader after the requested one fails, so a truncated PNG ends in "cannot
    find a suitable reader" with the last reader's (pydicom's) complaint; this check gives the real reason first.
    """

    def __call__(self, data: Mapping[Hashable, str]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = first_path(d[key])
            try:
                with Image.open(path) as image:
                    image.load()
            except Exception as e:  # noqa: BLE001 - any decoding failure is reported the same way
                raise ValueError(f"{path}: cannot read the image ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
        return d


def load_grayscale(keys: KeysCollection) -> list:
    """Load PNG/JPEG as ``(1, W, H)`` float32 MetaTensors in [0, 1] (PIL reader's ``(x, y)`` order)."""
    return [
        LoadImaged(keys, reader=PILReader(converter=to_grayscale), image_only=True, ensure_channel_first=True),
        EnsureTyped(keys, dtype=torch.float32, track_meta=True),
        ScaleIntensityRanged(keys, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
    ]


def _check_patch(patch_size: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != len(factors) or any(p % f for p, f in zip(patch, factors)):
        raise ValueError(f"patch_size {patch} must have {len(factors)} sizes, each divisible by the scale "
                         f"{tuple(factors)}")
    return patch


def _random_patches(keys: list[str], patch: Sequence[int], num_samples: int) -> list:
    if num_samples > 1:
        return [RandSpatialCropSamplesd(keys, roi_size=patch, num_samples=num_samples, random_size=False)]
    return [RandSpatialCropd(keys, roi_size=patch, random_size=False)]


class SuperResolvedGeometryd(MapTransform):
    """Give a super-resolved prediction the geometry of its input, refined by the scale.

    ``data[keys]`` is ``(C, S_1 * f_1, ..., S_n * f_n)`` for the input ``data[ref_key]`` of spatial size
    ``(S_1, ..., S_n)``. The prediction becomes a MetaTensor with the input's metadata and an affine whose spacing
    is the input's divided by ``f`` per axis and whose physical extent is the input's: new first voxel centre = old
    first centre - 0.5 * old spacing + 0.5 * new spacing along each axis, through the direction matrix.

    Raises ``ValueError`` (naming the input file) when the prediction's size is not the input's times the scale.
    """

    def __init__(self, keys: KeysCollection = "pred", ref_key: str = "image", scale: int | Sequence[int] = 4,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.scale = scale

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        ref = d[self.ref_key]
        if isinstance(ref, MetaTensor):
            ref_meta, ref_affine = dict(ref.meta), ref.affine
        else:
            ref_meta = dict(d.get(f"{self.ref_key}_meta_dict", {}))
            ref_affine = torch.as_tensor(ref_meta.get("affine", np.eye(ref.ndim)))
        source = str(ref_meta.get("filename_or_obj", self.ref_key))
        for key in self.key_iterator(d):
            pred = d[key]
            factors = scale_factors(self.scale, ref.ndim - 1)
            expected = [int(s) * f for s, f in zip(ref.shape[1:], factors)]
            if list(pred.shape[1:]) != expected:
                raise ValueError(f"{source}: the prediction '{key}' has spatial shape {tuple(pred.shape[1:])}, "
                                 f"expected the input's {tuple(ref.shape[1:])} times the scale {factors} = "
                                 f"{tuple(expected)}")
            affine = resampled_affine(ref_affine, [1.0 / f for f in factors])
            meta = dict(ref_meta)
            meta["affine"] = affine
            meta["spatial_shape"] = np.asarray(expected)
            array = pred.as_tensor() if isinstance(pred, MetaTensor) else torch.as_tensor(pred)
            d[key] = MetaTensor(array, meta=meta)
        return d


class SaveSRPNGd(MapTransform):
    """Write a ``(C, W, H)`` prediction in [0, 1] (PIL reader's axis order; C = 1 or 3) as an 8-bit PNG, atomically.

    The file is ``<output_dir>/<name><suffix>`` where ``name`` is ``data[name_key]`` or, without it, the stem of the
    input file recorded in the prediction's metadata. Values are clipped to [0, 1] and rounded. The written path is
    stored in ``data["output_path"]``.
    """

    def __init__(self, keys: KeysCollection = "pred", output_dir: str | Path = ".", name_key: str = "name",
                 suffix: str = "_sr.png") -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.name_key = name_key
        self.suffix = suffix

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if self.name_key in d:
                name = first_path(d[self.name_key])
            elif isinstance(img, MetaTensor) and img.meta.get("filename_or_obj"):
                name = Path(first_path(img.meta["filename_or_obj"])).stem
            else:
                raise ValueError(f"cannot name the output of '{key}': no '{self.name_key}' key and no source file in "
                                 "its metadata")
            array = torch.as_tensor(img).detach().float().cpu().numpy()
            if array.ndim != 3 or array.shape[0] not in (1, 3):
                raise ValueError(f"{name}: expected a (1|3, W, H) image to write as PNG, got shape {array.shape}")
            pixels = np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
            pixels = np.ascontiguousarray(pixels.transpose(2, 1, 0))  # (C, W, H) -> rows x columns x C
            image = Image.fromarray(pixels[..., 0], mode="L") if pixels.shape[-1] == 1 else Image.fromarray(pixels)
            path = self.output_dir / f"{name}{self.suffix}"
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
            d["output_path"] = str(path)
        return d


# ---------------------------------------------------------------------------------------------------------------------
# 2D ultrasound


def us_sr_train_transforms(
    patch_size: Sequence[int] = (128, 128),
    scale: int | Sequence[int] = 4,
    num_samples: int = 1,
    mode: str | Sequence[str] = ("bicubic", "area"),
    blur_sigma: float | Sequence[float] = (0.0, 1.0),
    noise_std: float | Sequence[float] = (0.0, 0.02),
    speckle_std: float | Sequence[float] = (0.0, 0.15),
    flip_axes: Sequence[int] = (0, 1),
) -> Compose:
    """``{"hr": path}`` -> ``{"hr": (1, *patch_size), "lr": (1, *patch_size / scale)}``, both in [0, 1].

    Load as grayscale, pad to ``patch_size`` if smaller, crop ``num_samples`` random HR patches (a list of dicts when
    more than one), flip each axis in ``flip_axes`` with probability 0.5, then :class:`RandDegraded` (random mode,
    blur sigma, Gaussian noise and multiplicative speckle within the given ranges). ``patch_size`` is in the PIL
    reader's ``(x, y)`` order and must be divisible by the scale.
    """
    factors = scale_factors(scale, 2)
    patch = _check_patch(patch_size, factors)
    keys = ["hr"]
    return Compose(
        load_grayscale(keys)
        + [SpatialPadd(keys, spatial_size=patch)]
        + _random_patches(keys, patch, num_samples)
        + [RandFlipd(keys, prob=0.5, spatial_axis=int(a)) for a in flip_axes]
        + [RandDegraded("hr", "lr", scale=factors, mode=mode, blur_sigma=blur_sigma, noise_std=noise_std,
                        speckle_std=speckle_std)]
    )


def us_sr_eval_transforms(
    scale: int | Sequence[int] = 4,
    crop_size: Sequence[int] | None = None,
    mode: str = "bicubic",
    blur_sigma: float = 0.0,
    noise_std: float = 0.0,
    speckle_std: float = 0.0,
) -> Compose:
    """``{"hr": path}`` -> ``{"hr": (1, W', H'), "lr": (1, W' / scale, H' / scale)}``, deterministic.

    The image is centre-cropped to ``crop_size`` when given (padded if smaller; fixed sizes allow batching), then
    to a multiple of the scale, and degraded with fixed settings (bicubic only by default).
    """
    factors = scale_factors(scale, 2)
    keys = ["hr"]
    steps = load_grayscale(keys)
    if crop_size is not None:
        size = _check_patch(crop_size, factors)
        steps += [SpatialPadd(keys, spatial_size=size), CenterSpatialCropd(keys, roi_size=size)]
    steps += [
        DivisibleCropd(keys, k=factors),
        Degraded("hr", "lr", scale=factors, mode=mode, blur_sigma=blur_sigma, noise_std=noise_std,
                 speckle_std=speckle_std),
    ]
    return Compose(steps)


def us_sr_infer_transforms(image_key: str = "image") -> Compose:
    """``{"image": path}`` -> ``{"image": (1, W, H)}`` in [0, 1] with its metadata; any size. A file PIL cannot
    decode (truncated, not an image) raises ``ValueError`` naming it (:class:`ReadableImaged`)."""
    return Compose([ReadableImaged(image_key), *load_grayscale([image_key])])


def us_sr_postprocessing(output_dir: str | Path, scale: int | Sequence[int] = 4, name_key: str = "name",
                         suffix: str = "_sr.png", image_key: str = "image") -> Compose:
    """``{"pred": (1, W * scale, H * scale)}`` -> ``<output_dir>/<name>_sr.png`` (8-bit, written atomically)."""
    return Compose([
        SuperResolvedGeometryd("pred", ref_key=image_key, scale=scale),
        SaveSRPNGd("pred", output_dir=output_dir, name_key=name_key, suffix=suffix),
    ])


# ---------------------------------------------------------------------------------------------------------------------
# 3D CT


def ct_sr_preprocessing(key: str, hu_window: Sequence[float] = (-1000.0, 400.0),
                        pixdim: Sequence[float] | None = None, clip: bool = True) -> list:
    """Load, orient to RAS (slice axis last), optionally resample to ``pixdim``, map ``hu_window`` linearly to
    [0, 1]; ``clip`` clips to it (training and validation), ``clip=False`` keeps values outside (inference)."""
    steps = [
        LoadVolumed(key),
        EnsureTyped(key, dtype=torch.float32, track_meta=True),
        Orientationd(key, axcodes="RAS"),
    ]
    if pixdim is not None:
        steps.append(Spacingd(key, pixdim=tuple(pixdim), mode="bilinear"))
    steps.append(ScaleIntensityRanged(key, a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=clip))
    return steps


def ct_sr_train_transforms(
    patch_size: Sequence[int] = (64, 64, 32),
    scale: Sequence[int] = (1, 1, 2),
    hu_window: Sequence[float] = (-1000.0, 400.0),
    num_samples: int = 1,
    pixdim: Sequence[float] | None = None,
    mode: str | Sequence[str] = "area",
    blur_sigma: float | Sequence[float] = (0.0, 0.5),
    noise_std: float | Sequence[float] = (0.0, 0.01),
) -> Compose:
    """``{"hr": scan}`` -> ``{"hr": (1, *patch_size), "lr": (1, *patch_size / scale)}``, both in [0, 1].

    Preprocess (:func:`ct_sr_preprocessing`), crop to the body, pad to ``patch_size`` if smaller (with 0 = air),
    crop ``num_samples`` random HR patches, flip along each axis with probability 0.5, then :class:`RandDegraded`
    (along the axes whose factor is above 1 only: thick slices for ``(1, 1, k)``). ``patch_size`` is the HR patch in
    RAS order and must be divisible by the scale; a number in ``noise_std`` is in window units (0.01 = 14 HU for the
    default window).
    """
    factors = scale_factors(scale, 3)
    patch = _check_patch(patch_size, factors)
    keys = ["hr"]
    return Compose(
        ct_sr_preprocessing("hr", hu_window, pixdim)
        + [
            CropForegroundd(keys, source_key="hr", select_fn=body_mask, margin=2, allow_smaller=True),
            SpatialPadd(keys, spatial_size=patch),
        ]
        + _random_patches(keys, patch, num_samples)
        + [RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)]
        + [RandDegraded("hr", "lr", scale=factors, mode=mode, blur_sigma=blur_sigma, noise_std=noise_std,
                        speckle_std=0.0)]
    )


def ct_sr_eval_transforms(
    scale: Sequence[int] = (1, 1, 2),
    hu_window: Sequence[float] = (-1000.0, 400.0),
    pixdim: Sequence[float] | None = None,
    crop_size: Sequence[int] | None = None,
    mode: str = "area",
    blur_sigma: float = 0.0,
    noise_std: float = 0.0,
) -> Compose:
    """``{"hr": scan}`` -> ``{"hr": (1, X, Y, Z), "lr": (1, X / f_x, Y / f_y, Z / f_z)}``, deterministic.

    The volume is optionally centre-cropped to ``crop_size`` (padded if smaller), cropped to a multiple of the
    scale and degraded with fixed settings (area along the slice axis by default).
    """
    factors = scale_factors(scale, 3)
    keys = ["hr"]
    steps = ct_sr_preprocessing("hr", hu_window, pixdim)
    if crop_size is not None:
        size = _check_patch(crop_size, factors)
        steps += [SpatialPadd(keys, spatial_size=size), CenterSpatialCropd(keys, roi_size=size)]
    steps += [
        DivisibleCropd(keys, k=factors),
        Degraded("hr", "lr", scale=factors, mode=mode, blur_sigma=blur_sigma, noise_std=noise_std),
    ]
    return Compose(steps)


def ct_sr_infer_transforms(hu_window: Sequence[float] = (-1000.0, 400.0), pixdim: Sequence[float] | None = None,
                           image_key: str = "image") -> Compose:
    """``{"image": thick-slice volume}`` -> ``{"image": (1, X, Y, Z)}``, RAS, with its geometry; any size.

    ``hu_window`` maps to [0, 1] linearly and is **not** clipped: -2000 HU is -0.714 with the default window, 1500 HU
    is 1.786. The inferer (``sr_inferer(passthrough_window=(0, 1))``) keeps the network inside the window."""
    return Compose(ct_sr_preprocessing(image_key, hu_window, pixdim, clip=False))


def _round(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)


def _clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return torch.clamp(x, low, high)


def ct_sr_postprocessing(
    output_dir: str | Path,
    scale: Sequence[int] = (1, 1, 2),
    hu_window: Sequence[float] = (-1000.0, 400.0),
    output_postfix: str = "sr",
    output_dtype: type | np.dtype = np.int16,
    image_key: str = "image",
) -> Compose:
    """``{"pred": (1, X * f_x, Y * f_y, Z * f_z)}`` in window units -> ``<output_dir>/<name>_sr.nii.gz`` in HU.

    The prediction gets the super-resolved geometry (:class:`SuperResolvedGeometryd`), is mapped back from the
    window's [0, 1] to ``hu_window`` linearly **without clipping** (the inverse of :func:`ct_sr_infer_transforms`:
    values outside the window come out where they went in), rounded, and written with its own affine (no resampling)
    by :class:`~pipelines.io.AtomicNibabelWriter`: same physical extent and position as the input, spacing divided by
    the scale. Only an integer ``output_dtype``'s own range is enforced (int16: -32768..32767 HU), so that a value
    beyond it saturates instead of wrapping around.
    """
    steps = [
        SuperResolvedGeometryd("pred", ref_key=image_key, scale=scale),
        ScaleIntensityRanged("pred", a_min=0.0, a_max=1.0, b_min=hu_window[0], b_max=hu_window[1], clip=False),
        Lambdad("pred", func=_round),
    ]
    if np.issubdtype(np.dtype(output_dtype), np.integer):
        info = np.iinfo(np.dtype(output_dtype))
        steps.append(Lambdad("pred", func=functools.partial(_clamp, low=float(info.min), high=float(info.max))))
    return Compose(steps + [
        SaveImaged("pred", output_dir=str(output_dir), output_postfix=output_postfix, output_ext=".nii.gz",
                   output_dtype=output_dtype, resample=False, separate_folder=False, print_log=False,
                   writer=AtomicNibabelWriter),
    ])
