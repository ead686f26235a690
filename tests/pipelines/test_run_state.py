"""A training run owns its folder and its random state: the lock, the exact resume, pickles and a full disk refused."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.engines.run_state import FolderLock, capture_random_state, restore_random_state
from tests.bundles.conftest import ISIC_BUNDLE, TINY_ISIC, TINY_ISIC_TRAIN
from tests.conftest import tiny_trainer

HOLDER = """
import sys, time
from pipelines.engines.run_state import FolderLock
FolderLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"^{tmp_path}: another training run is using this folder "
                                               rf"\(pid {proc.pid} on .* since .*\)"):
            FolderLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    # the holder died without releasing: the kernel dropped its lock, the file still names it; taken over
    assert f"pid {proc.pid}" in (tmp_path / ".training.lock").read_text()
    lock = FolderLock(tmp_path).acquire()
    assert lock.held and f"pid {os.getpid()}" in (tmp_path / ".training.lock").read_text()
    lock.release()


def test_the_checkpoint_handler_takes_the_lock_before_touching_the_folder(tmp_path):
    from pipelines.engines import ResumableCheckpoint

    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    leftover = tmp_path / ".checkpoint.pt.partial-inflight.pt"
    try:
        assert proc.stdout.readline().strip() == "held"
        leftover.write_bytes(b"the first run's checkpoint being written")
        with pytest.raises(RuntimeError, match="another training run is using this folder"):
            ResumableCheckpoint(str(tmp_path), {"network": torch.nn.Linear(1, 1)})
        assert leftover.exists()  # the late starter did not delete the first run's in-flight file
    finally:
        proc.kill()
        proc.wait()


def test_random_state_round_trip_covers_torch_numpy_python_and_transforms():
    import random

    from monai.transforms import Compose, RandFlip, RandGaussianNoise

    class Data:
        transform = Compose([RandFlip(prob=0.5), Compose([RandGaussianNoise(prob=1.0)])])

    data = Data()
    noise = data.transform.transforms[1].transforms[0]
    before = noise.R
    state = capture_random_state(data)
    first = (torch.rand(3), np.random.rand(3), random.random(), noise.R.rand(3))
    restore_random_state(state, data)
    again = (torch.rand(3), np.random.rand(3), random.random(), noise.R.rand(3))
    assert noise.R is before  # restored in place, never re-seeded
    assert torch.equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[2] == again[2]
    np.testing.assert_array_equal(first[3], again[3])
    # the saved state is plain data: a weights_only load takes it
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rng-{os.getpid()}.pt"
    torch.save(state, path)
    assert torch.load(path, weights_only=True)["numpy"]["pos"] == state["numpy"]["pos"]
    path.unlink()


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'PWNED_BY_CHECKPOINT'}",))




def test_a_pickle_planted_as_checkpoint_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"trainer": _Evil()}, tmp_path / "checkpoint.pt")
    trainer, data = tiny_trainer(tmp_path)
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'checkpoint.pt'}: cannot resume from this checkpoint"):
        trainer.run(data, max_epochs=1)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_a_full_disk_says_no_space_left_and_names_the_path(tmp_path, monkeypatch):
    import shutil

    trainer, data = tiny_trainer(tmp_path)

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed. unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=4096))
    with pytest.raises(OSError) as info:
        trainer.run(data, max_epochs=1)
    assert info.value.errno == errno.ENOSPC
    assert f"no space left on {tmp_path} while writing checkpoint.pt" in str(info.value)
    assert not list(tmp_path.glob("*.partial-*"))


# ---- a run killed and resumed ends where an uninterrupted one does -----------------------------------------------


# stops the trainer at the end of epoch 2, after its checkpoint is written: what a kill between two epochs leaves
_STOP = [
    "$@train#trainer.add_event_handler(monai.engines.workflow.Events.EPOCH_COMPLETED(once=2), "
    "lambda engine: engine.terminate())",
    "$@train#trainer.run()",
]
STOP_AFTER_EPOCH_2 = {"training": _STOP, "run": _STOP}


def _train(bundle: Path, dataset: Path, stop_after_2: bool = False) -> None:
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    files = [str(configs / "train.json")]
    if stop_after_2:
        (bundle / "stop.json").write_text(json.dumps(STOP_AFTER_EPOCH_2))
        files.append(str(bundle / "stop.json"))
    workflow = ConfigWorkflow(config_file=files, meta_file=str(configs / "metadata.json"),
                              workflow_type="train", bundle_root=str(bundle), dataset_dir=str(dataset))
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def test_resumed_training_ends_with_the_same_weights_as_an_uninterrupted_run(isic_tiny, tmp_path):
    from pipelines.bundle import derive_bundle

    dataset = isic_tiny[0]
    # augmentation, shuffling and a validation each epoch: every random stream of the bundle is exercised
    train = dict(TINY_ISIC_TRAIN, max_epochs=3)
    straight = derive_bundle(ISIC_BUNDLE, tmp_path / "straight", TINY_ISIC, train)
    resumed = derive_bundle(ISIC_BUNDLE, tmp_path / "resumed", TINY_ISIC, train)
    start = time.time()
    _train(straight, dataset)
    _train(resumed, dataset, stop_after_2=True)  # "killed" after epoch 2, its checkpoint complete
    stopped = torch.load(resumed / "models" / "checkpoint.pt", weights_only=True)["trainer"]
    assert stopped["iteration"] == 2 * stopped["epoch_length"]
    _train(resumed, dataset)  # the same command again: resumes at epoch 2
    a = torch.load(straight / "models" / "checkpoint.pt", weights_only=True)
    b = torch.load(resumed / "models" / "checkpoint.pt", weights_only=True)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] > 0
    for name, tensor in a["network"].items():
        assert torch.equal(tensor, b["network"][name]), f"{name} differs after resuming"
    summary = [json.loads((x / "eval" / "train_summary.json").read_text()) for x in (straight, resumed)]
    assert summary[0]["best_metric"] == summary[1]["best_metric"]
    assert time.time() - start < 300
