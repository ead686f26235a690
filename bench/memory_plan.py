"""The memory plan (:mod:`pipelines.engines.memory_plan`) against real training steps, and its estimate for every
shipped bundle.

Validation, on this CPU: for small configurations of E-DU, FRCU-Net and MONAI UNet (fp32, and CPU bf16 autocast),
each in a fresh process: two training steps (forward, DiceCE, backward, ``AdamW.step()``; the second runs with the
optimizer state the first created, as every later step does), their peak resident memory (``VmHWM`` of
``/proc/self/status``, reset by writing 5 to ``/proc/self/clear_refs`` before the network is built, minus the
resident memory then), a third step under ``torch.profiler`` for its peak live tensor bytes (the public memory
timeline), and then the estimate of a fresh copy of the network, as the handler makes it before a training.

Bundles (``--bundles``): each ``bundles/*/configs/train.json`` is read with ``monai.bundle.ConfigParser``; only
``network_def`` is instantiated, with the patch (``patch_size``, ``spatial_size``, ``image_size``, or for
super-resolution the generator's LR patch ``hr_patch_size / scale``), ``batch_size`` and ``num_samples`` (1 when
absent) and the optimizer class the config names. Two estimates: CPU fp32, and CUDA bf16 AMP as shipped, computed
here on the CPU (saved bytes under CPU bf16 autocast, whose cast lists differ a little from CUDA's, the transient of
CPU kernels, plus the assumed CUDA context ``CUDA_CONTEXT_BYTES``).

    OMP_NUM_THREADS=1 python -m bench.memory_plan [--bundles] [--large] [--only NAME ...]

About 4 minutes on 2 shared CPU cores; ``--bundles`` adds about 7, ``--large`` (one E-DU configuration whose
tensors exceed glibc's 32 MiB mmap threshold) about 4. Writes ``bench/results_memory_plan.json`` and
``bench/results_memory_plan.md``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLES = HERE.parent / "bundles"
MiB = 2**20
GiB = 2**30

#: name -> (network target, kwargs, in_channels, out_channels, patch, patches per step, amp)
CONFIGS: dict[str, tuple[str, dict, int, int, tuple[int, ...], int, bool]] = {
    "E-DU 3D [8..128], 2 x 64x64x32": (
        "networks.EDU", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": [8, 16, 32, 64, 128]},
        1, 2, (64, 64, 32), 2, False),
    "FRCU-Net 2D [16..256], 8 x 128x128, bf16": (
        "networks.FRCUNet", {"spatial_dims": 2, "in_channels": 3, "out_channels": 1,
                             "features": [16, 32, 64, 128, 256], "freq_channels": 32, "gauss_kernel_sizes": [3, 5]},
        3, 1, (128, 128), 8, True),
    "FRCU-Net 3D [8..128], 2 x 64x64x64": (
        "networks.FRCUNet", {"spatial_dims": 3, "in_channels": 4, "out_channels": 3,
                             "features": [8, 16, 32, 64, 128], "freq_channels": 16, "gauss_kernel_sizes": [3, 5],
                             "norm": ["instance", {"affine": True}]},
        4, 3, (64, 64, 64), 2, False),
    "FRCU-Net 2D [16..256], 8 x 128x128": (
        "networks.FRCUNet", {"spatial_dims": 2, "in_channels": 3, "out_channels": 1,
                             "features": [16, 32, 64, 128, 256], "freq_channels": 32, "gauss_kernel_sizes": [3, 5]},
        3, 1, (128, 128), 8, False),
    "MONAI UNet 3D [16..256], 4 x 96x96x64": (
        "monai.networks.nets.UNet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                     "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2},
        1, 2, (96, 96, 64), 4, False),
    "MONAI UNet 3D [32..512], 4 x 128x128x64": (
        "monai.networks.nets.UNet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                     "channels": [32, 64, 128, 256, 512], "strides": [2, 2, 2, 2], "num_res_units": 2},
        1, 2, (128, 128, 64), 4, False),
}


#: ``--large``: tensors of 64-128 MiB, as at the sizes where memory runs out
LARGE = {
    "E-DU 3D [8..128], 2 x 128x128x64": (
        "networks.EDU", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": [8, 16, 32, 64, 128]},
        1, 2, (128, 128, 64), 2, False),
}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _build(target: str, kwargs: dict):
    import torch
    from monai.bundle import ConfigParser

    torch.manual_seed(0)
    return ConfigParser({"net": {"_target_": target, **kwargs}}).get_parsed_content("net")


def _live_peak(step) -> int:
    """Peak bytes of tensors during ``step()``, from ``torch.profiler``'s public memory timeline (allocations it
    observed, and the tensors that existed before as soon as an op uses them)."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_memory_timeline(f"{tmp}/timeline.json", device="cpu")
        _, sizes = json.loads(Path(f"{tmp}/timeline.json").read_text())
    return int(max(sum(s) for s in sizes))


