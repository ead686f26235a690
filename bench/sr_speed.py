"""Inference speed and peak memory of the SE-ESRGAN generators, each configuration in a fresh process.

- 2D (ultrasound x4): the full Uneshance preset (``se_esrgan``: nf 64, gc 64, nb 24, 40.2 M parameters with RGB,
  40.17 M with one channel) and the CPU-sized configuration of ``bench/sr_quality.py`` (nf 32, gc 32, nb 4), on a
  grayscale LR image (64 x 64 for the full preset: one window; 128 x 128 for the CPU-sized one) through the bundle's
  sliding window (``sr_inferer``, 64 x 64 LR windows, overlap 0.25):
  seconds per megapixel of *output*.
- 3D (CT slice axis x2): the bundle default (nf 32, gc 16, nb 8) and the CPU-sized one (nf 16, gc 8, nb 2) on an
  LR volume through the sliding window (64 x 64 x 16 LR windows): seconds per *output* slice of the measured size,
  and scaled to a 512 x 512 slice (time is linear in the voxel count).

Each measurement runs ``python -m bench.sr_speed --child ...`` in its own process (one warm-up pass, then the
median of ``--repeats`` timed passes (default 1), fp32, ``torch.inference_mode``), and reads that process's
peak resident set size (``ru_maxrss``). Writes ``bench/results_sr_speed.json`` and ``bench/results_sr_speed.md``.

    python -m bench.sr_speed [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CONFIGS = {
    "2D se_esrgan full preset (nf 64, gc 64, nb 24)": {
        "dims": 2, "net": {"features": 64, "growth_channels": 64, "num_blocks": 24}, "scale": 4, "lr": [64, 64],
        "roi": [64, 64]},
    "2D CPU-sized (nf 32, gc 32, nb 4)": {
        "dims": 2, "net": {"features": 32, "growth_channels": 32, "num_blocks": 4}, "scale": 4, "lr": [128, 128],
        "roi": [64, 64]},
    "3D CT bundle default (nf 32, gc 16, nb 8)": {
        "dims": 3, "net": {"features": 32, "growth_channels": 16, "num_blocks": 8}, "scale": [1, 1, 2],
        "lr": [64, 64, 16], "roi": [64, 64, 16]},
    "3D CPU-sized (nf 16, gc 8, nb 2)": {
        "dims": 3, "net": {"features": 16, "growth_channels": 8, "num_blocks": 2}, "scale": [1, 1, 2],
        "lr": [128, 128, 16], "roi": [64, 64, 16]},
}
QUICK = {"2D CPU-sized (nf 32, gc 32, nb 4)": {"lr": [64, 64]},
         "3D CPU-sized (nf 16, gc 8, nb 2)": {"lr": [64, 64, 16]}}


def child(spec: dict, repeats: int) -> dict:
    import torch

    from networks.esrgan import se_esrgan
    from pipelines.transforms.sr import sr_inferer

    baseline_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # interpreter + torch + MONAI
    torch.manual_seed(0)
    # as the bundles ship it: the output added to the bicubic / trilinear interpolation of the input
    net = se_esrgan(spec["dims"], 1, 1, scale=spec["scale"], interpolation_skip="auto", **spec["net"]).eval()
    params = sum(p.numel() for p in net.parameters())
    x = torch.rand(1, 1, *spec["lr"])
    inferer = sr_inferer(roi_size=spec["roi"], sw_batch_size=1, overlap=0.25)
    times = []
    with torch.inference_mode():
        y = inferer(x, net)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            y = inferer(x, net)
            times.append(time.perf_counter() - start)
    out_shape = list(y.shape[2:])
    seconds = statistics.median(times)
    result = {"params": params, "lr_shape": spec["lr"], "out_shape": out_shape, "seconds": seconds,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "rss_after_imports_mib": baseline_mib,
              "threads": torch.get_num_threads()}
    if spec["dims"] == 2:
        result["s_per_output_mpx"] = seconds / (out_shape[0] * out_shape[1] / 1e6)
    else:
        slices = out_shape[2]
        result["s_per_output_slice"] = seconds / slices
        result["s_per_512x512_output_slice"] = seconds / slices * (512 * 512) / (out_shape[0] * out_shape[1])
    return result


def markdown(report: dict) -> str:
    lines = ["# SE-ESRGAN generator inference speed and memory (CPU, fp32, sliding window)", "",
             f"`python -m bench.sr_speed`, {report['threads']} torch threads, each row a fresh process; "
             f"machine: {report['machine']}; median of {report.get('repeats', 1)} timed pass(es). Generators as the "
             "bundles ship them (output added to the bicubic / trilinear interpolation of the input). Times depend on "
             "what else runs on the machine.", "",
             "| configuration | params | LR input | output | time | per output megapixel / slice | peak RSS | "
             "RSS after imports |", "|---|---:|---|---|---:|---|---:|---:|"]
    for name, r in report["results"].items():
        if "error" in r:
            lines.append(f"| {name} | | | | failed: {r['error']} | | |")
            continue
        per = (f"{r['s_per_output_mpx']:.1f} s / MP" if "s_per_output_mpx" in r else
               f"{r['s_per_output_slice']:.2f} s / slice ({r['out_shape'][0]}x{r['out_shape'][1]}); "
               f"{r['s_per_512x512_output_slice']:.1f} s per 512x512 slice")
        lines.append(f"| {name} | {r['params'] / 1e6:.2f} M | {'x'.join(map(str, r['lr_shape']))} | "
                     f"{'x'.join(map(str, r['out_shape']))} | {r['seconds']:.2f} s | {per} | "
                     f"{r['peak_rss_mib']:.0f} MiB | {r['rss_after_imports_mib']:.0f} MiB |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one 64 x 64 (x 16) LR window for every configuration")
    parser.add_argument("--only", nargs="*", help="configuration names (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(child(json.loads(args.child), args.repeats)))
        return
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"})
    results = {}
    for name, spec in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        spec = {**spec, **(QUICK.get(name, {}) if args.quick else {})}
        proc = subprocess.run([sys.executable, "-m", "bench.sr_speed", "--child", json.dumps(spec), "--threads",
                               str(args.threads), "--repeats", str(args.repeats)], cwd=REPO, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            results[name] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    import platform

    report = {"threads": args.threads, "machine": f"{platform.processor() or platform.machine()}, "
                                                  f"{os.cpu_count()} CPUs", "quick": args.quick,
              "repeats": args.repeats,
              "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results}
    sys.path.insert(0, str(REPO))
    from pipelines.io import write_json_atomic, write_text_atomic

    write_json_atomic(HERE / "results_sr_speed.json", report)
    write_text_atomic(HERE / "results_sr_speed.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
