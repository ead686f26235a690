"""Every network of the project side by side with MONAI's, measured in the same run, as ratios to MONAI ``UNet``.

    python -m pipelines bench            # full: 96^3 windows, batch 2, real sliding window over 192x192x160
    python -m pipelines bench --quick    # under 5 minutes on 2 CPU cores: 64^3 windows, batch 1, and the
                                         # sliding-window time estimated as windows x one timed forward pass

For each 3D segmentation network: parameters, GFLOPs of one forward pass on one window, training step time
(Adam + DiceCE), peak memory (resident set on CPU, ``max_memory_allocated`` on CUDA), sliding-window throughput
(voxels per second) over a 192x192x160 CT-sized volume in fp32 and with bf16 autocast, and the ratios of time to
MONAI ``UNet`` measured in the same run. 2D networks (HEMF against MONAI ``DenseNet121``, the SE-ESRGAN generator)
get the same figures per image. Each network runs in its own fresh process, one after the other.

Writes ``bench/results.json`` and ``bench/results.md``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOLUME = (192, 192, 160)

SEG3D = {
    "MONAI UNet": ("monai.networks.nets.UNet", {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2),
                                                 "num_res_units": 2}),
    "MONAI BasicUNet": ("monai.networks.nets.BasicUNet", {}),
    "MONAI SegResNet": ("monai.networks.nets.SegResNet", {}),
    "EDU": ("networks.EDU", {}),
    "EDU (mde=False)": ("networks.EDU", {"mde": False}),
    "FRCUNet": ("networks.FRCUNet", {"gauss_kernel_sizes": (3, 5)}),
    "UNet (teaching)": ("networks.KerasUNet", {}),
    "UNet++ (teaching)": ("networks.KerasUNetPlusPlus", {}),
    "ResUNet (teaching)": ("networks.KerasResUNet", {}),
    "ResUNet++ (teaching)": ("networks.KerasResUNetPlusPlus", {}),
}
NET2D = {
    "MONAI DenseNet121": ("monai.networks.nets.DenseNet121", {"spatial_dims": 2, "in_channels": 3, "out_channels": 7},
                          (3, 224, 224), "classification"),
    "HEMF": ("networks.HEMF", {"spatial_dims": 2, "in_channels": 3, "out_channels": 7}, (3, 224, 224),
             "classification"),
    "RRDBNet (ESRGAN x4)": ("networks.RRDBNet", {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "scale": 4},
                            (1, 64, 64), "super-resolution"),
}
SETTINGS = {
    "full": {"roi": (96, 96, 96), "batch": 2, "steps": 2, "sw_batch": 2, "overlap": 0.25, "estimate_sw": False},
    "quick": {"roi": (64, 64, 64), "batch": 1, "steps": 1, "sw_batch": 1, "overlap": 0.25, "estimate_sw": True},
}


def _windows(volume, roi, overlap) -> int:
    n = 1
    for v, r in zip(volume, roi):
        step = max(int(r * (1 - overlap)), 1)
        n *= math.ceil(max(v - r, 0) / step) + 1
    return n


def _peak_mib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _autocast(device, bf16: bool):
    import contextlib

    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _build(target: str, kwargs: dict):
    from monai.bundle import ConfigParser

    return ConfigParser({"net": {"_target_": target, **kwargs}}).get_parsed_content("net")


def _flops(net, x) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    return counter.get_total_flops() / 1e9


def _train_flops(net, x, y, loss_fn) -> float:
    """GFLOPs of one training step's forward and backward pass (the optimizer's elementwise update left out)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


#: side of the square matrices of the CPU's matmul peak (CUDA: 4096)
MATMUL_N = 2048


