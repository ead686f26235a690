"""The ISIC FRCU-Net bundle: training, paper-style evaluation, PNG masks at each image's original size (its metadata,
network shape and standard ids: ``test_bundle_metadata.py``, with every bundle's)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from monai.bundle import ConfigWorkflow
from PIL import Image

from pipelines.bundle import workflow_configs
from pipelines.inference import infer_volumes
from tests.bundles.conftest import TINY_ISIC


def test_training_writes_best_model_and_tensorboard(trained_isic_bundle):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert (trained_isic_bundle / "models" / "model.pt").exists()
    assert (trained_isic_bundle / "models" / "checkpoint.pt").exists()
    events = EventAccumulator(str(trained_isic_bundle / "logs"))
    events.Reload()
    assert {"train_loss", "val_mean_dice", "train/lr"} <= set(events.Tags()["scalars"])
    assert "val/slices" in events.Tags()["images"]


def test_evaluation_reports_paper_metrics_pooled_and_per_image(trained_isic_bundle, isic_tiny, tmp_path):
    root, written = isic_tiny
    configs = trained_isic_bundle / "configs"
    workflow = ConfigWorkflow(config_file=[str(configs / "train.json"), str(configs / "evaluate.json")],
                              workflow_type="train", bundle_root=str(trained_isic_bundle), dataset_dir=str(root),
                              output_dir=str(tmp_path), eval_all=True)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert {r["case"] for r in rows} == {w.name for w in written}
    summary = json.loads((tmp_path / "summary.json").read_text())
    pooled = summary["pooled"]["lesion"]
    assert {"dice", "jaccard", "sensitivity", "specificity", "accuracy"} <= set(pooled)
    total = pooled["tp"] + pooled["fp"] + pooled["tn"] + pooled["fn"]
    assert total == len(written) * TINY_ISIC["spatial_size"][0] * TINY_ISIC["spatial_size"][1]
    assert pooled["accuracy"] == pytest.approx((pooled["tp"] + pooled["tn"]) / total)
    # specificity of the lesion = sensitivity of the background: the same pooled counts seen from the other side
    assert summary["pooled"]["background"]["sensitivity"] == pytest.approx(pooled["specificity"])


def test_inference_writes_png_masks_at_original_size(trained_isic_bundle, isic_tiny, tmp_path):
    root, written = isic_tiny
    configs = trained_isic_bundle / "configs"
    workflow = ConfigWorkflow(config_file=[str(p) for p in workflow_configs(configs.parent, "inference")],
                              workflow_type="infer",
                              bundle_root=str(trained_isic_bundle), dataset_dir=str(root), output_dir=str(tmp_path))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    for w in written:
        mask = Image.open(tmp_path / f"{w.name}_segmentation.png")
        assert mask.size == w.size and mask.mode == "L"
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    # the CLI path: image files and folders, a broken image reported while the others are written
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    results = infer_volumes(trained_isic_bundle, [written[0].image, broken], tmp_path / "cli", echo=lambda _: None)
    assert [r.ok for r in results] == [True, False] and "broken.jpg" in results[1].error
    assert Image.open(results[0].output).size == written[0].size
