"""The lung and BraTS bundles' shipped configurations through ``python -m monai.bundle run training`` at full size.

On the full-size synthetic data of :mod:`bench.data_scale` (run it first: this reuses its data and disk cache), each
shipped ``train.json`` is run as a user would, unchanged except for what makes a CPU run end in minutes and is given
on the command line: ``train#trainer#epoch_length`` (iterations per epoch), ``max_epochs 1`` and a ``val_interval``
beyond it (whole-volume validation of a full CT with the shipped E-DU takes the better part of an hour on this CPU).
The lung bundle's shipped 2 x 4 patches of 96 x 96 x 64 do not fit this machine: the run is expected to stop at its
memory plan with one line; it is then run with ``batch_size 1 num_samples 1`` to show the data path training.

Writes ``bench/results_shipped_training.{json,md}``.

    python -m bench.data_scale && python -m bench.shipped_training
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.data_scale import PeakMemory

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = Path("/tmp/bench_data_scale")
RUNS = [
    ("brats_mri_frcunet_segmentation", "brats", {}),
    ("lung_nodule_ct_edu_segmentation", "luna16", {}),
    ("lung_nodule_ct_edu_segmentation", "luna16", {"batch_size": 1, "num_samples": 1}),
]
QUICK = {"max_epochs": 1, "val_interval": 1000, "train#trainer#epoch_length": 2}


def _cache_dir(dataset: str) -> Path:
    """The bench's caches under the bundle's one ``cache_dir``: LUNA16 nodule masks and preprocessed entries at the
    paths bench.data_scale keyed them by."""
    root = WORK / dataset
    if dataset == "luna16":
        link = root / "masks" / "preprocessed"
        if not link.exists():
            link.symlink_to(root / "cache" / "preprocessed")
        return root / "masks"
    return root / "cache"


def run_one(bundle: str, dataset: str, extra: dict, out: Path) -> dict:
    b = REPO / "bundles" / bundle
    root = out / f"{bundle}-{len(extra)}"
    root.mkdir(parents=True, exist_ok=True)
    for name in ("configs", "docs"):
        if not (root / name).exists():
            (root / name).symlink_to(b / name)
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(b / "configs/metadata.json"),
            "--config_file", str(b / "configs/train.json"), "--logging_file", str(b / "configs/logging.conf"),
            "--bundle_root", str(root), "--dataset_dir", str(WORK / dataset / "data"),
            "--cache_dir", str(_cache_dir(dataset))]
    for k, v in {**QUICK, **extra}.items():
        args += [f"--{k}", json.dumps(v)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    with PeakMemory() as memory:
        proc = subprocess.run(args, capture_output=True, text=True, env=env)
    log = proc.stdout + proc.stderr
    plan = [ln.split(" - ")[-1] for ln in log.splitlines() if "memory plan: one training step" in ln]
    iterations = [ln for ln in log.splitlines() if "Epoch: 1/1, Iter: " in ln]
    return {"bundle": bundle, "overrides": {**QUICK, **extra}, "returncode": proc.returncode,
            "seconds": time.perf_counter() - start, "peak_pss_bytes": memory.peak,
            "memory_plan": plan[-1] if plan else None, "iterations_logged": len(iterations),
            "checkpoint": (root / "models" / "checkpoint.pt").is_file(), "tail": log[-1500:]}


def main() -> int:
    out = WORK / "shipped"
    results = [run_one(*r, out) for r in RUNS]
    (HERE / "results_shipped_training.json").write_text(json.dumps(results, indent=1))
    lines = ["# Shipped configurations at full size through `python -m monai.bundle run training`", "",
             "`python -m bench.shipped_training` (see its docstring): full-size synthetic data, the shipped "
             "`train.json`, CPU (2 cores, 24 GiB, shared), command-line overrides as listed.", "",
             "| bundle | overrides | exit | iterations | checkpoint | peak memory GiB | s | memory plan |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    for r in results:
        over = " ".join(f"`{k}={v}`" for k, v in r["overrides"].items())
        lines.append(f"| {r['bundle']} | {over} | {r['returncode']} | {r['iterations_logged']} | "
                     f"{'yes' if r['checkpoint'] else 'no'} | {r['peak_pss_bytes'] / 2**30:.2f} | {r['seconds']:.0f} | "
                     f"{r['memory_plan'] or ''} |")
    (HERE / "results_shipped_training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
