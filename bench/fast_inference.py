"""Fast inference against plain fp32 sliding-window inference: time and Dice drift on a trained bundle.

    python -m bench.fast_inference [--bundle demo_run/lung_nodule_ct_edu_segmentation]
                                   [--data demo_run/data/LUNA16-test]

Needs a trained bundle and LUNA16-layout data with annotations (``make demo`` leaves both). Each variant runs
``pipelines.inference.BundleInferer`` over every scan; Dice is against the rasterised annotations, drift against
the fp32 predictions. Writes ``bench/results_fast_inference.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "fp32, sw_batch 4, overlap 0.5 (bundle default)": {"precision": "fp32", "overrides": {}},
    "bf16, sw_batch 4, overlap 0.5": {"precision": "bf16", "overrides": {}},
    "bf16, sw_batch 8, overlap 0.25": {"precision": "bf16", "overrides": {"sw_batch_size": 8, "overlap": 0.25}},
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
                                   precision=variant["precision"], tta=variant.get("tta", False))
            engine(items[0]["image"])  # warm-up
            seconds, dice, drift = 0.0, [], []
            for item in items:
                result = engine(item["image"])
                assert result.ok, result.error
                seconds += result.seconds
                pred = sitk.GetArrayFromImage(sitk.ReadImage(result.output)) > 0
                dice.append(_dice(pred, labels[item["seriesuid"]]))
                reference.setdefault(item["seriesuid"], pred)
                drift.append(1.0 - _dice(pred, reference[item["seriesuid"]]))
            report[name] = {"seconds": seconds, "mean_dice": float(np.mean(dice)), "dice_drift_vs_fp32": float(np.mean(drift))}
    base = next(iter(report.values()))["seconds"]
    for r in report.values():
        r["speedup_vs_fp32"] = base / r["seconds"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="demo_run/lung_nodule_ct_edu_segmentation")
    parser.add_argument("--data", default="demo_run/data/LUNA16-test")
    args = parser.parse_args()
    start = time.time()
    report = run(Path(args.bundle), Path(args.data))
    from pipelines.io import write_json_atomic, write_text_atomic

    lines = ["# Fast inference vs fp32 sliding window", "", f"Bundle {args.bundle}, scans in {args.data}.", "",
             "| variant | seconds | speed-up | mean Dice | Dice drift vs fp32 |", "|---|---:|---:|---:|---:|"]
    for name, r in report.items():
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['speedup_vs_fp32']:.2f} | {r['mean_dice']:.4f} | "
                     f"{r['dice_drift_vs_fp32']:.4f} |")
    write_json_atomic(HERE / "results_fast_inference.json", report)
    write_text_atomic(HERE / "results_fast_inference.md", "\n".join(lines) + "\n")
    print("\n".join(lines), f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
