"""High-resolution -> low-resolution degradation for super-resolution training pairs, as MONAI transforms.

A degradation is: optional Gaussian blur (before down-sampling, along the down-sampled axes), down-sampling by an
integer factor per axis, then optional additive Gaussian noise and multiplicative speckle, and a clip to [0, 1].

Down-sampling modes:

- ``"area"``: the mean of each ``f_1 x ... x f_n`` block (``avg_pool`` with kernel = stride = factor). In 3D with
  ``scale=(1, 1, k)`` this averages ``k`` thin slices into one thick slice, the usual model of a thick-slice CT
  acquisition (a box slice-sensitivity profile; add ``blur_sigma`` for a smoother profile); in-plane voxels are
  untouched.
- ``"bicubic"``: antialiased bicubic resizing (``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``,
  the kernel PIL and MATLAB ``imresize`` use: the cubic kernel stretched by the factor, so it also low-passes). Torch
  supports antialiasing only for 4D (2D image) input, so every down-sampled axis is resized on its own by a 1D
  antialiased cubic (the 2D kernel with a unit factor along a dummy axis, which is the identity there): the filter is
  separable, so in 2D this gives the same result as resizing both axes at once, and in 3D with ``(1, 1, k)`` it is a
  1D cubic along the slice axis only.

MONAI lacks all of this: ``Zoom``/``Resize`` have no antialiased bicubic, no block-mean ("area") mode per axis, and
there is no degradation transform that writes a second key; ``RandGaussianNoise`` is additive only and has no
multiplicative (speckle) model. ``GaussianSmooth`` pads with zeros (darkening the border), so the blur here uses
MONAI's ``separable_filtering`` with replicate padding.

Every HR spatial size must be divisible by its factor; :class:`DivisibleCropd` crops an image to the nearest
multiple first. The LR output keeps the HR's physical extent: its affine has spacing ``hr_spacing * factor`` and the
outer edge of its first voxel where the HR's is (:func:`resampled_affine`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.networks.layers import separable_filtering
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import MapTransform, Randomizable
from monai.utils import ensure_tuple, ensure_tuple_rep

__all__ = [
    "DEGRADATION_MODES",
    "scale_factors",
    "resampled_affine",
    "degrade",
    "Degraded",
    "RandDegraded",
    "DivisibleCropd",
]

DEGRADATION_MODES = ("area", "bicubic")


def scale_factors(scale: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """One positive integer factor per spatial axis: ``4 -> (4, 4)`` in 2D; a sequence needs ``spatial_dims`` items."""
    if isinstance(scale, Sequence) and not isinstance(scale, str) and len(scale) != spatial_dims:
        raise ValueError(f"scale must be an int or {spatial_dims} ints for a {spatial_dims}D image, got {scale!r}")
    factors = ensure_tuple_rep(scale, spatial_dims)
    if any(int(f) != f or f < 1 for f in factors):
        raise ValueError(f"scale factors must be positive integers, got {scale!r}")
    return tuple(int(f) for f in factors)


def resampled_affine(affine: torch.Tensor | np.ndarray, ratio: Sequence[float]) -> torch.Tensor:
    """The affine of a grid over the same physical extent whose spacing is ``ratio`` times the old one, per axis.

    Voxel-centre convention: the outer edge of the first voxel stays where it was, so new index ``j`` sits at old
    continuous index ``(j + 0.5) * ratio - 0.5``. In world coordinates the new first centre is the old first centre
    ``- 0.5 * old_spacing + 0.5 * new_spacing`` along each axis, through the direction matrix. ``ratio = 1 / scale``
    for a super-resolved output, ``ratio = scale`` for a down-sampled input.

    Args:
        affine: ``(n + 1, n + 1)`` voxel-to-world matrix.
        ratio: new spacing / old spacing for each of the ``n`` axes (= old size / new size); a 2D image's
            ``4 x 4`` affine may be given two ratios.
    """
    affine_t = torch.as_tensor(np.asarray(affine, dtype=np.float64) if not isinstance(affine, torch.Tensor) else affine)
    affine_t = affine_t.to(torch.float64)
    n = affine_t.shape[0] - 1
    ratios = [float(r) for r in ensure_tuple(ratio)]
    if len(ratios) == 1:
        ratios = ratios * n
    if len(ratios) > n:
        raise ValueError(f"{len(ratios)} ratios for an affine of {n} spatial axes")
    # a 2D image in MONAI may carry a 4 x 4 affine: the extra axis keeps its spacing
    ratio_t = torch.as_tensor(ratios + [1.0] * (n - len(ratios)), dtype=torch.float64)
    index_map = torch.eye(n + 1, dtype=torch.float64)
    index_map[:n, :n] = torch.diag(ratio_t)
    index_map[:n, n] = 0.5 * ratio_t - 0.5
    return affine_t @ index_map


def _check_divisible(shape: Sequence[int], factors: Sequence[int], source: str = "") -> None:
    if any(s % f for s, f in zip(shape, factors)):
        prefix = f"{source}: " if source else ""
        raise ValueError(
            f"{prefix}spatial shape {tuple(int(s) for s in shape)} is not divisible by the scale {tuple(factors)}; "
            "crop or pad the high-resolution image to a multiple of the scale first (DivisibleCropd or SpatialPadd)"
        )


def _blur(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Gaussian blur of ``(B, C, *spatial)`` with one sigma (voxels) per axis; 0 leaves an axis alone."""
    if not any(s > 0 for s in sigmas):
        return x
    kernels = [
        gaussian_1d(torch.tensor(float(s)), truncated=4.0, approx="erf", normalize=True) if s > 0 else torch.ones(1)
        for s in sigmas
    ]
    return separable_filtering(x, kernels, mode="replicate")


