"""Losses for GAN super-resolution (ESRGAN, SE-ESRGAN) that run offline, in 2D and 3D.

- Relativistic average GAN (RaGAN) terms on discriminator logits: :func:`ragan_discriminator_loss`,
  :func:`ragan_generator_loss` (Jolicoeur-Martineau 2018, as used by ESRGAN).
- Pixel loss: :func:`l1_pixel_loss`.
- Content losses needing no downloaded weights: :class:`FeatureMatchingLoss` (L1 between discriminator features,
  the default), ``1 - SSIM`` (:class:`monai.losses.SSIMLoss`) and :class:`SobelEdgeLoss`.
- :class:`VGGPerceptualLoss`: ESRGAN's VGG19 conv5_4 (before ReLU) L1 loss, loaded **only** from a local weight file.
- :class:`GeneratorLoss`: ``content + gan_weight * L_G^Ra + pixel_weight * L1`` (ESRGAN: 5e-3 and 1e-2), plus optional
  SSIM and edge terms.
- :func:`deep_supervision_loss`: a segmentation bundle's loss wrapped in MONAI's ``DeepSupervisionLoss`` for a network
  that returns several heads in training (``networks.UNetPlusPlus(deep_supervision=True)``).

ESRGAN's generator objective is ``L_G = L_percep + 5e-3 * L_G^Ra + 1e-2 * L1`` (Wang et al., ECCVW 2018); its
discriminator objective is :func:`ragan_discriminator_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.losses import DeepSupervisionLoss, SSIMLoss
from monai.networks.layers import separable_filtering
from monai.transforms import SobelGradients

__all__ = [
    "ragan_discriminator_loss",
    "ragan_generator_loss",
    "l1_pixel_loss",
    "FeatureMatchingLoss",
    "SobelEdgeLoss",
    "VGGPerceptualLoss",
    "GeneratorLoss",
    "VGG19_LAYERS",
    "deep_supervision_loss",
]


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def ragan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic average discriminator loss.

    ``0.5 * [BCE(C(real) - E[C(fake)], 1) + BCE(C(fake) - E[C(real)], 0)]`` with BCE on logits, as in ESRGAN's
    reference code (``(l_d_real + l_d_fake) / 2``). Expectations and BCE are means over all elements, so patch logit
    maps work as well as per-image logits. Pass ``fake_logits = D(G(x).detach())`` when training D.

    Args:
        real_logits: discriminator logits ``C(x_real)`` of any shape.
        fake_logits: discriminator logits ``C(x_fake)``.
    """
    real_vs_fake = real_logits - fake_logits.mean()
    fake_vs_real = fake_logits - real_logits.mean()
    return 0.5 * (_bce(real_vs_fake, 1.0) + _bce(fake_vs_real, 0.0))


def ragan_generator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, symmetric: bool = True
) -> torch.Tensor:
    """Relativistic average generator loss ``L_G^Ra``.

    ``symmetric=True`` (ESRGAN): ``0.5 * [BCE(C(real) - E[C(fake)], 0) + BCE(C(fake) - E[C(real)], 1)]``, so the
    generator benefits from the gradients of both real and fake data. ``symmetric=False`` gives the single term
    ``BCE(C(fake) - E[C(real)], 1)`` used by the Uneshance_2023 code. The real logits are usually detached
    (``D(x_real).detach()``), as in ESRGAN's reference code.

    Args:
        real_logits: discriminator logits ``C(x_real)`` of any shape.
        fake_logits: discriminator logits ``C(G(x))`` (not detached: the gradient reaches G through them).
        symmetric: use both relativistic terms.
    """
    fake_vs_real = fake_logits - real_logits.mean()
    if not symmetric:
        return _bce(fake_vs_real, 1.0)
    real_vs_fake = real_logits - fake_logits.mean()
    return 0.5 * (_bce(real_vs_fake, 0.0) + _bce(fake_vs_real, 1.0))


