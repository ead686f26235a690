"""Separable fixed filters (networks/blocks/filters.py) and E-DU's buffered dense block (networks/edu.py).

What is compared with what:

- the per-axis filter against ``scipy.ndimage.correlate`` with the full ``k^d`` kernel (forward, every padding mode,
  the borders included: the whole output is compared) and ``scipy.ndimage.convolve`` (its adjoint, for the gradient),
  and against the module's own full depthwise convolution (``separable=False``), within 1e-5;
- the banded per-axis matrices against matrices written out by hand;
- the buffered dense block against a reference copy of the concatenating implementation it replaces (written out
  below, :func:`reference_dense_block`): outputs, the gradients of the input and of every parameter, in float64.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.layers.simplelayers import LaplaceFilter
from scipy import ndimage

from networks.blocks import filters
from networks.blocks.filters import (
    FixedDepthwiseFilter,
    _axis_operator,
    gaussian_kernel,
    opencv_sigma,
    separable_factors,
)
from networks.edu import EDU, MDE, DenseTransitionBlock
from tests.networks.reference import np_gaussian, np_opencv_sigma

SCIPY_MODE = {"zeros": "constant", "reflect": "mirror", "replicate": "nearest"}
# image sizes: an axis longer than filters._DENSE_MAX (64) takes the blocked matrix product; axes shorter than the
# kernel (3 < 9) make every output a border output
IMAGES = {2: (70, 9), 3: (67, 6, 3)}


def np_filter(x: np.ndarray, kernel: np.ndarray, mode: str, adjoint: bool = False) -> np.ndarray:
    """Correlate (or, for the adjoint of zero padding, convolve) every (batch, channel) map with ``kernel``."""
    op = ndimage.convolve if adjoint else ndimage.correlate
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:2]):
        out[idx] = op(x[idx], kernel, mode=SCIPY_MODE[mode], cval=0.0)
    return out


def rank_one_kernel(shape, seed: int = 0, sign: float = 1.0) -> torch.Tensor:
    """An outer product of 1D kernels with no symmetry (a missing flip or transpose shows), in float64."""
    g = torch.Generator().manual_seed(seed)
    out = None
    for n in shape:
        f = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
        out = f if out is None else out.unsqueeze(-1) * f
    return sign * out


def image(shape, seed: int = 0, channels: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((2, channels) + tuple(shape), generator=g, dtype=torch.float64)


def grad_fn_names(y: torch.Tensor) -> set[str]:
    """The names of every node of ``y``'s autograd graph."""
    seen, stack = set(), [y.grad_fn]
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        stack.extend(n for n, _ in f.next_functions)
    return {type(f).__name__ for f in seen}


# ------------------------------------------------------------------------------------------------ factors and matrices


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("k", [3, 5, 7, 9])
def test_gaussian_factors_are_the_1d_gaussian(dims, k):
    sigma = np_opencv_sigma(k)
    factors = separable_factors(gaussian_kernel(k, sigma, dims))
    assert factors is not None and len(factors) == dims
    for f in factors:
        np.testing.assert_allclose(f.numpy(), np_gaussian(k, sigma, 1), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("shape", [(3, 5), (3, 1, 5)])
def test_factors_reproduce_an_asymmetric_kernel_of_either_sign(shape, sign):
    kernel = rank_one_kernel(shape, seed=4, sign=sign)
    factors = separable_factors(kernel)
    assert [len(f) for f in factors] == list(shape)
    outer = np.einsum(",".join("ijk"[: len(shape)]) + "->" + "ijk"[: len(shape)], *[f.numpy() for f in factors])
    np.testing.assert_allclose(outer, kernel.numpy(), rtol=1e-12)


def test_non_separable_kernels_have_no_factors():
    assert separable_factors(LaplaceFilter(3, size=3).filter.float()) is None
    assert separable_factors(torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])) is None
    assert separable_factors(torch.rand(3, 3, generator=torch.Generator().manual_seed(0)) + 0.1) is None
    # rank one but for one tap off by 1e-4 of the largest: not separable at the 1e-6 tolerance
    k = rank_one_kernel((3, 3))
    k[0, 0] += 1e-4 * k.abs().max()
    assert separable_factors(k) is None