def _cubic_resize_axis(x: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Antialiased cubic resize of ``(B, C, *spatial)`` along spatial ``axis`` only (a 2D resize with a unit axis)."""
    moved = x.movedim(axis + 2, -1)
    lead = moved.shape[:-1]
    flat = moved.reshape(1, -1, 1, moved.shape[-1])
    out = F.interpolate(flat, size=(1, size), mode="bicubic", antialias=True, align_corners=False)
    return out.reshape(*lead, size).movedim(-1, axis + 2)


def degrade(
    image: torch.Tensor,
    scale: int | Sequence[int] = 4,
    mode: str = "area",
    blur_sigma: float | Sequence[float] = 0.0,
    noise_std: float = 0.0,
    speckle_std: float = 0.0,
    generator: torch.Generator | None = None,
    source: str = "",
) -> torch.Tensor:
    """Degrade one channel-first image ``(C, S_1, ..., S_n)`` to ``(C, S_1 / f_1, ..., S_n / f_n)``, clipped to [0, 1].

    Args:
        image: high-resolution image with intensities in [0, 1] (2D or 3D).
        scale: down-sampling factor, an int or one per spatial axis (``(1, 1, 2)``: slice axis only).
        mode: ``"area"`` (block mean) or ``"bicubic"`` (antialiased cubic); see the module docstring.
        blur_sigma: Gaussian sigma in HR voxels applied before down-sampling. A number blurs only the down-sampled
            axes (factor > 1), so a slice-axis degradation leaves the in-plane resolution alone; a sequence gives
            one sigma per axis.
        noise_std: standard deviation of additive Gaussian noise on the LR image (intensity units of [0, 1]).
        speckle_std: standard deviation of multiplicative speckle on the LR image: each pixel is multiplied by an
            independent gamma variable with mean 1 and this standard deviation (shape ``L = 1 / speckle_std**2``: the
            intensity of ``L``-look fully developed speckle, exponential for ``L = 1``, i.e. the square of a
            Rayleigh amplitude). Applied before the additive noise.
        generator: torch random generator for the noise (a fixed one makes the result reproducible).
        source: file name for error messages.

    Raises:
        ValueError: an unknown mode, or a spatial shape not divisible by the factors.
    """
    if mode not in DEGRADATION_MODES:
        raise ValueError(f"mode must be one of {DEGRADATION_MODES}, got {mode!r}")
    x = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    spatial_dims = x.ndim - 1
    if spatial_dims not in (2, 3):
        raise ValueError(f"{source + ': ' if source else ''}expected a channel-first 2D or 3D image, got {x.ndim}D")
    factors = scale_factors(scale, spatial_dims)
    _check_divisible(x.shape[1:], factors, source)
    x = x.float()[None]
    if isinstance(blur_sigma, Sequence) and not isinstance(blur_sigma, str):
        sigmas = [float(s) for s in ensure_tuple_rep(blur_sigma, spatial_dims)]
    else:
        sigmas = [float(blur_sigma) if f > 1 else 0.0 for f in factors]
    x = _blur(x, sigmas)
    if any(f > 1 for f in factors):
        if mode == "area":
            pool = F.avg_pool2d if spatial_dims == 2 else F.avg_pool3d
            x = pool(x, kernel_size=factors, stride=factors)
        elif spatial_dims == 2 and all(f > 1 for f in factors):
            x = F.interpolate(x, size=[s // f for s, f in zip(x.shape[2:], factors)], mode="bicubic",
                              antialias=True, align_corners=False)
        else:
            for axis, f in enumerate(factors):
                if f > 1:
                    x = _cubic_resize_axis(x, axis, x.shape[axis + 2] // f)
    if speckle_std > 0:
        shape = 1.0 / float(speckle_std) ** 2
        # torch.distributions.Gamma takes no generator: draw with numpy, seeded from the torch generator
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
        gamma = np.random.default_rng(seed).gamma(shape, 1.0 / shape, size=tuple(x.shape)).astype(np.float32)
        x = x * torch.from_numpy(gamma).to(x.device)
    if noise_std > 0:
        x = x + float(noise_std) * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x[0].clamp_(0.0, 1.0)


def _with_meta(out: torch.Tensor, like: torch.Tensor, ratio: Sequence[float]) -> torch.Tensor:
    """``out`` as a MetaTensor carrying ``like``'s metadata with the affine of the resampled grid."""
    if not isinstance(like, MetaTensor):
        return out
    meta = dict(like.meta)
    affine = resampled_affine(like.affine, ratio)
    meta["affine"] = affine
    meta["spatial_shape"] = np.asarray(out.shape[1:])
    return MetaTensor(out, meta=meta)


class Degraded(MapTransform):
    """Write the degraded (low-resolution) version of ``data[keys]`` to ``data[lr_key]``, with fixed settings.

    ``hr (C, *spatial)`` in [0, 1] -> ``lr (C, *spatial / scale)`` in [0, 1]; the LR MetaTensor keeps the HR's
    physical extent (spacing times the scale). With noise or speckle the noise is drawn from a generator seeded
    with ``seed`` on every call, so the same input always gives the same output (for validation).

    Args:
        keys: high-resolution key(s), ``"hr"`` by default.
        lr_key: output key(s), one per key.
        scale, mode, blur_sigma, noise_std, speckle_std: see :func:`degrade`.
        seed: seed of the noise.
        allow_missing_keys: skip keys that are absent.
    """

    def __init__(
        self,
        keys: KeysCollection = "hr",
        lr_key: str | Sequence[str] = "lr",
        scale: int | Sequence[int] = 4,
        mode: str = "area",
        blur_sigma: float | Sequence[float] = 0.0,
        noise_std: float = 0.0,
        speckle_std: float = 0.0,
        seed: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.lr_keys = ensure_tuple(lr_key)
        if len(self.lr_keys) != len(self.keys):
            raise ValueError(f"lr_key must name one output per key, got keys={self.keys} and lr_key={self.lr_keys}")
        if mode not in DEGRADATION_MODES:
            raise ValueError(f"mode must be one of {DEGRADATION_MODES}, got {mode!r}")
        self.scale = scale
        self.mode = mode
        self.blur_sigma = blur_sigma
        self.noise_std = noise_std
        self.speckle_std = speckle_std
        self.seed = seed

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, lr_key in self.key_iterator(d, self.lr_keys):
            generator = torch.Generator().manual_seed(self.seed)
            d[lr_key] = _degrade_item(d[key], self.scale, self.mode, self.blur_sigma, self.noise_std,
                                      self.speckle_std, generator)
        return d


def _source(img: torch.Tensor) -> str:
    return str(img.meta.get("filename_or_obj", "")) if isinstance(img, MetaTensor) else ""


def _degrade_item(img, scale, mode, blur_sigma, noise_std, speckle_std, generator) -> torch.Tensor:
    img = torch.as_tensor(img) if not isinstance(img, torch.Tensor) else img
    out = degrade(img, scale, mode, blur_sigma, noise_std, speckle_std, generator, source=_source(img))
    factors = scale_factors(scale, img.ndim - 1)
    return _with_meta(out, img, factors)


def _range(value: float | Sequence[float], name: str) -> tuple[float, float]:
    lo, hi = (float(value), float(value)) if isinstance(value, (int, float)) else tuple(float(v) for v in value)
    if not 0 <= lo <= hi:
        raise ValueError(f"{name} must be a number >= 0 or a range (low, high) with 0 <= low <= high, got {value!r}")
    return lo, hi


class RandDegraded(Randomizable, MapTransform):
    """:class:`Degraded` with a random blur sigma, noise level, speckle level and mode drawn for every sample.

    Each of ``blur_sigma``, ``noise_std``, ``speckle_std`` is a number (fixed) or a range ``(low, high)`` sampled
    uniformly; ``mode`` is one mode or a sequence sampled uniformly (mixing kernels makes the network less
    sensitive to the unknown degradation of real data). The scale is fixed: the network's factor.

    ``hr (C, *spatial)`` in [0, 1] -> ``lr (C, *spatial / scale)`` in [0, 1]. Reproducible with
    ``set_random_state`` / ``monai.utils.set_determinism``.
    """

    def __init__(
        self,
        keys: KeysCollection = "hr",
        lr_key: str | Sequence[str] = "lr",
        scale: int | Sequence[int] = 4,
        mode: str | Sequence[str] = "bicubic",
        blur_sigma: float | Sequence[float] = (0.0, 1.0),
        noise_std: float | Sequence[float] = (0.0, 0.02),
        speckle_std: float | Sequence[float] = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.lr_keys = ensure_tuple(lr_key)
        if len(self.lr_keys) != len(self.keys):
            raise ValueError(f"lr_key must name one output per key, got keys={self.keys} and lr_key={self.lr_keys}")
        self.modes = ensure_tuple(mode)
        bad = [m for m in self.modes if m not in DEGRADATION_MODES]
        if bad or not self.modes:
            raise ValueError(f"mode must be one or more of {DEGRADATION_MODES}, got {mode!r}")
        self.scale = scale
        self.blur_range = _range(blur_sigma, "blur_sigma")
        self.noise_range = _range(noise_std, "noise_std")
        self.speckle_range = _range(speckle_std, "speckle_std")
        self._params: dict = {}

    def randomize(self, data=None) -> None:
        self._params = {
            "mode": self.modes[int(self.R.randint(len(self.modes)))],
            "blur_sigma": float(self.R.uniform(*self.blur_range)),
            "noise_std": float(self.R.uniform(*self.noise_range)),
            "speckle_std": float(self.R.uniform(*self.speckle_range)),
            "seed": int(self.R.randint(0, 2**31 - 1)),
        }

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        p = self._params
        for key, lr_key in self.key_iterator(d, self.lr_keys):
            generator = torch.Generator().manual_seed(p["seed"])
            d[lr_key] = _degrade_item(d[key], self.scale, p["mode"], p["blur_sigma"], p["noise_std"],
                                      p["speckle_std"], generator)
        return d


class DivisibleCropd(MapTransform):
    """Crop ``(C, *spatial)`` images to the largest size divisible by ``k`` per axis (MONAI has only ``DivisiblePadd``).

    The crop is centred (``CenterSpatialCrop``, so it is traced and invertible) and every key gets the same crop.
    """

    def __init__(self, keys: KeysCollection, k: int | Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.k = k

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        from monai.transforms import CenterSpatialCrop

        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            factors = scale_factors(self.k, img.ndim - 1)
            size = [s - s % f for s, f in zip(img.shape[1:], factors)]
            if any(s == 0 for s in size):
                raise ValueError(f"{_source(img) or key}: spatial shape {tuple(img.shape[1:])} is smaller than the "
                                 f"scale {factors}")
            if list(img.shape[1:]) != size:
                d[key] = CenterSpatialCrop(size)(img)
        return d
