"""bench/ct_volume.py on a tiny CT (a budget of 0 minutes: extrapolated; a large one: finished), and bench/gpu.sh's
refusal without a GPU (the GPU run itself is not testable here). Timings belong in bench/results_ct_volume.md."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch

import bench.ct_volume as cv

REPO = Path(__file__).resolve().parents[2]


def test_ct_volume_extrapolates_an_unfinished_configuration_and_gpu_script_refuses_without_cuda(tmp_path):
    threads = torch.get_num_threads()
    # pixdim = the scan's spacing: resampling keeps the grid (the preprocessing's crop to the body may shrink it)
    overrides = {"features": [4, 8, 16, 32, 64], "patch_size": [32, 32, 32], "pixdim": [0.7, 0.7, 1.25]}
    try:
        cut = cv.run((48, 40, 36), max_minutes=0, only=["E-DU fp32"], overrides=overrides, isolate=False,
                     work=tmp_path, echo=lambda s: None)
        done = cv.run((48, 40, 36), max_minutes=60, only=["MONAI UNet fp32"], overrides=overrides, isolate=False,
                      work=tmp_path, echo=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    edu, unet = cut["configurations"]["E-DU fp32"], done["configurations"]["MONAI UNet fp32"]
    assert cut["scan"]["size"] == [48, 40, 36] and cut["scan"]["spacing"] == [0.7, 0.7, 1.25]
    for r in (edu, unet):
        assert r["ok"] and r["output_size"] == [48, 40, 36]  # the prediction is back on the input's grid
        # every axis is 33-48 voxels long: 32-voxel windows at overlap 0.5 (interval 16) start at 0 and n - 32
        assert all(32 < n <= 48 for n in r["preprocessed_size"])
        assert r["windows"] == 8 and r["sw_batch_size"] == 2 and r["peak_rss_mib"] > 0
    # budget 0: the first pass of 2 windows runs, the other 6 are stitched as zeros and counted at its rate
    assert (edu["windows_run"], edu["windows_skipped"], edu["extrapolated"]) == (2, 6, True)
    assert math.isclose(edu["network_s_full"], edu["network_s"] * 8 / 2)
    assert math.isclose(edu["wall_s_full"], edu["wall_s"] + 6 * edu["network_s"] / 2)
    assert (unet["windows_run"], unet["windows_skipped"], unet["extrapolated"]) == (8, 0, False)
    assert unet["network_s_full"] == unet["network_s"] and unet["wall_s_full"] == unet["wall_s"]
    assert 0 < unet["network_s"] < unet["inferer_s"] <= unet["wall_s"]
    # the override swapped the network in: the parameters of MONAI's UNet and of the narrowed E-DU, built here
    from monai.networks.nets import UNet

    from networks import EDU

    expected_unet = UNet(3, 1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    assert unet["params"] == sum(p.numel() for p in expected_unet.parameters())
    assert edu["params"] == sum(p.numel() for p in EDU(3, 1, 2, features=(4, 8, 16, 32, 64)).parameters())
    ratio = cv.ratios({**cut["configurations"], **done["configurations"]})["E-DU / MONAI UNet, fp32"]
    assert ratio["extrapolated"] and math.isclose(ratio["wall"], edu["wall_s_full"] / unet["wall_s_full"])
    table = cv.markdown({**cut, "configurations": {**cut["configurations"], **done["configurations"]},
                         "ratios": {"E-DU / MONAI UNet, fp32": ratio}})
    edu_row = next(ln for ln in table.splitlines() if ln.startswith("| E-DU fp32 |"))
    unet_row = next(ln for ln in table.splitlines() if ln.startswith("| MONAI UNet fp32 |"))
    assert "| 2 / 8 |" in edu_row and edu_row.count("(extrapolated)") == 2 and "extrapolated" not in unet_row
    assert "| E-DU / MONAI UNet, fp32 (extrapolated) |" in table and "target < 12 GiB: met" in table
    assert not list(tmp_path.iterdir())  # the CT and the bundle copy are removed

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "GPU_OUT": str(tmp_path / "out"),
           "GPU_WORK": str(tmp_path / "w")}
    gpu = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh")], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert gpu.returncode == 1 and gpu.stdout == ""
    assert len(gpu.stderr.splitlines()) == 1 and "no CUDA device (torch.cuda.is_available() is False" in gpu.stderr
    assert not list(tmp_path.iterdir())  # refused before any step: no output or work folder
