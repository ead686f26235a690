"""Fixed depthwise filters (networks/blocks/filters.py), checked by value against NumPy/SciPy.

Every expected value here is computed without the module: the Gaussian formula written out in NumPy, OpenCV's documented
sigma rule, ``scipy.ndimage.correlate`` for the forward pass and ``scipy.ndimage.convolve`` (the adjoint of a
zero-padded correlation) for the backward pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from networks.blocks.filters import FixedDepthwiseFilter, _FixedDepthwiseConv, gaussian_kernel, opencv_sigma
from tests.networks.reference import np_gaussian

# torch padding mode -> the scipy.ndimage mode that pads the same way (torch "reflect" does not repeat the edge sample,
# which is scipy's "mirror"; scipy's "reflect" repeats it)
SCIPY_MODE = {"zeros": "constant", "reflect": "mirror", "replicate": "nearest"}

# non-symmetric kernels with different odd sizes per axis: a missing flip, a swapped axis or a wrong padding shows
SHAPES = {2: {"kernel": (3, 5), "image": (7, 9)}, 3: {"kernel": (3, 1, 5), "image": (5, 6, 7)}}


def np_filter(x: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    """Correlate every (batch, channel) map of ``x`` with ``kernel``, padded by scipy's twin of a torch mode."""
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[b, c] = ndimage.correlate(x[b, c], kernel, mode=SCIPY_MODE[mode], cval=0.0)
    return out


def random_kernel(shape, seed: int = 0) -> torch.Tensor:
    """A kernel with no symmetry (values 0.1 .. 1.1), in float64."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("k, sigma", [(3, 0.8), (5, 1.1), (7, 2.3)])
def test_gaussian_kernel_matches_the_formula(dims, k, sigma):
    kernel = gaussian_kernel(k, sigma, dims)
    assert kernel.shape == (k,) * dims and kernel.dtype == torch.float32
    np.testing.assert_allclose(kernel.numpy(), np_gaussian(k, sigma, dims), rtol=1e-6, atol=1e-8)


def test_gaussian_kernel_hand_values():
    # k = 3, sigma = 1: taps exp(-1/2), 1, exp(-1/2) over their sum 1 + 2 exp(-1/2) = 2.21306...
    e = np.exp(-0.5)
    np.testing.assert_allclose(gaussian_kernel(3, 1.0, 1).numpy(), np.array([e, 1, e]) / (1 + 2 * e), rtol=1e-6)
    # the 2D centre is the square of the 1D centre
    assert gaussian_kernel(3, 1.0, 2)[1, 1].item() == pytest.approx(1 / (1 + 2 * e) ** 2, rel=1e-6)


def test_gaussian_kernel_refuses_bad_arguments():
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(4, 1.0, 2)
    with pytest.raises(ValueError, match="sigma must be positive"):
        gaussian_kernel(3, 0.0, 2)


@pytest.mark.parametrize("k, expected", [(3, 0.8), (5, 1.1), (7, 1.4), (9, 1.7), (11, 2.0)])
def test_opencv_sigma(k, expected):
    # OpenCV getGaussianKernel: sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8, worked out by hand
    assert opencv_sigma(k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_forward_matches_scipy(dims, mode, grad):
    """Same-size output, per channel, with the padding of scipy's matching mode (both the plain and the custom path)."""
    torch.manual_seed(0)
    kernel = random_kernel(SHAPES[dims]["kernel"])
    x = torch.randn((2, 3) + SHAPES[dims]["image"], dtype=torch.float64)
    filt = FixedDepthwiseFilter(dims, 3, kernel, padding_mode=mode)
    with torch.set_grad_enabled(grad):
        y = filt(x.requires_grad_(grad))
    assert y.shape == x.shape
    expected = np_filter(x.detach().numpy(), kernel.float().double().numpy(), mode)
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dims", [2, 3])
def test_custom_backward_passes_gradcheck(dims):
    torch.manual_seed(0)
    kernel = random_kernel(SHAPES[dims]["kernel"])
    weight = kernel.expand(2, 1, *kernel.shape).contiguous()
    x = torch.randn((1, 2) + SHAPES[dims]["image"], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _FixedDepthwiseConv.apply(t, weight, 2), (x,))


