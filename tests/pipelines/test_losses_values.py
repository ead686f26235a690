"""Losses pinned by value: every expected number is written out in NumPy/SciPy here, never taken from the code.

- RaGAN discriminator/generator terms (``pipelines.losses``) on asymmetric logit maps.
- The SR content terms (L1, feature matching, Sobel edges, VGG with hand-set weights) and ``GeneratorLoss``'s
  weighting, also as the two SR bundles configure it.
- The segmentation losses exactly as the bundles' ``train.json`` configure them (parsed with ``ConfigParser``), so a
  change of the bundle's arguments or of a MONAI default shows up here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipelines.losses import (
    FeatureMatchingLoss,
    GeneratorLoss,
    SobelEdgeLoss,
    VGGPerceptualLoss,
    l1_pixel_loss,
    ragan_discriminator_loss,
    ragan_generator_loss,
)

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


# ------------------------------------------------------------------------------------------------- NumPy references
def softplus(z):
    return np.logaddexp(0.0, z)


def bce_logits(z, target):
    """Mean binary cross-entropy on logits: BCE(z, 1) = softplus(-z), BCE(z, 0) = softplus(z)."""
    z = np.asarray(z, dtype=np.float64)
    return float(np.mean(softplus(z) - target * z))


def np_ragan_d(real, fake):
    """0.5 * [BCE(real - mean(fake), 1) + BCE(fake - mean(real), 0)], means over all elements."""
    return 0.5 * (bce_logits(real - fake.mean(), 1.0) + bce_logits(fake - real.mean(), 0.0))


def np_ragan_g(real, fake, symmetric=True):
    """The generator's version: targets swapped; the non-symmetric form keeps only BCE(fake - mean(real), 1)."""
    fake_term = bce_logits(fake - real.mean(), 1.0)
    if not symmetric:
        return fake_term
    return 0.5 * (bce_logits(real - fake.mean(), 0.0) + fake_term)


def np_sobel_gradients(x):
    """Sobel gradients of a ``(B, C, *spatial)`` array, stacked ``(B, C * n, *spatial)`` in axis order.

    MONAI's normalised 3-tap kernels: difference ``[-1, 0, 1] / 2`` along the axis, smoothing ``[1, 2, 1] / 4``
    along every other axis, as a correlation with reflect padding (SciPy's ``mode="mirror"``).
    """
    n = x.ndim - 2
    out = []
    for axis in range(n):
        g = x.astype(np.float64)
        for a in range(n):
            weights = [-0.5, 0.0, 0.5] if a == axis else [0.25, 0.5, 0.25]
            g = ndimage.correlate1d(g, weights, axis=a + 2, mode="mirror")
        out.append(g)
    return np.concatenate(out, axis=1)


# Asymmetric logit maps (batch 2, 3 patch logits each): no symmetry hides a swap or a missing mean.
REAL = np.array([[1.5, -0.3, 2.0], [0.7, 0.1, -1.2]])
FAKE = np.array([[-0.8, 0.4, -2.1], [1.1, -0.5, 0.0]])


# ------------------------------------------------------------------------------------------------------------ RaGAN
def test_ragan_losses_hand_computed_on_patch_logits():
    """D and G (both forms) equal the relativistic-average formulas written out in NumPy.

    Swapping real and fake, dropping a mean (pairwise ``real - fake``), averaging over the batch axis only, or
    summing instead of halving the two terms changes every one of these numbers."""
    real, fake = torch.from_numpy(REAL), torch.from_numpy(FAKE)
    d = ragan_discriminator_loss(real, fake).item()
    g = ragan_generator_loss(real, fake).item()
    g1 = ragan_generator_loss(real, fake, symmetric=False).item()
    assert d == pytest.approx(np_ragan_d(REAL, FAKE), rel=1e-12)
    assert g == pytest.approx(np_ragan_g(REAL, FAKE), rel=1e-12)
    assert g1 == pytest.approx(np_ragan_g(REAL, FAKE, symmetric=False), rel=1e-12)
    # frozen values of the formulas, so a wrong NumPy reference cannot slip by either
    assert d == pytest.approx(0.48540653, rel=1e-6)
    assert g == pytest.approx(1.26873986, rel=1e-6)
    assert g1 == pytest.approx(1.25847689, rel=1e-6)
    # the swap is visible: D(real, fake) != D(fake, real), and the swapped D is the generator's symmetric loss
    assert ragan_discriminator_loss(fake, real).item() == pytest.approx(g, rel=1e-12)
    assert abs(ragan_discriminator_loss(fake, real).item() - d) > 0.5


