"""Every training bundle under torchrun (2 CPU processes, gloo), validation metrics gathered over both ranks, and
training that resumes after SIGKILL / SIGTERM; the checkpoint's leftover / corrupt file policy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pipelines.bundle import workflow_configs
from tests.conftest import tiny_trainer


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache"))
    return dst


# test-only: every rank saves its weights and what its evaluator saw in the last validation, so the test can compare
RANKS = {"finalize": [
    "$torch.save(@network.module.state_dict(), @bundle_root + '/rank' + str(torch.distributed.get_rank()) + '.pt')",
    "$torch.save({'val_iterations': @validate#evaluator.state.iteration, "
    "'metrics': dict(@validate#evaluator.state.metrics)}, "
    "@bundle_root + '/val' + str(torch.distributed.get_rank()) + '.pt')",
    "$torch.save({'train': [str(d['image']) for d in @train#dataset.data], "
    "'validation': [str(d['image']) for d in @validate#dataset.data]}, "
    "@bundle_root + '/cases' + str(torch.distributed.get_rank()) + '.pt')",
    "$@summary_writer.close()",
    {"_target_": "pipelines.distributed.end_process_group"},
]}


def _torchrun(bundle: Path, dataset: Path, port: int, tmp_path: Path, *args: str,
              check: bool = True) -> subprocess.CompletedProcess:
    configs = bundle / "configs"
    (tmp_path / "ranks.json").write_text(json.dumps(RANKS))
    files = [str(configs / "train.json"), str(configs / "multi_gpu_train.json"), str(tmp_path / "ranks.json")]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
         "-m", "monai.bundle", "run", "training", "--config_file", json.dumps(files),
         "--logging_file", str(configs / "logging.conf"),
         "--bundle_root", str(bundle), "--dataset_dir", str(dataset), *args],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0 or not check, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _assert_rank_zero_alone_wrote(bundle: Path, proc: subprocess.CompletedProcess, epochs: int, metric: str) -> None:
    rank0 = torch.load(bundle / "rank0.pt", weights_only=True)
    rank1 = torch.load(bundle / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the ranks' weights differ"
    assert len(list((bundle / "logs").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (bundle / "models").iterdir() if not p.name.startswith(".")) == [
        "checkpoint.pt", "model.pt"]  # hidden files (a run lock) aside; partial writes are checked below
    assert (bundle / "eval" / "train_summary.json").exists()
    assert not list(bundle.rglob("*.partial-*"))
    checkpoint = torch.load(bundle / "models" / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(checkpoint["network"][k], rank0[k]) for k in rank0)
    assert checkpoint["trainer"]["iteration"] == epochs * checkpoint["trainer"]["epoch_length"]
    output = proc.stdout + proc.stderr
    lines = [ln for ln in output.splitlines() if "Metrics -- " in ln and f" {metric}: " in ln]
    assert len(lines) == epochs, "console statistics come from rank 0 alone:\n" + output[-3000:]
    per_rank = checkpoint["trainer"]["epoch_length"]  # one line per iteration of rank 0's share of the data
    assert output.count(f"Epoch: {epochs}/{epochs}, Iter: ") == per_rank, output[-3000:]
    # the saved model loads into a fresh network_def; after a single epoch the best model is the trained one
    model = torch.load(bundle / "models" / "model.pt", weights_only=True)
    _network_def(bundle).load_state_dict(model)
    if epochs == 1:
        assert all(torch.equal(model[k], rank0[k]) for k in rank0)


def _assert_ranks_read_disjoint_shares(bundle: Path, dataset: Path, *args: str) -> None:
    """Each rank's datasets held its interleaved share of the splits, and only that (what it preprocessed and read)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(bundle), "dataset_dir": str(dataset)})
    for flag, value in zip(args[::2], args[1::2]):
        parser[flag.lstrip("-")] = json.loads(value)
    splits = parser.get_parsed_content("datalist")
    shares = [torch.load(bundle / f"cases{r}.pt", weights_only=False) for r in (0, 1)]
    for name, split in (("train", splits["training"]), ("validation", splits["validation"])):
        cases = [str(d["image"]) for d in split]
        if name == "train":  # padded from the start to a multiple of the ranks: both run as many iterations
            cases += cases[: len(cases) % 2]
        assert shares[0][name] == cases[0::2]
        assert shares[1][name] == cases[1::2]


