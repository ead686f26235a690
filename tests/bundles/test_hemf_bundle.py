"""The ISIC HEMF classification bundle: train / evaluate / infer on tiny synthetic data, TensorBoard, the report files,
and ``run training`` from another directory (its metadata, network shape and standard ids:
``test_bundle_metadata.py``, with every bundle's)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from pipelines.bundle import workflow_configs
from tests.bundles.conftest import HEMF_BUNDLE, TINY_HEMF, TINY_HEMF_TRAIN  # noqa: F401


@pytest.fixture(scope="module")
def isic_tiny(isic_cls_tiny) -> tuple[Path, list]:
    """84 synthetic ISIC images of 40 x 32 with the real imbalance (every class 6 or more)."""
    return isic_cls_tiny


# trained_hemf_bundle: the session fixture of tests/conftest.py (shared with the export tests)


def test_training_writes_best_model_summary_and_tensorboard(trained_hemf_bundle):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    state = torch.load(trained_hemf_bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state["head.weight"].shape == (7, 128)  # a plain state dict
    checkpoint = torch.load(trained_hemf_bundle / "models" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert {"network", "optimizer", "lr_scheduler", "trainer", "evaluator_best", "best_saver"} <= set(checkpoint)
    assert [g["weight_decay"] for g in checkpoint["optimizer"]["param_groups"]] == [0.01, 0.0]
    summary = json.loads((trained_hemf_bundle / "eval" / "train_summary.json").read_text())
    assert summary["key_metric_name"] == "val_macro_f1" and summary["epochs"] == 1
    assert {"val_accuracy", "val_mean_auc", "val_macro_f1"} <= set(summary["last_metrics"])
    events = EventAccumulator(str(trained_hemf_bundle / "logs"))
    events.Reload()
    assert {"train_loss", "val_macro_f1", "val_mean_auc", "train/lr", "val/mcc", "val/auc_MEL"} <= \
        set(events.Tags()["scalars"])
    assert {"val/confusion_matrix", "val/roc_curves"} <= set(events.Tags()["images"])
    assert not list(trained_hemf_bundle.rglob("*.partial-*")), "no temporary file may be left behind"


def test_evaluation_writes_the_report_on_the_test_split(trained_hemf_bundle, isic_tiny):
    from pipelines.data.isic_cls import isic2018_datalist

    configs = trained_hemf_bundle / "configs"
    out = trained_hemf_bundle / "eval" / "test"
    workflow = ConfigWorkflow(config_file=[str(configs / "train.json"), str(configs / "evaluate.json")],
                              workflow_type="train", bundle_root=str(trained_hemf_bundle),
                              dataset_dir=str(isic_tiny[0]), output_dir=str(out))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    test_ids = sorted(i["id"] for i in isic2018_datalist(isic_tiny[0])["test"])
    rows = list(csv.DictReader(open(out / "probabilities.csv")))
    assert sorted(r["file"] for r in rows) == test_ids
    assert set(rows[0]) == {"file", "true_class", "predicted_class", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"}
    assert abs(sum(float(rows[0][c]) for c in ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")) - 1.0) < 1e-4
    summary = json.loads((out / "classification_summary.json").read_text())
    assert summary["split"] == "test" and summary["n"] == len(test_ids)
    for key in ("accuracy", "macro_f1", "mean_auc", "mcc", "balanced_accuracy"):
        assert summary[key] is not None and -1.0 <= summary[key] <= 1.0
    assert len(summary["per_class"]) == 7 and all(c["auc"] is not None for c in summary["per_class"])
    assert (out / "confusion_matrix.png").stat().st_size > 0 and (out / "roc_curves.png").stat().st_size > 0


def test_inference_on_a_folder_writes_a_predictions_csv(trained_hemf_bundle, isic_tiny, tmp_path):
    root, written = isic_tiny
    folder = tmp_path / "images"
    folder.mkdir()
    for item in written[:5]:
        shutil.copy(item["path"], folder / item["path"].name)
    configs = trained_hemf_bundle / "configs"
    workflow = ConfigWorkflow(config_file=[str(p) for p in workflow_configs(configs.parent, "inference")],
                              workflow_type="infer",
                              bundle_root=str(trained_hemf_bundle), dataset_dir=str(folder),
                              output_dir=str(tmp_path / "out"))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert [r["file"] for r in rows] == sorted(item["path"].name for item in written[:5])
    assert all(r["predicted_class"] in ISIC for r in rows)
    assert all(max(ISIC, key=lambda c: float(r[c])) == r["predicted_class"] for r in rows)


ISIC = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def test_a_class_missing_from_a_split_stops_training_with_a_clear_message(tiny_hemf_bundle, tmp_path):
    from pipelines.synth.isic_cls import write_isic_cls

    write_isic_cls(tmp_path, images=40, size=(16, 16), seed=0, min_per_class=2)  # DF, VASC: 2 images each
    configs = tiny_hemf_bundle / "configs"
    workflow = ConfigWorkflow(config_file=str(configs / "train.json"), workflow_type="train",
                              bundle_root=str(tmp_path / "b"), dataset_dir=str(tmp_path))
    with pytest.raises(Exception) as info:  # MONAI wraps the data layer's ValueError: look at the cause
        workflow.initialize()
        workflow.parser.get_parsed_content("datalist")
    error = info.value
    while error.__cause__ is not None:
        error = error.__cause__
    assert isinstance(error, ValueError) and "has none in validation" in str(error)


def test_run_training_from_another_directory(tiny_hemf_bundle, isic_tiny, tmp_path):
    """The documented command, from an unrelated working directory and without PYTHONPATH."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_hemf_bundle, bundle, ignore=shutil.ignore_patterns("models", "eval", "logs"))
    configs = bundle / "configs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(configs / "metadata.json"),
         "--config_file", str(configs / "train.json"), "--logging_file", str(configs / "logging.conf"),
         "--bundle_root", str(bundle), "--dataset_dir", str(isic_tiny[0]), "--max_epochs", "1"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (bundle / "models" / "model.pt").exists() and (bundle / "models" / "checkpoint.pt").exists()
    assert "val classification report" in proc.stdout + proc.stderr
    assert not list(elsewhere.iterdir()), "nothing may be written into the working directory"
