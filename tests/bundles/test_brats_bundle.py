"""The BraTS FRCU-Net bundle: train / evaluate / infer, both label conventions, the CLI path (its metadata, network
shape and standard ids: ``test_bundle_metadata.py``, with every bundle's)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import SimpleITK as sitk
import torch
from monai.bundle import ConfigWorkflow

from pipelines.bundle import workflow_configs
from pipelines.data.brats import CONVENTIONS
from pipelines.inference import infer_volumes


def test_training_writes_best_model_and_tensorboard_per_region(trained_brats_bundle):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    state = torch.load(trained_brats_bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert "final_conv.weight" in state  # a plain state dict, as the Model Zoo ships it
    checkpoint = torch.load(trained_brats_bundle / "models" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert {"network", "optimizer", "lr_scheduler", "trainer", "evaluator_best"} <= set(checkpoint)
    events = EventAccumulator(str(trained_brats_bundle / "logs"))
    events.Reload()
    assert {"train_loss", "val_mean_dice", "val_dice_tc", "val_dice_wt", "val_dice_et", "train/lr"} <= set(
        events.Tags()["scalars"])
    assert "val/slices" in events.Tags()["images"]
    summary = json.loads((trained_brats_bundle / "eval" / "train_summary.json").read_text())
    assert summary["key_metric_name"] == "val_mean_dice" and 0.0 <= summary["best_metric"] <= 1.0


def test_evaluation_writes_per_case_dice_and_hd95_per_region(trained_brats_bundle, brats_tiny, tmp_path):
    root, cases = brats_tiny
    configs = trained_brats_bundle / "configs"
    workflow = ConfigWorkflow(config_file=[str(configs / "train.json"), str(configs / "evaluate.json")],
                              workflow_type="train", bundle_root=str(trained_brats_bundle), dataset_dir=str(root),
                              output_dir=str(tmp_path), eval_all=True)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert {r["case"] for r in rows} == {c.case for c in cases}
    assert {r["class"] for r in rows} == {"TC", "WT", "ET", "all"}
    assert list(rows[0]) == ["case", "class", "dice", "hd95"]
    dice = [float(r["dice"]) for r in rows if r["class"] != "all"]
    assert all(0.0 <= d <= 1.0 for d in dice if not np.isnan(d))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_cases"] == len(cases) and set(summary["summary"]["dice"]) == {"TC", "WT", "ET"}
    assert summary["summary"]["hd95"]["WT"]["n"] + summary["summary"]["hd95"]["WT"]["nan_count"] == len(cases)


def _check_label_map(case_dir, out, naming):
    reference = sitk.ReadImage(str(next(case_dir.glob(f"*{CONVENTIONS[naming].modalities[0]}.nii.gz"))))
    pred = sitk.ReadImage(str(out))
    assert pred.GetSize() == reference.GetSize()
    assert np.allclose(pred.GetSpacing(), reference.GetSpacing()) and np.allclose(pred.GetOrigin(),
                                                                                   reference.GetOrigin())
    assert np.allclose(pred.GetDirection(), reference.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(pred)).tolist()) <= set(CONVENTIONS[naming].labels)


def test_inference_workflow_writes_one_label_map_per_case(trained_brats_bundle, brats_tiny, tmp_path):
    root, cases = brats_tiny
    configs = trained_brats_bundle / "configs"
    workflow = ConfigWorkflow(config_file=[str(p) for p in workflow_configs(configs.parent, "inference")],
                              workflow_type="infer",
                              bundle_root=str(trained_brats_bundle), dataset_dir=str(root), output_dir=str(tmp_path))
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    workflow.run()
    workflow.finalize()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{c.case}.nii.gz" for c in cases)
    for case in cases:
        _check_label_map(case.folder, tmp_path / f"{case.case}.nii.gz", "2021")


def test_cli_path_on_2023_cases_with_a_forced_enhancing_prediction(trained_brats_bundle, brats2023_tiny, tmp_path):
    """``infer_volumes`` (``python -m pipelines infer``) on case folders: 2023 labels, and a bad case reported."""
    root, cases = brats2023_tiny
    data = tmp_path / "data"
    shutil.copytree(root, data)
    broken = data / "BraTS-GLI-09999-000"
    shutil.copytree(cases[0].folder, broken)
    for path in broken.iterdir():
        path.rename(broken / path.name.replace(cases[0].case, broken.name))
    (broken / f"{broken.name}-t2f.nii.gz").unlink()
    # bias the head so that every brain voxel is predicted in all three regions: the output must say ET = 3
    weights = tmp_path / "biased.pt"
    state = torch.load(trained_brats_bundle / "models" / "model.pt", weights_only=True)
    state["final_conv.bias"] = torch.full_like(state["final_conv.bias"], 50.0)
    torch.save(state, weights)
    lines = []
    results = infer_volumes(trained_brats_bundle, [data / c.case for c in cases] + [broken], tmp_path / "out",
                            weights=weights, overrides={"device": "$torch.device('cpu')"}, echo=lines.append)
    failed = [r for r in results if not r.ok]
    assert len(results) == 3 and len(failed) == 1  # the broken case is reported, the others still run
    assert "BraTS-GLI-09999-000" in failed[0].error and "missing modality FLAIR" in failed[0].error
    for case in cases:
        out = tmp_path / "out" / f"{case.case}.nii.gz"
        _check_label_map(case.folder, out, "2023")
        # ET everywhere in the brain crop (written as 3, not 4), background outside it after Invertd's padding
        values = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out)))).tolist())
        assert 3 in values and values <= {0, 3}


def test_run_training_from_another_directory(tiny_brats_bundle, brats_tiny, tmp_path):
    root, _ = brats_tiny
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_brats_bundle, bundle, ignore=shutil.ignore_patterns("models", "eval", "logs"))
    configs = bundle / "configs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(configs / "metadata.json"),
         "--config_file", str(configs / "train.json"), "--logging_file", str(configs / "logging.conf"),
         "--bundle_root", str(bundle), "--dataset_dir", str(root), "--max_epochs", "1"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (bundle / "models" / "model.pt").exists() and (bundle / "models" / "checkpoint.pt").exists()
