"""The GPU steps of ``bench/gpu.sh`` that have no CPU bench of their own, and the report that gathers every step.

    python -m bench.gpu fast-inference --out bench/results_gpu     # --bundle/--data: the demo's (demo_run/...)
    python -m bench.gpu train --work /tmp/gpu_bench --out bench/results_gpu [--size small|full] [--cases 8]
    python -m bench.gpu report --out bench/results_gpu --md bench/results_gpu.md

``fast-inference``: :func:`bench.fast_inference.run` (every variant of ``BundleInferer`` over the demo's held-out
scans, Dice drift against fp32) on the bundle's device, CUDA; and the forward pass of the shipped lung E-DU on a batch
of its windows on CUDA in fp32, TF32, fp16 and bf16 autocast, each with and without channels-last
(``bench.fast_inference.run_network`` times it on the CPU only).

``train``: one epoch of each segmentation bundle (lung E-DU, BraTS FRCU-Net, ISIC FRCU-Net) on synthetic data in
the real layout, through ``python -m monai.bundle run training`` with the shipped ``train.json`` and AMP on
(``--amp True``); where the bundle validates with MONAI's sliding window, it is replaced by
:class:`pipelines.inferers.AutoSlidingWindowInferer` (windows per pass and stitching device planned for the GPU, the
volume on the GPU). The project's training caches on disk (``DiskCacheDataset``); there is no ``ToDeviced`` GPU cache
to switch on.

``report``: ``bench/results_gpu.md`` from the step table ``steps.tsv`` that ``bench/gpu.sh`` keeps and each step's
JSON in the output folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUNDLES = REPO / "bundles"
#: bundle -> the ``python -m pipelines synth`` layout of its data
SEGMENTATION_BUNDLES = {"lung_nodule_ct_edu_segmentation": "luna16", "brats_mri_frcunet_segmentation": "brats",
                        "isic_skin_frcunet_segmentation": "isic-seg"}
#: forward variants on CUDA: (autocast dtype or None, TF32 matmuls/convolutions, channels-last)
CUDA_VARIANTS = {
    "fp32": (None, False, False), "fp32 + TF32": (None, True, False), "fp16 autocast": ("float16", False, False),
    "bf16 autocast": ("bfloat16", False, False), "fp16 autocast + channels-last": ("float16", False, True),
    "bf16 autocast + channels-last (fast path)": ("bfloat16", False, True),
}


def train_config_files(bundle: Path) -> list[str]:
    """The config files of a bundle's ``training`` workflow, in merge order."""
    from bench.ct_volume import bundle_config_files

    return bundle_config_files(bundle, "train")


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu: no CUDA device (torch.cuda.is_available() is False)")


