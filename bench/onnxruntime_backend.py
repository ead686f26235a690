"""ONNX Runtime against PyTorch eager fp32 and the bf16 fast path, per window, on the shipped networks, in one run.

    python -m bench.onnxruntime_backend [--threads 2] [--networks lung brats isic] [--repeats 2] [--quick]

For each shipped network (seeded random weights: speed does not depend on them), on windows of its bundle's inference
size: the forward-pass latency per window at batch 1 and at the batch the bundle's inferer uses on a CPU (the
sliding window's planned ``sw_batch_size``; 1 for the whole-image ``SimpleInferer``), in

* **eager fp32**: ``python -m pipelines infer --precision fp32`` (the CPU default);
* **bf16 fast path**: ``--precision bf16``, bf16 autocast with the network in channels-last
  (:class:`pipelines.inferers.ChannelsLast`), as ``bench/fast_inference.py`` measures it;
* **ONNX Runtime fp32**: ``--backend onnxruntime``, the network exported by :func:`pipelines.inferers.export_onnx`
  and run by :class:`pipelines.inferers.OnnxRuntimeNetwork` (``CPUExecutionProvider``, ``--threads`` intra-op
  threads), the export time reported apart.

Each variant and batch size gets one warm-up call (oneDNN and ONNX Runtime prepare their kernels per shape), whose
output at the inferer's batch is compared with eager fp32's (largest absolute difference, and relative to eager's
largest magnitude). Then ``--repeats`` rounds time every variant once per batch size, interleaved (eager, fast path,
ONNX Runtime, eager, ...), and each latency is the best of its rounds: on a machine shared with other work the load
changes over minutes, and interleaving plus the minimum keeps it from favouring whichever variant ran in a quiet
spell. The load average before and after is recorded. ``--quick`` uses small windows (a check that the script runs).

Writes ``bench/results_onnxruntime.json`` and ``bench/results_onnxruntime.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLES = HERE.parent / "bundles"

#: name -> (bundle folder, what the bundle's inferer runs on)
NETWORKS = {
    "lung": ("lung_nodule_ct_edu_segmentation", "E-DU, 3D CT, sliding window"),
    "brats": ("brats_mri_frcunet_segmentation", "FRCU-Net, 3D MRI, sliding window"),
    "isic": ("isic_skin_frcunet_segmentation", "FRCU-Net, 2D dermoscopy, whole image"),
}
VARIANTS = ("eager fp32", "bf16 fast path", "onnxruntime fp32")
QUICK_WINDOW = {3: (32, 32, 32), 2: (64, 64)}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"))


def shipped_network(bundle: Path):
    """The bundle's inference ``network_def`` at its shipped settings with seeded random weights, its window
    ``(C, *spatial)`` and the batch its inferer runs on a CPU."""
    import json

    import torch

    from pipelines.bundle import build_network, bundle_parser
    from pipelines.inferers import CPU_SW_BATCH_SIZE

    parser = bundle_parser(bundle, "inference")
    torch.manual_seed(0)
    network = build_network(bundle, "inference", parser=parser).eval()
    inferer = parser.get("inferer", {})
    target = str(inferer.get("_target_", "")) if isinstance(inferer, dict) else ""
    channels = int(parser.get_parsed_content("network_def#in_channels"))
    if "roi_size" in (inferer if isinstance(inferer, dict) else {}):
        spatial = [int(s) for s in parser.get_parsed_content("inferer#roi_size")]
        batch = parser.get_parsed_content("sw_batch_size") if "sw_batch_size" in parser else CPU_SW_BATCH_SIZE
        batch = CPU_SW_BATCH_SIZE if isinstance(batch, str) else int(batch)  # "auto": the CPU plan
    else:  # SimpleInferer: the whole (resized) image, one at a time
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        spatial = [int(s) for s in next(iter(meta["network_data_format"]["inputs"].values()))["spatial_shape"]]
        batch = 1
    return network, (channels, *spatial), batch, target.rsplit(".", 1)[-1] or "inferer"


def bench_network(name: str, threads: int, repeats: int, quick: bool, workdir: Path) -> dict:
    import torch

    from pipelines.inferers import ChannelsLast, OnnxRuntimeNetwork, export_onnx

    load_start = os.getloadavg()[0]
    folder, what = NETWORKS[name]
    network, window, batch, inferer = shipped_network(BUNDLES / folder)
    dims = len(window) - 1
    if quick:
        window = (window[0], *QUICK_WINDOW[dims])
    x = torch.rand((max(batch, 1), *window), generator=torch.Generator().manual_seed(1))
    fast = ChannelsLast(copy.deepcopy(network), dims).eval()

    def eager(t):
        with torch.inference_mode():
            return network(t).float()

    def fast_path(t):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return fast(t).float()

    start = time.perf_counter()
    onnx_path = export_onnx(network, workdir / f"{name}.onnx", (2, *window))  # checked against eager at batch 1
    export_seconds = time.perf_counter() - start
    session = OnnxRuntimeNetwork(onnx_path, threads=threads)

    def ort(t):
        return session(t)

    runs = {"eager fp32": eager, "bf16 fast path": fast_path, "onnxruntime fp32": ort}
    inputs = {1: x[:1], batch: x}  # one entry when the inferer's batch is 1
    outputs = {}
    for variant in VARIANTS:  # warm-up of every variant at every shape; its outputs are the ones compared
        for size, t in inputs.items():
            outputs[variant, size] = runs[variant](t)
    seconds: dict = {(v, size): [] for v in VARIANTS for size in inputs}
    for _ in range(repeats):  # interleaved rounds
        for size, t in inputs.items():
            for variant in VARIANTS:
                start = time.perf_counter()
                runs[variant](t)
                seconds[variant, size].append((time.perf_counter() - start) / size)
    report: dict = {}
    reference = outputs["eager fp32", batch]
    scale = float(reference.abs().max())
    for variant in VARIANTS:
        diff = float((outputs[variant, batch] - reference).abs().max())
        report[variant] = {"batch1_seconds_per_window": min(seconds[variant, 1]),
                           "batch_seconds_per_window": min(seconds[variant, batch]),
                           "rounds_seconds_per_window": {str(size): seconds[variant, size] for size in inputs},
                           "max_abs_diff_vs_eager": diff, "relative_diff_vs_eager": diff / scale if scale else 0.0}
        r = report[variant]
        print(f"  {name} {variant}: {r['batch1_seconds_per_window']:.3f} s/window at batch 1, "
              f"{r['batch_seconds_per_window']:.3f} at batch {batch}, max |diff| {diff:.2g}", flush=True)
    base = report["eager fp32"]
    for r in report.values():
        r["speedup_vs_eager_batch1"] = base["batch1_seconds_per_window"] / r["batch1_seconds_per_window"]
        r["speedup_vs_eager_batch"] = base["batch_seconds_per_window"] / r["batch_seconds_per_window"]
    return {"bundle": folder, "what": what, "inferer": inferer, "window": list(window), "batch": batch,
            "parameters": sum(p.numel() for p in network.parameters()), "export_seconds": export_seconds,
            "onnx_mib": onnx_path.stat().st_size / 2**20, "loadavg_1min": [load_start, os.getloadavg()[0]],
            "variants": report}


def _markdown(result: dict) -> str:
    env = result["environment"]
    lines = ["# ONNX Runtime backend vs eager fp32 and the bf16 fast path", "",
             f"One run on {env['cpu']} ({', '.join(env['cpu_flags']) or 'no AVX-512 flags'}; "
             f"{env['cpu_count']} cores), torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
             f"{env['torch_threads']} torch threads = ONNX Runtime intra-op threads"
             + (", quick (small windows)" if env["quick"] else "") + ".",
             f"Load average before {env['loadavg_before'][0]:.2f}, after {env['loadavg_after'][0]:.2f} (1 min): "
             + ("other work was running on this machine during the run, so absolute times are inflated; the ratios "
                "between variants, measured back to back, are what to compare."
                if env["other_work_running"] else "the machine was otherwise idle."),
             "", "Per-window forward latency in seconds: one warm-up call per variant and shape, then the best of "
             f"{env['repeats']} interleaved rounds; shipped widths, seeded random weights. Speed-up: eager fp32 time / "
             "variant time; difference: largest |variant - eager fp32| over the output at the inferer's batch "
             "(relative: divided by eager's largest |output|).", ""]
    for name, r in result["networks"].items():
        shape = " x ".join(map(str, r["window"][1:]))
        lines += [f"## {name}: {r['what']} ({r['bundle']})", "",
                  f"{r['parameters'] / 1e6:.2f} M parameters, window {r['window'][0]} x {shape}, inferer batch "
                  f"{r['batch']} ({r['inferer']}); ONNX export {r['export_seconds']:.1f} s, {r['onnx_mib']:.1f} MiB; "
                  f"load average {r['loadavg_1min'][0]:.1f} at the start, {r['loadavg_1min'][1]:.1f} at the end.",
                  ""]
        many = r["batch"] > 1  # else the inferer's batch is the batch-1 column
        lines += ["| variant | s/window, batch 1 | speed-up |"
                  + (f" s/window, batch {r['batch']} | speed-up |" if many else "") + " max abs diff | relative |",
                  "|---|---:|---:|" + ("---:|---:|" if many else "") + "---:|---:|"]
        for variant, v in r["variants"].items():
            lines.append(f"| {variant} | {v['batch1_seconds_per_window']:.3f} | {v['speedup_vs_eager_batch1']:.2f} | "
                         + (f"{v['batch_seconds_per_window']:.3f} | {v['speedup_vs_eager_batch']:.2f} | "
                            if many else "")
                         + f"{v['max_abs_diff_vs_eager']:.2g} | {v['relative_diff_vs_eager']:.2g} |")
        lines.append("")
    lines += ["## Which backend is faster here", "", result["verdict"], ""]
    return "\n".join(lines)


def _verdict(networks: dict) -> str:
    parts = []
    for name, r in networks.items():
        v = r["variants"]
        ort, fast = v["onnxruntime fp32"]["speedup_vs_eager_batch"], v["bf16 fast path"]["speedup_vs_eager_batch"]
        best = max(v, key=lambda k: v[k]["speedup_vs_eager_batch"])
        parts.append(f"{name}: ONNX Runtime fp32 {ort:.2f}x eager fp32, bf16 fast path {fast:.2f}x, fastest "
                     f"{best} (ONNX Runtime / fast path time: {fast / ort:.2f})")
    return "At the inferer's batch: " + "; ".join(parts) + "."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch threads and ONNX Runtime intra-op threads (default: 2, or the cores)")
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved timed rounds; each latency is the best of them (default 2)")
    parser.add_argument("--quick", action="store_true", help="small windows: a check that the script runs")
    parser.add_argument("--out", default=str(HERE / "results_onnxruntime"),
                        help="results path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")

    import onnxruntime
    import torch

    from pipelines.io import write_json_atomic, write_text_atomic

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.time()
    networks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.networks:
            print(f"{name}: {NETWORKS[name][1]}", flush=True)
            networks[name] = bench_network(name, args.threads, args.repeats, args.quick, Path(tmp))
    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    environment = {
        "cpu": _cpu(), "cpu_flags": _cpu_flags(), "cpu_count": cores, "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__, "threads": args.threads, "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats, "quick": args.quick, "loadavg_before": list(load_before),
        "loadavg_after": list(load_after),
        # before the run this process is idle, so any load is other work; afterwards the load includes this run's
        # `threads` busy threads
        "other_work_running": load_before[0] > 0.5 or load_after[0] > args.threads + 0.5,
        "seconds": time.time() - start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    result = {"environment": environment, "networks": networks, "verdict": _verdict(networks)}
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), result)
    write_text_atomic(out.with_suffix(".md"), _markdown(result))
    print(_markdown(result), f"\n({environment['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