def _network_def(bundle: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(p) for p in workflow_configs(bundle, "inference")])
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("network_def")


def test_brats_two_processes(tiny_brats_bundle, brats_tiny, tmp_path):
    bundle = _copy(tiny_brats_bundle, tmp_path / "bundle")
    proc = _torchrun(bundle, brats_tiny[0], 29541, tmp_path, "--val_fraction", "0.4", "--max_epochs", "1")
    _assert_rank_zero_alone_wrote(bundle, proc, 1, "val_mean_dice")
    _assert_ranks_read_disjoint_shares(bundle, brats_tiny[0], "--val_fraction", "0.4")


def test_a_validation_split_smaller_than_the_ranks_is_refused_before_any_work(tiny_brats_bundle, brats_tiny,
                                                                               tmp_path):
    bundle = _copy(tiny_brats_bundle, tmp_path / "bundle")
    proc = _torchrun(bundle, brats_tiny[0], 29549, tmp_path, "--val_fraction", "0.2", "--max_epochs", "1",
                     check=False)
    assert proc.returncode != 0
    assert "the validation split has 1 case(s) for 2 ranks: every rank needs at least one" in proc.stderr
    assert not (bundle / "cache" / "preprocessed").exists()  # nothing was preprocessed
    assert not (bundle / "models" / "checkpoint.pt").exists()


def test_hemf_two_processes(tiny_hemf_bundle, isic_cls_tiny, tmp_path):
    bundle = _copy(tiny_hemf_bundle, tmp_path / "bundle")
    proc = _torchrun(bundle, isic_cls_tiny[0], 29542, tmp_path, "--max_epochs", "1")
    _assert_rank_zero_alone_wrote(bundle, proc, 1, "val_macro_f1")


def test_isic_two_processes_gather_the_validation_metric(tiny_isic_bundle, isic_tiny, tmp_path):
    """Besides identical weights: each rank validates its part of the validation set, and the metric both ranks
    report is the one a single process computes over the whole validation set with the same weights."""
    from monai.bundle import ConfigParser

    root, _ = isic_tiny
    bundle = _copy(tiny_isic_bundle, tmp_path / "bundle")
    proc = _torchrun(bundle, root, 29543, tmp_path, "--val_fraction", "0.5", "--max_epochs", "1")
    _assert_rank_zero_alone_wrote(bundle, proc, 1, "val_mean_dice")

    val = [torch.load(bundle / f"val{r}.pt", weights_only=False) for r in (0, 1)]
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(bundle), "dataset_dir": str(root), "val_fraction": 0.5,
                   "validate#handlers": [], "device": "$torch.device('cpu')", "amp": False})
    validation = parser.get_parsed_content("datalist")["validation"]
    # every validation image is evaluated once, by one rank (DistributedSampler without padding)
    assert len(validation) >= 2 and min(v["val_iterations"] for v in val) >= 1
    assert val[0]["val_iterations"] + val[1]["val_iterations"] == len(validation)
    # the metric is all-gathered: the same on both ranks, and equal to one process over the whole split
    gathered = val[0]["metrics"]["val_mean_dice"]
    assert val[1]["metrics"]["val_mean_dice"] == pytest.approx(gathered, abs=1e-6)
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(bundle / "rank0.pt", weights_only=True))
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    assert evaluator.state.iteration == len(validation)
    assert evaluator.state.metrics["val_mean_dice"] == pytest.approx(gathered, abs=1e-5)


# --- resume after a kill ---