def _measure(name: str, queue) -> None:
    """Two training steps (peak RSS), a third under the profiler (peak live bytes), then the estimate."""
    import torch
    from monai.losses import DiceCELoss

    from pipelines.engines.memory_plan import estimate_training_memory

    torch.set_num_threads(1)
    target, kwargs, cin, cout, patch, batch, amp = {**CONFIGS, **LARGE}[name]
    x = torch.randn(batch, cin, *patch)
    y = (torch.rand(batch, 1, *patch) > 0.9).float()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True) if cout > 1 else DiceCELoss(sigmoid=True)
    base = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    net = _build(target, kwargs)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), 1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    peaks, times = [], []
    for _ in range(2):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        peaks.append((_status_kib("VmHWM") - base) * 1024)
    # the live bytes of the third step: the profiler's timeline counts the tensors that were there before
    # (parameters, gradients, optimizer state, the batch) as soon as an op uses them
    live = _live_peak(step)
    fresh = _build(target, kwargs)  # the estimate as at the start of a training: no gradients, no optimizer state
    start = time.perf_counter()
    est = estimate_training_memory(fresh, torch.optim.AdamW(fresh.parameters(), 1e-4), patch, batch,
                                   in_channels=cin, device="cpu", amp=amp, amp_dtype=torch.bfloat16)
    queue.put({"estimate": {**est.as_dict(), "probe_s": time.perf_counter() - start},
               "measured": {"rss_before": base * 1024, "peak_step1": peaks[0], "peak": peaks[1], "live": live,
                            "step_s": times}})


