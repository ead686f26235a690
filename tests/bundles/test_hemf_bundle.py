"""The ISIC HEMF classification bundle: metadata, standard ids, train / evaluate / infer on tiny synthetic data,
TensorBoard, the report files, and ``run training`` from another directory."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from tests.bundles.conftest import HEMF_BUNDLE, TINY_HEMF, TINY_HEMF_TRAIN  # noqa: F401
from tests.conftest import REPO, load_schema


@pytest.fixture(scope="module")
def isic_tiny(isic_cls_tiny) -> tuple[Path, list]:
    """84 synthetic ISIC images of 40 x 32 with the real imbalance (every class 6 or more)."""
    return isic_cls_tiny


# trained_hemf_bundle: the session fixture of tests/conftest.py (shared with the export tests)


def test_metadata_is_valid_against_both_schemas():
    meta = json.loads((HEMF_BUNDLE / "configs" / "metadata.json").read_text())
    jsonschema.validate(meta, load_schema("meta_schema_20240725.json"))
    jsonschema.validate(meta, load_schema("meta_schema_20220324.json"))
    assert meta["version"] in meta["changelog"]
    requirements = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().split() if "==" in line)
    assert meta["monai_version"] == requirements["monai"] and meta["pytorch_version"] == requirements["torch"]
    assert meta["numpy_version"] == requirements["numpy"]
    for key in ("required_packages_version", "optional_packages_version"):
        for package, version in meta[key].items():
            assert requirements[package] == version, f"metadata pins {package} {version}, requirements.txt differs"
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == \
        json.loads((HEMF_BUNDLE / "configs" / "inference.json").read_text())["class_names"]
    assert (HEMF_BUNDLE / "LICENSE").read_text() == (REPO / "LICENSE").read_text()


def test_network_def_gives_the_declared_output_channels():
    meta = json.loads((HEMF_BUNDLE / "configs" / "metadata.json").read_text())
    parser = ConfigParser()
    parser.read_config(str(HEMF_BUNDLE / "configs" / "inference.json"))
    parser.update({k: TINY_HEMF[k] for k in ("widths", "elf_depths", "egf_depths", "num_heads")})  # same topology
    net = parser.get_parsed_content("network_def").eval()
    fmt = meta["network_data_format"]
    x = torch.zeros(2, fmt["inputs"]["image"]["num_channels"], 64, 64)  # "32*n" with n = 2
    with torch.no_grad():
        assert net(x).shape == (2, fmt["outputs"]["pred"]["num_channels"])


@pytest.mark.parametrize("config, workflow_type", [("train.json", "train"), ("inference.json", "infer")])
def test_standard_properties(config, workflow_type, tmp_path, isic_tiny):
    dataset = isic_tiny[0] if workflow_type == "train" else isic_tiny[0] / "ISIC2018_Task3_Training_Input"
    workflow = ConfigWorkflow(config_file=str(HEMF_BUNDLE / "configs" / config), workflow_type=workflow_type,
                              meta_file=str(HEMF_BUNDLE / "configs" / "metadata.json"), bundle_root=str(tmp_path),
                              dataset_dir=str(dataset), **{k: TINY_HEMF[k] for k in ("widths", "num_workers")})
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    for key in ("bundle_root", "device", "dataset_dir", "output_dir", "network_def"):
        assert key in workflow.parser
    if workflow_type == "train":
        for key in ("train#trainer", "train#trainer#max_epochs", "train#dataset", "validate#evaluator",
                    "val_interval", "training", "initialize", "run", "finalize"):
            assert key in workflow.parser
    else:
        for key in ("inferer", "evaluator"):
            assert key in workflow.parser


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
    workflow = ConfigWorkflow(config_file=str(configs / "inference.json"), workflow_type="infer",
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
