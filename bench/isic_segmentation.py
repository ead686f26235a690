"""Does FRCU-Net segment skin lesions in 2D, with this project's U-Net encoder and with the authors' Xception-65?
Train CPU-sized copies of the ISIC segmentation bundle with either encoder on synthetic ISIC 2018 Task 1 images, for the
same wall time, and report the paper's scores of each on the same held-out synthetic images.

1. write a training set (seed 0) and a held-out set (seed 1) in the ISIC 2018 Task 1 layout with
   :func:`pipelines.synth.isic.write_isic_seg`;
2. derive three CPU-sized bundles (:func:`pipelines.bundle.derive_bundle`; 64 x 64 inputs, as three trainings share
   the CPU; lr 1e-3, batch 8), each network at a quarter of its shipped widths: ``encoder="unet"`` (widths 16-256,
   FR 64 channels), ``encoder="xception"`` (Xception-65 widths 8-512 with all 16 middle blocks, reduction 256-128,
   FR 64, decoder 64-64-32-16-2) with the authors' Keras BatchNorm momentum (0.99), and the same with PyTorch's
   (``keras_bn=False``, 0.9: the running statistics catch up within a short run); train all at once (``python -m
   monai.bundle run training`` in fresh processes of ``--threads`` threads each, so that all see the same machine
   load), each stopped at the first epoch end after ``--minutes``;
3. ``evaluate.json`` (``eval_all=true``) with each best-validation ``model.pt`` on the held-out set: pooled Dice,
   Jaccard, sensitivity, specificity and accuracy over every pixel (the paper's protocol), and the per-image means.

Writes ``bench/results_isic.json`` and ``bench/results_isic.md``.

    python -m bench.isic_segmentation [--minutes 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.bundle_runs import evaluate_bundle, network_parameters, time_limit_config, train_bundle, write_report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUNDLE = REPO / "bundles" / "isic_skin_frcunet_segmentation"

COMMON = {"freq_channels": 64, "spatial_size": [64, 64], "num_workers": 0}
XCEPTION_DEF = {
    "_target_": "networks.FRCUNet",
    "spatial_dims": 2,
    "in_channels": 3,
    "out_channels": 1,
    "freq_channels": "@freq_channels",
    "gauss_kernel_sizes": "@gauss_kernel_sizes",
    "encoder": "@encoder",
    "xception_features": [8, 16, 32, 64, 182, 256, 384, 512],
    "middle_blocks": 16,
    "reduction_features": [256, 128],
    "decoder_features": [64, 64, 32, 16, 2],
}
#: CPU-sized, a quarter of each shipped network's widths (shipped: 31.3 M U-Net and 68.6 M Xception at 256 x 256)
VARIANTS = {
    "unet": {**COMMON, "encoder": "unet", "features": [16, 32, 64, 128, 256]},
    "xception": {**COMMON, "encoder": "xception", "network_def": XCEPTION_DEF},
    "xception_torch_bn": {**COMMON, "encoder": "xception", "network_def": {**XCEPTION_DEF, "keras_bn": False}},
}
LABELS = {"unet": '`encoder="unet"`', "xception": '`encoder="xception"`',
          "xception_torch_bn": '`encoder="xception", keras_bn=False`'}
TRAIN_OVERRIDES = {"learning_rate": 0.001, "batch_size": 8, "val_fraction": 0.2, "val_interval": 2,
                   "max_epochs": 100000}
POOLED = ("dice", "jaccard", "sensitivity", "specificity", "accuracy")


def _train(name: str, work: Path, train_data: Path, minutes: float, threads: int) -> Path:
    from pipelines.bundle import derive_bundle

    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    bundle = derive_bundle(BUNDLE, folder / "bundle", VARIANTS[name], TRAIN_OVERRIDES)
    log = folder / "log.txt"
    log.write_text("")
    limit = time_limit_config(folder / "limit.json", minutes * 60, bundle)
    train_bundle(bundle, train_data, limit, {}, log, threads, folder)
    return bundle


def _report(name: str, bundle: Path, heldout: Path, work: Path, threads: int) -> dict:
    folder = work / name
    summary = evaluate_bundle(bundle, heldout, bundle / "models" / "model.pt", folder / "eval", folder / "log.txt",
                              threads, folder)
    train_summary = json.loads((bundle / "eval" / "train_summary.json").read_text())
    return {
        "overrides": VARIANTS[name],
        "parameters": network_parameters(bundle),
        "heldout_images": summary["n_cases"],
        "epochs": train_summary["epochs"],
        "iterations": train_summary["iterations"],
        "train_seconds": train_summary["seconds"],
        "best_val_mean_dice": train_summary.get("best_metric"),
        "pooled_lesion": {k: summary["pooled"]["lesion"][k] for k in POOLED},
        "mean_per_image": {k: summary["summary"][k]["lesion"]["mean"] for k in ("dice", "iou")},
    }


def run(work: Path, minutes: float, threads: int, train_images: int, heldout_images: int) -> dict:
    from pipelines.synth.isic import write_isic_seg

    train_data, heldout = work / "train_data", work / "heldout_data"
    if not train_data.exists():
        write_isic_seg(train_data, cases=train_images, seed=0)
    if not heldout.exists():
        write_isic_seg(heldout, cases=heldout_images, seed=1)
    with ThreadPoolExecutor(len(VARIANTS)) as pool:  # the subprocesses run side by side
        futures = {name: pool.submit(_train, name, work, train_data, minutes, threads) for name in VARIANTS}
        bundles = {name: f.result() for name, f in futures.items()}
        futures = {name: pool.submit(_report, name, bundle, heldout, work, threads) for name, bundle in bundles.items()}
        variants = {name: f.result() for name, f in futures.items()}
    return {
        "train_overrides": TRAIN_OVERRIDES,
        "minutes": minutes,
        "train_images": train_images,
        "heldout_images": heldout_images,
        "threads": threads,
        "variants": variants,
    }


def markdown(r: dict) -> str:
    rows = []
    for name, v in r["variants"].items():
        p, m = v["pooled_lesion"], v["mean_per_image"]
        rows.append(f"| {LABELS[name]} | {v['parameters'] / 1e6:.2f} M | {v['train_seconds']:.0f} s | "
                    f"{v['epochs']} / {v['iterations']} | " + " | ".join(f"{p[k]:.4f}" for k in POOLED)
                    + f" | {m['dice']:.4f} |")
    sizes = "; ".join(f"`{name}`: `{json.dumps(v['overrides'])}`" for name, v in r["variants"].items())
    return "\n".join([
        "# ISIC 2018 Task 1 (synthetic) lesion segmentation on held-out images: FRCU-Net's two encoders", "",
        "Generated by `python -m bench.isic_segmentation`: the bundle `isic_skin_frcunet_segmentation` with "
        "`encoder=\"unet\"` (this project's U-Net around the authors' frequency re-calibration) and "
        "`encoder=\"xception\"` (the authors' network: Xception-65 DeepLabv3+ encoder, three-skip decoder), the "
        "latter with the authors' Keras BatchNorm momentum (0.99) and with PyTorch's (`keras_bn=False`), each "
        "CPU-sized at a quarter of its shipped widths, trained side by side in one process each of "
        f"{r['threads']} thread(s) for the same wall time ({r['minutes']:g} min, stopped at the first epoch end "
        f"after it) on {r['train_images']} synthetic images from random initialisation "
        f"(`{json.dumps(r['train_overrides'])}`), and evaluated by the bundle's own `evaluate.json` on "
        f"{r['heldout_images']} held-out images written with another seed, at the training size as the paper "
        "evaluates. Scores pooled over every pixel of the held-out set (lesion class).", "",
        "| network | parameters | trained | epochs / iterations | Dice (F1) | Jaccard | sensitivity | specificity "
        "| accuracy | mean Dice per image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows, "",
        "Keras's BatchNorm momentum 0.99 (PyTorch 0.01) moves the running statistics that evaluation uses by 1 % of "
        "each batch's: after n steps they hold 1 - 0.99^n of the data (here "
        + ", ".join(f"{LABELS[k]}: {v['iterations']} steps, {1 - 0.99 ** v['iterations']:.0%}"
                    for k, v in r["variants"].items() if k == "xception")
        + "), against 1 - 0.9^n with PyTorch's momentum; the authors trained about 15,000 steps (100 epochs of 1,815 "
        "images in batches of 12). Validation and the best checkpoint are chosen in evaluation mode, on those "
        "statistics.", "",
        f"Configurations: {sizes}.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/isic_segmentation"), help="data, bundles and logs")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time of each network")
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--heldout-images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2, help="threads of each training process")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of results_isic.json / results_isic.md")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report = run(args.work, args.minutes, args.threads, args.train_images, args.heldout_images)
    write_report(args.out, "results_isic", report, markdown)


if __name__ == "__main__":
    main()
