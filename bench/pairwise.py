"""Two or more segmentation networks measured side by side in one run: training step, sliding window, peak memory.

Each network is built from a ``_target_`` and its arguments, and measured in its own fresh process (so that peak
resident memory is its own), one after the other, on the same machine and the same inputs. Results are reported as
absolute figures and as ratios to a baseline network of the same run. :mod:`bench.frcunet_vs_segresnet` is built on
it (:mod:`bench.edu_vs_unet` measures its networks in one process, interleaved, instead).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
import time
from collections.abc import Mapping


def _measure(target: str, kwargs: dict, setting: dict, threads: int, queue) -> None:
    import torch
    from monai.bundle import ConfigParser
    from monai.inferers import SlidingWindowInferer
    from monai.losses import DiceCELoss, DiceLoss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = ConfigParser({"net": {"_target_": target, **kwargs}}).get_parsed_content("net")
    params = sum(p.numel() for p in net.parameters())
    in_channels, out_channels = setting.get("in_channels", 1), setting.get("out_channels", 2)
    multilabel = setting.get("multilabel", False)  # sigmoid regions (BraTS) instead of softmax classes
    loss_fn = DiceLoss(sigmoid=True, squared_pred=True) if multilabel else DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.randn(setting["batch"], in_channels, *setting["train_patch"])
    y = (torch.rand(setting["batch"], out_channels if multilabel else 1, *setting["train_patch"]) > 0.95).float()
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
    volume = torch.randn(1, in_channels, *setting["volume"])
    inferer = SlidingWindowInferer(roi_size=setting["roi"], sw_batch_size=2, overlap=0.25, mode="gaussian")
    with torch.inference_mode():
        net(torch.randn(1, in_channels, *setting["roi"]))  # warm-up
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


def run(networks: Mapping[str, tuple[str, dict]], setting: dict, baseline: str, threads: int, mode: str) -> dict:
    """Measure every network of ``networks`` (name -> (``_target_``, kwargs)) with ``setting``; ratios to
    ``baseline``."""
    ctx = mp.get_context("spawn")
    results = {}
    for name, (target, kwargs) in networks.items():
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(target, kwargs, setting, threads, queue))
        proc.start()
        results[name] = queue.get()
        proc.join()
        print(f"{name}: {json.dumps({k: round(v, 3) for k, v in results[name].items()})}", flush=True)
    base = results[baseline]
    for r in results.values():
        r["train_step_ratio"] = r["train_step_s"] / base["train_step_s"]
        r["sliding_window_ratio"] = r["sliding_window_s"] / base["sliding_window_s"]
        r["peak_rss_ratio"] = r["peak_rss_mib"] / base["peak_rss_mib"]
    import torch

    return {
        "mode": mode,
        "baseline": baseline,
        "setting": {k: list(v) if isinstance(v, tuple) else v for k, v in setting.items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads,
                    "torch": torch.__version__, "device": "cpu"},
        "networks": results,
    }


def markdown(report: dict, title: str) -> str:
    s, base = report["setting"], report["baseline"]
    loss = "Dice (sigmoid regions)" if s.get("multilabel") else "DiceCE"
    lines = [
        f"# {title} ({report['mode']}, {report['machine']['threads']} CPU threads, torch {report['machine']['torch']})",
        "",
        f"Training step: Adam + {loss}, batch {s['batch']} x {s.get('in_channels', 1)} x "
        f"{'x'.join(map(str, s['train_patch']))}, fp32. Sliding window: {'x'.join(map(str, s['volume']))} volume, "
        f"{'x'.join(map(str, s['roi']))} windows, overlap 0.25, Gaussian, sw_batch_size 2, fp32, inference_mode. "
        f"Ratios are to {base} in the same run (lower is faster or smaller).",
        "",
        f"| network | params | train step (s) | x {base} | sliding window (s) | x {base} | voxels/s | "
        f"peak RSS (MiB) | x {base} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["networks"].items():
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f} M | {r['train_step_s']:.2f} | {r['train_step_ratio']:.2f} | "
            f"{r['sliding_window_s']:.2f} | {r['sliding_window_ratio']:.2f} | {r['voxels_per_s']:.3g} | "
            f"{r['peak_rss_mib']:.0f} | {r['peak_rss_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(doc: str, networks: Mapping[str, tuple[str, dict]], settings: Mapping[str, dict], baseline: str,
         title: str, results_stem: str, argv: list[str] | None = None) -> dict:
    """Command line of a comparison: ``[--quick] [--threads N]``; writes ``bench/<results_stem>.json`` and ``.md``."""
    import argparse
    from pathlib import Path

    from pipelines.io import write_json_atomic, write_text_atomic

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, finishes in a few minutes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    report = run(networks, settings[mode], baseline, args.threads, mode)
    here = Path(__file__).resolve().parent
    write_json_atomic(here / f"{results_stem}.json", report)
    write_text_atomic(here / f"{results_stem}.md", markdown(report, title))
    print(markdown(report, title))
    return report
