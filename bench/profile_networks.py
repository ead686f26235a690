"""Where E-DU's and FRCU-Net's time goes: torch.profiler tables of the shipped networks, per precision and layout.

    python -m bench.profile_networks                      # both networks, one thread (27 minutes on a loaded core)
    python -m bench.profile_networks --render             # the Markdown again from profile_networks.json
    python -m bench.profile_networks --networks edu --roi 64 64 64 --rows 10

Each network is built from its bundle's ``configs/train.json`` (the shipped widths: the lung bundle's E-DU 32-512,
the BraTS bundle's FRCU-Net 3D 16-256 with 4 input channels and 3 regions) and run on one window of the bundle's
patch size (96 x 96 x 64 and 128 x 128 x 128; ``--roi`` sets another) in four variants: fp32, bf16 autocast, fp32 in
the channels-last 3D memory format and bf16 + channels-last (the fast path of ``--precision bf16``). Two passes:

* ``forward``: ``eval()`` under ``inference_mode``, as the sliding window runs it;
* ``train step``: ``train()``, forward and the bundle's loss under the variant's autocast, backward, AdamW step.

Every (pass, variant) runs once to warm up (oneDNN builds its kernels on first use) and once under
``torch.profiler`` with ``record_shapes``; its wall time is that profiled run's (the profiler adds microseconds per
operator to calls of milliseconds). From each profile:

* the top operators by self CPU time, grouped by operator, input shapes and input dtypes;
* the self time per kind of operator (convolution, matrix product, normalisation, elementwise, copies and
  concatenation, pooling and resampling, optimizer, other);
* under bf16 autocast, the self time by the dtype each operator received: bf16, fp32 (the "fp32 islands"), and the
  casts between them.

Writes ``bench/profile_edu.md``, ``bench/profile_frcunet.md`` and ``bench/profile_networks.json``. A block between
``<!-- notes -->`` and ``<!-- /notes -->`` in an existing Markdown file (the reading of the tables) is kept when the
file is written again.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
BUNDLES = HERE.parent / "bundles"

#: name -> (bundle folder, title, label kind): "index" (one channel of class indices) or "multilabel" (one per region)
NETWORKS = {
    "edu": ("lung_nodule_ct_edu_segmentation", "E-DU (lung bundle, widths 32-512)", "index"),
    "frcunet": ("brats_mri_frcunet_segmentation", "FRCU-Net 3D (BraTS bundle, widths 16-256)", "multilabel"),
}
#: variant -> (bf16 autocast, channels-last 3D)
VARIANTS = {"fp32": (False, False), "bf16 autocast": (True, False), "fp32 + channels-last": (False, True),
            "bf16 + channels-last": (True, True)}
PASSES = ("forward", "train step")

#: operator kinds for the summary, first match wins (patterns on the aten name without the ``aten::`` prefix)
KINDS = (
    ("convolution", r"conv|mkldnn_convolution"),
    ("matrix product", r"^(mm|bmm|matmul|addmm|baddbmm|linear)$"),
    ("normalisation", r"norm"),
    ("optimizer", r"^_foreach_|^_fused_adam"),
    ("copies, casts, concatenation", r"^(copy_|_to_copy|to|clone|contiguous|cat|stack|empty_like|index_put_|slice|"
                                     r"narrow|as_strided|fill_|zero_|zeros|ones)$"),
    ("pooling, resampling", r"pool|upsample|interpolate|grid_sampler"),
    ("elementwise", r"^(add|add_|sub|sub_|mul|mul_|div|div_|relu|relu_|leaky_relu|leaky_relu_|threshold_backward|"
                    r"leaky_relu_backward|sigmoid|sigmoid_|sigmoid_backward|softmax|_softmax|_softmax_backward_data|"
                    r"log_softmax|_log_softmax|_log_softmax_backward_data|exp|log|pow|sqrt|rsqrt|neg|abs|where|"
                    r"clamp|clamp_min|maximum|minimum|addcmul_|addcdiv_|lerp_|sum|mean|amax|max|gelu|elu|"
                    r"silu|prelu|mish|tanh|sign|eq|ne|gt|lt|ge|le|masked_fill|masked_fill_|nll_loss\w*|"
                    r"one_hot|scatter\w*|gather)$"),
)


def _parser(bundle: Path):
    from monai.bundle import ConfigParser

    from bench.ct_volume import bundle_config_files

    parser = ConfigParser()
    parser.read_config(bundle_config_files(bundle, "train"))
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')"})
    return parser


def _kind(name: str) -> str:
    op = name.split("::", 1)[-1]
    for kind, pattern in KINDS:
        if re.search(pattern, op):
            return kind
    return "other"


def _tensor_inputs(event) -> list[tuple[list[int], str]]:
    """(shape, dtype) of the tensor arguments of a profiler event (scalars, lists and absent arguments dropped)."""
    out = []
    for shape, dtype in zip(event.input_shapes or [], event.input_dtypes or []):
        if isinstance(shape, list) and shape and all(isinstance(s, int) for s in shape) and dtype not in (
                "Scalar", "ScalarList", "", "TensorList", "GenericList"):
            out.append((shape, dtype))
    return out


_SHORT_DTYPE = {"float": "fp32", "c10::BFloat16": "bf16", "c10::Half": "fp16", "double": "fp64", "long int": "i64",
                "int": "i32", "bool": "bool"}


def summarise(events, wall_s: float, rows: int) -> dict:
    """Top operators, time per kind and time per input dtype from a profile's events (self CPU time, microseconds)."""
    ops: dict[tuple, list] = defaultdict(lambda: [0.0, 0])
    kinds: dict[str, float] = defaultdict(float)
    dtypes: dict[str, float] = defaultdict(float)
    islands: dict[tuple, float] = defaultdict(float)
    total = 0.0
    for e in events:
        self_us = float(e.self_cpu_time_total)
        if self_us <= 0 or not e.name.startswith("aten::"):
            continue
        inputs = _tensor_inputs(e)
        shapes = ", ".join("x".join(map(str, s)) for s, _ in inputs)
        types = [_SHORT_DTYPE.get(d, d) for _, d in inputs]
        key = (e.name, shapes, "/".join(dict.fromkeys(types)))
        ops[key][0] += self_us
        ops[key][1] += 1
        kinds[_kind(e.name)] += self_us
        total += self_us
        floating = [t for t in types if t in ("fp32", "bf16", "fp16", "fp64")]
        op = e.name.split("::", 1)[-1]
        if op in ("copy_", "_to_copy") and len(set(floating)) > 1:
            dtypes["casts (copy between dtypes)"] += self_us
        elif not floating:
            dtypes["no floating input"] += self_us
        elif "bf16" in floating and "fp32" in floating:
            dtypes["bf16 with fp32 parameters"] += self_us
        elif floating[0] == "bf16":
            dtypes["bf16"] += self_us
        else:
            dtypes["fp32"] += self_us
            islands[(e.name, shapes)] += self_us
    top = sorted(ops.items(), key=lambda kv: -kv[1][0])[:rows]
    return {
        "wall_s": wall_s,
        "self_cpu_s": total / 1e6,
        "top": [{"op": k[0], "shapes": k[1], "dtypes": k[2], "calls": v[1], "self_s": v[0] / 1e6,
                 "share": v[0] / total if total else 0.0} for k, v in top],
        "kinds": {k: v / 1e6 for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "dtypes": {k: v / 1e6 for k, v in sorted(dtypes.items(), key=lambda kv: -kv[1])},
        "fp32_islands": [{"op": k[0], "shapes": k[1], "self_s": v / 1e6}
                         for k, v in sorted(islands.items(), key=lambda kv: -kv[1])[: max(rows // 2, 5)]],
    }


def _label(kind: str, out_channels: int, roi, generator):
    import torch

    if kind == "index":
        return (torch.rand(1, 1, *roi, generator=generator) > 0.95).float()
    return (torch.rand(1, out_channels, *roi, generator=generator) > 0.9).float()


def profile_network(name: str, roi: list[int] | None = None, rows: int = 12, echo=print) -> dict:
    """Profile one network of :data:`NETWORKS` in every variant and pass; see the module docstring."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    folder, title, label_kind = NETWORKS[name]
    parser = _parser(BUNDLES / folder)
    roi = list(roi or parser.get_parsed_content("patch_size"))
    in_channels = int(parser.get_parsed_content("network_def#in_channels"))
    out_channels = int(parser.get_parsed_content("network_def#out_channels"))
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    loss_fn = parser.get_parsed_content("loss")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_channels, *roi, generator=generator)
    y = _label(label_kind, out_channels, roi, generator)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    report = {"title": title, "bundle": folder, "roi": roi, "in_channels": in_channels,
              "parameters": sum(p.numel() for p in network.parameters()), "passes": {p: {} for p in PASSES}}
    for variant, (bf16, channels_last) in VARIANTS.items():
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        network.to(memory_format=fmt)
        xv = x.contiguous(memory_format=fmt)

        def autocast(bf16=bf16):
            return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

        def forward(xv=xv):
            network.eval()
            with torch.inference_mode(), autocast():
                network(xv)

        def train_step(xv=xv):
            network.train()
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn(network(xv).float(), y)
            loss.backward()
            optimizer.step()

        for pass_name, fn in zip(PASSES, (forward, train_step)):
            fn()  # warm-up
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                start = time.perf_counter()
                fn()
                wall = time.perf_counter() - start
            report["passes"][pass_name][variant] = summarise(prof.events(), wall, rows)
            echo(f"profile: {name} {pass_name} {variant}: {wall:.2f} s")
    network.to(memory_format=torch.contiguous_format)
    for variants in report["passes"].values():
        base = variants["fp32"]["wall_s"]
        for r in variants.values():
            r["speedup_vs_fp32"] = base / r["wall_s"]
    return report


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def findings(report: dict) -> list[str]:
    """Sentences computed from the profile: what dominates, the fp32 share under autocast, where channels-last pays."""
    out = []
    for pass_name, variants in report["passes"].items():
        fp32, bf16 = variants["fp32"], variants["bf16 autocast"]
        kinds = sorted(fp32["kinds"].items(), key=lambda kv: -kv[1])[:3]
        out.append(f"{pass_name}, fp32: " + ", ".join(f"{k} {_pct(v, fp32['self_cpu_s'])}" for k, v in kinds)
                   + f" of the self CPU time; top operator {fp32['top'][0]['op']} ({fp32['top'][0]['shapes']}) "
                   f"{100 * fp32['top'][0]['share']:.1f} %.")
        fp32_share = bf16["dtypes"].get("fp32", 0.0) + bf16["dtypes"].get("casts (copy between dtypes)", 0.0)
        island = bf16["fp32_islands"][0] if bf16["fp32_islands"] else None
        out.append(f"{pass_name}, bf16 autocast: {bf16['speedup_vs_fp32']:.2f}x fp32's speed; "
                   f"{_pct(fp32_share, bf16['self_cpu_s'])} of its self time is fp32 work or casts"
                   + (f", the largest fp32 island {island['op']} ({island['shapes']}, {island['self_s']:.2f} s)"
                      if island else "") + ".")
        cl32, cl16 = variants["fp32 + channels-last"], variants["bf16 + channels-last"]
        copies = "copies, casts, concatenation"
        out.append(f"{pass_name}, channels-last: fp32 {cl32['speedup_vs_fp32']:.2f}x, bf16 "
                   f"{cl16['speedup_vs_fp32']:.2f}x fp32 ({bf16['wall_s'] / cl16['wall_s']:.2f}x "
                   f"bf16 alone); convolution self time {cl32['kinds'].get('convolution', 0):.2f} s against "
                   f"{fp32['kinds'].get('convolution', 0):.2f} s in fp32, copies {cl32['kinds'].get(copies, 0):.2f}"
                   f" s against {fp32['kinds'].get(copies, 0):.2f} s.")
    return out


def markdown(report: dict, machine: dict, notes: str | None = None) -> str:
    roi = " x ".join(map(str, report["roi"]))
    lines = [
        f"# Profile: {report['title']}",
        "",
        f"`python -m bench.profile_networks` ({machine['cpu']}, bf16 instructions: "
        f"{', '.join(machine.get('bf16_instructions') or ['none'])}; {machine['threads']} thread(s) on a shared "
        f"{machine.get('cores', '?')}-core machine, load average "
        f"{machine.get('load_average_at_start', float('nan')):.1f} at the start; torch {machine['torch']}): "
        f"{report['parameters'] / 1e6:.2f} M parameters, one window of {report['in_channels']} x {roi}, built "
        f"from `bundles/{report['bundle']}/configs/train.json`. Forward: `eval()` under "
        "`inference_mode`; train step: forward + the bundle's loss + backward + AdamW, batch 1. Times are one "
        "profiled run after one warm-up; self CPU time is the time an operator spent outside the operators it "
        "called (their sum is the profiled CPU time).",
        "",
        "## What the profile shows",
        "",
    ]
    lines += [f"- {s}" for s in findings(report)]
    lines += ["", notes.strip() if notes else "<!-- notes -->\n<!-- /notes -->", ""]
    lines += ["## Wall time per variant", "", "| pass | variant | seconds | speed-up vs fp32 | self CPU s |",
              "|---|---|---:|---:|---:|"]
    for pass_name, variants in report["passes"].items():
        for variant, r in variants.items():
            lines.append(f"| {pass_name} | {variant} | {r['wall_s']:.2f} | {r['speedup_vs_fp32']:.2f} | "
                         f"{r['self_cpu_s']:.2f} |")
    kinds = list(dict.fromkeys(k for v in report["passes"].values() for r in v.values() for k in r["kinds"]))
    lines += ["", "## Self CPU time per kind of operator (seconds)", "",
              "| pass | variant | " + " | ".join(kinds) + " |", "|---|---|" + "---:|" * len(kinds)]
    for pass_name, variants in report["passes"].items():
        for variant, r in variants.items():
            lines.append(f"| {pass_name} | {variant} | " + " | ".join(f"{r['kinds'].get(k, 0.0):.2f}" for k in kinds)
                         + " |")
    lines += ["", "## fp32 islands under bf16 autocast", "",
              "Self CPU time by the dtype of the operator's floating-point inputs (\"bf16 with fp32 parameters\": "
              "e.g. batch norm of a bf16 map with fp32 weights).", "",
              "| pass | variant | bf16 | bf16 with fp32 parameters | fp32 | casts | no floating input |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for pass_name, variants in report["passes"].items():
        for variant in ("bf16 autocast", "bf16 + channels-last"):
            d = variants[variant]["dtypes"]
            total = variants[variant]["self_cpu_s"]
            cells = [d.get(k, 0.0) for k in ("bf16", "bf16 with fp32 parameters", "fp32",
                                              "casts (copy between dtypes)", "no floating input")]
            lines.append(f"| {pass_name} | {variant} | " + " | ".join(f"{c:.2f} s ({_pct(c, total)})" for c in cells)
                         + " |")
    for pass_name, variants in report["passes"].items():
        islands = variants["bf16 autocast"]["fp32_islands"]
        if islands:
            lines += ["", f"Largest fp32 operators under bf16 autocast, {pass_name}:", "",
                      "| operator | input shapes | self s |", "|---|---|---:|"]
            lines += [f"| {i['op']} | {i['shapes']} | {i['self_s']:.3f} |" for i in islands]
    lines += ["", "## Top operators by self CPU time"]
    for pass_name, variants in report["passes"].items():
        for variant, r in variants.items():
            lines += ["", f"### {pass_name}, {variant} ({r['wall_s']:.2f} s)", "",
                      "| operator | input shapes | dtypes | calls | self s | share |", "|---|---|---|---:|---:|---:|"]
            lines += [f"| {t['op']} | {t['shapes'] or '-'} | {t['dtypes'] or '-'} | {t['calls']} | {t['self_s']:.3f} | "
                      f"{100 * t['share']:.1f} % |" for t in r["top"]]
    return "\n".join(lines) + "\n"


def _kept_notes(path: Path) -> str | None:
    """The ``<!-- notes -->`` ... ``<!-- /notes -->`` block of an earlier version of ``path``, if any."""
    if not path.is_file():
        return None
    match = re.search(r"<!-- notes -->.*?<!-- /notes -->", path.read_text(), flags=re.S)
    return match.group(0) if match else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_networks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--roi", type=int, nargs=3, help="window size (default: each bundle's patch_size)")
    parser.add_argument("--rows", type=int, default=12, help="operators per top table")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE), help="folder for the results (default bench/)")
    parser.add_argument("--render", action="store_true",
                        help="only write the Markdown again from profile_networks.json (no profiling)")
    args = parser.parse_args(argv)
    import torch

    from pipelines.io import write_json_atomic, write_text_atomic

    out = Path(args.out)
    if args.render:
        saved = json.loads((out / "profile_networks.json").read_text())
        for name in args.networks:
            if name in saved["networks"]:
                path = out / f"profile_{name}.md"
                write_text_atomic(path, markdown(saved["networks"][name], saved["machine"], _kept_notes(path)))
                print(f"profile: wrote {path}")
        return 0

    torch.set_num_threads(args.threads)
    from bench.ct_volume import cpu_description

    machine = {**cpu_description(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "load_average_at_start": os.getloadavg()[0]}
    reports = {}
    for name in args.networks:
        reports[name] = profile_network(name, args.roi, args.rows)
        path = out / f"profile_{name}.md"
        write_text_atomic(path, markdown(reports[name], machine, _kept_notes(path)))
        print(f"profile: wrote {path}")
    previous = out / "profile_networks.json"  # a run of some networks keeps the others' earlier profiles
    kept = json.loads(previous.read_text()).get("networks", {}) if previous.is_file() else {}
    write_json_atomic(previous, {"machine": machine, "networks": {**kept, **reports}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