@pytest.mark.parametrize("dims", [2, 3])
def test_module_backward_uses_the_custom_function_and_is_the_adjoint(dims):
    """d(sum(g * y))/dx is the convolution (flipped correlation) of g: scipy's ``convolve`` with zero padding.

    It must also equal the gradient that autograd gives for the plain ``F.conv`` of the same kernel.
    """
    torch.manual_seed(1)
    kernel = random_kernel(SHAPES[dims]["kernel"], seed=1)
    filt = FixedDepthwiseFilter(dims, 2, kernel)
    x = torch.randn((2, 2) + SHAPES[dims]["image"], dtype=torch.float64, requires_grad=True)
    g = torch.randn(x.shape, dtype=torch.float64)
    y = filt(x)
    assert type(y.grad_fn).__name__ == "_FixedDepthwiseConvBackward"  # the fast path is the one under test
    (grad,) = torch.autograd.grad(y, x, g)

    k32 = kernel.float().double().numpy()  # the module stores the kernel in float32
    expected = np.empty_like(g.numpy())
    for b in range(2):
        for c in range(2):
            expected[b, c] = ndimage.convolve(g[b, c].numpy(), k32, mode="constant", cval=0.0)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-10, atol=1e-10)

    conv = F.conv2d if dims == 2 else F.conv3d
    x2 = x.detach().clone().requires_grad_(True)
    w = torch.from_numpy(k32).expand(2, 1, *kernel.shape)
    conv(x2, w, padding=tuple(s // 2 for s in kernel.shape), groups=2).backward(g)
    torch.testing.assert_close(grad, x2.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_learnable_filter_is_a_parameter_and_gets_its_gradient(dims):
    """With ``learnable=True`` d(sum(g * y))/dw[c, 0, a] = sum_p xpad[c, p + a] g[c, p], written out in NumPy."""
    torch.manual_seed(2)
    kernel = random_kernel(SHAPES[dims]["kernel"], seed=2)
    filt = FixedDepthwiseFilter(dims, 2, kernel, learnable=True).double()
    assert [name for name, _ in filt.named_parameters()] == ["weight"] and not list(filt.buffers())
    x = torch.randn((1, 2) + SHAPES[dims]["image"], dtype=torch.float64)
    g = torch.randn(x.shape, dtype=torch.float64)
    y = filt(x)
    np.testing.assert_allclose(y.detach().numpy(), np_filter(x.numpy(), filt.weight[0, 0].detach().numpy(), "zeros"))
    y.backward(g)

    pad = [(0, 0), (0, 0)] + [(s // 2, s // 2) for s in kernel.shape]
    xpad = np.pad(x.numpy(), pad)
    expected = np.zeros((2,) + tuple(kernel.shape))
    image = SHAPES[dims]["image"]
    for c in range(2):
        for a in np.ndindex(*kernel.shape):
            window = xpad[(0, c) + tuple(slice(o, o + n) for o, n in zip(a, image))]
            expected[(c,) + a] = (window * g[0, c].numpy()).sum()
    np.testing.assert_allclose(filt.weight.grad[:, 0].numpy(), expected, rtol=1e-10, atol=1e-10)


def test_fixed_kernel_is_a_non_persistent_buffer():
    filt = FixedDepthwiseFilter(2, 3, gaussian_kernel(3, 0.8, 2))
    assert not list(filt.parameters()) and filt.state_dict() == {}
    assert filt.weight.shape == (3, 1, 3, 3) and not filt.weight.requires_grad


def test_refuses_bad_arguments():
    with pytest.raises(ValueError, match="spatial_dims"):
        FixedDepthwiseFilter(1, 1, torch.ones(3))
    with pytest.raises(ValueError, match="odd-sized"):
        FixedDepthwiseFilter(2, 1, torch.ones(3, 4))
    with pytest.raises(ValueError, match="odd-sized"):
        FixedDepthwiseFilter(3, 1, torch.ones(3, 3))
    with pytest.raises(ValueError, match="padding_mode"):
        FixedDepthwiseFilter(2, 1, torch.ones(3, 3), padding_mode="circular")
