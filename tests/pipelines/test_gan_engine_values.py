"""SuperResolutionTrainer pinned by value: one iteration of 1x1-conv "networks" with hand-set weights and SGD, the
updated weights written out in NumPy from the RaGAN/L1 formulas (so the order in which the engine hands real and
fake logits to the losses, the detaching, and the G-then-D order are all checked), plus direction tests on small
non-linear networks: a generator step on a frozen discriminator raises D(fake) relative to D(real), a discriminator
step lowers it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipelines.engines import SuperResolutionTrainer
from pipelines.losses import GeneratorLoss

# one 2x3 image pair (channel first); scale 1, so the "generator" maps lr to hr's grid directly
LR = np.array([[[0.2, 0.9, 0.4], [0.6, 0.1, 0.8]]])
HR = np.array([[[0.5, 0.7, 0.3], [0.9, 0.2, 0.6]]])
W0, B0 = 0.8, -0.1  # generator sr = W0 * lr + B0
A0, C0 = 1.7, 0.3  # discriminator logits = A0 * x + C0 (a patch logit per pixel)
ETA_G, ETA_D = 0.5, 0.4  # SGD learning rates
PIXEL_WEIGHT = 0.25


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def softplus(z):
    return np.logaddexp(0.0, z)


def conv1x1(weight: float, bias: float) -> torch.nn.Conv2d:
    conv = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(weight)
        conv.bias.fill_(bias)
    return conv


def run_one_iteration(generator, discriminator, g_loss, eta_g=ETA_G, eta_d=ETA_D, pretrain_epochs=0, data=None):
    data = data or [{"lr": torch.tensor(LR, dtype=torch.float32), "hr": torch.tensor(HR, dtype=torch.float32)}]
    trainer = SuperResolutionTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=DataLoader(data, batch_size=len(data)),
        generator=generator,
        discriminator=discriminator,
        g_optimizer=torch.optim.SGD(generator.parameters(), lr=eta_g),
        d_optimizer=torch.optim.SGD(discriminator.parameters(), lr=eta_d),
        g_loss=g_loss,
        pretrain_epochs=pretrain_epochs,
        epoch_length=1,
    )
    trainer.run()
    return trainer.state.output[0]


def weights(conv):
    return conv.weight.item(), conv.bias.item()


# ------------------------------------------------------------------------------------------- exact one-step values
def test_gan_iteration_updates_match_hand_computed_gradients():
    """One GAN-phase iteration, G step then D step, every number from the formulas:

    G step (D frozen): sr = W0 lr + B0, f = A0 sr + C0, r = A0 hr + C0 (n = 6 pixels),
      L_G = 0.5 [mean softplus(r - mean f) + mean softplus(mean r - f)] + 0.25 * mean |sr - hr|
      dL/df_j = -0.5 [sum_i sigma(r_i - mean f) / n^2 + sigma(mean r - f_j) / n]
      dL/dsr_j = A0 dL/df_j + 0.25 sign(sr_j - hr_j) / n;  dW = sum_j dL/dsr_j lr_j, dB = sum_j dL/dsr_j.
    D step on the same (detached, pre-update) sr: u = A0 (hr - mean sr), v = A0 (sr - mean hr),
      L_D = 0.5 [mean softplus(-u) + mean softplus(v)]   (C0 cancels: dL/dC = 0)
      dL/dA = 0.5 [mean(-sigma(-u) (hr - mean sr)) + mean(sigma(v) (sr - mean hr))].
    Swapping real and fake for either loss, not detaching, or running D before G changes these values."""
    lr, hr = LR.ravel(), HR.ravel()
    n = lr.size
    sr = W0 * lr + B0
    f, r = A0 * sr + C0, A0 * hr + C0
    g_gan = 0.5 * (np.mean(softplus(r - f.mean())) + np.mean(softplus(r.mean() - f)))
    g_pixel = np.mean(np.abs(sr - hr))
    d_f = -0.5 * (np.sum(sig(r - f.mean())) / n**2 + sig(r.mean() - f) / n)
    d_sr = A0 * d_f + PIXEL_WEIGHT * np.sign(sr - hr) / n
    w1, b1 = W0 - ETA_G * np.sum(d_sr * lr), B0 - ETA_G * np.sum(d_sr)
    u, v = A0 * (hr - sr.mean()), A0 * (sr - hr.mean())
    d_loss = 0.5 * (np.mean(softplus(-u)) + np.mean(softplus(v)))
    d_a = 0.5 * (np.mean(-sig(-u) * (hr - sr.mean())) + np.mean(sig(v) * (sr - hr.mean())))
    a1 = A0 - ETA_D * d_a

    gen, disc = conv1x1(W0, B0), conv1x1(A0, C0)
    loss = GeneratorLoss(2, pixel_weight=PIXEL_WEIGHT, gan_weight=1.0, content=None)
    out = run_one_iteration(gen, disc, loss)
    assert weights(gen) == pytest.approx((w1, b1), rel=1e-5)
    assert weights(disc) == pytest.approx((a1, C0), rel=1e-5)
    assert float(out["g_gan"]) == pytest.approx(g_gan, rel=1e-5)
    assert float(out["g_pixel"]) == pytest.approx(g_pixel, rel=1e-5)
    assert float(out["g_loss"]) == pytest.approx(g_gan + PIXEL_WEIGHT * g_pixel, rel=1e-5)
    assert float(out["d_loss"]) == pytest.approx(d_loss, rel=1e-5)
    # the logged mean logits: real from hr, fake from the generated image
    assert float(out["d_real"]) == pytest.approx(r.mean(), rel=1e-5)
    assert float(out["d_fake"]) == pytest.approx(f.mean(), rel=1e-5)
    np.testing.assert_allclose(out["pred"].numpy(), (W0 * LR + B0), rtol=1e-6)


def test_psnr_iteration_is_one_l1_step_and_leaves_d_alone():
    """Pre-training phase: L1 only, dW = mean(sign(sr - hr) lr), dB = mean(sign(sr - hr)); D is not stepped."""
    lr, hr = LR.ravel(), HR.ravel()
    s = np.sign(W0 * lr + B0 - hr)
    gen, disc = conv1x1(W0, B0), conv1x1(A0, C0)
    out = run_one_iteration(gen, disc, GeneratorLoss(2, content=None), pretrain_epochs=1)
    assert out["phase"] == "psnr"
    assert weights(gen) == pytest.approx((W0 - ETA_G * np.mean(s * lr), B0 - ETA_G * np.mean(s)), rel=1e-5)
    assert weights(disc) == pytest.approx((A0, C0), rel=1e-6)
    assert float(out["g_loss"]) == pytest.approx(np.mean(np.abs(W0 * lr + B0 - hr)), rel=1e-5)


# ---------------------------------------------------------------------------------------------- direction tests
class TinyD(torch.nn.Module):
    """conv 3x3 -> LeakyReLU -> conv 1x1: a patch discriminator of a few dozen weights (features optional)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.LeakyReLU(0.2))
        self.head = torch.nn.Conv2d(4, 1, 1)

    def forward(self, x, return_features=False):
        feat = self.body(x)
        logits = self.head(feat)
        return (logits, [feat]) if return_features else logits


