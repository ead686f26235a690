"""The main job on an embedded default: synthetic LUNA16 -> train the lung E-DU bundle -> evaluate -> infer.

Every step is what a user types: the data set is written in the real LUNA16 layout, training and evaluation run
through ``python -m monai.bundle run`` from another working directory, and inference through the same code as
``python -m pipelines infer``. To fit a few minutes on two CPU cores the demo trains a copy of the bundle whose
configs use a narrower E-DU, coarser voxels and fewer epochs; the copy is a complete bundle that can be run again.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipelines.bundle import derive_bundle
from pipelines.data.luna16 import read_annotations
from pipelines.inference import infer_volumes
from pipelines.io.geometry import affine_of, index_to_world

__all__ = ["DEMO_OVERRIDES", "Detection", "component_centroids", "nodule_detection", "run_demo", "summary_line"]

BUNDLE = "lung_nodule_ct_edu_segmentation"
REPO = Path(__file__).resolve().parents[1]

# what makes the demo fit two CPU cores; everything else is the bundle as shipped
DEMO_OVERRIDES = {
    "features": [8, 16, 32, 64, 128],
    "pixdim": [1.5, 1.5, 2.5],
    "patch_size": [48, 48, 32],
}
DEMO_TRAIN_OVERRIDES = {
    "max_epochs": 18,
    "learning_rate": 0.002,
    "num_samples": 2,
    "batch_size": 2,
    "num_workers": 2,
}


def _bundle_run(args: list[str], cwd: Path, log: Path) -> None:
    """Run ``python -m monai.bundle run ...`` as a user would, echoing its progress lines."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            if any(k in line for k in ("Epoch: ", "Metrics --", "resumed from", "Error", "error")):
                print("   ", line.rstrip().split(" - ")[-1], flush=True)
        if proc.wait() != 0:
            raise RuntimeError(f"'{' '.join(cmd[:5])} ...' failed with exit code {proc.returncode}; see {log}")


class Detection(NamedTuple):
    """What :func:`nodule_detection` counts over a data set."""

    found: int  # annotated nodules of at least the minimum diameter with a predicted component's centroid inside
    total: int  # annotated nodules of at least the minimum diameter
    false_positives: int  # predicted components whose centroid lies inside no annotated nodule (any diameter)
    scans: int  # scans with a prediction (the false positives are counted on these)

    @property
    def false_positives_per_scan(self) -> float:
        return self.false_positives / self.scans if self.scans else 0.0


