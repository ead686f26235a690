"""The SE-ESRGAN super-resolution bundles (2D ultrasound x4, 3D CT slice axis x2): the network options by override,
two-phase GAN training, TensorBoard, resume from another directory, torchrun on CPU, evaluation reports, inference
through the CLI with exact output geometry, and bad inputs (their metadata, scaled output shape, network and standard
ids: ``test_bundle_metadata.py``, with every bundle's)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from pipelines.bundle import workflow_configs
from tests.conftest import (
    CT_SR_BUNDLE,
    SR_BUNDLES,
    TINY_SR,
    US_SR_BUNDLE,
)

US_BUNDLE, CT_BUNDLE = US_SR_BUNDLE, CT_SR_BUNDLE
BUNDLES = SR_BUNDLES
TINY = TINY_SR  # the configurations, defined in tests/conftest.py beside the session fixtures that use them


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return env


def _copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache"))
    return dst


# ------------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# the data sets and bundles are the session fixtures of tests/conftest.py (the export tests use them too)
@pytest.fixture(scope="module")
def us_data(us_sr_tiny) -> tuple[Path, list[Path]]:
    return us_sr_tiny


@pytest.fixture(scope="module")
def ct_data(ct_sr_tiny) -> tuple[Path, list]:
    return ct_sr_tiny


@pytest.fixture(scope="module")
def data(us_data, ct_data) -> dict:
    return {"us": us_data, "ct": ct_data}


@pytest.fixture(scope="module")
def tiny_bundles(tiny_sr_bundles) -> dict[str, Path]:
    return tiny_sr_bundles


@pytest.fixture(scope="module")
def trained(trained_sr_bundles) -> dict[str, Path]:
    """Both tiny bundles trained in process for 2 epochs: 1 PSNR-oriented + 1 GAN."""
    return trained_sr_bundles


# ------------------------------------------------------------------------------------------------------------- network
def test_plain_esrgan_and_ct_x4_by_override():
    parser = ConfigParser()
    parser.read_config([str(p) for p in workflow_configs(US_BUNDLE, "inference")])
    parser.update({"nf": 8, "gc": 8, "nb": 1, "se": False})
    net = parser.get_parsed_content("network_def")
    assert isinstance(net.se, torch.nn.Identity)
    assert net.interpolation_skip == "bicubic"  # shipped: the residual to bicubic; null gives the published generator
    parser.update({"interpolation_skip": None})
    assert parser.get_parsed_content("network_def", lazy=False).interpolation_skip is None
    parser = ConfigParser()
    parser.read_config([str(p) for p in workflow_configs(CT_BUNDLE, "inference")])
    parser.update({"nf": 8, "gc": 8, "nb": 1, "scale": [1, 1, 4]})
    net = parser.get_parsed_content("network_def")
    assert net.interpolation_skip == "trilinear"
    with torch.no_grad():
        y = net(torch.zeros(1, 1, 8, 8, 4))
    assert y.shape == (1, 1, 8, 8, 16)


# ------------------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_training_writes_models_phase_checkpoint_and_tensorboard(trained, name):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    bundle = trained[name]
    models = bundle / "models"
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == [  # a run lock aside
        "checkpoint.pt", "model.pt", "model_final.pt"]
    for file in ("model.pt", "model_final.pt"):
        state = torch.load(models / file, map_location="cpu", weights_only=True)
        assert "conv_first.weight" in state and "se.fc.0.weight" in state  # a plain generator state dict
    checkpoint = torch.load(models / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert {"generator", "discriminator", "g_optimizer", "d_optimizer", "g_lr_scheduler", "trainer",
            "evaluator_best", "best_saver"} <= set(checkpoint)
    state = checkpoint["trainer"]
    assert state["phase"] == "gan" and state["iteration"] // state["epoch_length"] == 2
    summary = json.loads((bundle / "eval" / "train_summary.json").read_text())
    assert summary["key_metric_name"] == "val_psnr" and summary["epochs"] == 2
    assert {"val_psnr_interp", "val_ssim", "val_ssim_interp"} <= set(summary["last_metrics"])
    events = EventAccumulator(str(bundle / "logs"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train_g_loss", "train_d_loss", "train_g_pixel", "train_g_gan", "train_g_content", "val_psnr",
            "val_psnr_interp", "val_ssim", "val_mse", "train/lr_g", "train/lr_d"} <= scalars
    d_loss = [e.value for e in events.Scalars("train_d_loss")]
    assert d_loss[0] == 0.0 and d_loss[-1] > 0.0  # discriminator idle in the PSNR phase, trained in the GAN phase
    assert "val/lr_sr_hr" in events.Tags()["images"]
    image = events.Images("val/lr_sr_hr")[-1]
    assert image.width > image.height  # LR | SR | HR side by side
    assert not list(bundle.rglob("*.partial-*"))


def test_run_training_from_another_directory_and_resume_keeps_the_phase(tiny_bundles, us_data, tmp_path):
    """The documented command, from an unrelated working directory without PYTHONPATH; run again to resume."""
    bundle = _copy(tiny_bundles["us"], tmp_path / "bundle")
    configs = bundle / "configs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [sys.executable, "-m", "monai.bundle", "run", "training",
               "--meta_file", str(configs / "metadata.json"), "--config_file", str(configs / "train.json"),
               "--logging_file", str(configs / "logging.conf"), "--bundle_root", str(bundle),
               "--dataset_dir", str(us_data[0])]
    first = subprocess.run(command + ["--max_epochs", "2"], cwd=elsewhere, env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    state = torch.load(bundle / "models" / "checkpoint.pt", weights_only=False)["trainer"]
    assert state["phase"] == "gan" and state["iteration"] // state["epoch_length"] == 2
    iterations = state["iteration"]

    second = subprocess.run(command + ["--max_epochs", "3"], cwd=elsewhere, env=_env(), capture_output=True,
                            text=True, timeout=300)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert "resumed from" in log
    assert "Epoch: 1/3" not in log and "Epoch: 3/3" in log, "the second run must continue, not restart"
    assert "training phase 'gan'" in log and "'psnr'" not in log
    state = torch.load(bundle / "models" / "checkpoint.pt", weights_only=False)["trainer"]
    assert state["phase"] == "gan" and state["iteration"] == iterations * 3 // 2
    assert not list(elsewhere.iterdir()), "nothing may be written to the working directory"


@pytest.mark.parametrize("name, port", [("us", 29561), ("ct", 29562)])
def test_two_process_gan_training_with_torchrun_on_cpu(tiny_bundles, data, name, port, tmp_path):
    """multi_gpu_train.json under torchrun with gloo through both phases: DDP generator and discriminator, identical
    weights on both ranks, rank 0 alone writes files, and the saved generator loads into network_def."""
    bundle = _copy(tiny_bundles[name], tmp_path / "bundle")
    configs = bundle / "configs"
    # test-only: every rank saves both networks at the end, so the test can compare them
    (tmp_path / "ranks.json").write_text(json.dumps({"finalize": [
        "$torch.save({'g': @network.module.state_dict(), 'd': dict(@discriminator.module.named_parameters())}, "
        "@bundle_root + '/rank' + str(torch.distributed.get_rank()) + '.pt')",
        "$@summary_writer.close()",
        {"_target_": "pipelines.distributed.end_process_group"},
    ]}))
    files = [str(configs / "train.json"), str(configs / "multi_gpu_train.json"), str(tmp_path / "ranks.json")]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
         "-m", "monai.bundle", "run", "training", "--config_file", json.dumps(files),
         "--bundle_root", str(bundle), "--dataset_dir", str(data[name][0]),
         "--val_fraction", str(TINY[name][1]["val_fraction"]), "--max_epochs", "2", "--pretrain_epochs", "1"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    rank0 = torch.load(bundle / "rank0.pt", weights_only=True)
    rank1 = torch.load(bundle / "rank1.pt", weights_only=True)
    for net in ("g", "d"):
        assert rank0[net].keys() == rank1[net].keys() and len(rank0[net]) > 0
        assert all(torch.equal(rank0[net][k], rank1[net][k]) for k in rank0[net]), net
    assert len(list((bundle / "logs").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (bundle / "models").iterdir() if not p.name.startswith(".")) == [
        "checkpoint.pt", "model.pt", "model_final.pt"]  # hidden files (a run lock) aside
    assert not list(bundle.rglob("*.partial-*"))
    checkpoint = torch.load(bundle / "models" / "checkpoint.pt", weights_only=False)
    assert checkpoint["trainer"]["phase"] == "gan"
    assert checkpoint["trainer"]["iteration"] == 2 * checkpoint["trainer"]["epoch_length"]
    assert log.count("Metrics -- val_mse") == 2  # console statistics from rank 0 only: one line per epoch
    per_rank = checkpoint["trainer"]["epoch_length"]  # and one line per iteration of rank 0's share of the data
    assert log.count("Epoch: 1/2, Iter: ") == log.count("Epoch: 2/2, Iter: ") == per_rank, log[-3000:]
    assert "switching training phase from 'psnr' to 'gan'" in log
    # the generator rank 0 saved at the end is the one both ranks trained, and it loads into a fresh network_def
    final = torch.load(bundle / "models" / "model_final.pt", weights_only=True)
    assert final.keys() == rank0["g"].keys() and all(torch.equal(final[k], rank0["g"][k]) for k in final)
    parser = ConfigParser()
    parser.read_config([str(p) for p in workflow_configs(configs.parent, "inference")])
    parser["bundle_root"] = str(bundle)
    parser.get_parsed_content("network_def").load_state_dict(
        torch.load(bundle / "models" / "model.pt", weights_only=True))


# ---------------------------------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_evaluation_writes_per_case_csv_and_summary_with_interpolation(trained, data, name):
    bundle = trained[name]
    root, cases = data[name]
    out = bundle / "eval" / "all"
    workflow = ConfigWorkflow(
        config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")],
        workflow_type="train", bundle_root=str(bundle), dataset_dir=str(root), output_dir=str(out), eval_all=True,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    assert header == ["case", "val_psnr", "val_ssim", "val_mse", "val_psnr_interp", "val_ssim_interp",
                      "val_mse_interp"]
    assert len(rows) == 1 + len(cases)
    names = {r.rsplit(",", 6)[0] for r in rows[1:]}
    expected = ({p.relative_to(root).as_posix() for p in cases} if name == "us" else {s.seriesuid for s in cases})
    assert names == expected
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == len(cases)
    psnr = [float(r.split(",")[-6]) for r in rows[1:]]
    assert summary["metrics"]["val_psnr"]["mean"] == pytest.approx(np.mean(psnr), rel=1e-4)
    for base in ("psnr", "ssim", "mse"):
        assert summary["gain"][base] == pytest.approx(
            summary["metrics"][f"val_{base}"]["mean"] - summary["metrics"][f"val_{base}_interp"]["mean"], abs=1e-4)
    assert 0 < summary["metrics"]["val_ssim_interp"]["mean"] <= 1


# ----------------------------------------------------------------------------------------------------------- inference
@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_inference_workflow_writes_every_input(trained, data, name, tmp_path):
    """``monai.bundle run --config_file inference.json``: every image / scan of ``dataset_dir`` into ``output_dir``."""
    bundle = trained[name]
    root, cases = data[name]
    workflow = ConfigWorkflow(config_file=[str(p) for p in workflow_configs(bundle, "inference")],
                              workflow_type="infer",
                              meta_file=str(bundle / "configs" / "metadata.json"), bundle_root=str(bundle),
                              dataset_dir=str(root), output_dir=str(tmp_path))
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    workflow.run()
    workflow.finalize()
    if name == "us":
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{p.stem}_sr.png" for p in cases)
        for path in cases:
            with Image.open(path) as src, Image.open(tmp_path / f"{path.stem}_sr.png") as out:
                assert out.size == (4 * src.size[0], 4 * src.size[1])
    else:
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{s.seriesuid}_sr.nii.gz" for s in cases)
        for scan in cases:
            src = sitk.ReadImage(str(scan.path))
            out = sitk.ReadImage(str(tmp_path / f"{scan.seriesuid}_sr.nii.gz"))
            assert np.prod(out.GetSize()) == 2 * np.prod(src.GetSize())
            np.testing.assert_allclose(_corners(out), _corners(src), atol=1e-3)


def test_2d_inference_cli_odd_size_and_bad_inputs(trained, tmp_path):
    bundle = trained["us"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (29, 37), dtype=np.uint8), mode="L").save(inputs / "odd.png")  # 37 x 29
    Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8), mode="L").save(inputs / "small.jpg")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), mode="RGB").save(inputs / "colour.png")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pipelines", "infer", str(bundle), str(inputs), "--output", str(out),
                           "--device", "cpu"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    with Image.open(out / "odd_sr.png") as img:
        assert img.size == (37 * 4, 29 * 4) and img.mode == "L"
    with Image.open(out / "small_sr.png") as img:
        assert img.size == (24 * 4, 20 * 4)
    assert sorted(p.name for p in out.iterdir()) == ["inference_summary.json", "odd_sr.png", "small_sr.png"]
    for bad in ("colour.png", "broken.png"):
        lines = [ln for ln in log.splitlines() if bad in ln]
        assert lines, f"no message names {bad}: {log[-2000:]}"
        assert not any("Traceback" in ln for ln in log.splitlines())
    assert any("broken.png: cannot read the image" in ln for ln in log.splitlines())
    assert any("colour.png: 3 channel(s) (RGB)" in ln for ln in log.splitlines())
    assert "infer: 2 written, 2 failed" in log


def _corners(image: sitk.Image) -> np.ndarray:
    """World positions of the outer voxel edges' corners (the physical bounding box), sorted."""
    size = image.GetSize()
    points = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
              for corner in itertools.product(*[(-0.5, s - 0.5) for s in size])]
    return np.array(sorted(points))


