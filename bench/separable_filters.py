"""Separable fixed filters and buffered dense blocks against the implementations they replace (issue 17, items 1-2).

    python -m bench.separable_filters            # every case, 3 interleaved repeats (about 10 minutes on one core)
    python -m bench.separable_filters --quick    # smaller maps, 2 repeats (a minute or two)

The old implementations are kept below, as they were before the change: :func:`old_filter_forward` (every fixed
filter as one ``k^d`` depthwise convolution, its backward one more with the flipped kernel) and
:func:`old_dense_block_forward` (each dense layer concatenates its input with its new maps). Each case builds one
module and a deep copy of it whose filters and dense blocks run the old code, checks that both give the same output
(and input gradient), then times them alternately (old, new, old, new, ...) and keeps the minimum of each: on a
shared, loaded machine only the ratio measured in the same run means anything.

Passes: ``forward`` is ``eval()`` under ``no_grad`` (inference); ``forward+backward`` is ``train()`` (batch
statistics), the output's backward pass with a fixed random gradient, into the input and every parameter.
One thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``), CPU. For the dense blocks the bytes that autograd
saves for the backward pass are counted too (``saved_tensors_hooks``, each storage once).

Writes ``bench/results_separable_filters.json`` and ``.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from networks.blocks.filters import FixedDepthwiseFilter, _FixedDepthwiseConv  # noqa: E402
from networks.edu import EDU, MDE, DenseTransitionBlock  # noqa: E402
from networks.frcunet import FrequencyRecalibration  # noqa: E402

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------- the implementations replaced


def old_filter_forward(self: FixedDepthwiseFilter, x: torch.Tensor) -> torch.Tensor:
    """``FixedDepthwiseFilter.forward`` before the change: the full ``k^d`` depthwise convolution."""
    conv = F.conv2d if self.spatial_dims == 2 else F.conv3d
    weight = self.weight.to(dtype=x.dtype)
    if self.padding_mode == "zeros":
        if isinstance(self.weight, nn.Parameter) or torch.jit.is_tracing() or not torch.is_grad_enabled():
            return conv(x, weight, padding=tuple(s // 2 for s in weight.shape[2:]), groups=self.channels)
        return _FixedDepthwiseConv.apply(x, weight, self.channels)
    return conv(F.pad(x, self._pad, mode=self.padding_mode), weight, groups=self.channels)


def old_dense_block_forward(self: DenseTransitionBlock, x: torch.Tensor) -> torch.Tensor:
    """``DenseTransitionBlock.forward`` before the change: every layer returns ``torch.cat([x, new], dim=1)``."""
    for layer in self.dense:
        x = torch.cat([x, layer.dropout(layer.layers(x))], dim=1)
    return self.transition(x)


def as_old(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` (same weights) whose fixed filters and dense blocks run the old code."""
    old = copy.deepcopy(module)
    for m in old.modules():
        if isinstance(m, FixedDepthwiseFilter):
            m.forward = types.MethodType(old_filter_forward, m)
        elif isinstance(m, DenseTransitionBlock):
            m.forward = types.MethodType(old_dense_block_forward, m)
    return old


def forced_separable(module: nn.Module) -> nn.Module:
    """A deep copy whose fixed filters take the per-axis path wherever the kernel factors (2D included)."""
    new = copy.deepcopy(module)
    for m in new.modules():
        if isinstance(m, FixedDepthwiseFilter):
            m.separable_policy = True
    return new


# ------------------------------------------------------------------------------------------------------------- cases