def _isolated(fn, name: str) -> dict:
    """``fn(name, queue)`` in a fresh spawned process (so that its peak resident memory is its own)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(name, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def validate(only: list[str] | None = None, large: bool = False, echo=print) -> dict:
    rows = {}
    for name in {**CONFIGS, **LARGE} if large else CONFIGS:
        if only and name not in only:
            continue
        r = _isolated(_measure, name)
        est, meas = r["estimate"], r["measured"]
        rows[name] = {**r, "raw_over_live": est["raw"] / meas["live"], "raw_over_rss": est["raw"] / meas["peak"],
                      "estimate_over_rss": est["total"] / meas["peak"]}
        echo(f"{name}: estimate {est['total'] / MiB:.0f} MiB (raw {est['raw'] / MiB:.0f}), measured: peak RSS "
             f"{meas['peak'] / MiB:.0f} MiB, live {meas['live'] / MiB:.0f} MiB; estimate / RSS "
             f"{rows[name]['estimate_over_rss']:.2f}, raw / live {rows[name]['raw_over_live']:.2f}")
    return rows


# ------------------------------------------------------------------------------------------------------ bundles
def bundle_setting(train_json: Path) -> dict:
    """What the estimate needs from a bundle's ``train.json``: the network (instantiated), its input channels, the
    patch, the patches per step and the optimizer class."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(train_json))
    get = lambda key, default=None: parser.get_parsed_content(key) if key in parser else default  # noqa: E731
    if "hr_patch_size" in parser:  # super-resolution: the generator sees the LR patch
        hr = [int(s) for s in get("hr_patch_size")]
        scale = get("scale")
        scale = [int(scale)] * len(hr) if isinstance(scale, (int, float)) else [int(s) for s in scale]
        patch, patch_key = [h // s for h, s in zip(hr, scale)], f"hr_patch_size {hr} / scale {scale}"
    else:
        for key in ("patch_size", "spatial_size", "image_size"):
            if key in parser:
                value = get(key)
                patch = [int(value)] * 2 if isinstance(value, (int, float)) else [int(s) for s in value]
                patch_key = key
                break
        else:
            raise ValueError(f"{train_json}: no patch_size, spatial_size, image_size or hr_patch_size")
    opt_key = "optimizer" if "optimizer" in parser else "g_optimizer"
    opt_cfg = parser.get(opt_key)
    opt_class = getattr(torch.optim, opt_cfg["_target_"].rsplit(".", 1)[-1])
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def", instantiate=True)
    return {"network": network, "in_channels": int(parser.get("network_def")["in_channels"]), "patch": patch,
            "patch_key": patch_key, "batch_size": int(get("batch_size")),
            "num_samples": int(get("num_samples", 1)) if "num_samples" in parser else 1,
            "optimizer": opt_class, "amsgrad": bool(get("amsgrad", False)) if "amsgrad" in parser else False,
            "target": parser.get("network_def")["_target_"]}


def _bundle_estimates(bundle: str, queue) -> None:
    import torch

    from pipelines.engines.memory_plan import CUDA_CONTEXT_BYTES, estimate_training_memory

    torch.set_num_threads(1)
    s = bundle_setting(BUNDLES / bundle / "configs" / "train.json")
    net = s["network"]
    kwargs = {"amsgrad": True} if s["amsgrad"] else {}
    opt = s["optimizer"](net.parameters(), lr=1e-4, **kwargs)
    batch = s["batch_size"] * s["num_samples"]
    start = time.perf_counter()
    cpu = estimate_training_memory(net, opt, s["patch"], batch, in_channels=s["in_channels"], device="cpu")
    gpu = estimate_training_memory(net, opt, s["patch"], batch, in_channels=s["in_channels"], device="cpu",
                                   amp=True, amp_dtype=torch.bfloat16, context_bytes=CUDA_CONTEXT_BYTES)
    queue.put({"network": s["target"], "patch": s["patch"], "patch_key": s["patch_key"],
               "batch_size": s["batch_size"], "num_samples": s["num_samples"],
               "optimizer": s["optimizer"].__name__ + (" (amsgrad)" if s["amsgrad"] else ""),
               "params": sum(p.numel() for p in net.parameters()),
               "cpu_fp32": {**cpu.as_dict(), "max_patches_24gib": cpu.max_batch(24 * GiB)},
               "cuda_bf16": {**gpu.as_dict(), "max_patches_24gib": gpu.max_batch(24 * GiB)},
               "probe_s": time.perf_counter() - start})


def bundles(echo=print) -> dict:
    out = {}
    for cfg in sorted(BUNDLES.glob("*/configs/train.json")):
        name = cfg.parent.parent.name
        out[name] = r = _isolated(_bundle_estimates, name)
        echo(f"{name}: CPU fp32 {r['cpu_fp32']['total'] / GiB:.1f} GiB, CUDA bf16 {r['cuda_bf16']['total'] / GiB:.1f} "
             f"GiB ({r['probe_s']:.0f} s)")
    return out


# ----------------------------------------------------------------------------------------------------- report
def _parts_row(e: dict) -> str:
    g = lambda k: f"{e[k] / GiB:.2f}"  # noqa: E731
    return (f"{g('parameters')} | {g('gradients')} | {g('optimizer_state')} | {g('activations')} | "
            f"{g('transient')} | {g('context')} | **{e['total'] / GiB:.1f}**")


def markdown(report: dict) -> str:
    lines = [
        "# Memory plan: estimate vs measured, and the shipped bundles",
        "",
        f"`pipelines/engines/memory_plan.py` on {report['machine']} (shared), torch {report['torch']}, 1 thread, "
        f"`python -m bench.memory_plan{report['args']}` ({report['seconds'] / 60:.0f} min). The estimate: parameters "
        "+ gradients + optimizer state + activations (the bytes autograd saves for backward, counted at three small "
        "probes, 1 and 2 patches of a quarter of the patch per axis and 1 of a half, and extrapolated linearly) + "
        "transient (what the probe passes held beyond that at their peak, scaled from the largest probe; plus "
        f"{report['loss_factor']:g} x the network's output for the loss), times safety {report['safety']:g}.",
        "",
        "## Validation on this CPU",
        "",
        "Each configuration in a fresh process: two training steps (forward, DiceCE, backward, `AdamW.step()`), "
        "their *peak RSS* (`VmHWM` after `clear_refs`, minus the resident memory before the network was built, so "
        "the parameters count), a third step under `torch.profiler` for its *live* bytes (peak of the public memory "
        "timeline: every tensor, op workspaces included), then the estimate of a fresh copy of the network. *raw*: "
        "the sum of the parts, before safety. MiB.",
        "",
        "| configuration | estimate | raw | live | peak RSS | step 1 RSS | raw / live | estimate / RSS | "
        "estimate (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["validation"].items():
        e, m = r["estimate"], r["measured"]
        lines.append(f"| {name} | {e['total'] / MiB:.0f} | {e['raw'] / MiB:.0f} | {m['live'] / MiB:.0f} | "
                     f"{m['peak'] / MiB:.0f} | {m['peak_step1'] / MiB:.0f} | {r['raw_over_live']:.2f} | "
                     f"{r['estimate_over_rss']:.2f} | {e['probe_s']:.1f} |")
    if report["validation"]:
        live = [r["raw_over_live"] for r in report["validation"].values()]
        lines += [
            "",
            f"raw / live from {min(live):.2f} to {max(live):.2f}: the parts account for every live byte, with a "
            "margin where the probes' kernels need more workspace per voxel than the real patch's. Peak RSS is "
            "higher than live by glibc's heap: tensors below its mmap threshold (which grows to 32 MiB as tensors "
            "are freed) come from the heap, which keeps freed blocks resident, so configurations of small tensors "
            "take up to twice their live bytes (estimate / RSS below 1), while at the sizes where memory runs out "
            "tensors are mapped and unmapped whole (MONAI UNet 4 x 128x128x64, and `--large`: RSS 1.1-1.2 x "
            "live, within the safety factor).",
        ]
    if report["bundles"]:
        lines += [
            "",
            "## The shipped bundles (`bundles/*/configs/train.json` as shipped)",
            "",
            "GiB. *CUDA bf16*: the shipped setting on a GPU (`amp` on, bf16), computed on this CPU, no GPU was "
            "measured: the saved bytes counted under CPU bf16 autocast (its cast lists differ a little from CUDA's), "
            "the transient of the CPU kernels (on a GPU the handler measures cuDNN's instead), plus an assumed CUDA "
            "context of 0.5 GiB (`CUDA_CONTEXT_BYTES`; reported sizes: 128-256 MiB with lazy module loading, "
            "invoke-ai/InvokeAI#9447, 781 MB at start-up, pytorch/pytorch#34323); the caching allocator's "
            "fragmentation is left to the safety factor. *CPU fp32*: the same configuration trained on a CPU. "
            "*fits 24 GiB*: the most patches per step (`batch_size * num_samples`) whose estimate fits in 24 GiB.",
            "",
            "| bundle | network | patch | batch_size x num_samples | optimizer | setting | parameters | gradients "
            "| optimizer state | activations | transient | context | **estimate** | fits 24 GiB |",
            "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in report["bundles"].items():
            for key, label in (("cuda_bf16", "CUDA bf16"), ("cpu_fp32", "CPU fp32")):
                e = r[key]
                lines.append(f"| {name} | {r['network']} | {'x'.join(map(str, r['patch']))} ({r['patch_key']}) | "
                             f"{r['batch_size']} x {r['num_samples']} | {r['optimizer']} | {label} | "
                             f"{_parts_row(e)} | {e['max_patches_24gib']} |")
        lines += [
            "",
            "Super-resolution bundles: the generator only, at the LR patch (the PSNR pre-training phase); the GAN "
            "phase adds the discriminator (its parameters, Adam state and activations at the HR patch).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="validation configurations to run (names of CONFIGS)")
    parser.add_argument("--bundles", action="store_true", help="add the estimates of the shipped bundles")
    parser.add_argument("--large", action="store_true", help="add the large validation configuration")
    parser.add_argument("--output", type=Path, default=HERE, help="folder of the results files")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from pipelines.engines.memory_plan import DEFAULT_LOSS_FACTOR, DEFAULT_SAFETY
    from pipelines.io import write_json_atomic, write_text_atomic

    start = time.perf_counter()
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "torch": torch.__version__, "safety": DEFAULT_SAFETY, "loss_factor": DEFAULT_LOSS_FACTOR,
              "args": "".join(f" --{k}" for k in ("bundles", "large") if getattr(args, k))}
    report["validation"] = validate(args.only, args.large)
    report["bundles"] = bundles() if args.bundles else {}
    report["seconds"] = time.perf_counter() - start
    write_json_atomic(args.output / "results_memory_plan.json", report)
    md = markdown(report)
    write_text_atomic(args.output / "results_memory_plan.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