def test_3d_inference_cli_flipped_z_keeps_the_world_box(trained, ct_data, tmp_path):
    bundle = trained["ct"]
    _, scans = ct_data
    scan = next(s for s in scans if s.flip == "z")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pipelines", "infer", str(bundle), str(scan.path), "--output",
                           str(out), "--device", "cpu"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    image = sitk.ReadImage(str(scan.path))
    pred = sitk.ReadImage(str(out / f"{scan.seriesuid}_sr.nii.gz"))
    assert image.GetDirection()[8] < 0  # the input's z axis is flipped
    # RAS output: the same axes, z in the other direction; twice the slices at half the spacing
    assert sorted(pred.GetSize()) == sorted([*image.GetSize()[:2], 2 * image.GetSize()[2]])
    z_in = image.GetSpacing()[2]
    spacing = dict(zip(["x", "y", "z"], pred.GetSpacing()))
    assert spacing["z"] == pytest.approx(z_in / 2, abs=1e-5)
    assert np.allclose(pred.GetSpacing()[:2], image.GetSpacing()[:2], atol=1e-5)
    np.testing.assert_allclose(_corners(pred), _corners(image), atol=1e-3)
    values = sitk.GetArrayFromImage(pred)
    hu = sitk.GetArrayFromImage(image)  # the output keeps the input's range, outside the -1000..400 HU window too
    assert values.dtype == np.int16 and hu.min() < -1000 and hu.max() > 400
    assert abs(int(values.min()) - int(hu.min())) < 200 and abs(int(values.max()) - int(hu.max())) < 200
