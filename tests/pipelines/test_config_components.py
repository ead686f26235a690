"""Issue 15 item 1: the functions bundle configs wire by ``_target_`` instead of inline Python, by value.

The AMP dtype, the device and backend of a rank, the process group's start and end, rank-0-only values, the SR
generator's two-phase learning rate, the cases an evaluation scores, HEMF's class weights, the folder check of
``initialize`` and the checked datalist of a layout.
"""

from __future__ import annotations

import socket

import pytest
import torch

import pipelines.distributed as distributed
from pipelines.bundle import ensure_folders
from pipelines.data.datalists import class_weight_tensor, evaluation_items
from pipelines.engines.amp import amp_dtype
from pipelines.engines.schedules import two_phase


@pytest.mark.parametrize("cuda, bf16, expected", [(False, False, torch.float16), (True, False, torch.float16),
                                                  (True, True, torch.bfloat16)])
def test_amp_dtype_is_bf16_where_cuda_supports_it(monkeypatch, cuda, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert amp_dtype() is expected


def test_the_sr_trainer_takes_the_dtype_the_configs_give():
    from pipelines.engines.gan import resolve_amp_dtype

    assert resolve_amp_dtype(torch.bfloat16, "cpu") is torch.bfloat16
    assert resolve_amp_dtype("bfloat16", "cpu") is torch.bfloat16  # an older config's string still works


def test_local_device_and_backend(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.local_device({"LOCAL_RANK": "3"}) == torch.device("cpu")
    assert distributed.ddp_backend() == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.local_device({"LOCAL_RANK": "3"}) == torch.device("cuda:3")
    assert distributed.local_device({}) == torch.device("cuda:0")  # a single process
    assert distributed.ddp_backend() == "nccl"
    with pytest.raises(ValueError, match=r"^LOCAL_RANK='x': not a GPU index"):
        distributed.local_device({"LOCAL_RANK": "x"})


@pytest.mark.parametrize("rank, main", [(0, True), (1, False)])
def test_rank_zero_values(monkeypatch, rank, main):
    monkeypatch.setattr(distributed, "rank", lambda *a, **k: rank)
    handlers = ["stats", "report"]
    assert distributed.on_main_process(handlers) == (handlers if main else None)
    assert distributed.on_main_process(handlers, otherwise=["report"]) == (handlers if main else ["report"])
    assert distributed.is_not_main_process() is (not main)


def test_process_group_starts_once_and_ends(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not torch.distributed.is_initialized()
    try:
        assert distributed.start_process_group(device=torch.device("cpu")) is True
        assert torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo"
        assert distributed.start_process_group() is True  # a second call (the config's, after torchrun's) is a no-op
    finally:
        assert distributed.end_process_group() is True
    assert not torch.distributed.is_initialized()
    assert distributed.end_process_group() is False


def test_two_phase_learning_rate():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    scheduler = two_phase(optimizer, switch_epoch=2, learning_rate=0.2, second_learning_rate=0.05)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.2, 0.2, 0.05, 0.05])
    assert scheduler.state_dict()["lr_lambdas"] == [None]  # a closure: the checkpoint keeps only the epoch


def test_evaluation_items():
    datalist = {"training": [1, 2], "validation": [3]}
    assert evaluation_items(datalist) == [3]
    assert evaluation_items(datalist, eval_all=True) == [1, 2, 3]
    assert evaluation_items(datalist, eval_all="true") == [1, 2, 3]  # fire gives a command line's true as a string
    assert evaluation_items(datalist, eval_all="false") == [3]
    with pytest.raises(ValueError, match="^eval_all must be true or false, got 'maybe'$"):
        evaluation_items(datalist, eval_all="maybe")


def test_class_weight_tensor():
    items = [{"label": 0}] * 3 + [{"label": 1}]
    # n / (K * n_k): 4 / (2 * 3) and 4 / (2 * 1); power 0.5 takes their square roots
    assert torch.equal(class_weight_tensor(items, 2), torch.tensor([2 / 3, 2.0], dtype=torch.float32))
    half = class_weight_tensor(items, 2, power=0.5, device="cpu")
    assert half.dtype == torch.float32 and torch.allclose(half, torch.tensor([(2 / 3) ** 0.5, 2 ** 0.5]))


def test_ensure_folders(tmp_path):
    folders = [tmp_path / "a" / "b", tmp_path / "c"]
    assert ensure_folders(folders) == [str(f) for f in folders]
    assert all(f.is_dir() and not list(f.iterdir()) for f in folders)  # created, the write test removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'file' / 'x'}: cannot write the results here"):
        ensure_folders([tmp_path / "c", tmp_path / "file" / "x"], what="results")


def test_a_layout_component_is_the_layouts_checked_datalist(luna16_tiny, tmp_path):
    """``pipelines.data.datalists.luna16`` gives what the layout's own validating reader gives on good data, and on a
    bad scan the preflight's one error listing it (the config's ``preflight_policy``) or, with ``skip``, drops it."""
    from pipelines.data.datalists import luna16
    from pipelines.data.luna16 import luna16_datalist

    root, scans = luna16_tiny
    checked = luna16(root, tmp_path / "cache", val_fraction=0.5, seed=0, output_dir=tmp_path, check_finite="false")
    assert checked == luna16_datalist(root, tmp_path / "cache", val_fraction=0.5, seed=0)
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(root, bad)
    raw = next(p for p in sorted(bad.rglob("*.raw")) if "seg-lungs" not in str(p))
    raw.write_bytes(raw.read_bytes()[:100])  # truncated voxel data
    with pytest.raises(ValueError, match=r"(?s)preflight.*" + raw.stem):
        luna16(bad, tmp_path / "cache2", val_fraction=0.5, seed=0)
    kept = luna16(bad, tmp_path / "cache3", val_fraction=0.5, seed=0, policy="skip", output_dir=tmp_path)
    assert sum(len(kept[s]) for s in ("training", "validation")) == len(scans) - 1
    assert raw.stem in (tmp_path / "skipped_inputs.txt").read_text()