def _cases(quick: bool) -> list[dict]:
    """name, group, module factory, input shape, passes, and the precision/memory format of the run."""
    s = 2 if quick else 1  # --quick halves every spatial size

    def sp(*sizes):
        return tuple(max(4, n // s) for n in sizes)

    both = ("forward", "forward+backward")
    return [
        dict(group="filters", name="MDE of E-DU level 0 (32 ch, batch 1)", make=lambda: MDE(3, 32),
             shape=(1, 32) + sp(96, 96, 64), passes=both),
        dict(group="filters", name="MDE of E-DU level 1 (64 ch, batch 2)", make=lambda: MDE(3, 64),
             shape=(2, 64) + sp(48, 48, 32), passes=both),
        dict(group="filters", name="FRCU-Net FR, BraTS bundle (64 ch, kernels 3, 5, batch 2)",
             make=lambda: FrequencyRecalibration(3, 64, kernel_sizes=(3, 5)), shape=(2, 64, 8, 8, 8), passes=both),
        dict(group="filters", name="FRCU-Net FR, 3D defaults (256 ch, kernels 3-9, batch 1)",
             make=lambda: FrequencyRecalibration(3, 256), shape=(1, 256) + sp(16, 16, 16), passes=both),
        dict(group="filters", name="MDE of E-DU level 1 (64 ch, batch 1), fp32 channels-last",
             make=lambda: MDE(3, 64), shape=(1, 64) + sp(48, 48, 32), passes=("forward",), channels_last=True),
        dict(group="filters", name="MDE (32 ch, batch 1), bf16 autocast + channels-last (the fast path)",
             make=lambda: MDE(3, 32), shape=(1, 32) + sp(32, 32, 32), passes=("forward",), channels_last=True,
             bf16=True),
        dict(group="filters", name="MDE 2D (32 ch, batch 2), default: full k^2 kernel kept",
             make=lambda: MDE(2, 32), shape=(2, 32) + sp(256, 256), passes=both),
        dict(group="filters", name="MDE 2D (32 ch, batch 2), per-axis passes forced",
             make=lambda: MDE(2, 32), shape=(2, 32) + sp(256, 256), passes=both, force_separable=True),
        dict(group="filters", name="FRCU-Net FR 2D, ISIC bundle (256 ch, kernels 3-9, 16 x 16, batch 2)",
             make=lambda: FrequencyRecalibration(2, 256), shape=(2, 256, 16, 16), passes=both),
        dict(group="dense", name="E-DU dense block, decoder level 0 (64 -> 32 ch, batch 1)",
             make=lambda: DenseTransitionBlock(3, 64, 32), shape=(1, 64) + sp(96, 96, 64), passes=("forward",)),
        dict(group="dense", name="E-DU dense block, encoder level 1 (32 -> 64 ch, batch 2)",
             make=lambda: DenseTransitionBlock(3, 32, 64), shape=(2, 32) + sp(48, 48, 32), passes=both),
        dict(group="dense", name="E-DU dense block, decoder level 3 (512 -> 256 ch, batch 2)",
             make=lambda: DenseTransitionBlock(3, 512, 256), shape=(2, 512) + sp(12, 12, 8), passes=both),
        dict(group="dense", name="E-DU dense block 2D (64 -> 32 ch, batch 2)",
             make=lambda: DenseTransitionBlock(2, 64, 32), shape=(2, 64) + sp(128, 128), passes=both),
        dict(group="network", name="E-DU 3D, shipped widths (32-512), one window, batch 1",
             make=lambda: EDU(3, 1, 2), shape=(1, 1) + sp(64, 64, 32), passes=("forward",)),
        dict(group="network", name="E-DU 3D, shipped widths (32-512), batch 2",
             make=lambda: EDU(3, 1, 2), shape=(2, 1) + sp(32, 32, 32), passes=("forward+backward",)),
    ]


# ------------------------------------------------------------------------------------------------------------ timing


def _runner(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, kind: str, bf16: bool) -> Callable[[], tuple]:
    """A function running one pass of ``module``; returns ``(output, input gradient or None)``."""
    if kind == "forward":
        module.eval()

        def run():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return module(x), None

        return run
    module.train()

    def run():
        for p in module.parameters():
            p.grad = None
        xi = x.detach().requires_grad_(True)
        y = module(xi)
        y.backward(grad)
        return y.detach(), xi.grad

    return run


def _saved_bytes(run: Callable[[], tuple]) -> int:
    """Bytes autograd saves for the backward pass of ``run`` (each storage once)."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(storages.values())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||: unlike the maximum, not dominated by the few ReLUs whose input is within rounding of 0."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def run_case(case: dict, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    module = case["make"]()
    bf16, channels_last = case.get("bf16", False), case.get("channels_last", False)
    old = as_old(module)
    new = forced_separable(module) if case.get("force_separable") else module
    g = torch.Generator().manual_seed(1)
    x = torch.randn(case["shape"], generator=g)
    if channels_last:
        fmt = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
        x = x.contiguous(memory_format=fmt)
        old, new = old.to(memory_format=fmt), new.to(memory_format=fmt)
    rows = []
    for kind in case["passes"]:
        with torch.no_grad():
            out_shape = new.eval()(x[:1]).shape[1:]
        grad = torch.randn((x.shape[0],) + tuple(out_shape), generator=g)
        runs = {"old": _runner(old, x, grad, kind, bf16), "new": _runner(new, x, grad, kind, bf16)}
        # the untimed first calls (operator matrices built, oneDNN primitives created) give the equality check
        bn_state = copy.deepcopy(new.state_dict()), copy.deepcopy(old.state_dict())
        (y_old, gx_old), (y_new, gx_new) = runs["old"](), runs["new"]()
        row = {"group": case["group"], "case": case["name"], "pass": kind, "input_shape": list(x.shape),
               "precision": "bf16 autocast" if bf16 else "fp32",
               "memory_format": "channels-last" if channels_last else "channels-first",
               "max_rel_diff_output": _rel(y_new, y_old)}
        if gx_old is not None:
            row["max_rel_diff_input_grad"] = _rel(gx_new, gx_old)
            row["rel_l2_diff_input_grad"] = _rel_l2(gx_new, gx_old)
        if case["group"] == "dense" and kind == "forward+backward":
            row["saved_for_backward_mb_old"] = _saved_bytes(runs["old"]) / 2**20
            row["saved_for_backward_mb_new"] = _saved_bytes(runs["new"]) / 2**20
        times = {"old": [], "new": []}
        for _ in range(repeats):
            for name in ("old", "new"):
                t0 = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - t0)
        new.load_state_dict(bn_state[0])  # undo the running-statistics updates of the timed training passes
        old.load_state_dict(bn_state[1])
        row.update(old_s=min(times["old"]), new_s=min(times["new"]), times_old_s=times["old"],
                   times_new_s=times["new"])
        row["speedup"] = row["old_s"] / row["new_s"]
        rows.append(row)
        print(f"{row['case']:<80} {kind:<17} old {row['old_s']:8.3f} s  new {row['new_s']:8.3f} s  "
              f"x{row['speedup']:5.2f}  diff {row['max_rel_diff_output']:.1e}", flush=True)
    return rows


def markdown(report: dict) -> str:
    meta = report["meta"]
    default_repeats = 2 if meta["quick"] else 3
    command = "python -m bench.separable_filters" + (" --quick" if meta["quick"] else "")
    command += f" --repeats {meta['repeats']}" if meta["repeats"] != default_repeats else ""
    lines = [
        "# Separable fixed filters and buffered dense blocks vs the implementations they replace",
        "",
        f"`{command}`: {meta['cpu']}, "
        f"torch {meta['torch']}, 1 thread, CPU. **The machine was shared with other jobs** (load average "
        f"{meta['load_before']} before, {meta['load_after']} after, on {meta['cores']} cores): absolute seconds are "
        "inflated and noisy; the speed-ups are ratios of the minimum of "
        f"{meta['repeats']} interleaved repeats (old, new, old, new, ...) measured in the same run.",
        "",
        "Old: every fixed Gaussian a full k^d depthwise convolution (backward: one more, flipped), every dense layer "
        "concatenating its input again. New: separable Gaussians as one banded matrix product per axis "
        "(backward: the transposed matrices), dense layers writing into one feature buffer. "
        "Output difference: max |new - old| / max |old|. Gradient difference: ||new - old|| / ||old|| of the input "
        "gradient, with the maximum relative difference in brackets. Gradient differences above 1e-5 (training mode "
        "only) come from ReLU units whose input lies within float32 rounding (1e-7) of zero and that switch between "
        "the two runs, taking their gradient with them: checked for the dense block 512 -> 256 (exactly one unit of "
        "1.6 M switches; the gradient it feeds into differs by 1e-3) and for MDE 2D, where float32 and float64 runs "
        "of the old code differ just as much and a finite difference lands between them. In float64, element by "
        "element (`tests/networks/test_separable_filters.py`), the dense blocks agree to 1e-15 and the filters to "
        "1e-7 of the largest value: the per-axis taps are the factors of the float32 kernel, whose entries are "
        "rounded products.",
        "",
        "Noise control: in 2D the new code keeps the full-kernel filters by default, so the 2D rows marked \"default\" "
        "and the ISIC FR rows run the same filter code twice; their spread around 1.00x is the noise of this run.",
        "",
    ]
    titles = {"filters": "Fixed filter blocks (MDE: Gaussians 3, 5, 7, 9 and the DoG sharpening, 1x1 fusion; "
                         "FRCU-Net FR: the DoG stack, level SE, 1x1 fusion)",
              "dense": "E-DU dense blocks (4 layers, growth = out / 4)",
              "network": "Whole E-DU (both changes)"}
    for group, title in titles.items():
        rows = [r for r in report["cases"] if r["group"] == group]
        if not rows:
            continue
        lines += [f"## {title}", ""]
        extra = group == "dense"
        head = "| case | input | pass | old s | new s | speed-up | diff out | diff grad (max) |"
        sep = "|---|---|---|---:|---:|---:|---:|---:|"
        if extra:
            head += " saved for backward MB old / new |"
            sep += "---:|"
        lines += [head, sep]
        for r in rows:
            shape = " x ".join(str(n) for n in r["input_shape"])
            grad = (f"{r['rel_l2_diff_input_grad']:.1e} ({r['max_rel_diff_input_grad']:.0e})"
                    if "max_rel_diff_input_grad" in r else "-")
            line = (f"| {r['case']} | {shape} | {r['pass']} | {r['old_s']:.3f} | {r['new_s']:.3f} | "
                    f"{r['speedup']:.2f}x | {r['max_rel_diff_output']:.1e} | {grad} |")
            if extra:
                saved = (f"{r['saved_for_backward_mb_old']:.0f} / {r['saved_for_backward_mb_new']:.0f}"
                         if "saved_for_backward_mb_old" in r else "-")
                line += f" {saved} |"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.separable_filters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="half the spatial sizes, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats per variant (default 3)")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results_separable_filters.{json,md}")
    args = parser.parse_args(argv)
    from pipelines.io import write_json_atomic, write_text_atomic

    torch.set_num_threads(1)
    repeats = args.repeats or (2 if args.quick else 3)
    load_before = [round(v, 2) for v in os.getloadavg()]
    rows = []
    for case in _cases(args.quick):
        if args.only in case["name"]:
            rows += run_case(case, repeats)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    report = {"meta": {"torch": torch.__version__, "cpu": cpu, "cores": os.cpu_count(), "threads": 1,
                       "repeats": repeats, "quick": args.quick, "shared_machine": True,
                       "load_before": load_before, "load_after": [round(v, 2) for v in os.getloadavg()]},
              "cases": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "results_separable_filters.json", report)
    write_text_atomic(args.out / "results_separable_filters.md", markdown(report))
    print(f"wrote {args.out / 'results_separable_filters.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