class _Run:
    """``monai.bundle run training`` in a subprocess; its output read line by line so a test can wait for a line."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                                         daemon=True)
        self._reader.start()

    def wait_for(self, condition, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while not condition():
            assert self.proc.poll() is None, "training ended before it could be interrupted:\n" + self.text[-3000:]
            assert time.time() < deadline, "timed out:\n" + self.text[-3000:]
            time.sleep(0.02)

    def stop(self, sig: int) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)

    def finish(self) -> int:
        code = self.proc.wait(timeout=300)
        self._reader.join(timeout=10)
        return code

    @property
    def text(self) -> str:
        return "".join(self.lines)


def test_isic_training_resumes_after_sigkill_and_sigterm(tiny_isic_bundle, isic_tiny, tmp_path):
    root, _ = isic_tiny
    bundle = _copy(tiny_isic_bundle, tmp_path / "bundle")
    configs = bundle / "configs"
    checkpoint = bundle / "models" / "checkpoint.pt"
    # test-only: 0.2 s per iteration, so that an epoch cannot end between seeing its first iteration and the signal
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({"training": [
        "$@train#trainer.add_event_handler(monai.engines.workflow.Events.ITERATION_COMPLETED,"
        " lambda engine: os.system('sleep 0.2'))",
        "$@train#trainer.run()",
    ]}))
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(configs / "metadata.json"),
               "--config_file", json.dumps([str(configs / "train.json"), str(slow)]),
               "--logging_file", str(configs / "logging.conf"),
               "--bundle_root", str(bundle), "--dataset_dir", str(root), "--max_epochs", "3"]

    def state() -> dict:
        return torch.load(checkpoint, weights_only=False)

    # 1. SIGKILL during epoch 2, after epoch 1's checkpoint was written
    first = _Run(command, tmp_path)
    first.wait_for(lambda: checkpoint.exists() and "Epoch: 2/3, Iter: 1/" in first.text)
    first.stop(signal.SIGKILL)
    assert first.proc.returncode == -signal.SIGKILL
    after_kill = state()
    per_epoch = after_kill["trainer"]["epoch_length"]
    assert after_kill["trainer"]["iteration"] == per_epoch > 0  # epoch 1 complete, nothing of epoch 2
    best = after_kill["evaluator_best"]
    assert best["best_metric_epoch"] == 1
    # a write killed before its rename leaves a temporary file: it must be ignored and cleaned up
    leftover = checkpoint.parent / ".checkpoint.pt.partial-killed.pt"
    leftover.write_bytes(b"half a checkpoint")

    # 2. the same command resumes at epoch 2; SIGTERM during epoch 3
    second = _Run(command, tmp_path)
    second.wait_for(lambda: "Epoch: 3/3, Iter: 1/" in second.text)
    second.stop(signal.SIGTERM)
    assert second.proc.returncode != 0
    assert f"resumed from {checkpoint} at epoch 1, iteration {per_epoch}" in second.text
    assert "Epoch: 1/3" not in second.text, "the second run must continue, not restart"
    assert not leftover.exists() and "interrupted checkpoint write" in second.text
    after_term = state()
    assert after_term["trainer"]["iteration"] == 2 * per_epoch
    assert after_term["evaluator_best"]["best_metric"] >= best["best_metric"]

    # 3. and once more: it finishes epoch 3, the iteration count consistent and the best metric kept
    third = _Run(command, tmp_path)
    assert third.finish() == 0, third.text[-3000:]
    assert f"resumed from {checkpoint} at epoch 2, iteration {2 * per_epoch}" in third.text
    assert "Epoch: 1/3" not in third.text and "Epoch: 2/3" not in third.text
    final = state()
    assert final["trainer"]["iteration"] == 3 * per_epoch
    assert final["evaluator_best"]["best_metric"] >= after_term["evaluator_best"]["best_metric"]
    assert final["evaluator_best"]["best_metric_epoch"] >= best["best_metric_epoch"]
    assert (bundle / "models" / "model.pt").exists()
    summary = json.loads((bundle / "eval" / "train_summary.json").read_text())
    assert summary["epochs"] == 3 and summary["best_metric"] == pytest.approx(final["evaluator_best"]["best_metric"])


# bundle -> (its tiny bundle fixture, its data set fixture, the key of the SR dict, extra arguments). Every bundle
# trains 2 epochs; the SR ones keep their TINY schedule, 1 PSNR-oriented epoch then 1 GAN epoch, so that the resume
# also has to restore the phase.
KILL_RESUME = {
    "brats": ("tiny_brats_bundle", "brats_tiny", None, ["--val_fraction", "0.4"]),
    "hemf": ("tiny_hemf_bundle", "isic_cls_tiny", None, []),
    "ct_sr": ("tiny_sr_bundles", "ct_sr_tiny", "ct", []),
    "lung": ("tiny_lung_bundle", "luna16_tiny", None, []),
    "us_sr": ("tiny_sr_bundles", "us_sr_tiny", "us", []),
}

# test-only: while the file ``<bundle_root>/hold`` exists, the first iteration of epoch 2 waits (0.05 s steps, at most
# 5 minutes) instead of finishing, so the kill always lands inside epoch 2 after epoch 1's checkpoint, whatever the
# load of the machine. The resumed run executes the same configs with the file gone, so it does not wait.
HOLD = {"training": [
    ("$@train#trainer.add_event_handler(monai.engines.workflow.Events.ITERATION_COMPLETED, lambda engine: "
     "engine.state.epoch == 2 and [os.system('sleep 0.05') for _ in range(6000) if os.path.exists(@bundle_root + "
     "'/hold')])"),
    "$@train#trainer.run()",
]}


@pytest.mark.parametrize("which", list(KILL_RESUME))
def test_training_resumes_after_sigkill_mid_epoch(which, request, tmp_path):
    """SIGKILL in the middle of epoch 2 of 2, then the same command again: it resumes from models/checkpoint.pt at
    epoch 1 (one epoch of iterations, nothing of epoch 2), runs epoch 2 only, and stops at max_epochs with twice the
    iterations; the saved model.pt loads into network_def."""
    bundle_fixture, data_fixture, key, extra = KILL_RESUME[which]
    tiny = request.getfixturevalue(bundle_fixture)
    bundle = _copy(tiny[key] if key else tiny, tmp_path / "bundle")
    dataset = request.getfixturevalue(data_fixture)[0]
    configs = bundle / "configs"
    checkpoint = bundle / "models" / "checkpoint.pt"
    (tmp_path / "hold.json").write_text(json.dumps(HOLD))
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(configs / "metadata.json"),
               "--config_file", json.dumps([str(configs / "train.json"), str(tmp_path / "hold.json")]),
               "--logging_file", str(configs / "logging.conf"), "--bundle_root", str(bundle),
               "--dataset_dir", str(dataset), "--max_epochs", "2", *extra]

    (bundle / "hold").touch()
    first = _Run(command, tmp_path)
    first.wait_for(lambda: "Epoch: 2/2, Iter: 1/" in first.text)
    first.stop(signal.SIGKILL)
    assert first.proc.returncode == -signal.SIGKILL
    (bundle / "hold").unlink()
    killed = torch.load(checkpoint, weights_only=False)["trainer"]
    per_epoch = killed["epoch_length"]
    assert per_epoch > 0 and killed["iteration"] == per_epoch  # epoch 1 complete, nothing of epoch 2 saved
    assert not (bundle / "eval" / "train_summary.json").exists(), "the killed run must not have finished"

    second = _Run(command, tmp_path)
    assert second.finish() == 0, second.text[-3000:]
    assert f"resumed from {checkpoint} at epoch 1, iteration {per_epoch}" in second.text
    assert "Epoch: 1/2" not in second.text, "the second run must continue, not restart"
    assert f"Epoch: 2/2, Iter: {per_epoch}/{per_epoch}" in second.text
    final = torch.load(checkpoint, weights_only=False)
    assert final["trainer"]["iteration"] == 2 * per_epoch and final["trainer"]["max_epochs"] == 2
    assert json.loads((bundle / "eval" / "train_summary.json").read_text())["epochs"] == 2
    if key is not None:  # the GAN trainer: the restored epoch-1 state was PSNR-oriented; epoch 2 is the GAN phase
        assert killed["phase"] == "psnr" and final["trainer"]["phase"] == "gan"
        assert "switching training phase from 'psnr' to 'gan'" in second.text
    _network_def(bundle).load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    assert not list(bundle.rglob("*.partial-*"))


# --- the checkpoint file policy, in process ---




def test_leftover_temporary_checkpoint_is_removed_and_never_read(tmp_path):
    trainer, data = tiny_trainer(tmp_path)
    trainer.run(data, max_epochs=1)
    leftover = tmp_path / ".checkpoint.pt.partial-abc123.pt"
    leftover.write_bytes(b"\x80 a write killed half way")
    trainer, data = tiny_trainer(tmp_path)
    trainer.run(data, max_epochs=2)
    assert not leftover.exists()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["trainer"]["iteration"] == 2 * len(data)


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_a_corrupt_checkpoint_stops_training_with_its_name(tmp_path, content):
    trainer, data = tiny_trainer(tmp_path)
    trainer.run(data, max_epochs=1)
    path = tmp_path / "checkpoint.pt"
    if content is None:  # cut short by something other than the handler (a copy, a full disk)
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    trainer, data = tiny_trainer(tmp_path)
    with pytest.raises(ValueError, match=f"{path}: cannot resume from this checkpoint .*delete or move it away"):
        trainer.run(data, max_epochs=2)
    assert path.read_bytes() == content, "the file is left for the user to inspect"