def test_axis_operators_written_out():
    """taps (1, 2, 3) over 5 samples: y[i] = 1 x[i-1] + 2 x[i] + 3 x[i+1], the outside index dropped, mirrored
    (x[-1] = x[1], x[5] = x[3]) or clamped (x[-1] = x[0], x[5] = x[4])."""
    inner = [[1, 2, 3, 0, 0], [0, 1, 2, 3, 0], [0, 0, 1, 2, 3]]
    zeros = [[2, 3, 0, 0, 0]] + inner + [[0, 0, 0, 1, 2]]
    reflect = [[2, 4, 0, 0, 0]] + inner + [[0, 0, 0, 4, 2]]
    replicate = [[3, 3, 0, 0, 0]] + inner + [[0, 0, 0, 1, 5]]
    for mode, expected in (("zeros", zeros), ("reflect", reflect), ("replicate", replicate)):
        a = _axis_operator((1.0, 2.0, 3.0), 5, mode)
        np.testing.assert_array_equal(a.numpy(), np.array(expected, dtype=np.float64), err_msg=mode)


# ------------------------------------------------------------------------------------------------- forward and backward


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("k", [3, 5, 9])
def test_gaussian_equals_the_full_kernel_filter(dims, k):
    """Per-axis passes equal scipy's full-kernel correlation and the module's full depthwise convolution."""
    kernel = gaussian_kernel(k, opencv_sigma(k), dims)
    x = image(IMAGES[dims], seed=k)
    sep = FixedDepthwiseFilter(dims, 2, kernel, separable=True).double()
    full = FixedDepthwiseFilter(dims, 2, kernel, separable=False).double()
    with torch.no_grad():
        y, y_full = sep(x), full(x)
    expected = np_filter(x.numpy(), kernel.double().numpy(), "zeros")
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(y.numpy(), y_full.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate"])
def test_asymmetric_rank_one_kernel_forward_and_gradient(dims, mode):
    """Forward: scipy's correlation with the padding of that mode. Gradient: for zero padding scipy's convolution
    (the adjoint); for every mode the gradient autograd gives for the full-kernel convolution of the same kernel."""
    shape = (3, 5) if dims == 2 else (3, 1, 5)
    kernel = rank_one_kernel(shape, seed=1)
    filt = FixedDepthwiseFilter(dims, 2, kernel, padding_mode=mode, separable=True).double()
    x = image(IMAGES[dims], seed=2).requires_grad_(True)
    g = image(IMAGES[dims], seed=3)
    y = filt(x)
    assert "_SeparableDepthwiseFilterBackward" in grad_fn_names(y)
    (grad,) = torch.autograd.grad(y, x, g)

    k32 = kernel.float().double().numpy()  # the module's kernel, as the full path sees it
    scale = float(np.abs(y.detach().numpy()).max())
    np.testing.assert_allclose(y.detach().numpy(), np_filter(x.detach().numpy(), k32, mode), rtol=0, atol=1e-6 * scale)

    conv = F.conv2d if dims == 2 else F.conv3d
    x2 = x.detach().clone().requires_grad_(True)
    w = torch.from_numpy(k32).expand(2, 1, *shape)
    pad = tuple(p for s in reversed(shape) for p in (s // 2, s // 2))
    conv(F.pad(x2, pad, mode="constant" if mode == "zeros" else mode), w, groups=2).backward(g)
    gscale = float(x2.grad.abs().max())
    np.testing.assert_allclose(grad.numpy(), x2.grad.numpy(), rtol=0, atol=1e-6 * gscale)
    if mode == "zeros":
        np.testing.assert_allclose(grad.numpy(), np_filter(g.numpy(), k32, mode, adjoint=True), rtol=0,
                                   atol=1e-6 * gscale)


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_separable_function_passes_gradcheck(mode):
    filt = FixedDepthwiseFilter(3, 2, rank_one_kernel((3, 1, 5), seed=5), padding_mode=mode, separable=True).double()
    x = torch.randn(1, 2, 4, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(filt, (x,))


def test_channels_last_input_keeps_its_format_and_values():
    kernel = gaussian_kernel(5, opencv_sigma(5), 3)
    x = image(IMAGES[3]).contiguous(memory_format=torch.channels_last_3d)
    filt = FixedDepthwiseFilter(3, 2, kernel, separable=True).double()
    with torch.no_grad():
        y = filt(x)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    np.testing.assert_allclose(y.numpy(), np_filter(x.numpy(), kernel.double().numpy(), "zeros"), atol=1e-6)


@pytest.mark.parametrize("shape", [(7, 7, 7), (5, 3, 1)], ids=["last-axis-matrix", "last-axis-scale"])
def test_large_inputs_are_filtered_in_chunks_with_the_same_values(monkeypatch, shape):
    """A few channel maps at a time, the last pass written straight into the output (or, when the last axis is a
    1-tap scale, copied in): the same values as the whole tensor at once, and as scipy."""
    kernel = rank_one_kernel(shape, seed=6)
    x = image((9, 8, 7), channels=3)
    filt = FixedDepthwiseFilter(3, 3, kernel).double()
    with torch.no_grad():
        whole = filt(x)
        monkeypatch.setattr(filters, "_CHUNK", 2 * 9 * 8 * 7)  # 3 chunks of 2 maps over the 2 x 3 maps
        chunked = filt(x)
    np.testing.assert_allclose(chunked.numpy(), whole.numpy(), rtol=1e-14, atol=1e-14)
    expected = np_filter(x.numpy(), kernel.float().double().numpy(), "zeros")
    np.testing.assert_allclose(whole.numpy(), expected, rtol=0, atol=1e-6 * np.abs(expected).max())


def test_chunks_under_autocast_take_the_bf16_result(monkeypatch):
    filt = FixedDepthwiseFilter(3, 3, gaussian_kernel(5, opencv_sigma(5), 3))
    x = image((9, 8, 7), channels=3).float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = filt(x)
        monkeypatch.setattr(filters, "_CHUNK", 2 * 9 * 8 * 7)
        chunked = filt(x)
    assert whole.dtype == chunked.dtype == torch.bfloat16
    torch.testing.assert_close(chunked, whole, rtol=1e-2, atol=1e-2)


# -------------------------------------------------------------------------------------------------------------- policy


def _path(filt: FixedDepthwiseFilter, x: torch.Tensor) -> str:
    y = filt(x.requires_grad_(True))
    names = grad_fn_names(y)
    return "separable" if "_SeparableDepthwiseFilterBackward" in names else "full"


def test_default_policy():
    """3D: per axis, except 3x3x3 on a channels-last float input outside autocast; 2D, Laplacian, learnable: full."""
    g3, g5 = gaussian_kernel(3, 0.8, 3), gaussian_kernel(5, 1.1, 3)
    x = torch.randn(1, 2, 6, 6, 6)
    xcl = torch.randn(1, 2, 6, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    assert _path(FixedDepthwiseFilter(3, 2, g3), x) == "separable"
    assert _path(FixedDepthwiseFilter(3, 2, g5), xcl) == "separable"
    assert _path(FixedDepthwiseFilter(3, 2, g3), xcl) == "full"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _path(FixedDepthwiseFilter(3, 2, g3), xcl) == "separable"
    assert _path(FixedDepthwiseFilter(2, 2, gaussian_kernel(5, 1.1, 2)), torch.randn(1, 2, 6, 6)) == "full"
    assert _path(FixedDepthwiseFilter(2, 2, gaussian_kernel(5, 1.1, 2), separable=True), torch.randn(1, 2, 6, 6)) \
        == "separable"
    assert _path(FixedDepthwiseFilter(3, 2, g5, separable=False), x) == "full"
    laplace = FixedDepthwiseFilter(3, 2, LaplaceFilter(3, size=3).filter.float())
    assert not laplace.is_separable and _path(laplace, x) == "full"
    learnable = FixedDepthwiseFilter(3, 2, g5, learnable=True)
    assert not learnable.is_separable and not list(learnable.buffers())
    learnable(x).sum().backward()
    assert learnable.weight.grad is not None
    # reflect padding wider than the axis: the full path, so that F.pad raises its usual error
    with pytest.raises(RuntimeError):
        FixedDepthwiseFilter(3, 2, g5, padding_mode="reflect")(torch.randn(1, 2, 6, 6, 2))


def test_tracing_records_the_full_convolution():
    filt = FixedDepthwiseFilter(3, 2, gaussian_kernel(5, 1.1, 3)).eval()
    x = torch.randn(1, 2, 6, 6, 6)
    with torch.no_grad():
        traced = torch.jit.trace(filt, x)
        eager = filt(x)
    assert "aten::_convolution" in str(traced.graph) and "aten::matmul" not in str(traced.graph)
    torch.testing.assert_close(traced(x), eager, rtol=0, atol=1e-6)


def test_bf16_autocast_close_to_fp32_and_gradient_in_the_input_dtype():
    filt = FixedDepthwiseFilter(3, 2, gaussian_kernel(7, opencv_sigma(7), 3))
    x = torch.randn(1, 2, 70, 5, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = filt(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32
    with torch.no_grad():
        ref = FixedDepthwiseFilter(3, 2, gaussian_kernel(7, opencv_sigma(7), 3), separable=False)(x)
        assert float((y.float() - ref).abs().max()) < 0.02 * float(ref.abs().max())


def test_edu_and_frcunet_gaussians_are_separable():
    from networks.frcunet import FrequencyRecalibration

    mde = MDE(3, 2)
    assert all(g.is_separable for g in mde.gaussians.values())
    assert all(b.is_separable for b in FrequencyRecalibration(3, 2, kernel_sizes=(3, 5)).blurs)
    assert not MDE(3, 2, enhance="laplacian").laplacian.is_separable


# --------------------------------------------------------------------------------------------------------- dense block


def reference_dense_block(block: DenseTransitionBlock, x: torch.Tensor) -> torch.Tensor:
    """The implementation the buffer replaces: every layer concatenates its input with its new maps."""
    for layer in block.dense:
        x = torch.cat([x, layer.dropout(layer.layers(x))], dim=1)
    return block.transition(x)


def _perturbed_block(dims: int, norm, dropout: float = 0.0) -> DenseTransitionBlock:
    torch.manual_seed(0)
    block = DenseTransitionBlock(dims, 3, 8, layers=3, norm=norm, dropout=dropout).double()
    with torch.no_grad():  # BN scales and shifts away from 1 and 0, running statistics away from 0 and 1
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for name, b in block.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return block


@pytest.mark.parametrize(
    "dims, batch, train, norm, dropout",
    [
        (3, 2, True, ("batch", {}), 0.0),  # training: batch statistics over a batch of 2
        (3, 1, True, ("batch", {}), 0.0),
        (3, 3, False, ("batch", {}), 0.0),  # eval: running statistics
        (3, 2, True, ("instance", {"affine": True}), 0.3),  # dropout masks drawn in the same order
        (2, 2, True, ("batch", {}), 0.0),
        (2, 2, False, ("instance", {"affine": True}), 0.0),
    ],
)
def test_buffered_dense_block_equals_concatenation(dims, batch, train, norm, dropout):
    new = _perturbed_block(dims, norm, dropout).train(train)
    old = copy.deepcopy(new)
    shape = (batch, 3) + ((5, 4, 3) if dims == 3 else (6, 5))
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x_new, x_old = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.manual_seed(7)
    y_new = new(x_new)
    torch.manual_seed(7)
    y_old = reference_dense_block(old, x_old)
    assert "_DenseFeaturesBackward" in grad_fn_names(y_new) and "CatBackward0" not in grad_fn_names(y_new)
    g = torch.randn(y_old.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads_new = torch.autograd.grad(y_new, [x_new, *new.parameters()], g)
    grads_old = torch.autograd.grad(y_old, [x_old, *old.parameters()], g)
    torch.testing.assert_close(y_new, y_old, rtol=1e-10, atol=1e-10)
    names = ["input"] + [n for n, _ in new.named_parameters()]
    for name, a, b in zip(names, grads_new, grads_old):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"grad of {name}: {m}")
    for (name, a), b in zip(new.named_buffers(), old.buffers()):  # the same running statistics after the step
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
    if not train:  # inference: no autograd, plain views of the buffer
        with torch.no_grad():
            torch.testing.assert_close(new(x), reference_dense_block(old, x), rtol=1e-10, atol=1e-10)


def test_dense_block_gradcheck():
    block = _perturbed_block(3, ("batch", {})).train()
    x = torch.randn(2, 3, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))


def test_buffer_saves_less_for_backward_than_concatenation():
    """Concatenation saves every layer's concatenated input (sum of c_in + i * growth maps) for batch norm's backward;
    the buffer's views share one allocation of c_in + L * growth maps."""
    def saved_bytes(fn) -> int:
        storages = {}

        def pack(t):
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(storages.values())

    block = DenseTransitionBlock(3, 8, 16, layers=4).double().train()
    x = torch.randn(2, 8, 6, 6, 6, dtype=torch.float64, requires_grad=True)
    old, new = saved_bytes(lambda: reference_dense_block(block, x)), saved_bytes(lambda: block(x))
    maps = 2 * 6**3 * 8  # bytes of one float64 channel map of the batch
    # batch norm saves its input: with concatenation the inputs of the 4 layers and of the transition are 5 tensors
    # of 8, 12, 16, 20 and 24 maps; with the buffer they are views of one 24-map allocation. Everything else saved
    # (the BN outputs, the ReLU outputs) is the same in both.
    assert old - new == (8 + 12 + 16 + 20 + 24 - 24) * maps


def test_channels_last_dense_block_concatenates_and_keeps_its_format():
    block = _perturbed_block(3, ("batch", {})).train()
    x = torch.randn(2, 3, 5, 4, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last_3d)
    y = block(x)
    assert "CatBackward0" in grad_fn_names(y)
    torch.testing.assert_close(y, reference_dense_block(copy.deepcopy(block).train(), x), rtol=1e-10, atol=1e-10)


def test_edu_gradients_equal_the_concatenating_full_kernel_network():
    """A small 3D E-DU: buffered dense blocks and separable MDE against concatenation and full-kernel filters."""
    torch.manual_seed(0)
    net = EDU(3, 1, 2, features=(4, 8), dense_layers=2).double().train()
    old = copy.deepcopy(net)
    for m in old.modules():
        if isinstance(m, DenseTransitionBlock):
            m.forward = lambda x, m=m: reference_dense_block(m, x)
        if isinstance(m, FixedDepthwiseFilter):
            m.separable_policy = False
    x = torch.randn(2, 1, 8, 6, 4, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = net(xa), old(xb)
    assert "_SeparableDepthwiseFilterBackward" in grad_fn_names(ya)
    assert "_SeparableDepthwiseFilterBackward" not in grad_fn_names(yb)
    g = torch.randn(ya.shape, dtype=torch.float64)
    ga = torch.autograd.grad(ya, [xa, *net.parameters()], g)
    gb = torch.autograd.grad(yb, [xb, *old.parameters()], g)
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-5 * float(yb.detach().abs().max()))
    for a, b in zip(ga, gb):  # (a conv bias before a training-mode BN has a gradient of zero up to rounding)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()) + 1e-12)
