"""Fast inference against plain fp32 sliding-window inference: time and Dice drift on a trained bundle.

    python -m bench.fast_inference [--bundle demo_run/lung_nodule_ct_edu_segmentation]
                                   [--data demo_run/data/LUNA16-test]

Needs a trained bundle and LUNA16-layout data with annotations (``make demo`` leaves both). Each variant runs
``pipelines.inference.BundleInferer`` over every scan; Dice is against the rasterised annotations, drift against
the fp32 predictions.

A second table times the forward pass of the shipped (untrained, full-width) E-DU of the lung bundle on a batch of
its 96 x 96 x 64 windows in each precision and memory format, with the largest logit difference to fp32: what the fast
path gives where the network, not reading and resampling a small scan, dominates.

Writes ``bench/results_fast_inference.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "fp32, sw_batch 4, overlap 0.5 (bundle default)": {"precision": "fp32", "overrides": {}},
    "bf16 autocast": {"precision": "bf16", "overrides": {}, "channels_last": False},
    "bf16 + channels-last (fast path: --precision bf16)": {"precision": "bf16", "overrides": {}},
    "fp32 + channels-last": {"precision": "fp32", "overrides": {}, "channels_last": True},
    "bf16 + channels-last, sw_batch 8, overlap 0.25": {"precision": "bf16",
                                                      "overrides": {"sw_batch_size": 8, "overlap": 0.25}},
    "fp32 + mirror TTA": {"precision": "fp32", "overrides": {}, "tta": True},
}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    denominator = a.sum() + b.sum()
    return 1.0 if denominator == 0 else float(2 * np.logical_and(a, b).sum() / denominator)


def run(bundle: Path, data: Path) -> dict:
    import torch

    from pipelines.data.luna16 import luna16_datalist
    from pipelines.inference import BundleInferer

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        items = sum(luna16_datalist(data, Path(tmp) / "cache").values(), [])
        labels = {i["seriesuid"]: sitk.GetArrayFromImage(sitk.ReadImage(i["label"])) > 0 for i in items}
        report, reference = {}, {}
        for name, variant in VARIANTS.items():
            engine = BundleInferer(bundle, Path(tmp) / name.replace(" ", "_"), overrides=variant["overrides"],
                                   precision=variant["precision"], tta=variant.get("tta", False),
                                   channels_last=variant.get("channels_last"))
            engine(items[0]["image"])  # warm-up
            seconds, inferer_seconds, dice, drift = 0.0, 0.0, [], []
            for item in items:
                result = engine(item["image"])
                assert result.ok, result.error
                seconds += result.seconds
                inferer_seconds += result.inferer_seconds
                pred = sitk.GetArrayFromImage(sitk.ReadImage(result.output)) > 0
                dice.append(_dice(pred, labels[item["seriesuid"]]))
                reference.setdefault(item["seriesuid"], pred)
                drift.append(1.0 - _dice(pred, reference[item["seriesuid"]]))
            report[name] = {"seconds": seconds, "inferer_seconds": inferer_seconds, "mean_dice": float(np.mean(dice)),
                            "dice_drift_vs_fp32": float(np.mean(drift))}
    base = next(iter(report.values()))
    for r in report.values():
        r["speedup_vs_fp32"] = base["seconds"] / r["seconds"]
        r["inferer_speedup_vs_fp32"] = base["inferer_seconds"] / r["inferer_seconds"]
    return report


#: forward-pass variants of the shipped network: (autocast to bf16, channels-last)
NETWORK_VARIANTS = {"fp32": (False, False), "bf16 autocast": (True, False), "fp32 + channels-last": (False, True),
                    "bf16 + channels-last (fast path)": (True, True)}


def run_network(windows: int = 2, repeats: int = 2) -> dict:
    """Forward time of the shipped lung E-DU on ``windows`` windows of the bundle's patch size, per variant."""
    import torch
    from monai.bundle import ConfigParser

    from pipelines.bundle import workflow_configs
    from pipelines.inference import ChannelsLast

    torch.set_num_threads(2)
    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config([str(p) for p in workflow_configs(HERE.parent / "bundles" / "lung_nodule_ct_edu_segmentation")])
    network = parser.get_parsed_content("network_def").eval()
    x = torch.randn(windows, 1, *parser.get_parsed_content("patch_size"))
    report, reference = {}, None
    with torch.inference_mode():
        for name, (bf16, channels_last) in NETWORK_VARIANTS.items():
            net = ChannelsLast(copy.deepcopy(network), 3) if channels_last else network
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(x)  # warm-up
                start = time.perf_counter()
                for _ in range(repeats):
                    y = net(x).float()
                seconds = (time.perf_counter() - start) / repeats
            reference = y if reference is None else reference
            report[name] = {"seconds": seconds, "max_abs_logit_diff": float((y - reference).abs().max())}
    base = report["fp32"]["seconds"]
    for r in report.values():
        r["speedup_vs_fp32"] = base / r["seconds"]
    return {"windows": windows, "patch_size": list(x.shape[2:]),
            "parameters": sum(p.numel() for p in network.parameters()), "variants": report}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="demo_run/lung_nodule_ct_edu_segmentation")
    parser.add_argument("--data", default="demo_run/data/LUNA16-test")
    args = parser.parse_args()
    start = time.time()
    report = run(Path(args.bundle), Path(args.data))
    network = run_network()
    from pipelines.io import write_json_atomic, write_text_atomic

    lines = ["# Fast inference vs fp32 sliding window", "",
             f"Bundle {args.bundle}, scans in {args.data}, {torch_threads()} threads. Sliding window: the time in the "
             "inferer (network and stitching); end to end: reading, preprocessing, inference, inverting and writing.",
             "", "| variant | sliding window s | speed-up | end to end s | speed-up | mean Dice | Dice drift vs fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in report.items():
        lines.append(f"| {name} | {r['inferer_seconds']:.2f} | {r['inferer_speedup_vs_fp32']:.2f} | "
                     f"{r['seconds']:.2f} | {r['speedup_vs_fp32']:.2f} | {r['mean_dice']:.4f} | "
                     f"{r['dice_drift_vs_fp32']:.4f} |")
    lines += ["", f"Shipped E-DU network alone ({network['parameters'] / 1e6:.2f} M parameters, untrained), "
              f"{network['windows']} windows of {' x '.join(map(str, network['patch_size']))}, forward pass:", "",
              "| variant | seconds | speed-up | largest logit difference to fp32 |", "|---|---:|---:|---:|"]
    for name, r in network["variants"].items():
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['speedup_vs_fp32']:.2f} | {r['max_abs_logit_diff']:.2g} |")
    write_json_atomic(HERE / "results_fast_inference.json", {"pipeline": report, "network": network})
    write_text_atomic(HERE / "results_fast_inference.md", "\n".join(lines) + "\n")
    print("\n".join(lines), f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
