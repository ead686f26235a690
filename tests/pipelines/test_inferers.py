"""Every inference wrapper: the device-planned sliding window (its plan for CPUs and simulated GPUs, results equal to
MONAI's) for segmentation and super-resolution, mirror TTA and channels-last."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from pipelines.inferers import (
    CPU_SW_BATCH_SIZE,
    AutoSlidingWindowInferer,
    ChannelsLast,
    MirrorTTA,
    SuperResolutionInferer,
    WindowPassthroughInferer,
    output_geometry,
    plan_sliding_window,
    sr_inferer,
    stitch_bytes,
)

GiB = 2**30
MiB = 2**20


def test_stitch_bytes_counts_output_and_count_map():
    assert stitch_bytes((512, 512, 300), out_channels=2) == 3 * 512 * 512 * 300 * 4


def test_cpu_plan():
    plan = plan_sliding_window("cpu", (512, 512, 300), 2)
    assert plan.sw_batch_size == CPU_SW_BATCH_SIZE and plan.stitch_on_cpu


def test_cuda_plan_fills_the_free_memory_with_windows():
    # 40 GiB free, a 512x512x300 two-class volume needs 0.88 GiB of buffers: stitch on the GPU
    plan = plan_sliding_window("cuda", (512, 512, 300), 2, window_bytes=2 * GiB, free_bytes=40 * GiB)
    assert not plan.stitch_on_cpu
    assert plan.sw_batch_size == int(0.5 * (40 * GiB - stitch_bytes((512, 512, 300), 2)) // (2 * GiB)) == 9
    # capped
    assert plan_sliding_window("cuda", (96,) * 3, 2, window_bytes=2**20, free_bytes=40 * GiB).sw_batch_size == 16


def test_cuda_plan_stitches_on_the_cpu_when_the_buffers_would_not_fit():
    # 3 GiB free: the 0.88 GiB of buffers exceed a quarter of it
    plan = plan_sliding_window("cuda", (512, 512, 300), 2, window_bytes=512 * 2**20, free_bytes=3 * GiB)
    assert plan.stitch_on_cpu and plan.sw_batch_size == 3  # 0.5 * 3 GiB / 0.5 GiB, the buffers being off the GPU
    # a window larger than the budget still runs, one at a time
    assert plan_sliding_window("cuda", (64,) * 3, 2, window_bytes=8 * GiB, free_bytes=3 * GiB).sw_batch_size == 1


@pytest.mark.parametrize("sw_batch_size", ["auto", 3])
def test_auto_inferer_equals_monai_sliding_window(sw_batch_size):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1)).eval()
    x = torch.randn(1, 1, 40, 36, 20)
    auto = AutoSlidingWindowInferer((16, 16, 16), sw_batch_size=sw_batch_size, overlap=0.25, mode="gaussian")
    plain = SlidingWindowInferer((16, 16, 16), sw_batch_size=1, overlap=0.25, mode="gaussian")
    with torch.inference_mode():
        assert torch.allclose(auto(x, net), plain(x, net), atol=1e-6)
    expected = CPU_SW_BATCH_SIZE if sw_batch_size == "auto" else 3
    assert auto.sw_batch_size == expected and auto.last_plan.sw_batch_size == expected


def test_bad_batch_size_is_refused():
    with pytest.raises(ValueError, match="sw_batch_size must be an integer or 'auto', got 'many'"):
        AutoSlidingWindowInferer((16, 16, 16), sw_batch_size="many")


def test_mirror_tta_is_the_mean_over_flips():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    x = torch.randn(1, 1, 6, 7, 8)
    with torch.no_grad():
        expected = (net(x) + net(x.flip(2)).flip(2)) / 2
        assert torch.allclose(MirrorTTA(net, axes=(0,))(x), expected, atol=1e-6)
        pointwise = torch.nn.Conv3d(1, 2, 1).eval()  # flip-equivariant: TTA changes nothing
        assert torch.allclose(MirrorTTA(pointwise)(x), pointwise(x), atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_wrapper_gives_the_same_output_in_the_standard_layout(spatial_dims):
    conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
    net = torch.nn.Sequential(conv(2, 4, 3, padding=1), torch.nn.ReLU(), conv(4, 3, 1)).eval()
    x = torch.randn(2, 2, *(6, 7, 5)[:spatial_dims])
    with torch.no_grad():
        expected = net(x)
        wrapped = ChannelsLast(net, spatial_dims)
        fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
        assert wrapped.network[0].weight.is_contiguous(memory_format=fmt)
        y = wrapped(x)
    assert y.is_contiguous() and torch.allclose(y, expected, atol=1e-5)
    with pytest.raises(ValueError, match="2 or 3 spatial dimensions, got 1"):
        ChannelsLast(net, 1)


# --------------------------------------------------------------------------------------------- super-resolution


class _Upsample(torch.nn.Module):
    """A local x``factor`` network: nearest up-sampling then a 1 x 1 convolution (so patches equal the whole image)."""

    def __init__(self, factor: tuple[int, ...]) -> None:
        super().__init__()
        self.factor = factor
        conv = torch.nn.Conv2d if len(factor) == 2 else torch.nn.Conv3d
        self.conv = conv(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.nn.functional.interpolate(x, scale_factor=self.factor, mode="nearest"))


def test_output_geometry_is_the_networks_channels_and_scale():
    window = torch.zeros(1, 1, 8, 8)
    assert output_geometry(window, torch.zeros(1, 1, 32, 32)) == (1, (4.0, 4.0))  # x4 super-resolution
    assert output_geometry(torch.zeros(1, 1, 8, 8, 4), torch.zeros(1, 3, 8, 8, 8)) == (3, (1.0, 1.0, 2.0))
    assert output_geometry(window, torch.zeros(1, 2, 8, 8)) == (2, (1.0, 1.0))  # segmentation
    assert output_geometry(window, (torch.zeros(1, 2, 8, 8),)) == (1, (1.0, 1.0))  # several outputs


def test_sr_inferer_plans_its_stitching_device_from_the_output_size(monkeypatch):
    """A simulated GPU with 1.5 GiB free, a 2048 x 2048 image and a 64 MiB window, x4 or a segmentation network.

    x4: the output and count buffers are 2 x 8192^2 x 4 bytes = 0.5 GiB, more than a quarter of 1.5 GiB: stitch on the
    CPU, and the windows get half of all 1.5 GiB: 0.75 GiB / 64 MiB = 12 per pass. The same image through a segmentation
    network needs 2 x 2048^2 x 4 bytes = 32 MiB of buffers: on the GPU, (1536 - 32) / 2 / 64 = 11.75 -> 11 per pass."""
    image, network = torch.zeros(1, 1, 2048, 2048), torch.nn.Identity()
    sr = sr_inferer((64, 64), sw_batch_size="auto", sw_device="cuda")
    seg = AutoSlidingWindowInferer((64, 64), sw_batch_size="auto", sw_device="cuda")
    monkeypatch.setattr(sr, "_probe", lambda inputs, net, device: (64 * MiB, 1, (4.0, 4.0)))
    monkeypatch.setattr(seg, "_probe", lambda inputs, net, device: (64 * MiB, 1, (1.0, 1.0)))
    free = 3 * GiB // 2
    sr_plan, seg_plan = sr.plan(image, network, free_bytes=free), seg.plan(image, network, free_bytes=free)
    assert sr_plan.stitch_on_cpu and sr_plan.sw_batch_size == 12
    assert not seg_plan.stitch_on_cpu and seg_plan.sw_batch_size == 11
    # the configured batch size is kept, the stitching device is still planned
    fixed = sr_inferer((64, 64), sw_batch_size=3, sw_device="cuda")
    monkeypatch.setattr(fixed, "_probe", lambda inputs, net, device: (64 * MiB, 1, (4.0, 4.0)))
    assert fixed.plan(image, network, free_bytes=free).stitch_on_cpu


@pytest.mark.parametrize("sw_batch_size", ["auto", 3])
def test_sr_inferer_equals_monai_sliding_window_and_never_buffers(sw_batch_size):
    torch.manual_seed(0)
    net = _Upsample((2, 4)).eval()
    x = torch.rand(1, 1, 21, 13)
    inferer = sr_inferer((8, 8), sw_batch_size=sw_batch_size, overlap=0.25)
    assert isinstance(inferer, SuperResolutionInferer) and isinstance(inferer, AutoSlidingWindowInferer)
    plain = SlidingWindowInferer((8, 8), sw_batch_size=1, overlap=0.25, mode="gaussian", padding_mode="replicate")
    with torch.inference_mode():
        out = inferer(x, net)
        assert out.shape == (1, 1, 42, 52) and torch.allclose(out, plain(x, net), atol=1e-6)
        assert torch.allclose(out, net(x), atol=1e-5)  # a local network: patches equal the whole image
    expected = CPU_SW_BATCH_SIZE if sw_batch_size == "auto" else 3
    assert inferer.sw_batch_size == expected and inferer.last_plan.stitch_on_cpu
    assert inferer.device is None  # planned: MONAI's adaptive parent decides, never its buffered mode
    assert inferer.buffer_steps == 0
    with pytest.raises(ValueError, match="buffer_steps is not supported"):
        SuperResolutionInferer((8, 8), buffer_steps=2)


def test_the_sr_bundles_build_a_planned_inferer():
    from pipelines.bundle import bundle_parser
    from tests.conftest import CT_SR_BUNDLE, US_SR_BUNDLE

    for bundle, passthrough in ((CT_SR_BUNDLE, (0.0, 1.0)), (US_SR_BUNDLE, None)):
        inferer = bundle_parser(bundle, "inference").get_parsed_content("inferer")
        assert isinstance(inferer, SuperResolutionInferer), bundle
        assert inferer.device is None and inferer.passthrough_window == passthrough, bundle
    assert isinstance(bundle_parser(CT_SR_BUNDLE, "inference").get_parsed_content("inferer"),
                      WindowPassthroughInferer)


def test_moved_wrappers_keep_their_old_import_paths():
    import pipelines.inference
    import pipelines.inferers
    import pipelines.transforms.sr

    assert pipelines.inference.ChannelsLast is pipelines.inferers.ChannelsLast
    assert pipelines.inference.MirrorTTA is pipelines.inferers.MirrorTTA
    for name in ("sr_inferer", "WindowPassthrough", "WindowPassthroughInferer"):
        assert getattr(pipelines.transforms.sr, name) is getattr(pipelines.inferers, name), name