def component_centroids(image: sitk.Image) -> np.ndarray:
    """World positions (x, y, z mm, ITK/LPS as SimpleITK gives) of the centroids of the connected components
    (26-connected) of ``image > 0``, one row per component.

    The centroid is taken in voxel indices and mapped through the image's origin, spacing and direction matrix
    (``world = origin + direction @ diag(spacing) @ index``), which is exact because that map is affine."""
    pred = sitk.GetArrayFromImage(image) > 0  # (z, y, x)
    labels, n = ndimage.label(pred, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return np.zeros((0, 3))
    zyx = np.asarray(ndimage.center_of_mass(pred, labels, index=np.arange(1, n + 1)), dtype=np.float64)
    return index_to_world(affine_of(image, lps_to_ras=False), zyx[:, ::-1])  # (x, y, z) indices, SimpleITK's order


def nodule_detection(dataset: Path, predictions: Path, min_diameter_mm: float = 8.0) -> Detection:
    """Count the annotated nodules found by the predictions' connected components, and the components that find none.

    A nodule counts as found when the centroid of a predicted connected component lies inside it (within
    ``diameter_mm / 2`` of its annotated world centre); a component that merely touches it does not count. Only
    nodules of at least ``min_diameter_mm`` are counted; a component whose centroid lies in no annotated nodule of
    any diameter is a false positive. The nodules of a scan without a prediction count as missed.
    """
    annotations = read_annotations(dataset / "annotations.csv")
    found = total = false_positives = scans = 0
    for scan in sorted(dataset.glob("subset*/*.mhd")):
        uid = scan.name[: -len(".mhd")]
        pred_file = predictions / f"{uid}_seg.nii.gz"
        nodules = annotations.get(uid, [])
        big = [n for n in nodules if n.diameter_mm >= min_diameter_mm]
        total += len(big)
        if not pred_file.exists():
            continue
        scans += 1
        centroids = component_centroids(sitk.ReadImage(str(pred_file)))
        if not nodules:
            false_positives += len(centroids)
            continue
        centres = np.asarray([n.center for n in nodules], dtype=np.float64)
        radii = np.asarray([n.diameter_mm / 2 for n in nodules], dtype=np.float64)
        # inside[c, n]: centroid of component c within nodule n
        inside = np.linalg.norm(centroids[:, None, :] - centres[None, :, :], axis=-1) <= radii[None, :]
        false_positives += int(np.sum(~inside.any(axis=1)))
        found += sum(bool(inside[:, i].any()) for i, n in enumerate(nodules) if n.diameter_mm >= min_diameter_mm)
    return Detection(found, total, false_positives, scans)


def summary_line(summary: dict, test_dice: float, detection: Detection, seconds: float) -> str:
    """The demo's one-line result."""
    return (f"demo: {BUNDLE} val_mean_dice={summary['best_metric']:.4f} (epoch {summary['best_metric_epoch']}) "
            f"test_mean_dice={test_dice:.4f} nodules_8mm_found={detection.found}/{detection.total} "
            f"false_positives_per_scan={detection.false_positives_per_scan:.2f} time={seconds:.0f}s")


def _metric(csv_path: Path, name: str) -> float:
    with csv_path.open() as f:
        for row in csv.reader(f):
            if row and row[0] == name:
                return float(row[1])
    raise ValueError(f"{csv_path}: no {name} row")


def run_demo(workdir: str = "demo_run", epochs: int | None = None, cases: int | None = None,
             fresh: bool = False) -> int:
    """Run the whole demo in ``workdir``; print one summary line at the end. Returns the exit code."""
    from pipelines.synth.luna16 import write_luna16

    start = time.time()
    work = Path(workdir).resolve()
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "demo.log"
    train_data, test_data = work / "data" / "LUNA16", work / "data" / "LUNA16-test"
    n_cases = cases or 16

    print(f"[1/5] synthetic LUNA16: {n_cases} training scans -> {train_data}, "
          f"4 held-out scans -> {test_data}", flush=True)
    if not (train_data / "annotations.csv").exists():
        write_luna16(train_data, cases=n_cases, seed=0)
    if not (test_data / "annotations.csv").exists():
        write_luna16(test_data, cases=4, seed=1000)

    bundle = work / BUNDLE
    train_overrides = dict(DEMO_TRAIN_OVERRIDES, **({"max_epochs": epochs} if epochs else {}))
    if not (bundle / "models" / "checkpoint.pt").exists():  # a finished or interrupted run is resumed, not redone
        derive_bundle(REPO / "bundles" / BUNDLE, bundle, DEMO_OVERRIDES, train_overrides)
    configs = bundle / "configs"
    common = ["--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf"),
              "--bundle_root", str(bundle)]

    print(f"[2/5] training {BUNDLE} ({train_overrides['max_epochs']} epochs) with python -m monai.bundle run training",
          flush=True)
    _bundle_run(["training", "--config_file", str(configs / "train.json"), "--dataset_dir", str(train_data), *common],
                cwd=work, log=log)
    summary = json.loads((bundle / "eval" / "train_summary.json").read_text())

    print("[3/5] evaluating the best checkpoint on the held-out scans", flush=True)
    test_eval = bundle / "eval" / "test"
    _bundle_run(["--config_file", json.dumps([str(configs / "train.json"), str(configs / "evaluate.json")]),
                 "--dataset_dir", str(test_data), "--eval_all", "true", "--output_dir", str(test_eval), *common],
                cwd=work, log=log)
    test_dice = _metric(test_eval / "metrics.csv", "val_mean_dice")

    print("[4/5] inference on the held-out scans (python -m pipelines infer)", flush=True)
    predictions = work / "predictions"
    results = infer_volumes(bundle, [str(test_data)], predictions, echo=lambda s: print("   ", s, flush=True))
    written = [r.output for r in results if r.ok]

    print("[5/5] nodules of 8 mm and more with a predicted component's centroid inside; components found nowhere",
          flush=True)
    detection = nodule_detection(test_data, predictions)

    print(
        summary_line(summary, test_dice, detection, time.time() - start) + "\n"
        f"  tensorboard: tensorboard --logdir {bundle / 'logs'}\n"
        f"  prediction:  {written[0] if written else 'none written'}",
        flush=True,
    )
    return 0 if written and len(written) == len(results) else 1