def l1_pixel_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between the super-resolved and the reference image."""
    return F.l1_loss(prediction, target)


class FeatureMatchingLoss(nn.Module):
    """L1 between the discriminator's intermediate features of the generated and the real image.

    A content loss that needs no pretrained network and works in 2D and 3D: pass the feature lists returned by
    ``VGGStyleDiscriminator(..., return_features=True)``. The real features are detached.

    Args:
        layer_weights: one weight per feature map; defaults to the mean over layers.
    """

    def __init__(self, layer_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.layer_weights = None if layer_weights is None else tuple(float(w) for w in layer_weights)

    def forward(self, fake_features: Sequence[torch.Tensor], real_features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(fake_features) != len(real_features) or not fake_features:
            raise ValueError(
                "expected two non-empty feature lists of equal length, "
                f"got {len(fake_features)} and {len(real_features)}."
            )
        weights = self.layer_weights or (1.0 / len(fake_features),) * len(fake_features)
        if len(weights) != len(fake_features):
            raise ValueError(f"got {len(weights)} layer_weights for {len(fake_features)} feature maps.")
        return sum(w * F.l1_loss(f, r.detach()) for w, f, r in zip(weights, fake_features, real_features))


class SobelEdgeLoss(nn.Module):
    """L1 between the Sobel gradients of prediction and target, along every spatial axis (2D or 3D).

    The kernels are those of :class:`monai.transforms.SobelGradients` (normalised), stored as buffers and applied
    per channel with :func:`monai.networks.layers.separable_filtering`, so the loss is differentiable and batched.

    Args:
        spatial_dims: number of spatial dimensions.
        kernel_size: odd Sobel kernel size, at least 3.
        padding_mode: ``"reflect"``, ``"replicate"``, ``"zeros"`` or ``"circular"``.
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 3, padding_mode: str = "reflect") -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.padding_mode = padding_mode
        sobel = SobelGradients(kernel_size=kernel_size, normalize_kernels=True)
        self.register_buffer("kernel_diff", sobel.kernel_diff.clone())
        self.register_buffer("kernel_smooth", sobel.kernel_smooth.clone())

    def gradients(self, x: torch.Tensor) -> torch.Tensor:
        """Sobel gradients of ``x`` ``(B, C, *spatial)``, stacked as ``(B, C * spatial_dims, *spatial)``."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"expected a (B, C, *spatial) tensor with {self.spatial_dims} spatial dims, got {tuple(x.shape)}."
            )
        grads = []
        for axis in range(self.spatial_dims):
            kernels = [self.kernel_smooth.to(x.dtype)] * self.spatial_dims
            kernels[axis] = self.kernel_diff.to(x.dtype)
            grads.append(separable_filtering(x, kernels, mode=self.padding_mode))
        return torch.cat(grads, dim=1)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(self.gradients(prediction), self.gradients(target))


# torchvision's vgg19().features layout: ints are 3x3 conv widths (each followed by ReLU), "M" is a 2x2 max-pool.
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
#: index in ``vgg19().features`` of some layers; ESRGAN's content loss uses conv5_4 before its ReLU (index 34).
VGG19_LAYERS = {"conv1_2": 2, "conv2_2": 7, "conv3_4": 16, "conv4_4": 25, "conv5_4": 34, "relu5_4": 35}


def _vgg19_features(last_index: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_chns = 3
    for v in _VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_chns, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_chns = int(v)
    return nn.Sequential(*layers[: last_index + 1])


class VGGPerceptualLoss(nn.Module):
    """ESRGAN's perceptual loss: L1 between VGG19 features, with weights read **only** from a local file.

    Nothing is ever downloaded. The file holds a ``torchvision.models.vgg19`` state dict (keys ``features.N.*``), or
    just its ``features`` part (keys ``N.*``), optionally wrapped as ``{"state_dict": ...}``; keys past ``layer`` are
    ignored. 2D only: for 3D data use :class:`FeatureMatchingLoss`, SSIM or :class:`SobelEdgeLoss`.

    Args:
        weights_path: local path of the VGG19 weights.
        layer: feature layer, a name of :data:`VGG19_LAYERS` or an index into ``vgg19().features``
            (default ``"conv5_4"``: conv5_4 before ReLU, as ESRGAN).
        use_input_norm: normalise inputs in [0, 1] with the ImageNet mean and std.

    Raises:
        FileNotFoundError: if ``weights_path`` is not a file.
    """

    def __init__(self, weights_path: str | Path, layer: str | int = "conv5_4", use_input_norm: bool = True) -> None:
        super().__init__()
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"VGG19 weight file not found: {path}. VGGPerceptualLoss never downloads weights; save a torchvision "
                "vgg19 state dict there, or use FeatureMatchingLoss / SSIM / SobelEdgeLoss instead."
            )
        index = VGG19_LAYERS[layer] if isinstance(layer, str) else int(layer)
        self.features = _vgg19_features(index)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("features."): v for k, v in state.items()}
        wanted = self.features.state_dict().keys()
        missing = [k for k in wanted if k not in state]
        if missing:
            raise KeyError(f"{path} lacks VGG19 feature weights {missing[:4]}{'...' if len(missing) > 4 else ''}.")
        self.features.load_state_dict({k: state[k] for k in wanted})
        self.features.eval()
        self.features.requires_grad_(False)
        self.use_input_norm = use_input_norm
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        super().train(mode)
        self.features.eval()  # the feature extractor stays frozen
        return self

    def _extract(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"VGGPerceptualLoss is 2D only (B, C, H, W), got shape {tuple(x.shape)}.")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"VGGPerceptualLoss needs 1 or 3 channels, got {x.shape[1]}.")
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        return self.features(x)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(self._extract(prediction), self._extract(target).detach())


class GeneratorLoss(nn.Module):
    """ESRGAN-style generator objective with an offline content term.

    ``total = content_weight * content + gan_weight * L_G^Ra + pixel_weight * L1
    + ssim_weight * (1 - SSIM) + edge_weight * SobelEdgeLoss``.

    Defaults follow ESRGAN (``gan_weight=5e-3``, ``pixel_weight=1e-2``, ``content_weight=1``) with discriminator
    feature matching as the content term. Terms whose weight is 0 are skipped, so ``GeneratorLoss(content=None,
    gan_weight=0, pixel_weight=1)`` is the PSNR-oriented pre-training loss.

    Args:
        spatial_dims: number of spatial dimensions (for the SSIM and edge terms).
        pixel_weight: weight of the L1 pixel loss (ESRGAN's eta).
        gan_weight: weight of the relativistic generator loss (ESRGAN's lambda).
        content_weight: weight of the content loss.
        content: ``"feature_matching"`` (default), ``"vgg"`` (needs ``vgg_weights_path``) or ``None``.
        ssim_weight: weight of ``1 - SSIM`` (:class:`monai.losses.SSIMLoss`).
        edge_weight: weight of :class:`SobelEdgeLoss`.
        vgg_weights_path: local VGG19 weight file for ``content="vgg"``.
        ssim_kwargs: keyword arguments of :class:`monai.losses.SSIMLoss` (e.g. ``data_range``, ``win_size``).
        symmetric_gan: both relativistic terms (ESRGAN) or only the fake-vs-real one (Uneshance).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        pixel_weight: float = 1e-2,
        gan_weight: float = 5e-3,
        content_weight: float = 1.0,
        content: str | None = "feature_matching",
        ssim_weight: float = 0.0,
        edge_weight: float = 0.0,
        vgg_weights_path: str | Path | None = None,
        ssim_kwargs: dict | None = None,
        symmetric_gan: bool = True,
    ) -> None:
        super().__init__()
        if content not in ("feature_matching", "vgg", None):
            raise ValueError(f"content must be 'feature_matching', 'vgg' or None, got {content!r}.")
        self.pixel_weight = pixel_weight
        self.gan_weight = gan_weight
        self.content_weight = content_weight if content is not None else 0.0
        self.ssim_weight = ssim_weight
        self.edge_weight = edge_weight
        self.symmetric_gan = symmetric_gan
        self.content = content
        self.content_loss: nn.Module | None = None
        if content == "feature_matching":
            self.content_loss = FeatureMatchingLoss()
        elif content == "vgg":
            if vgg_weights_path is None:
                raise ValueError("content='vgg' needs vgg_weights_path (a local file; nothing is downloaded).")
            self.content_loss = VGGPerceptualLoss(vgg_weights_path)
        self.ssim_loss = SSIMLoss(spatial_dims, **(ssim_kwargs or {})) if ssim_weight else None
        self.edge_loss = SobelEdgeLoss(spatial_dims) if edge_weight else None

    def terms(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        fake_logits: torch.Tensor | None = None,
        real_logits: torch.Tensor | None = None,
        fake_features: Sequence[torch.Tensor] | None = None,
        real_features: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The weighted total and each unweighted term that is in use, by name (for logging)."""
        out: dict[str, torch.Tensor] = {}
        total = prediction.new_zeros(())
        if self.pixel_weight:
            out["pixel"] = l1_pixel_loss(prediction, target)
            total = total + self.pixel_weight * out["pixel"]
        if self.gan_weight:
            if fake_logits is None or real_logits is None:
                raise ValueError("gan_weight > 0 needs fake_logits and real_logits.")
            out["gan"] = ragan_generator_loss(real_logits, fake_logits, symmetric=self.symmetric_gan)
            total = total + self.gan_weight * out["gan"]
        if self.content_weight and self.content_loss is not None:
            if self.content == "feature_matching":
                if fake_features is None or real_features is None:
                    raise ValueError("content='feature_matching' needs fake_features and real_features.")
                out["content"] = self.content_loss(fake_features, real_features)
            else:
                out["content"] = self.content_loss(prediction, target)
            total = total + self.content_weight * out["content"]
        if self.ssim_loss is not None:
            out["ssim"] = self.ssim_loss(prediction, target)
            total = total + self.ssim_weight * out["ssim"]
        if self.edge_loss is not None:
            out["edge"] = self.edge_loss(prediction, target)
            total = total + self.edge_weight * out["edge"]
        out["total"] = total
        return out

    def forward(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        fake_logits: torch.Tensor | None = None,
        real_logits: torch.Tensor | None = None,
        fake_features: Sequence[torch.Tensor] | None = None,
        real_features: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """
        Args:
            prediction: generator output ``G(x)``.
            target: reference high-resolution image.
            fake_logits: ``D(G(x))``; needed when ``gan_weight > 0``.
            real_logits: ``D(target)``, usually detached; needed when ``gan_weight > 0``.
            fake_features: ``D(G(x), return_features=True)[1]``; needed for feature matching.
            real_features: ``D(target, return_features=True)[1]``; needed for feature matching.
        """
        return self.terms(prediction, target, fake_logits, real_logits, fake_features, real_features)["total"]


def deep_supervision_loss(
    loss: nn.Module, weight_mode: str = "same", weights: Sequence[float] | None = None
) -> DeepSupervisionLoss:
    """``loss`` wrapped for a deeply supervised network: the weighted sum of ``loss`` over the heads it returns.

    MONAI's ``DeepSupervisionLoss`` (``sum_k w_k * loss(head_k, target)``, the target resized to a smaller head by
    nearest neighbour) with UNet++'s equal weights by default (Zhou et al. 2018 sum the loss of the four heads
    unweighted). A single tensor (a network without deep supervision, or in eval mode) gets ``loss`` alone, so the
    wrapper is harmless where the network returns one output.

    In a bundle (for the training trainer's loss only; validation and inference see one tensor):
    ``--train#trainer#loss_function '{"_target_": "pipelines.losses.deep_supervision_loss", "loss": "@loss"}'``.

    Args:
        loss: the loss of one head, e.g. the bundle's ``DiceCELoss``.
        weight_mode: ``"same"`` (1 for every head), ``"exp"`` (1, 0.5, 0.25, ... from the first head of the list) or
            ``"two"`` (1, then 0.5): MONAI's modes.
        weights: explicit per-head weights, in the order of the network's list; they override ``weight_mode``.
    """
    if weight_mode not in ("same", "exp", "two"):
        raise ValueError(f"deep_supervision_loss: weight_mode must be 'same', 'exp' or 'two', got {weight_mode!r}.")
    return DeepSupervisionLoss(loss, weight_mode=weight_mode, weights=None if weights is None else list(weights))
