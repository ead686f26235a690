"""bench/edu_vs_unet.py runs every E-DU skip pathway and both references, and reports the two readings' ratios
(shrunk to tiny widths and inputs: the timings themselves belong in bench/results_edu.md, not here)."""

from __future__ import annotations

import math

import pytest
import torch

import bench.edu_vs_unet as be

TINY = (4, 8, 8, 8, 8)


@pytest.fixture
def one_thread():
    """One torch thread, as the bench runs (two OpenMP threads on a shared, loaded core spin many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bench_reports_every_network_and_both_readings(monkeypatch, one_thread):
    tiny = {name: (target, {**kwargs, "features": TINY} if "EDU" in target else kwargs)
            for name, (target, kwargs) in be.NETWORKS.items()}
    tiny["MONAI UNet"] = ("monai.networks.nets.UNet", {"channels": TINY, "strides": (2, 2, 2, 2), "num_res_units": 1})
    tiny["MONAI BasicUNet"] = ("monai.networks.nets.BasicUNet", {"features": (4, 4, 8, 8, 8, 4)})
    monkeypatch.setattr(be, "NETWORKS", tiny)
    part = be.measure(2, 2, (32, 32), repeats=2, log=lambda s: None)
    assert list(part["networks"]) == list(tiny)
    for r in part["networks"].values():
        assert r["params"] > 0 and 0 < r["saved_mib"] and 0 < r["activation_peak_mib"] < r["step_peak_mib"]
        assert len(r["step_s"]) == 2 and r["step_median_s"] == sum(r["step_s"]) / 2
        params_mib = 4 * 4 * r["params"] / 2**20  # fp32 weights, gradients, Adam m and v
        assert math.isclose(r["step_peak_mib"], r["activation_peak_mib"] + params_mib)
    unet = part["networks"]["MONAI UNet"]
    assert unet["step_x_unet"] == 1.0 and unet["peak_x_unet"] == 1.0
    one, two = part["readings"].values()
    assert (one["with"], one["without"], two["with"], two["without"]) == (
        "E-DU mde", "E-DU plain", "E-DU dense_mde", "E-DU dense")
    nets = part["networks"]
    assert one["params_delta"] == nets["E-DU mde"]["params"] - nets["E-DU plain"]["params"] > 0
    assert math.isclose(two["step_peak_ratio"], nets["E-DU dense_mde"]["step_peak_mib"]
                        / nets["E-DU dense"]["step_peak_mib"])
    paired = [a / b for a, b in zip(nets["E-DU dense_mde"]["step_s"], nets["E-DU dense"]["step_s"])]
    assert [round(x, 9) for x in two["step_time_ratio_per_round"]] == [round(x, 9) for x in paired]
    assert math.isclose(two["step_time_ratio"], sum(paired) / 2) and two["rounds_faster"] == sum(x < 1 for x in paired)
    report = {"mode": "quick", "repeats": 2, "wall_s": 1.0, "spatial": {"2": part, "3": part},
              "machine": {"cpu": "x86_64", "threads": 1, "torch": "2"}}
    text = be.markdown(report)
    assert "| E-DU dense_mde |" in text
    assert "| reading 2: MDE in place of the nested dense blocks: E-DU dense_mde / E-DU dense |" in text
    assert text.count("## ") == 2 and "batch 2 x 32x32" in text