def test_ragan_gradients_point_the_right_way():
    """Descending D's loss raises real logits and lowers fake ones; descending G's loss raises the fake logits.
    The D gradients are checked against the closed form, with u = real - mean(fake), v = fake - mean(real):
    dL/dreal_j = 0.5/n * (-sigma(-u_j) - sum_i sigma(v_i) / n),
    dL/dfake_j = 0.5/n * (sum_i sigma(-u_i) / n + sigma(v_j))."""
    real = torch.from_numpy(REAL).requires_grad_(True)
    fake = torch.from_numpy(FAKE).requires_grad_(True)
    ragan_discriminator_loss(real, fake).backward()
    n = REAL.size
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    u = REAL - FAKE.mean()  # real vs fake, target 1: d softplus(-u)/du = -sigma(-u)
    v = FAKE - REAL.mean()  # fake vs real, target 0: d softplus(v)/dv = sigma(v)
    grad_real = 0.5 / n * (-sig(-u) - np.sum(sig(v)) / n)  # the mean(real) inside v spreads 1/n to every r_j
    grad_fake = 0.5 / n * (np.sum(sig(-u)) / n + sig(v))
    np.testing.assert_allclose(real.grad.numpy(), grad_real, rtol=1e-12)
    np.testing.assert_allclose(fake.grad.numpy(), grad_fake, rtol=1e-12)
    assert (real.grad < 0).all() and (fake.grad > 0).all()
    fake_g = torch.from_numpy(FAKE).requires_grad_(True)
    ragan_generator_loss(torch.from_numpy(REAL), fake_g).backward()
    assert (fake_g.grad < 0).all()  # a gradient step raises D(fake)


# ------------------------------------------------------------------------------------------------- content losses
def test_l1_pixel_loss_is_mean_absolute_error():
    """Differences (0.5, -2, 0, 1.5): L1 = 4/4 = 1.0 (L2 would be 6.5/4, a sum 4.0)."""
    pred = torch.tensor([[[[0.5, -2.0], [0.0, 1.5]]]], dtype=torch.float64)
    assert l1_pixel_loss(pred, torch.zeros_like(pred)).item() == pytest.approx(1.0, rel=1e-12)
    assert l1_pixel_loss(torch.zeros_like(pred), pred).item() == pytest.approx(1.0, rel=1e-12)


def test_feature_matching_loss_layer_means_and_weights():
    """Layer 1: |diff| = 0.5 everywhere; layer 2: |diff| = (1, 3) -> mean 2. Default: mean over layers = 1.25;
    weights (0.2, 3): 0.2 * 0.5 + 3 * 2 = 6.1. The real features are detached (no gradient reaches them)."""
    fake = [torch.zeros(1, 2, 3, 3, dtype=torch.float64, requires_grad=True),
            torch.tensor([[[[1.0, -3.0]]]], dtype=torch.float64, requires_grad=True)]
    real = [torch.full((1, 2, 3, 3), 0.5, dtype=torch.float64, requires_grad=True),
            torch.zeros(1, 1, 1, 2, dtype=torch.float64, requires_grad=True)]
    assert FeatureMatchingLoss()(fake, real).item() == pytest.approx(1.25, rel=1e-12)
    loss = FeatureMatchingLoss(layer_weights=(0.2, 3.0))(fake, real)
    assert loss.item() == pytest.approx(6.1, rel=1e-12)
    loss.backward()
    assert all(r.grad is None for r in real) and all(f.grad is not None for f in fake)