def _matmul_peak(device_name: str, n: int, queue) -> None:
    """This device's dense matmul throughput in GFLOP/s, fp32 and bf16: the best of several square products large
    enough to saturate the BLAS (oneDNN/MKL on CPUs, cuBLAS on CUDA). It is the ceiling a convolution lowered to a
    GEMM can approach; a network's achieved GFLOP/s divided by it is its share of the machine."""
    import torch

    device = torch.device(device_name)
    result = {"matmul_n": n}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)

        def mm(a=a, b=b):  # this iteration's matrices, bound at definition (ruff B023)
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        mm()
        result[f"peak_{name}_gflops_per_s"] = 2 * n**3 / _time(mm, 5) / 1e9
    queue.put(result)


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _seg3d(target: str, kwargs: dict, setting: dict, device_name: str, volume_shape, queue) -> None:
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.losses import DiceCELoss

    device = torch.device(device_name)
    torch.manual_seed(0)
    net = _build(target, {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, **kwargs}).to(device)
    roi = setting["roi"]
    result = {"params": sum(p.numel() for p in net.parameters())}
    net.eval()
    result["gflops"] = _flops(net, torch.zeros(1, 1, *roi, device=device))

    net.train()
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(setting["batch"], 1, *roi, device=device)
    y = (torch.rand(setting["batch"], 1, *roi, device=device) > 0.95).float()
    result["train_gflops"] = _train_flops(net, x, y, loss_fn)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    step()  # warm-up
    result["train_step_s"] = _time(step, setting["steps"])
    result["train_gflops_per_s"] = result["train_gflops"] / result["train_step_s"]
    result["train_peak_mib"] = _peak_mib(device)

    net.eval()
    window = torch.randn(setting["sw_batch"], 1, *roi, device=device)
    for precision in ("fp32", "bf16"):  # the network alone on one batch of windows: its achieved GFLOP/s
        with torch.inference_mode(), _autocast(device, precision == "bf16"):
            net(window)
            seconds = _time(lambda: net(window), setting["steps"])
        result[f"forward_{precision}_gflops_per_s"] = result["gflops"] * setting["sw_batch"] / seconds
    n_windows = _windows(volume_shape, roi, setting["overlap"])
    result["windows"] = n_windows
    for precision in ("fp32", "bf16"):
        with torch.inference_mode(), _autocast(device, precision == "bf16"):
            if setting["estimate_sw"]:
                batch = torch.randn(setting["sw_batch"], 1, *roi, device=device)
                net(batch)  # warm-up
                per_batch = _time(lambda batch=batch: net(batch), 1)
                seconds = per_batch * math.ceil(n_windows / setting["sw_batch"])
            else:
                volume = torch.randn(1, 1, *volume_shape, device=device)
                inferer = SlidingWindowInferer(roi, sw_batch_size=setting["sw_batch"], overlap=setting["overlap"],
                                               mode="gaussian")
                net(torch.randn(1, 1, *roi, device=device))
                seconds = _time(lambda inferer=inferer, volume=volume: inferer(volume, net), 1)
        result[f"sw_{precision}_s"] = seconds
        result[f"sw_{precision}_voxels_per_s"] = math.prod(volume_shape) / seconds
    result["peak_mib"] = _peak_mib(device)
    queue.put(result)


def _net2d(target: str, kwargs: dict, shape, task: str, setting: dict, device_name: str, queue) -> None:
    import torch
    import torch.nn.functional as F

    device = torch.device(device_name)
    torch.manual_seed(0)
    net = _build(target, kwargs).to(device)
    batch = max(setting["batch"], 2)  # batch norm needs two samples where a 2D network ends at 1x1
    x = torch.randn(batch, *shape, device=device)
    result = {"params": sum(p.numel() for p in net.parameters())}
    net.eval()
    result["gflops"] = _flops(net, x[:1])
    net.train()
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    if task == "classification":
        target_y = torch.randint(0, 7, (batch,), device=device)

        def loss():
            return F.cross_entropy(net(x), target_y)
    else:
        hr = torch.randn(batch, shape[0], *(4 * s for s in shape[1:]), device=device)

        def loss():
            return F.l1_loss(net(x), hr)

    def step():
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    step()
    result["train_step_s"] = _time(step, setting["steps"])
    result["train_images_per_s"] = batch / result["train_step_s"]
    net.eval()
    for precision in ("fp32", "bf16"):
        with torch.inference_mode(), _autocast(device, precision == "bf16"):
            net(x)
            seconds = _time(lambda: net(x), setting["steps"])
        result[f"infer_{precision}_images_per_s"] = batch / seconds
        if task == "super-resolution":
            result[f"infer_{precision}_s_per_output_megapixel"] = seconds / (batch * 16 * math.prod(shape[1:]) / 1e6)
    result["peak_mib"] = _peak_mib(device)
    queue.put(result)


