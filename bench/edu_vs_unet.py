"""E-DU against MONAI's UNet of a similar parameter count: training step and sliding-window inference, same run.

Each network is measured in its own fresh process (so that peak resident memory is its own), one after the other,
on the same machine and the same inputs. Reported as absolute figures and as ratios to MONAI ``UNet``.

    python -m bench.edu_vs_unet            # full: batch 2 x 96^3 steps, 192x192x160 volume, 96^3 windows
    python -m bench.edu_vs_unet --quick    # batch 2 x 64^3 steps, 128x128x96 volume, 64^3 windows

Writes ``bench/results_edu.json`` and ``bench/results_edu.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

NETWORKS = {
    "EDU": ("networks.EDU", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}),
    "EDU (mde=False)": ("networks.EDU", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "mde": False}),
    "MONAI UNet": ("monai.networks.nets.UNet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                                "channels": (32, 64, 128, 256, 512), "strides": (2, 2, 2, 2),
                                                "num_res_units": 2}),
}
SETTINGS = {
    "full": {"train_patch": (96, 96, 96), "batch": 2, "volume": (192, 192, 160), "roi": (96, 96, 96), "steps": 3},
    "quick": {"train_patch": (64, 64, 64), "batch": 2, "volume": (128, 128, 96), "roi": (64, 64, 64), "steps": 2},
}


def _measure(target: str, kwargs: dict, setting: dict, threads: int, queue) -> None:
    import torch
    from monai.bundle import ConfigParser
    from monai.inferers import SlidingWindowInferer
    from monai.losses import DiceCELoss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = ConfigParser({"net": {"_target_": target, **kwargs}}).get_parsed_content("net")
    params = sum(p.numel() for p in net.parameters())
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.randn(setting["batch"], 1, *setting["train_patch"])
    y = (torch.rand(setting["batch"], 1, *setting["train_patch"]) > 0.95).float()
    step_times = []
    net.train()
    for i in range(setting["steps"] + 1):  # the first step warms up
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
        if i:
            step_times.append(time.perf_counter() - start)
    train_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    net.eval()
    volume = torch.randn(1, 1, *setting["volume"])
    inferer = SlidingWindowInferer(roi_size=setting["roi"], sw_batch_size=2, overlap=0.25, mode="gaussian")
    with torch.inference_mode():
        net(torch.randn(1, 1, *setting["roi"]))  # warm-up
        start = time.perf_counter()
        inferer(volume, net)
        sw_time = time.perf_counter() - start
    queue.put({
        "params": params,
        "train_step_s": sum(step_times) / len(step_times),
        "sliding_window_s": sw_time,
        "voxels_per_s": float(torch.tensor(setting["volume"]).prod()) / sw_time,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_peak_rss_mib": train_rss,
    })


def run(quick: bool, threads: int) -> dict:
    setting = SETTINGS["quick" if quick else "full"]
    ctx = mp.get_context("spawn")
    results = {}
    for name, (target, kwargs) in NETWORKS.items():
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(target, kwargs, setting, threads, queue))
        proc.start()
        results[name] = queue.get()
        proc.join()
        print(f"{name}: {json.dumps({k: round(v, 3) for k, v in results[name].items()})}", flush=True)
    base = results["MONAI UNet"]
    for r in results.values():
        r["train_step_ratio_to_unet"] = r["train_step_s"] / base["train_step_s"]
        r["sliding_window_ratio_to_unet"] = r["sliding_window_s"] / base["sliding_window_s"]
    import torch

    return {
        "mode": "quick" if quick else "full",
        "setting": {k: list(v) if isinstance(v, tuple) else v for k, v in setting.items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads,
                    "torch": torch.__version__, "device": "cpu"},
        "networks": results,
    }


def markdown(report: dict) -> str:
    s = report["setting"]
    lines = [
        f"# E-DU vs MONAI UNet ({report['mode']}, {report['machine']['threads']} CPU threads, torch "
        f"{report['machine']['torch']})",
        "",
        f"Training step: Adam + DiceCE, batch {s['batch']} x {'x'.join(map(str, s['train_patch']))}, fp32. "
        f"Sliding window: {'x'.join(map(str, s['volume']))} volume, {'x'.join(map(str, s['roi']))} windows, "
        "overlap 0.25, Gaussian, sw_batch_size 2, fp32, inference_mode.",
        "",
        "| network | params | train step (s) | ratio to UNet | sliding window (s) | ratio to UNet | voxels/s | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["networks"].items():
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f} M | {r['train_step_s']:.2f} | {r['train_step_ratio_to_unet']:.2f} | "
            f"{r['sliding_window_s']:.2f} | {r['sliding_window_ratio_to_unet']:.2f} | {r['voxels_per_s']:.3g} | "
            f"{r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, finishes in a few minutes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    report = run(args.quick, args.threads)
    from pipelines.io import write_json_atomic, write_text_atomic

    write_json_atomic(HERE / "results_edu.json", report)
    write_text_atomic(HERE / "results_edu.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