def test_sobel_edge_loss_of_a_step_by_hand():
    """A vertical step (columns 3.. = 1) in 6x6: the axis-1 gradient 0.5 * (x[j+1] - x[j-1]) is 0.5 in columns 2 and 3
    (rows are constant, so the smoothing along axis 0 changes nothing; reflect padding gives 0 at the borders), the
    axis-0 gradient is 0. Against a flat image: L1 = (2 * 6 * 0.5) / (2 * 36) = 1/12."""
    step = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    step[..., 3:] = 1.0
    loss = SobelEdgeLoss(spatial_dims=2)
    grads = loss.gradients(step)
    expected = np.zeros((1, 2, 6, 6))
    expected[0, 1, :, 2:4] = 0.5
    np.testing.assert_allclose(grads.numpy(), expected, atol=1e-15)
    assert loss(step, torch.zeros_like(step)).item() == pytest.approx(1 / 12, rel=1e-12)
    # a horizontal step puts the same edge in the axis-0 channel instead (the axes are not mixed up)
    np.testing.assert_allclose(loss.gradients(step.transpose(-1, -2)).numpy()[:, [1, 0]],
                               expected.transpose(0, 1, 3, 2), atol=1e-15)


@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 1, 6, 5)), (3, (1, 2, 5, 4, 6))])
def test_sobel_edge_loss_matches_scipy(spatial_dims, shape):
    """Random fields: gradients equal SciPy's separable correlation (mirror padding), loss = mean |grad difference|."""
    rng = np.random.default_rng(spatial_dims)
    a, b = rng.random(shape), rng.random(shape)
    loss = SobelEdgeLoss(spatial_dims)
    np.testing.assert_allclose(loss.gradients(torch.from_numpy(a)).numpy(), np_sobel_gradients(a), rtol=1e-12,
                               atol=1e-15)
    expected = np.mean(np.abs(np_sobel_gradients(a) - np_sobel_gradients(b)))
    assert loss(torch.from_numpy(a), torch.from_numpy(b)).item() == pytest.approx(expected, rel=1e-12)


def test_vgg_perceptual_loss_with_hand_set_weights(tmp_path):
    """conv1_1 (``layer=0``, before ReLU) whose channel 0 copies the red input and all else is 0: the feature is
    (x - 0.485) / 0.229 in channel 0 and 0 in the other 63, so the loss is mean |x - y| / 0.229 / 64. The values are
    below the ImageNet mean, so a ReLU applied before the loss would clip them to 0 and the loss would vanish."""
    weight = torch.zeros(64, 3, 3, 3)
    weight[0, 0, 1, 1] = 1.0
    path = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": weight, "features.0.bias": torch.zeros(64)}, path)
    loss = VGGPerceptualLoss(path, layer=0)
    x = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]]]])  # grey: repeated to three channels
    y = torch.tensor([[[[0.0, 0.4], [0.3, 0.1]]]])
    expected = np.mean(np.abs([0.1, -0.2, 0.0, 0.3])) / 0.229 / 64
    assert loss(x, y).item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------- GeneratorLoss
def _gen_inputs(seed=0):
    rng = np.random.default_rng(seed)
    sr, hr = rng.random((2, 1, 6, 6)), rng.random((2, 1, 6, 6))
    fake_logits, real_logits = rng.normal(size=(2, 1, 2, 2)), rng.normal(size=(2, 1, 2, 2))
    fake_feats = [rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 2, 2))]
    real_feats = [rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 2, 2))]
    return sr, hr, fake_logits, real_logits, fake_feats, real_feats


