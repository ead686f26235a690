"""Tests for pipelines.losses: RaGAN terms on hand-computed logits, content terms, offline VGG loss, composition."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines.losses import (
    FeatureMatchingLoss,
    GeneratorLoss,
    SobelEdgeLoss,
    VGGPerceptualLoss,
    l1_pixel_loss,
    ragan_discriminator_loss,
    ragan_generator_loss,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# real = [2, 0] (mean 1), fake = [-1, 1] (mean 0): real - E[fake] = [2, 0], fake - E[real] = [-2, 0]
REAL = torch.tensor([2.0, 0.0])
FAKE = torch.tensor([-1.0, 1.0])


def test_ragan_discriminator_loss_hand_computed():
    # BCE(z, 1) = softplus(-z), BCE(z, 0) = softplus(z)
    real_term = (softplus(-2.0) + softplus(0.0)) / 2
    fake_term = (softplus(-2.0) + softplus(0.0)) / 2
    expected = 0.5 * (real_term + fake_term)
    assert ragan_discriminator_loss(REAL, FAKE).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.4100378, rel=1e-6)


def test_ragan_generator_loss_hand_computed():
    real_term = (softplus(2.0) + softplus(0.0)) / 2  # targets swapped: real vs fake -> 0
    fake_term = (softplus(2.0) + softplus(0.0)) / 2  # fake vs real -> 1
    assert ragan_generator_loss(REAL, FAKE).item() == pytest.approx(0.5 * (real_term + fake_term), rel=1e-6)
    assert ragan_generator_loss(REAL, FAKE, symmetric=False).item() == pytest.approx(fake_term, rel=1e-6)


def test_ragan_works_on_patch_maps_and_gives_generator_gradients():
    real = torch.randn(2, 1, 4, 4)
    fake = torch.randn(2, 1, 4, 4, requires_grad=True)
    loss = ragan_generator_loss(real, fake)
    loss.backward()
    assert loss.ndim == 0 and fake.grad is not None and fake.grad.abs().sum() > 0
    # a discriminator that separates real from fake well has a lower loss than a confused one
    assert ragan_discriminator_loss(torch.full((4,), 5.0), torch.full((4,), -5.0)) < ragan_discriminator_loss(
        torch.zeros(4), torch.zeros(4)
    )


def test_l1_pixel_loss():
    assert l1_pixel_loss(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)).item() == pytest.approx(0.5)


def test_feature_matching_loss():
    feats = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    loss = FeatureMatchingLoss()
    assert loss(feats, [f.clone() for f in feats]).item() == 0.0
    fake = [f.clone().requires_grad_(True) for f in feats]
    real = [f + 1.0 for f in feats]
    value = loss(fake, real)
    assert value.item() == pytest.approx(1.0)
    value.backward()
    assert all(f.grad is not None for f in fake)
    assert FeatureMatchingLoss(layer_weights=(1.0, 0.0))(fake, real).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        loss(feats, feats[:1])


@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 1, 16, 16)), (3, (1, 2, 8, 8, 6))])
def test_sobel_edge_loss(spatial_dims, shape):
    loss = SobelEdgeLoss(spatial_dims)
    x = torch.rand(shape)
    assert loss(x, x.clone()).item() == 0.0
    assert loss(x, x + 0.5).item() == pytest.approx(0.0, abs=1e-6)  # a constant offset has no edges
    assert loss(x, torch.rand(shape)).item() > 0
    assert loss.gradients(x).shape == (shape[0], shape[1] * spatial_dims, *shape[2:])
    assert not list(loss.parameters())  # kernels are buffers


@pytest.mark.parametrize(
    "spatial_dims, shape, ssim_kwargs", [(2, (2, 1, 16, 16), {}), (3, (1, 1, 8, 8, 8), {"win_size": 5})]
)
def test_generator_loss_ssim_and_edge_terms(spatial_dims, shape, ssim_kwargs):
    loss = GeneratorLoss(
        spatial_dims, content=None, gan_weight=0.0, ssim_weight=1.0, edge_weight=1.0, ssim_kwargs=ssim_kwargs
    )
    hr = torch.rand(shape)
    same = loss.terms(hr, hr.clone())
    assert same["ssim"].item() == pytest.approx(0.0, abs=1e-5)
    assert same["edge"].item() == 0.0 and same["pixel"].item() == 0.0
    other = loss.terms(torch.rand(shape), hr)
    assert other["ssim"].item() > 0 and other["edge"].item() > 0 and other["pixel"].item() > 0


def test_generator_loss_composition_and_backward():
    loss = GeneratorLoss(spatial_dims=2)  # ESRGAN weights, feature-matching content
    sr = torch.rand(2, 1, 8, 8, requires_grad=True)
    hr = torch.rand(2, 1, 8, 8)
    fake_logits, real_logits = sr.mean(dim=(1, 2, 3)), torch.randn(2)
    fake_features, real_features = [sr * 2.0, sr[..., ::2, ::2]], [hr * 2.0, hr[..., ::2, ::2]]
    terms = loss.terms(sr, hr, fake_logits, real_logits, fake_features, real_features)
    expected = terms["content"] + 5e-3 * terms["gan"] + 1e-2 * terms["pixel"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    total = loss(sr, hr, fake_logits, real_logits, fake_features, real_features)
    total.backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="fake_features"):
        loss(sr, hr, fake_logits, real_logits)
    with pytest.raises(ValueError, match="vgg_weights_path"):
        GeneratorLoss(content="vgg")


def test_vgg_loss_missing_file_never_downloads(tmp_path):
    missing = tmp_path / "vgg19.pth"
    with pytest.raises(FileNotFoundError, match="vgg19.pth"):
        VGGPerceptualLoss(missing)
    with pytest.raises(FileNotFoundError, match="vgg19.pth"):
        GeneratorLoss(content="vgg", vgg_weights_path=missing)


def test_vgg_loss_from_local_file(tmp_path):
    # a state dict with torchvision's key names for the first two convs (conv1_1, conv1_2) suffices for layer 2
    torch.manual_seed(0)
    state = {
        "features.0.weight": torch.randn(64, 3, 3, 3) * 0.1,
        "features.0.bias": torch.zeros(64),
        "features.2.weight": torch.randn(64, 64, 3, 3) * 0.05,
        "features.2.bias": torch.zeros(64),
    }
    path = tmp_path / "vgg19_partial.pth"
    torch.save(state, path)
    loss = VGGPerceptualLoss(path, layer="conv1_2")
    assert torch.equal(loss.features[2].weight, state["features.2.weight"])
    assert all(not p.requires_grad for p in loss.parameters())
    img = torch.rand(1, 1, 16, 16)  # grey images are repeated to three channels
    assert loss(img, img.clone()).item() == 0.0
    assert loss(img, torch.rand(1, 1, 16, 16)).item() > 0
    with pytest.raises(KeyError, match="lacks"):
        VGGPerceptualLoss(path, layer="conv2_2")
    with pytest.raises(ValueError, match="2D only"):
        loss(torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 4, 4, 4))
