"""The benchmark runs and reports ratios to MONAI UNet (shrunk to tiny inputs: timings belong in bench/, not here)."""

from __future__ import annotations

import math

import pytest

import bench.networks as bn


def test_quick_bench_reports_every_figure_on_tiny_inputs(monkeypatch, tmp_path):
    monkeypatch.setattr(bn, "VOLUME", (48, 48, 48))
    monkeypatch.setitem(bn.SETTINGS, "quick", {"roi": (32, 32, 32), "batch": 1, "steps": 1, "sw_batch": 1,
                                               "overlap": 0.25, "estimate_sw": True})
    monkeypatch.setitem(bn.NET2D, "HEMF", ("networks.HEMF", {"spatial_dims": 2, "in_channels": 3, "num_classes": 7,
                                                              "widths": (8, 16, 32, 64), "num_heads": 2,
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
    assert edu["params"] == 16_017_324 and edu["gflops"] > 0 and edu["peak_mib"] > 0
    assert math.isclose(edu["sw_fp32_voxels_per_s"], 48**3 / edu["sw_fp32_s"])
    assert report["networks_2d"]["HEMF"]["train_ratio_to_densenet121"] > 0
    with pytest.raises(RuntimeError, match="benchmark of networks.EDU failed: ValueError"):
        bn._run_isolated(bn._seg3d, ("networks.EDU", {}, bn.SETTINGS["quick"] | {"roi": (20, 20, 20)}, "cpu",
                                     (48, 48, 48)))
    table = bn.markdown(report)
    assert "| MONAI UNet |" in table and "| EDU (mde=False) | 16.02 M |" in table and "| HEMF | classification |" in table