def network_forward_cuda(windows: int = 4, repeats: int = 5) -> dict:
    """Forward time of the shipped lung E-DU on ``windows`` windows of its patch size on CUDA, per variant."""
    import torch
    from monai.bundle import ConfigParser

    from pipelines.inference import ChannelsLast

    bundle = BUNDLES / "lung_nodule_ct_edu_segmentation"
    parser = ConfigParser()
    parser.read_config(train_config_files(bundle))
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cuda')"})
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").cuda().eval()
    x = torch.randn(windows, 1, *parser.get_parsed_content("patch_size"), device="cuda")
    report, reference = {}, None
    for name, (dtype, tf32, channels_last) in CUDA_VARIANTS.items():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        net = ChannelsLast(copy.deepcopy(network), 3) if channels_last else network
        with torch.inference_mode(), torch.autocast("cuda", dtype=getattr(torch, dtype or "float16"),
                                                    enabled=dtype is not None):
            net(x)  # warm-up (cuDNN picks its algorithms)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for _ in range(repeats):
                y = net(x).float()
            torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / repeats
        reference = y if reference is None else reference
        report[name] = {"seconds": seconds, "max_abs_logit_diff": float((y - reference).abs().max()),
                        "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    base = report["fp32"]["seconds"]
    for r in report.values():
        r["speedup_vs_fp32"] = base / r["seconds"]
    return {"windows": windows, "patch_size": list(x.shape[2:]), "gpu": torch.cuda.get_device_name(),
            "parameters": sum(p.numel() for p in network.parameters()), "variants": report}


def fast_inference(bundle: Path, data: Path, out: Path) -> dict:
    from bench.fast_inference import run

    from pipelines.io import write_json_atomic

    require_cuda()
    report = {"pipeline": run(bundle, data), "network": network_forward_cuda()}
    write_json_atomic(out / "fast_inference.json", report)
    return report


def _synth(layout: str, out: Path, size: str, cases: int) -> None:
    command = [sys.executable, "-m", "pipelines", "synth", layout, "--out", str(out), "--cases", str(cases)]
    if layout in ("luna16", "brats"):
        command += ["--size", size]
    subprocess.run(command, check=True)


def training_overrides(bundle: Path) -> dict:
    """Command-line overrides of one GPU epoch: AMP on, one epoch, and the planned sliding window for validation."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(train_config_files(bundle))
    overrides = {"max_epochs": 1, "amp": True}
    target = parser.get("validate#inferer#_target_", "") if "validate#inferer" in parser else ""
    if "SlidingWindow" in str(target):
        overrides.update({"validate#inferer#_target_": "pipelines.inferers.AutoSlidingWindowInferer",
                          "validate#inferer#sw_batch_size": "auto", "validate#inferer#device": "auto"})
    return overrides


def train(work: Path, out: Path, size: str = "small", cases: int = 8, bundles: list[str] | None = None,
          extra: dict[str, dict] | None = None) -> dict:
    """One epoch of every bundle of :data:`SEGMENTATION_BUNDLES` (or ``bundles``) on CUDA; see the module docstring.
    ``extra``: more command-line overrides per bundle."""
    from pipelines.io import write_json_atomic

    require_cuda()
    report = {}
    for name, layout in SEGMENTATION_BUNDLES.items():
        if bundles and name not in bundles:
            continue
        bundle = BUNDLES / name
        data, root, log = work / "data" / name, work / "bundles" / name, work / f"train_{name}.log"
        if not data.exists():
            _synth(layout, data, size, cases)
        root.mkdir(parents=True, exist_ok=True)
        overrides = {**training_overrides(bundle), **(extra or {}).get(name, {})}
        configs = bundle / "configs"
        command = [sys.executable, "-m", "monai.bundle", "run", "training",
                   "--meta_file", str(configs / "metadata.json"),
                   "--config_file", json.dumps(train_config_files(bundle)),
                   "--logging_file", str(configs / "logging.conf"), "--bundle_root", str(root),
                   "--dataset_dir", str(data), "--show_progress", "False"]
        for key, value in overrides.items():
            command += [f"--{key}", value if isinstance(value, str) else repr(value)]  # fire reads Python literals
        start = time.perf_counter()
        with log.open("w") as f:
            proc = subprocess.run(command, cwd=work, stdout=f, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
        lines = log.read_text(errors="replace").splitlines()
        metrics = [ln.split(" - ")[-1].strip() for ln in lines if "Metrics --" in ln]
        plans = [ln.split(" - ")[-1].strip() for ln in lines if "sliding window: " in ln]
        report[name] = {"returncode": proc.returncode, "seconds": seconds, "data": f"{cases} {layout} ({size})",
                        "overrides": overrides, "metrics": metrics[-2:], "sliding_window_plan": plans[-1:],
                        "log": str(log),
                        "tail": "\n".join(lines[-15:]) if proc.returncode else ""}
        print(f"bench.gpu: {name}: exit {proc.returncode}, {seconds:.0f} s", flush=True)
    write_json_atomic(out / "training.json", report)
    if any(r["returncode"] for r in report.values()):
        raise SystemExit(f"bench.gpu: a training failed, see {out / 'training.json'}")
    return report


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def report_markdown(out: Path) -> str:
    """``results_gpu.md`` from what the steps left in ``out``."""
    machine = _read(out / "machine.json") or {}
    lines = ["# GPU benchmark (`bench/gpu.sh`)", "",
             f"{machine.get('gpu', 'GPU ?')}, CUDA {machine.get('cuda', '?')}, torch {machine.get('torch', '?')}, "
             f"{machine.get('cpus', '?')} CPU cores; {machine.get('date', '')}.", "",
             "| step | exit | seconds |", "|---|---:|---:|"]
    steps = out / "steps.tsv"
    if steps.is_file():
        for row in steps.read_text().splitlines():
            name, rc, seconds = (row.split("\t") + ["", "", ""])[:3]
            lines.append(f"| {name} | {rc} | {seconds} |")
    networks = out / "results.md"
    if networks.is_file():
        lines += ["", "## Network bench (`python -m bench.networks --device cuda`)", "",
                  networks.read_text().split("\n", 2)[-1].strip()]
    fast = _read(out / "fast_inference.json")
    if fast:
        lines += ["", "## Fast inference (`bench.fast_inference.run` on CUDA)", "",
                  "| variant | sliding window s | speed-up | end to end s | speed-up | mean Dice | Dice drift vs fp32 "
                  "|", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in fast["pipeline"].items():
            lines.append(f"| {name} | {r['inferer_seconds']:.2f} | {r['inferer_speedup_vs_fp32']:.2f} | "
                         f"{r['seconds']:.2f} | {r['speedup_vs_fp32']:.2f} | {r['mean_dice']:.4f} | "
                         f"{r['dice_drift_vs_fp32']:.4f} |")
        n = fast["network"]
        lines += ["", f"Shipped E-DU alone on {n['gpu']}, {n['windows']} windows of "
                  f"{' x '.join(map(str, n['patch_size']))}:", "",
                  "| variant | seconds | speed-up | largest logit difference to fp32 | peak GiB |",
                  "|---|---:|---:|---:|---:|"]
        for name, r in n["variants"].items():
            lines.append(f"| {name} | {r['seconds']:.4f} | {r['speedup_vs_fp32']:.2f} | "
                         f"{r['max_abs_logit_diff']:.2g} | {r['peak_gib']:.2f} |")
    ct = out / "results_ct_volume.md"
    if ct.is_file():
        lines += ["", "## Whole CT (`python -m bench.ct_volume --device cuda`)", "",
                  ct.read_text().split("\n", 2)[-1].strip()]
    training = _read(out / "training.json")
    if training:
        lines += ["", "## One epoch of each segmentation bundle (`monai.bundle run training`, AMP)", "",
                  "| bundle | data | exit | seconds | epoch metrics | validation sliding window |",
                  "|---|---|---:|---:|---|---|"]
        for name, r in training.items():
            lines.append(f"| {name} | {r['data']} | {r['returncode']} | {r['seconds']:.0f} | "
                         f"{'<br>'.join(m.replace('|', '/') for m in r['metrics'])} | "
                         f"{' '.join(r.get('sliding_window_plan') or ['-'])} |")
    return "\n".join(lines) + "\n"


def machine(out: Path) -> None:
    import datetime
    import os

    import torch

    from pipelines.io import write_json_atomic

    require_cuda()
    write_json_atomic(out / "machine.json", {
        "gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda, "torch": torch.__version__,
        "cpus": os.cpu_count(), "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("machine", "fast-inference", "train", "report"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, help="folder of the steps' results")
        if name == "fast-inference":
            p.add_argument("--bundle", default="demo_run/lung_nodule_ct_edu_segmentation")
            p.add_argument("--data", default="demo_run/data/LUNA16-test")
        if name == "train":
            p.add_argument("--work", required=True, help="folder for the synthetic data, bundle roots and logs")
            p.add_argument("--size", choices=["small", "full"], default="small",
                           help="LUNA16 and BraTS data size (pipelines synth --size)")
            p.add_argument("--cases", type=int, default=8)
        if name == "report":
            p.add_argument("--md", default=str(HERE / "results_gpu.md"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.command == "machine":
        machine(out)
    elif args.command == "fast-inference":
        fast_inference(Path(args.bundle), Path(args.data), out)
    elif args.command == "train":
        train(Path(args.work), out, args.size, args.cases)
    else:
        from pipelines.io import write_text_atomic

        text = report_markdown(out)
        write_text_atomic(Path(args.md), text)
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
