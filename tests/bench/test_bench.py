"""The benchmark runs and reports ratios to MONAI UNet (shrunk to tiny inputs: timings belong in bench/, not here)."""

from __future__ import annotations

import math

import pytest

import bench.networks as bn


def test_quick_bench_reports_every_figure_on_tiny_inputs(monkeypatch, tmp_path):
    monkeypatch.setattr(bn, "VOLUME", (48, 48, 48))
    monkeypatch.setattr(bn, "MATMUL_N", 256)
    monkeypatch.setitem(bn.SETTINGS, "quick", {"roi": (32, 32, 32), "batch": 1, "steps": 1, "sw_batch": 1,
                                               "overlap": 0.25, "estimate_sw": True})
    monkeypatch.setitem(bn.NET2D, "HEMF", ("networks.HEMF", {"spatial_dims": 2, "in_channels": 3, "out_channels": 7,
                                                              "features": (8, 16, 32, 64), "num_heads": 2,
                                                              "elf_depths": 1, "egf_depths": 1}, (3, 32, 32),
                                           "classification"))
    monkeypatch.setitem(bn.NET2D, "MONAI DenseNet121", ("monai.networks.nets.DenseNet121",
                                                        {"spatial_dims": 2, "in_channels": 3, "out_channels": 7},
                                                        (3, 32, 32), "classification"))
    report = bn.run(quick=True, device="cpu", only=["MONAI UNet", "EDU (mde=False)", "HEMF", "MONAI DenseNet121"],
                    echo=lambda s: None)
    unet = report["segmentation_3d"]["MONAI UNet"]
    assert unet["train_ratio_to_unet"] == 1.0 and unet["sw_fp32_ratio_to_unet"] == 1.0
    assert unet["windows"] == bn._windows((48, 48, 48), (32, 32, 32), 0.25) == 8
    edu = report["segmentation_3d"]["EDU (mde=False)"]
    assert edu["params"] == 16_016_844 and edu["gflops"] > 0 and edu["peak_mib"] > 0
    assert math.isclose(edu["sw_fp32_voxels_per_s"], 48**3 / edu["sw_fp32_s"])
    assert report["networks_2d"]["HEMF"]["train_ratio_to_densenet121"] > 0
    # share of the machine: achieved GFLOP/s over the matmul peak measured in the same run
    machine = report["machine"]
    assert machine["peak_fp32_gflops_per_s"] > 0 and machine["peak_bf16_gflops_per_s"] > 0
    for r in (unet, edu):
        assert math.isclose(r["forward_fp32_share_of_peak"],
                            r["forward_fp32_gflops_per_s"] / machine["peak_fp32_gflops_per_s"])
        assert math.isclose(r["train_fp32_share_of_peak"], r["train_gflops"] / r["train_step_s"]
                            / machine["peak_fp32_gflops_per_s"])
        # backward costs about twice the forward (input and weight gradients; the first layer's input needs none)
        assert 2.0 < r["train_gflops"] / r["gflops"] < 3.05
    with pytest.raises(RuntimeError, match="benchmark of networks.EDU failed: ValueError"):
        bn._run_isolated(bn._seg3d, ("networks.EDU", {}, bn.SETTINGS["quick"] | {"roi": (20, 20, 20)}, "cpu",
                                     (48, 48, 48)))
    table = bn.markdown(report)
    assert f"{machine['peak_fp32_gflops_per_s']:.0f} GFLOP/s in fp32" in table
    assert "| MONAI UNet |" in table and "| EDU (mde=False) | 16.02 M |" in table
    assert "| HEMF | classification |" in table


def test_pairwise_measures_multilabel_networks_and_ratios_to_the_baseline(monkeypatch):
    """The FRCU-Net vs SegResNet comparison path: 4 channels in, 3 sigmoid regions out, ratios to the baseline."""
    import queue

    import bench.pairwise as pw
    from bench.frcunet_vs_segresnet import NETWORKS

    assert NETWORKS["FRCUNet (bundle)"][1]["features"] == [16, 32, 64, 128, 256]  # read from the bundle's train.json
    setting = {"in_channels": 4, "out_channels": 3, "multilabel": True, "batch": 1, "train_patch": (32, 32, 32),
               "volume": (40, 40, 36), "roi": (32, 32, 32), "steps": 1}
    tiny = {
        "SegResNet": ("monai.networks.nets.SegResNet", {"spatial_dims": 3, "in_channels": 4, "out_channels": 3,
                                                        "init_filters": 8}),
        "FRCUNet": ("networks.FRCUNet", {"spatial_dims": 3, "in_channels": 4, "out_channels": 3,
                                         "features": [4, 8, 16, 32, 64], "freq_channels": 8,
                                         "gauss_kernel_sizes": [3]}),
    }

    class _InlineContext:  # run the measurement in this process instead of a spawned one
        Queue = queue.Queue

        class Process:
            def __init__(self, target, args):
                self.target, self.args = target, args

            def start(self):
                self.target(*self.args)

            def join(self):
                pass

    monkeypatch.setattr(pw.mp, "get_context", lambda _: _InlineContext)
    report = pw.run(tiny, setting, "SegResNet", threads=1, mode="test")
    base, frc = report["networks"]["SegResNet"], report["networks"]["FRCUNet"]
    assert base["train_step_ratio"] == base["sliding_window_ratio"] == base["peak_rss_ratio"] == 1.0
    assert math.isclose(frc["train_step_ratio"], frc["train_step_s"] / base["train_step_s"])
    assert math.isclose(frc["voxels_per_s"], 40 * 40 * 36 / frc["sliding_window_s"])
    from networks import FRCUNet

    expected = sum(p.numel() for p in FRCUNet(3, 4, 3, features=[4, 8, 16, 32, 64], freq_channels=8,
                                               gauss_kernel_sizes=[3]).parameters())
    assert frc["params"] == expected
    table = pw.markdown(report, "t")
    assert "| FRCUNet |" in table and "x SegResNet" in table and "4 x 32x32x32" in table
