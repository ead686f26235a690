"""Does HEMF classify skin lesions? Train a CPU-sized copy of the ISIC 2018 Task 3 classification bundle on synthetic
dermoscopy images and report its scores on held-out synthetic images (the figures of the bundle's README).

1. write a training set (seed 0) and a held-out set (seed 1) in the ISIC 2018 Task 3 layout, with the real class
   imbalance, with :func:`pipelines.synth.isic_cls.write_isic_cls`;
2. derive a CPU-sized bundle (:func:`pipelines.bundle.derive_bundle`: widths 32-256, one ELF / EGF block per stage,
   4 heads, 32 x 32 inputs, lr 1e-3, batch 16) and run ``python -m monai.bundle run training`` in a fresh process:
   ``--max-epochs`` epochs (the cosine schedule's length), stopped earlier at the first epoch end after ``--minutes``;
   the best-validation-macro-F1 ``model.pt`` is kept, as the bundle does;
3. ``evaluate.json`` with that ``model.pt`` on every held-out image (``split_fractions [0, 0, 1]``, so the whole
   held-out set is the test split): the bundle's own report, ``classification_summary.json`` (accuracy, balanced
   accuracy, macro-F1, mean AUC, MCC, kappa, per class).

Writes ``bench/results_hemf.json`` and ``bench/results_hemf.md``.

    python -m bench.hemf_classification [--minutes 15] [--max-epochs 30] [--threads 1]   # about 3 minutes of training
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench.bundle_runs import network_parameters, run_logged, time_limit_config, train_bundle, write_report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUNDLE = REPO / "bundles" / "isic_skin_hemf_classification"

#: CPU-sized: the shipped bundle is the paper's 68.27 M network at 224 x 224
OVERRIDES = {"widths": [32, 64, 128, 256], "elf_depths": 1, "egf_depths": 1, "num_heads": 4, "image_size": 32,
             "resize_size": 36, "num_workers": 0, "cache_rate": 1.0}
TRAIN_OVERRIDES = {"learning_rate": 0.001, "batch_size": 16, "crop_scale": [0.35, 1.0], "val_interval": 1}
IMAGE_SIZE = (48, 36)  # width x height, 4 : 3 as the real 600 x 450
SCORES = ("accuracy", "balanced_accuracy", "macro_f1", "mean_auc", "mcc", "kappa")


def evaluate_hemf(bundle: Path, data: Path, ckpt: Path, out: Path, log: Path, threads: int, work: Path) -> dict:
    """``evaluate.json`` over every image of ``data`` with the weights ``ckpt``; returns the report's
    ``classification_summary.json`` with the wall time added."""
    configs = bundle / "configs"
    command = [sys.executable, "-m", "monai.bundle", "run",
               "--config_file", json.dumps([str(configs / "train.json"), str(configs / "evaluate.json")]),
               "--logging_file", str(configs / "logging.conf"), "--bundle_root", str(bundle),
               "--dataset_dir", str(data), "--split_fractions", "[0.0, 0.0, 1.0]", "--ckpt_path", str(ckpt),
               "--output_dir", str(out)]
    seconds = run_logged(command, log, threads, work)
    summary = json.loads((out / "classification_summary.json").read_text())
    summary["seconds"] = round(seconds, 1)
    return summary


def run(work: Path, minutes: float, max_epochs: int, threads: int, train_images: int, heldout_images: int) -> dict:
    from pipelines.bundle import derive_bundle
    from pipelines.synth.isic_cls import write_isic_cls

    train_data, heldout = work / "train_data", work / "heldout_data"
    if not train_data.exists():
        write_isic_cls(train_data, images=train_images, size=IMAGE_SIZE, seed=0)
    if not heldout.exists():
        write_isic_cls(heldout, images=heldout_images, size=IMAGE_SIZE, seed=1)
    train_overrides = {**TRAIN_OVERRIDES, "max_epochs": max_epochs}
    bundle = derive_bundle(BUNDLE, work / "bundle", OVERRIDES, train_overrides)
    log = work / "log.txt"
    log.write_text("")
    train_bundle(bundle, train_data, time_limit_config(work / "limit.json", minutes * 60, bundle), {}, log, threads,
                 work)
    load = os.getloadavg()[1]  # the machine's load over the last 5 minutes of training (other jobs included)
    params = network_parameters(bundle)
    summary = evaluate_hemf(bundle, heldout, bundle / "models" / "model.pt", work / "eval", log, threads, work)
    train_summary = json.loads((bundle / "eval" / "train_summary.json").read_text())
    return {
        "overrides": {**OVERRIDES, **train_overrides},
        "parameters": params,
        "image_size": list(IMAGE_SIZE),
        "train_images": train_images,
        "heldout_images": summary["n"],
        "heldout_class_counts": {c["class"]: c["support"] for c in summary["per_class"]},
        "epochs": train_summary["epochs"],
        "iterations": train_summary["iterations"],
        "train_seconds": train_summary["seconds"],
        "best_val_macro_f1": train_summary.get("best_metric"),
        "best_val_epoch": train_summary.get("best_metric_epoch"),
        "heldout": {k: summary[k] for k in SCORES},
        "per_class": {c["class"]: {k: c[k] for k in ("precision", "recall", "f1", "auc")}
                      for c in summary["per_class"]},
        "threads": threads,
        "minutes_limit": minutes,
        "load_average_5min": round(load, 1),
        "command": f"python -m bench.hemf_classification --minutes {minutes:g} --max-epochs {max_epochs} "
                   f"--train-images {train_images} --heldout-images {heldout_images} --threads {threads}",
    }


def markdown(r: dict) -> str:
    h = r["heldout"]
    classes = list(r["per_class"])
    return "\n".join([
        "# ISIC 2018 Task 3 (synthetic) skin lesion classification on held-out images", "",
        f"Generated by `{r['command']}`: the bundle `isic_skin_hemf_classification`, CPU-sized "
        f"(`{json.dumps(r['overrides'])}`, {r['parameters'] / 1e6:.2f} M parameters), trained for "
        f"{r['train_seconds']:.0f} s ({r['epochs']} epochs, {r['iterations']} iterations, {r['threads']} thread(s)) "
        f"on {r['train_images']} synthetic images of {r['image_size'][0]} x {r['image_size'][1]} (its own 6 : 1 : 3 "
        "split: the validation tenth picks the best-macro-F1 `model.pt`), and evaluated by its own `evaluate.json` "
        f"on all {r['heldout_images']} held-out images written with another seed (`split_fractions [0, 0, 1]`). "
        f"Best validation macro-F1 {r['best_val_macro_f1']:.4f} at epoch {r['best_val_epoch']}. Training ran in a "
        f"fresh process with {r['threads']} OpenMP thread(s) and a {r['minutes_limit']:g}-minute limit ("
        + ("not reached: all epochs ran" if r["epochs"] >= r["overrides"]["max_epochs"] else
           f"reached: stopped after {r['epochs']} of {r['overrides']['max_epochs']} epochs")
        + f") on 2 CPU cores shared with other jobs (5-minute load average "
        f"{r['load_average_5min']}), so its wall time is this machine's at that load.", "",
        "| held-out | accuracy | balanced accuracy | macro-F1 | mean AUC | MCC | kappa |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| {r['heldout_images']} images | " + " | ".join(f"{h[k]:.4f}" for k in SCORES) + " |", "",
        "| class | images | precision | recall | F1 | AUC |", "|---|---:|---:|---:|---:|---:|",
        *(f"| {c} | {r['heldout_class_counts'][c]} | " + " | ".join(
            "-" if r['per_class'][c][k] is None else f"{r['per_class'][c][k]:.3f}"
            for k in ("precision", "recall", "f1", "auc")) + " |" for c in classes), "",
        ("Chance on this class balance: a majority-class (NV) predictor scores macro-F1 "
         f"{_majority_macro_f1(r['heldout_class_counts']):.3f}, random guesses in the class proportions about "
         f"{1 / len(classes):.3f}."), ""])


def _majority_macro_f1(counts: dict) -> float:
    """Macro-F1 of always predicting the largest class: its F1 is 2p / (1 + p), every other class scores 0."""
    p = max(counts.values()) / sum(counts.values())
    return 2 * p / (1 + p) / len(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hemf_classification"), help="data, bundle and logs")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time limit (a safety stop)")
    parser.add_argument("--max-epochs", type=int, default=30, help="epochs (the length of the cosine schedule)")
    parser.add_argument("--train-images", type=int, default=600)
    parser.add_argument("--heldout-images", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE, help="folder of results_hemf.json / results_hemf.md")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report = run(args.work, args.minutes, args.max_epochs, args.threads, args.train_images, args.heldout_images)
    write_report(args.out, "results_hemf", report, markdown)


if __name__ == "__main__":
    main()