def _np_terms(sr, hr, fake_logits, real_logits, fake_feats, real_feats, symmetric=True):
    return {
        "pixel": float(np.mean(np.abs(sr - hr))),
        "gan": np_ragan_g(real_logits, fake_logits, symmetric),
        "content": float(np.mean([np.mean(np.abs(f - r)) for f, r in zip(fake_feats, real_feats)])),
        "edge": float(np.mean(np.abs(np_sobel_gradients(sr) - np_sobel_gradients(hr)))),
    }


def _call(loss, arrays, method="terms"):
    sr, hr, fl, rl, ff, rf = arrays
    t = torch.from_numpy
    return getattr(loss, method)(t(sr), t(hr), t(fl), t(rl), [t(f) for f in ff], [t(f) for f in rf])


@pytest.mark.parametrize("symmetric", [True, False])
def test_generator_loss_weights_each_term(symmetric):
    """total = 0.3 * L1 + 0.7 * L_G^Ra + 1.9 * FM + 0.05 * Sobel, every term written out in NumPy. Distinct weights,
    so dropping or swapping any weight, or passing real and fake logits the wrong way round, changes the total."""
    arrays = _gen_inputs()
    loss = GeneratorLoss(2, pixel_weight=0.3, gan_weight=0.7, content_weight=1.9, edge_weight=0.05,
                         symmetric_gan=symmetric)
    terms = _call(loss, arrays)
    ref = _np_terms(*arrays, symmetric=symmetric)
    assert set(terms) == {"pixel", "gan", "content", "edge", "total"}
    for name, value in ref.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-12), name
    total = 0.3 * ref["pixel"] + 0.7 * ref["gan"] + 1.9 * ref["content"] + 0.05 * ref["edge"]
    assert terms["total"].item() == pytest.approx(total, rel=1e-12)
    assert _call(loss, arrays, "forward").item() == pytest.approx(total, rel=1e-12)


def test_generator_loss_ssim_term_of_constant_images():
    """For constant images a and b SSIM reduces to its luminance term (the variances are 0, so the contrast term is
    C2 / C2): SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * data_range)^2. a = 0.2, b = 0.6, range 1:
    SSIM = 0.2401 / 0.4001; total = 2 * (1 - SSIM) + 0.5 * |a - b|. MONAI computes SSIM in float32, so the
    variances are ~1e-8 instead of 0: that moves SSIM by ~3e-5, hence the tolerance."""
    a = torch.full((1, 1, 8, 8), 0.2, dtype=torch.float64)
    b = torch.full((1, 1, 8, 8), 0.6, dtype=torch.float64)
    loss = GeneratorLoss(2, pixel_weight=0.5, gan_weight=0.0, content=None, ssim_weight=2.0,
                         ssim_kwargs={"data_range": 1.0, "win_size": 3})
    terms = loss.terms(a, b)
    ssim = (2 * 0.2 * 0.6 + 1e-4) / (0.2**2 + 0.6**2 + 1e-4)
    assert terms["ssim"].item() == pytest.approx(1 - ssim, abs=1e-4)
    assert terms["pixel"].item() == pytest.approx(0.4, rel=1e-12)
    assert terms["total"].item() == pytest.approx(2.0 * terms["ssim"].item() + 0.5 * 0.4, rel=1e-12)


@pytest.mark.parametrize("bundle, dims", [("ct_se_esrgan_superresolution", 3),
                                          ("ultrasound_se_esrgan_superresolution", 2)])
