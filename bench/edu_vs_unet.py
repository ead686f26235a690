"""E-DU's skip pathways under both readings of the paper, with MONAI's UNet and BasicUNet: one run, 2D and 3D.

The E-DU paper claims that MDE lowers peak memory usage and average time per training step. Where MDE sits is not
published, so the claim is measured under both readings that ``networks.EDU(skip=...)`` builds:

- reading 1, MDE *added* on each skip of a DenseNet-block U-Net: ``skip="mde"`` against ``skip="plain"``;
- reading 2, MDE *replacing* the dense blocks of a UNet++-style nested skip pathway: ``skip="dense_mde"`` against
  ``skip="dense"``.

Every network has the reference widths 32-64-128-256-512 (MONAI ``UNet`` the same channels with 2 residual units,
``BasicUNet`` its defaults), 1 input channel, 2 classes. For each network, in one process on the same inputs:

- parameters;
- memory, from one forward and backward pass of the batch (``probe_step`` of :mod:`pipelines.engines.memory_plan`,
  the pass the training memory plan makes): **saved**, the bytes autograd saves for the backward pass
  (``saved_tensors_hooks``, each storage once, weights left out); **activation peak**, the most bytes the allocator
  held at once during the pass beyond what was held before (saved tensors, gradients in flight, kernel workspaces;
  ``torch.profiler``'s allocation events), the input included; **step peak**, that plus the weights, their gradients
  and Adam's two moments (4 x the parameter bytes): the memory plan's sum of the parts of a training step without
  the loss, what ``torch.cuda.max_memory_allocated`` would report on a GPU without the allocator's rounding;
- **time per step**: the median over ``--repeats`` timed training steps (forward, DiceCE, backward, ``Adam.step()``)
  after one warm-up step and the memory pass. The repetitions are interleaved (one step of each network in turn, the
  order rotated each round), so that the load of other processes on a shared machine falls on all networks alike;
  the ratios of one run are what the results quote.

One thread by default (``OMP_NUM_THREADS=1``), CPU, fp32.

    python -m bench.edu_vs_unet            # 2 x 128^2 (2D) and 2 x 32x32x16 (3D), 7 rounds: 5-10 minutes
    python -m bench.edu_vs_unet --quick    # 2 x 32^2 and 1 x 32x16x16, 3 rounds: a few minutes

Writes ``bench/results_edu.json`` and ``bench/results_edu.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
MiB = 2**20
FEATURES = (32, 64, 128, 256, 512)

#: name -> (``_target_``, keyword arguments besides spatial_dims / in_channels / out_channels)
NETWORKS: dict[str, tuple[str, dict]] = {
    "E-DU plain": ("networks.EDU", {"features": FEATURES, "skip": "plain"}),
    "E-DU mde": ("networks.EDU", {"features": FEATURES, "skip": "mde"}),
    "E-DU dense": ("networks.EDU", {"features": FEATURES, "skip": "dense"}),
    "E-DU dense_mde": ("networks.EDU", {"features": FEATURES, "skip": "dense_mde"}),
    "MONAI UNet": ("monai.networks.nets.UNet",
                   {"channels": FEATURES, "strides": (2, 2, 2, 2), "num_res_units": 2}),
    "MONAI BasicUNet": ("monai.networks.nets.BasicUNet", {}),
}
#: the claim's two comparisons: (with MDE, without)
READINGS = {
    "reading 1: MDE added on each skip": ("E-DU mde", "E-DU plain"),
    "reading 2: MDE in place of the nested dense blocks": ("E-DU dense_mde", "E-DU dense"),
}
BASELINE = "MONAI UNet"
SETTINGS = {
    # MONAI UNet's instance norms need more than one voxel at the bottleneck (1/16 of each axis): 32 x 16 x 16 is the
    # smallest 3D patch where all six train
    "full": {"batch": {2: 2, 3: 2}, "patch": {2: (128, 128), 3: (32, 32, 16)}, "repeats": 7},
    "quick": {"batch": {2: 2, 3: 1}, "patch": {2: (32, 32), 3: (32, 16, 16)}, "repeats": 3},
}


def build(name: str, spatial_dims: int):
    """The network ``name`` of :data:`NETWORKS` in ``spatial_dims``, seeded, in train mode."""
    import torch
    from monai.bundle import ConfigParser

    target, kwargs = NETWORKS[name]
    torch.manual_seed(0)
    config = {"_target_": target, "spatial_dims": spatial_dims, "in_channels": 1, "out_channels": 2, **kwargs}
    return ConfigParser({"net": config}).get_parsed_content("net").train()


class _Trainee:
    """One network with its optimizer, loss and batch: ``step()`` is one training step."""

    def __init__(self, name: str, spatial_dims: int, batch: int, patch: tuple[int, ...]) -> None:
        import torch
        from monai.losses import DiceCELoss

        self.net = build(name, spatial_dims)
        self.opt = torch.optim.Adam(self.net.parameters(), 1e-4)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn((batch, 1) + patch, generator=g)
        self.y = (torch.rand((batch, 1) + patch, generator=g) > 0.9).float()

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss(self.net(self.x), self.y).backward()
        self.opt.step()


def measure(spatial_dims: int, batch: int, patch: tuple[int, ...], repeats: int, log=print) -> dict:
    """Every network of :data:`NETWORKS` in ``spatial_dims``: parameters, memory and interleaved step times."""
    from pipelines.engines.memory_plan import probe_step

    trainees = {name: _Trainee(name, spatial_dims, batch, patch) for name in NETWORKS}
    results: dict[str, dict] = {}
    for name, t in trainees.items():
        t.step()  # warm-up: creates Adam's state; the memory pass below is a second one
        saved, peak, _ = probe_step(t.net, t.x)
        params = sum(p.numel() for p in t.net.parameters())
        resident = 4 * sum(p.numel() * p.element_size() for p in t.net.parameters())  # weights, grads, Adam m and v
        results[name] = {"params": params, "saved_mib": saved / MiB, "activation_peak_mib": peak / MiB,
                         "step_peak_mib": (resident + peak) / MiB, "step_s": []}
        log(f"{spatial_dims}D {name}: {params:,} parameters, saved {saved / MiB:.1f} MiB, activation peak "
            f"{peak / MiB:.1f} MiB, step peak {(resident + peak) / MiB:.1f} MiB")
    names = list(trainees)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            trainees[name].step()
            results[name]["step_s"].append(time.perf_counter() - start)
        log(f"{spatial_dims}D round {r + 1}/{repeats}: "
            + ", ".join(f"{n} {results[n]['step_s'][-1]:.2f} s" for n in names))
    for r in results.values():
        r["step_median_s"] = statistics.median(r["step_s"])
    base = results[BASELINE]
    for r in results.values():
        r["step_x_unet"] = r["step_median_s"] / base["step_median_s"]
        r["peak_x_unet"] = r["step_peak_mib"] / base["step_peak_mib"]
    readings = {}
    for label, (with_mde, without) in READINGS.items():
        a, b = results[with_mde], results[without]
        paired = [ta / tb for ta, tb in zip(a["step_s"], b["step_s"])]  # the same round: the same load
        readings[label] = {
            "with": with_mde, "without": without,
            "params_delta": a["params"] - b["params"],
            "saved_ratio": a["saved_mib"] / b["saved_mib"],
            "activation_peak_ratio": a["activation_peak_mib"] / b["activation_peak_mib"],
            "step_peak_ratio": a["step_peak_mib"] / b["step_peak_mib"],
            "step_time_ratio_of_medians": a["step_median_s"] / b["step_median_s"],
            "step_time_ratio": statistics.median(paired),
            "step_time_ratio_per_round": paired,
            "rounds_faster": sum(x < 1.0 for x in paired),
            "claim_holds": (a["activation_peak_mib"] < b["activation_peak_mib"]
                            and a["step_peak_mib"] < b["step_peak_mib"] and statistics.median(paired) < 1.0),
        }
    del trainees
    return {"batch": batch, "patch": list(patch), "networks": results, "readings": readings}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# E-DU's skip pathways, both readings, with MONAI UNet and BasicUNet ({report['mode']}, "
        f"{m['threads']} CPU thread{'s' if m['threads'] > 1 else ''}, torch {m['torch']})",
        "",
        "Training step: Adam + DiceCE (softmax), fp32, 1 input channel, 2 classes, widths 32-64-128-256-512 "
        "(UNet: the same channels, 2 residual units; BasicUNet: its defaults). Memory of one forward and backward "
        "pass (`pipelines.engines.memory_plan.probe_step`): **saved**, bytes autograd saves for the backward pass; "
        "**act. peak**, the most bytes held at once during the pass beyond the weights (input included); "
        "**step peak**, act. peak plus weights, gradients and Adam's two moments (4 x the parameter bytes). "
        f"**Time**: median of {report['repeats']} training steps, interleaved with the other networks, after a "
        f"warm-up step and the memory pass (range in brackets). Ratios are to {BASELINE} in the same run. "
        f"`python -m bench.edu_vs_unet{' --quick' if report['mode'] == 'quick' else ''}` "
        f"({report['wall_s'] / 60:.1f} minutes, {m['cpu']}).",
    ]
    for dims in ("2", "3"):
        part = report["spatial"][dims]
        lines += [
            "",
            f"## {dims}D: batch {part['batch']} x {'x'.join(map(str, part['patch']))}",
            "",
            f"| network | params | saved (MiB) | act. peak (MiB) | step peak (MiB) | x {BASELINE} | "
            f"time per step (s) | x {BASELINE} |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in part["networks"].items():
            lines.append(
                f"| {name} | {r['params'] / 1e6:.2f} M | {r['saved_mib']:.1f} | {r['activation_peak_mib']:.1f} | "
                f"{r['step_peak_mib']:.0f} | {r['peak_x_unet']:.2f} | {r['step_median_s']:.2f} "
                f"[{min(r['step_s']):.2f}-{max(r['step_s']):.2f}] | {r['step_x_unet']:.2f} |"
            )
        lines += [
            "",
            "| the claim: adding MDE lowers peak memory and time per step | params | saved | act. peak | step peak | "
            "time per step [range] | rounds faster | holds |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for label, c in part["readings"].items():
            per_round = c["step_time_ratio_per_round"]
            lines.append(
                f"| {label}: {c['with']} / {c['without']} | {c['params_delta'] / 1e3:+.0f} k | "
                f"{c['saved_ratio']:.2f} | {c['activation_peak_ratio']:.2f} | {c['step_peak_ratio']:.2f} | "
                f"{c['step_time_ratio']:.2f} [{min(per_round):.2f}-{max(per_round):.2f}] | "
                f"{c['rounds_faster']}/{len(per_round)} | {'yes' if c['claim_holds'] else 'no'} |"
            )
    lines += ["", "Ratios: with MDE / without, in the same run. Time: the median over the rounds of the two networks' "
              "ratio within one round (their steps run one after the other, under the same load), its range, and "
              "in how many rounds the network with MDE was faster. Holds: both peaks lower and the median time "
              "ratio below 1."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    import torch

    from pipelines.io import write_json_atomic, write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs and 3 rounds: a minute or two")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7, --quick 3)")
    parser.add_argument("--no-write", action="store_true", help="print the table, write no results file")
    args = parser.parse_args(argv)
    if args.threads < 1 or (args.repeats is not None and args.repeats < 1):
        parser.error("--threads and --repeats must be at least 1")
    mode = "quick" if args.quick else "full"
    setting = SETTINGS[mode]
    repeats = args.repeats or setting["repeats"]
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    spatial = {str(d): measure(d, setting["batch"][d], setting["patch"][d], repeats) for d in (2, 3)}
    report = {
        "mode": mode,
        "repeats": repeats,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__, "device": "cpu"},
        "spatial": spatial,
        "wall_s": time.perf_counter() - start,
    }
    text = markdown(report)
    if not args.no_write:
        write_json_atomic(HERE / "results_edu.json", report)
        write_text_atomic(HERE / "results_edu.md", text)
    print(text)
    return report


if __name__ == "__main__":
    main()