def _guarded(fn, args, queue) -> None:
    try:
        fn(*args, queue)
    except BaseException as e:  # report to the parent instead of leaving it waiting
        queue.put({"error": f"{type(e).__name__}: {e}"})


def _run_isolated(fn, args) -> dict:
    ctx = mp.get_context("spawn")  # fork after torch has started its thread pools can deadlock
    queue = ctx.Queue()
    proc = ctx.Process(target=_guarded, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"benchmark of {args[0]} failed: {result['error']}")
    return result


def run(quick: bool = False, device: str | None = None, only: list[str] | None = None, echo=print) -> dict:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    setting = SETTINGS["quick" if quick else "full"]
    report = {
        "mode": "quick" if quick else "full",
        "setting": {**{k: list(v) if isinstance(v, tuple) else v for k, v in setting.items()}, "volume": list(VOLUME)},
        "machine": {"processor": platform.processor() or platform.machine(), "device": device,
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "segmentation_3d": {},
        "networks_2d": {},
    }
    n = 4096 if str(device).startswith("cuda") else MATMUL_N  # read here: the spawned child re-imports the module
    report["machine"].update(_run_isolated(_matmul_peak, (device, n)))
    echo(f"bench: matmul peak fp32 {report['machine']['peak_fp32_gflops_per_s']:.0f} GFLOP/s, "
         f"bf16 {report['machine']['peak_bf16_gflops_per_s']:.0f} GFLOP/s")
    for name, (target, kwargs) in SEG3D.items():
        if only and name not in only:
            continue
        start = time.time()
        report["segmentation_3d"][name] = _run_isolated(_seg3d, (target, kwargs, setting, device, VOLUME))
        echo(f"bench: {name} ({time.time() - start:.0f} s)")
    for name, (target, kwargs, shape, task) in NET2D.items():
        if only and name not in only:
            continue
        start = time.time()
        measured = _run_isolated(_net2d, (target, kwargs, shape, task, setting, device))
        report["networks_2d"][name] = {"task": task, **measured}
        echo(f"bench: {name} ({time.time() - start:.0f} s)")
    base = report["segmentation_3d"].get("MONAI UNet")
    if base:
        for r in report["segmentation_3d"].values():
            r["train_ratio_to_unet"] = r["train_step_s"] / base["train_step_s"]
            r["sw_fp32_ratio_to_unet"] = r["sw_fp32_s"] / base["sw_fp32_s"]
            r["bf16_speedup"] = r["sw_fp32_s"] / r["sw_bf16_s"]
    for r in report["segmentation_3d"].values():
        for precision in ("fp32", "bf16"):
            r[f"forward_{precision}_share_of_peak"] = (r[f"forward_{precision}_gflops_per_s"]
                                                       / report["machine"][f"peak_{precision}_gflops_per_s"])
        r["train_fp32_share_of_peak"] = r["train_gflops_per_s"] / report["machine"]["peak_fp32_gflops_per_s"]
    dense = report["networks_2d"].get("MONAI DenseNet121")
    if dense:
        for r in report["networks_2d"].values():
            if r["task"] == "classification":
                r["train_ratio_to_densenet121"] = r["train_step_s"] / dense["train_step_s"]
    return report


def markdown(report: dict) -> str:
    s = report["setting"]
    m = report["machine"]
    roi = "x".join(map(str, s["roi"]))
    sw = ("estimated as windows x one timed forward pass" if s["estimate_sw"] else "measured with "
          "SlidingWindowInferer (Gaussian)")
    lines = [
        f"# Network benchmark ({report['mode']})",
        "",
        f"{m['device']} ({m['processor']}, {m['threads']} threads), torch {m['torch']}. Training step: batch "
        f"{s['batch']} x {roi}, Adam + DiceCE, fp32. Sliding window over {'x'.join(map(str, s['volume']))} with "
        f"{roi} windows, overlap {s['overlap']}, sw_batch_size {s['sw_batch']}: {sw}. GFLOPs: one forward pass of one "
        f"{roi} window. Ratios are times divided by MONAI UNet's in the same run (lower is faster).",
        "",
        "| 3D segmentation | params | GFLOPs | train step (s) | x UNet | sliding window fp32 (s) | x UNet "
        "| voxels/s fp32 | voxels/s bf16 | bf16 speed-up | peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["segmentation_3d"].items():
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f} M | {r['gflops']:.1f} | {r['train_step_s']:.2f} | "
            f"{r.get('train_ratio_to_unet', float('nan')):.2f} | {r['sw_fp32_s']:.1f} | "
            f"{r.get('sw_fp32_ratio_to_unet', float('nan')):.2f} | {r['sw_fp32_voxels_per_s']:.3g} | "
            f"{r['sw_bf16_voxels_per_s']:.3g} | {r.get('bf16_speedup', float('nan')):.2f} | {r['peak_mib']:.0f} |"
        )
    peak32, peak16 = m["peak_fp32_gflops_per_s"], m["peak_bf16_gflops_per_s"]
    lines += [
        "",
        f"Share of the machine: this {m['device']}'s dense matmul peak, measured in the same run ({m['matmul_n']}^2 "
        f"products), is {peak32:.0f} GFLOP/s in fp32 and {peak16:.0f} GFLOP/s in bf16. Achieved GFLOP/s: counted "
        "FLOPs (torch.utils.flop_counter) over the measured time; forward: the network alone on one batch of "
        "windows; train: forward + backward FLOPs over the whole step (optimizer included in the time).",
        "",
        "| 3D segmentation | forward fp32 GFLOP/s | share of fp32 peak | forward bf16 GFLOP/s | share of bf16 peak | "
        "train GFLOPs | train fp32 GFLOP/s | share of fp32 peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["segmentation_3d"].items():
        lines.append(
            f"| {name} | {r['forward_fp32_gflops_per_s']:.1f} | {100 * r['forward_fp32_share_of_peak']:.1f} % | "
            f"{r['forward_bf16_gflops_per_s']:.1f} | {100 * r['forward_bf16_share_of_peak']:.1f} % | "
            f"{r['train_gflops']:.1f} | {r['train_gflops_per_s']:.1f} | {100 * r['train_fp32_share_of_peak']:.1f} % |")
    if report["networks_2d"]:
        lines += [
            "",
            "| 2D network | task | params | GFLOPs/image | train step (s) | train images/s | infer images/s fp32 "
            "| infer images/s bf16 | peak MiB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in report["networks_2d"].items():
            lines.append(
                f"| {name} | {r['task']} | {r['params'] / 1e6:.2f} M | {r['gflops']:.1f} | {r['train_step_s']:.2f} | "
                f"{r['train_images_per_s']:.2f} | {r['infer_fp32_images_per_s']:.2f} | "
                f"{r['infer_bf16_images_per_s']:.2f} | {r['peak_mib']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="smaller windows and batches; under 5 minutes on 2 CPU cores")
    parser.add_argument("--device", help="torch device (default: CUDA when available, else CPU)")
    parser.add_argument("--only", nargs="+", help="measure only these networks (names as in the table)")
    parser.add_argument("--out", default=str(HERE), help="folder for results.json and results.md (default bench/)")


def run_from_args(args: argparse.Namespace) -> int:
    from pipelines.io import write_json_atomic, write_text_atomic

    report = run(quick=args.quick, device=args.device, only=args.only)
    out = Path(args.out)
    write_json_atomic(out / "results.json", report)
    write_text_atomic(out / "results.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
