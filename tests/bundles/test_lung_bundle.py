"""The lung E-DU bundle: train / evaluate / infer workflows, TensorBoard, resume, the CLI (its metadata, network shape
and standard ids: ``test_bundle_metadata.py``, with every bundle's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from pipelines.bundle import workflow_configs


def test_training_writes_best_model_summary_and_tensorboard(trained_lung_bundle):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = trained_lung_bundle / "models" / "model.pt"
    state = torch.load(model, map_location="cpu", weights_only=True)
    assert "head.weight" in state  # a plain state dict, as the Model Zoo ships it
    checkpoint = torch.load(trained_lung_bundle / "models" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert {"network", "optimizer", "lr_scheduler", "trainer", "evaluator_best", "best_saver"} <= set(checkpoint)
    summary = json.loads((trained_lung_bundle / "eval" / "train_summary.json").read_text())
    assert summary["key_metric_name"] == "val_mean_dice" and summary["epochs"] == 1
    assert 0.0 <= summary["best_metric"] <= 1.0
    events = EventAccumulator(str(trained_lung_bundle / "logs"))
    events.Reload()
    assert {"train_loss", "val_mean_dice", "train/lr"} <= set(events.Tags()["scalars"])
    assert "val/slices" in events.Tags()["images"]
    image = events.Images("val/slices")[0]
    assert image.width == 3 * image.height or image.width > image.height  # CT | label | prediction panels
    assert not list(trained_lung_bundle.rglob("*.partial-*")), "no temporary file may be left behind"


def test_evaluation_writes_per_case_metrics(trained_lung_bundle, luna16_tiny):
    root, scans = luna16_tiny
    configs = trained_lung_bundle / "configs"
    out = trained_lung_bundle / "eval" / "all"
    workflow = ConfigWorkflow(
        config_file=[str(configs / "train.json"), str(configs / "evaluate.json")], workflow_type="train",
        bundle_root=str(trained_lung_bundle), dataset_dir=str(root), output_dir=str(out), eval_all=True,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    rows = (out / "val_mean_dice_raw.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(scans)  # header + one row per scan
    names = {line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()}
    assert {"val_mean_dice", "val_hd95"} <= names


def test_inference_workflow_output_overlays_its_input(trained_lung_bundle, luna16_tiny, tmp_path):
    root, scans = luna16_tiny
    configs = trained_lung_bundle / "configs"
    workflow = ConfigWorkflow(config_file=[str(p) for p in workflow_configs(configs.parent, "inference")],
                              workflow_type="infer",
                              bundle_root=str(trained_lung_bundle), dataset_dir=str(root), output_dir=str(tmp_path))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    for scan in scans:
        out = tmp_path / f"{scan.seriesuid}_seg.nii.gz"
        _assert_same_geometry(sitk.ReadImage(str(scan.path)), sitk.ReadImage(str(out)))
    assert len(list(tmp_path.glob("*_seg.nii.gz"))) == len(scans)  # lung masks are not inference inputs


def _assert_same_geometry(image: sitk.Image, pred: sitk.Image) -> None:
    assert pred.GetSize() == image.GetSize()
    assert np.allclose(pred.GetSpacing(), image.GetSpacing(), atol=1e-5)
    assert np.allclose(pred.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(pred.GetDirection(), image.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1}


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def test_run_training_from_another_directory_and_resume(tiny_lung_bundle, luna16_tiny, tmp_path):
    """The documented command, run from an unrelated working directory without PYTHONPATH; run again to resume."""
    root, _ = luna16_tiny
    bundle = tmp_path / "bundle"
    import shutil

    shutil.copytree(tiny_lung_bundle, bundle, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache"))
    configs = bundle / "configs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [sys.executable, "-m", "monai.bundle", "run", "training",
               "--meta_file", str(configs / "metadata.json"), "--config_file", str(configs / "train.json"),
               "--logging_file", str(configs / "logging.conf"), "--bundle_root", str(bundle),
               "--dataset_dir", str(root)]
    first = subprocess.run(command + ["--max_epochs", "1"], cwd=elsewhere, env=_clean_env(),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (bundle / "models" / "model.pt").exists()
    iterations = torch.load(bundle / "models" / "checkpoint.pt", weights_only=False)["trainer"]["iteration"]

    second = subprocess.run(command + ["--max_epochs", "2"], cwd=elsewhere, env=_clean_env(),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed from" in second.stdout + second.stderr
    assert "Epoch: 1/2" not in second.stdout + second.stderr, "the second run must continue, not restart"
    state = torch.load(bundle / "models" / "checkpoint.pt", weights_only=False)["trainer"]
    assert state["iteration"] == 2 * iterations and state["iteration"] // state["epoch_length"] == 2


def test_two_process_training_with_torchrun_on_cpu(tiny_lung_bundle, luna16_tiny, tmp_path):
    """multi_gpu_train.json under torchrun with gloo: identical weights on both ranks, rank 0 alone writes files."""
    import shutil

    root, _ = luna16_tiny
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_lung_bundle, bundle, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache"))
    configs = bundle / "configs"
    # test-only: every rank saves its weights at the end, so the test can compare them
    (tmp_path / "ranks.json").write_text(json.dumps({"finalize": [
        "$torch.save(@network.module.state_dict(), @bundle_root + '/rank' + str(torch.distributed.get_rank()) + '.pt')",
        "$@summary_writer.close()",
        {"_target_": "pipelines.distributed.end_process_group"},
    ]}))
    files = [str(configs / "train.json"), str(configs / "multi_gpu_train.json"), str(tmp_path / "ranks.json")]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "monai.bundle", "run", "training", "--config_file", json.dumps(files),
         "--bundle_root", str(bundle), "--dataset_dir", str(root), "--val_fraction", "0.5", "--max_epochs", "2"],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0 = torch.load(bundle / "rank0.pt", weights_only=True)
    rank1 = torch.load(bundle / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert len(list((bundle / "logs").glob("events.out.tfevents.*"))) == 1
    # hidden files (a run lock) aside; no temporary file of an interrupted write either
    assert sorted(p.name for p in (bundle / "models").iterdir() if not p.name.startswith(".")) == [
        "checkpoint.pt", "model.pt"]
    assert not list(bundle.rglob("*.partial-*"))
    # console statistics come from rank 0 only: one validation line per epoch
    assert (proc.stdout + proc.stderr).count("Metrics -- val_mean_dice") == 2
    checkpoint = torch.load(bundle / "models" / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(checkpoint["network"][k], rank0[k]) for k in rank0)  # rank 0 saved what both trained
    assert checkpoint["trainer"]["iteration"] == 2 * checkpoint["trainer"]["epoch_length"]
    # iteration statistics from rank 0 alone too: one line per iteration of its share of the data
    assert (proc.stdout + proc.stderr).count("Epoch: 2/2, Iter: ") == checkpoint["trainer"]["epoch_length"]
    parser = ConfigParser()  # the saved best model loads into a fresh network_def
    parser.read_config([str(p) for p in workflow_configs(configs.parent, "inference")])
    parser["bundle_root"] = str(bundle)
    parser.get_parsed_content("network_def").load_state_dict(
        torch.load(bundle / "models" / "model.pt", weights_only=True))


def test_network_swapped_by_a_config_override(tiny_lung_bundle, luna16_tiny, tmp_path):
    """Any segmentation network of the project replaces E-DU through ``network_def``, for training and inference."""
    import shutil

    from pipelines.inference import BundleInferer

    root, scans = luna16_tiny
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_lung_bundle, bundle, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache"))
    network = {"_target_": "networks.KerasResUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
               "features": 4}
    workflow = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), workflow_type="train",
                              bundle_root=str(bundle), dataset_dir=str(root), network_def=network)
    workflow.initialize()
    assert type(workflow.parser.get_parsed_content("network_def")).__name__ == "KerasResUNet"
    workflow.run()
    workflow.finalize()
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("bridge") or "aspp" in k or "stem" in k for k in state)  # ResUNet's, not E-DU's
    result = BundleInferer(bundle, tmp_path / "out", overrides={"network_def": network})(scans[0].path)
    assert result.ok, result.error
    _assert_same_geometry(sitk.ReadImage(str(scans[0].path)), sitk.ReadImage(result.output))


def test_a_step_that_cannot_fit_is_refused_before_the_first_iteration(tiny_lung_bundle, luna16_tiny, tmp_path):
    """``memory_budget_gb`` caps the memory plan: training stops at Events.STARTED with the one-line estimate,
    before any iteration, checkpoint or model is written."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_lung_bundle, bundle, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache"))
    configs = bundle / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"), workflow_type="train",
        bundle_root=str(bundle), dataset_dir=str(luna16_tiny[0]), memory_budget_gb=0.001,
        memory_plan=True,  # the tiny copies switch the plan off (tests/conftest.py)
    )
    workflow.initialize()
    with pytest.raises(RuntimeError) as refused:
        workflow.run()
    cause = refused.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    message = str(cause)
    assert "\n" not in message and message.startswith("memory plan: one training step of ")
    assert "of 2 x 1 patches of 32x32x16 on cpu needs an estimated " in message  # TINY_LUNG's batch and patch
    assert "but the budget is memory_budget_gb 0.001; not even one patch fits: lower " in message
    assert all(name in message for name in ("batch_size", "num_samples", "patch_size"))
    assert workflow.parser.get_parsed_content("train#trainer").state.iteration == 0
    assert not (bundle / "models" / "checkpoint.pt").exists() and not (bundle / "models" / "model.pt").exists()
