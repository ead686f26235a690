"""One rank-zero rule (:func:`pipelines.distributed.rank`): the process group's rank, torchrun's ``RANK`` before the
group exists, 0 otherwise; and the writers, locks and files that follow it write on rank 0 only."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from pipelines.distributed import is_main_process, rank


@pytest.mark.parametrize("environ, expected", [({}, 0), ({"RANK": "3"}, 3), ({"RANK": " 2 "}, 2),
                                               ({"RANK": "x"}, 0), ({"RANK": ""}, 0)])
def test_rank_without_a_process_group_is_torchruns_variable(environ, expected):
    assert not dist.is_initialized()
    assert rank(environ) == expected
    assert is_main_process(environ) is (expected == 0)


def test_the_process_group_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "5")
    assert rank() == 5 and not is_main_process()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert rank() == 0 and rank({"RANK": "7"}) == 0 and is_main_process()
    finally:
        dist.destroy_process_group()


def test_rank_zero_writers_follow_the_rule(tmp_path, monkeypatch):
    from pipelines.data.preflight import SKIPPED_FILE, check_datalist
    from pipelines.engines import ResumableCheckpoint
    from pipelines.engines.run_state import LOCK_NAME
    from pipelines.engines.tensorboard import NullSummaryWriter, rank_zero_summary_writer

    item = [{"image": str(tmp_path / "absent.nii.gz")}]
    network = torch.nn.Linear(1, 1)
    for value, main in (("1", False), ("0", True)):
        folder = tmp_path / f"rank{value}"
        folder.mkdir()
        monkeypatch.setenv("RANK", value)
        writer = rank_zero_summary_writer(str(folder / "logs"))
        assert isinstance(writer, NullSummaryWriter) is not main
        if main:
            writer.close()
        checkpoint = ResumableCheckpoint(str(folder / "models"), {"network": network}, lock_dir=str(folder))
        assert checkpoint._saves() is main
        assert (folder / LOCK_NAME).exists() is main  # only the saving rank takes the folder's lock
        checkpoint.lock.release()
        check_datalist(item, keys=("image",), policy="skip", output_dir=folder)
        assert (folder / SKIPPED_FILE).exists() is main
        assert (folder / "logs").exists() is main