def _direction_setup(seed):
    torch.manual_seed(seed)
    gen, disc = torch.nn.Conv2d(1, 1, 3, padding=1), TinyD()
    g = torch.Generator().manual_seed(seed)
    data = [{"lr": torch.rand(1, 8, 8, generator=g), "hr": torch.rand(1, 8, 8, generator=g)} for _ in range(2)]
    return gen, disc, data


def _gap(gen, disc, data):
    """mean D(G(lr)) - mean D(hr) over the batch: how 'real' the fakes look, relative to the real images."""
    lr = torch.stack([d["lr"] for d in data])
    hr = torch.stack([d["hr"] for d in data])
    with torch.no_grad():
        return (disc(gen(lr)).mean() - disc(hr).mean()).item()


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_generator_step_on_frozen_discriminator_raises_fake_logits(seed):
    """Pure adversarial G loss, D's learning rate 0 (frozen): after the engine's G step the fakes score higher
    relative to the reals. An engine that swapped real and fake logits in the G loss would lower the gap."""
    gen, disc, data = _direction_setup(seed)
    before = _gap(gen, disc, data)
    run_one_iteration(gen, disc, GeneratorLoss(2, pixel_weight=0.0, gan_weight=1.0, content=None),
                      eta_g=0.5, eta_d=0.0, data=data)
    after = _gap(gen, disc, data)
    assert after > before + 1e-3, (before, after)  # +1.7e-3, +2.4e-2, +1.1e-1 for these seeds


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_discriminator_step_lowers_fake_logits(seed):
    """G's learning rate 0 (frozen): after the engine's D step the fakes score lower relative to the reals. The
    default feature-matching content term is on here, so D is also called with return_features=True in the G step."""
    gen, disc, data = _direction_setup(seed)
    before = _gap(gen, disc, data)
    run_one_iteration(gen, disc, GeneratorLoss(2), eta_g=0.0, eta_d=0.05, data=data)
    after = _gap(gen, disc, data)
    assert after < before - 1e-3, (before, after)  # -1.1e-2, -2.0e-2, -1.5e-2 for these seeds