def test_sr_bundles_generator_loss(bundle, dims):
    """The SR bundles' g_loss: 1.0 * L1 + 0.005 * L_G^Ra (symmetric) + 0.1 * feature matching, no SSIM/edge."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    loss = parser.get_parsed_content("g_loss")
    rng = np.random.default_rng(3)
    spatial = (4,) * dims
    arrays = (rng.random((1, 1, *spatial)), rng.random((1, 1, *spatial)), rng.normal(size=(1, 1, 2)),
              rng.normal(size=(1, 1, 2)), [rng.normal(size=(1, 2, *spatial))], [rng.normal(size=(1, 2, *spatial))])
    pixel = float(np.mean(np.abs(arrays[0] - arrays[1])))
    gan = np_ragan_g(arrays[3], arrays[2])
    content = float(np.mean(np.abs(arrays[4][0] - arrays[5][0])))
    terms = _call(loss, arrays)
    assert set(terms) == {"pixel", "gan", "content", "total"}
    assert [terms[k].item() for k in ("pixel", "gan", "content")] == pytest.approx([pixel, gan, content], rel=1e-12)
    assert terms["total"].item() == pytest.approx(1.0 * pixel + 0.005 * gan + 0.1 * content, rel=1e-12)


# ------------------------------------------------------------------------------------------- segmentation bundles
def _bundle_loss(bundle):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    return parser.get_parsed_content("loss")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_brats_bundle_loss_is_sigmoid_squared_dice_per_case_and_region():
    """BraTS: DiceLoss(sigmoid, squared_pred, smooth_nr=0, smooth_dr=1e-5), mean over cases and the 3 regions:
    1 - 2 sum(p g) / (sum p^2 + sum g^2 + 1e-5) per (case, region), p = sigmoid(logits)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 4, 3)) * 2
    target = (rng.random((2, 3, 4, 4, 3)) > 0.6).astype(np.float64)
    target[1, 2] = 0.0  # an empty region: smooth_nr = 0 gives dice 0 -> loss 1 for it
    p = _sigmoid(logits)
    axes = (2, 3, 4)
    dice = 2 * (p * target).sum(axes) / ((p**2).sum(axes) + (target**2).sum(axes) + 1e-5)
    expected = float(np.mean(1 - dice))
    loss = _bundle_loss("brats_mri_frcunet_segmentation")
    assert loss(torch.from_numpy(logits), torch.from_numpy(target)).item() == pytest.approx(expected, rel=1e-10)


def test_isic_bundle_loss_is_batch_dice_plus_bce():
    """ISIC (one output channel): DiceCELoss(sigmoid, squared_pred, batch=True): Dice summed over batch and pixels
    with smooth 1e-5 in numerator and denominator, plus BCE on logits (mean), weights 1 and 1."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 1, 5, 4)) * 2
    target = (rng.random((3, 1, 5, 4)) > 0.5).astype(np.float64)
    p = _sigmoid(logits)
    dice = (2 * (p * target).sum() + 1e-5) / ((p**2).sum() + (target**2).sum() + 1e-5)
    bce = np.mean(softplus(logits) - target * logits)
    loss = _bundle_loss("isic_skin_frcunet_segmentation")
    value = loss(torch.from_numpy(logits), torch.from_numpy(target)).item()
    assert value == pytest.approx((1 - dice) + bce, rel=1e-10)


def test_lung_bundle_loss_is_foreground_batch_dice_plus_softmax_ce():
    """Lung nodules (2 channels, label map target): DiceCELoss(to_onehot_y, softmax, include_background=False,
    squared_pred, batch=True): Dice of the nodule channel only, summed over the batch, plus the softmax
    cross-entropy over both channels (mean over voxels)."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 2, 3, 4, 3)) * 2
    label = (rng.random((2, 1, 3, 4, 3)) > 0.7).astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    p1, g1 = prob[:, 1], label[:, 0]
    dice = (2 * (p1 * g1).sum() + 1e-5) / ((p1**2).sum() + (g1**2).sum() + 1e-5)
    log_prob = np.log(prob)
    ce = -np.mean(np.where(label[:, 0] == 1, log_prob[:, 1], log_prob[:, 0]))
    loss = _bundle_loss("lung_nodule_ct_edu_segmentation")
    value = loss(torch.from_numpy(logits), torch.from_numpy(label)).item()
    assert value == pytest.approx((1 - dice) + ce, rel=1e-7)  # MONAI one-hot encodes the label in float32
