"""The device-planned sliding window: its plan for CPUs and (simulated) GPUs, and results equal to MONAI's."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from pipelines.inferers import CPU_SW_BATCH_SIZE, AutoSlidingWindowInferer, plan_sliding_window, stitch_bytes

GiB = 2**30


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
