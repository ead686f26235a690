"""``torchrun --nproc_per_node N -m pipelines infer``: each input run by exactly one rank, outputs identical to a
single-process run, one merged ``inference_summary.json``, one exit code; and the pieces (sharding, merging, the
summary, the torchrun environment and device) checked in process against hand-worked cases."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipelines.inference import (
    SUMMARY_NAME, InferenceResult, TorchrunEnv, inference_summary, merge_results, shard, torchrun_device,
    torchrun_env, write_summary,
)

RECORD_KEYS = {"input", "output", "seconds", "inferer_seconds", "error", "rank"}


def _env() -> dict:
    """The subprocess environment: no PYTHONPATH (the project is installed in the venv), one thread per rank, and no
    torchrun variables inherited from whatever runs the tests."""
    drop = {"PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


@pytest.fixture(scope="module")
def sharded_inputs(luna16_tiny, tmp_path_factory) -> tuple[list[Path], Path, Path]:
    """The four synthetic LUNA16 scans, a truncated NIfTI second in the list (so that it lands on rank 1), and a path
    that does not exist last: 5 volumes (an odd count) and one input that fails before it becomes one."""
    _, scans = luna16_tiny
    folder = tmp_path_factory.mktemp("sharded_inputs")
    whole = folder / "whole.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(scans[0].path)), str(whole))
    raw = gzip.decompress(whole.read_bytes())
    truncated = folder / "truncated.nii.gz"
    truncated.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # a valid header, half the voxels
    whole.unlink()
    missing = folder / "missing.nii.gz"
    paths = [scans[0].path, truncated, *(s.path for s in scans[1:]), missing]
    return paths, truncated, missing


def _voxels_and_affine(path: str) -> tuple[np.ndarray, np.ndarray]:
    image = nibabel.load(path)
    return np.asarray(image.dataobj), image.affine


def test_torchrun_shards_the_inputs_and_matches_a_single_process_run(trained_lung_bundle, sharded_inputs,
                                                                      tmp_path):
    from pipelines.__main__ import main

    inputs, truncated, missing = sharded_inputs
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank (OMP_NUM_THREADS=1): the same reduction order
    try:
        assert main(["infer", str(trained_lung_bundle), *map(str, inputs), "--output", str(single)]) == 1
    finally:
        torch.set_num_threads(threads)
    stale = {"totals": {"inputs": 99}, "inputs": [{"input": "from an earlier run"}]}
    sharded.mkdir()
    (sharded / SUMMARY_NAME).write_text(json.dumps(stale))  # an earlier run's summary is replaced

    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pipelines",
         "infer", str(trained_lung_bundle), *map(str, inputs), "--output", str(sharded)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-4000:]  # the truncated input failed on rank 1: the launch fails as a whole

    summary = json.loads((sharded / SUMMARY_NAME).read_text())
    records = summary["inputs"]
    assert all(set(r) == RECORD_KEYS for r in records), records[0]
    assert [r["input"] for r in records] == [str(missing), *map(str, inputs[:-1])]  # each input once, in list order
    assert [r["rank"] for r in records] == [0, 0, 1, 0, 1, 0]  # listing errors on rank 0, then volume i on i % 2
    errors = {r["input"]: r["error"] for r in records}
    assert errors[str(truncated)].startswith(f"{truncated}: ") and errors[str(missing)].startswith(f"{missing}: ")
    assert sum(e is None for e in errors.values()) == 4
    assert summary["totals"] == {**summary["totals"], "inputs": 6, "written": 4, "failed": 2, "ranks": 2}
    assert summary["totals"]["seconds"] == pytest.approx(sum(r["seconds"] for r in records), abs=0.01)
    assert "infer: 4 written, 2 failed" in proc.stdout and "(2 ranks)" in proc.stdout
    assert proc.stdout.count("infer: ") == 1  # the totals once, from rank 0
    assert f"[rank 1] [2/5] error: {truncated}" in proc.stdout  # per-volume lines carry their rank
    assert proc.stdout.count(f"error: {missing}") == 1  # a listing error is reported by rank 0 only

    reference = json.loads((single / SUMMARY_NAME).read_text())
    assert [(r["input"], r["error"], r["rank"]) for r in reference["inputs"]] == \
        [(r["input"], r["error"], 0) for r in records]
    assert reference["totals"]["ranks"] == 1
    written = sorted(p.name for p in sharded.iterdir())
    assert written == sorted(p.name for p in single.iterdir())  # no partial or staging file, nothing written twice
    assert len(written) == 5 and SUMMARY_NAME in written
    shapes = set()
    for ref, rec in zip(reference["inputs"], records):
        if rec["error"] is not None:
            assert rec["output"] is None
            continue
        assert Path(rec["output"]).name == Path(ref["output"]).name
        voxels, affine = _voxels_and_affine(rec["output"])
        ref_voxels, ref_affine = _voxels_and_affine(ref["output"])
        assert np.array_equal(voxels, ref_voxels), rec["input"]
        np.testing.assert_allclose(affine, ref_affine, atol=1e-6)
        shapes.add((voxels.shape, tuple(np.round(affine, 3).ravel())))
    assert len(shapes) == 4  # every scan has its own geometry: an output written for the wrong input would show


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("case", ["input_fails_on_rank_1", "weights_missing"])
def test_every_rank_exits_with_the_same_code(trained_lung_bundle, sharded_inputs, tmp_path, case):
    """The two ranks started by hand with the variables torchrun sets, so that each one's exit code is seen (torchrun
    folds them into one): rank 0's own input is fine, yet it exits 1 like rank 1; a bundle that cannot run stops both
    with 2 and one message, from rank 0."""
    inputs, truncated, _ = sharded_inputs
    extra = ["--weights", str(tmp_path / "absent.pt")] if case == "weights_missing" else []
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**_env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pipelines", "infer", str(trained_lung_bundle), str(inputs[0]), str(truncated),
             "--output", str(tmp_path / "out"), *extra],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [proc.communicate(timeout=300) for proc in procs]
    codes = [proc.returncode for proc in procs]
    log = "\n".join(out + err for out, err in outputs)
    if case == "weights_missing":
        assert codes == [2, 2], log[-3000:]
        assert outputs[0][1].strip() == f"error: {tmp_path / 'absent.pt'}: trained weights not found (train the " \
            "bundle first, or pass --weights)"
        assert "error:" not in outputs[1][1]
        assert not (tmp_path / "out" / SUMMARY_NAME).exists()
    else:
        assert codes == [1, 1], log[-3000:]
        assert "[rank 0] [1/2] " in outputs[0][0] and "error:" not in outputs[0][0]  # rank 0's input was fine
        assert f"[rank 1] [2/2] error: {truncated}" in outputs[1][0]
        records = json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())["inputs"]
        assert [(r["rank"], r["error"] is None) for r in records] == [(0, True), (1, False)]


def test_a_run_removes_an_earlier_summary_before_it_starts(trained_lung_bundle, tmp_path):
    """So that a run killed midway leaves no summary describing other files (the CLI writes the new one)."""
    from pipelines.inference import infer_volumes

    (tmp_path / SUMMARY_NAME).write_text("{}")
    results = infer_volumes(trained_lung_bundle, [str(tmp_path / "absent.nii.gz")], tmp_path, echo=lambda s: None)
    assert len(results) == 1 and not results[0].ok
    assert list(tmp_path.iterdir()) == []


def test_shard_is_round_robin_and_covers_every_item_once():
    items = list("abcde")
    assert shard(items, 0, 2) == [(0, "a"), (2, "c"), (4, "e")]
    assert shard(items, 1, 2) == [(1, "b"), (3, "d")]
    assert shard(items, 2, 3) == [(2, "c")]
    assert shard(["a"], 1, 2) == []  # more ranks than inputs: the extra ones idle
    for world in (1, 2, 3, 7):
        assert sorted(i for r in range(world) for i, _ in shard(items, r, world)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="rank 2 of world size 2"):
        shard(items, 2, 2)


def test_merge_results_restores_the_single_process_order():
    def result(name: str, rank: int, index: int | None) -> InferenceResult:
        return InferenceResult(name, None, 1.0, None if index is not None else "bad", rank=rank, index=index)

    rank0 = [result("listing-error-1", 0, None), result("v0", 0, 0), result("listing-error-2", 0, None),
             result("v2", 0, 2), result("v4", 0, 4)]
    rank1 = [result("v1", 1, 1), result("v3", 1, 3)]
    merged = merge_results([rank1, rank0])
    assert [r.input for r in merged] == ["listing-error-1", "listing-error-2", "v0", "v1", "v2", "v3", "v4"]


def test_summary_records_and_totals_by_hand(tmp_path):
    results = [InferenceResult("a.nii.gz", str(tmp_path / "a_seg.nii.gz"), 2.5, inferer_seconds=1.25, rank=0, index=0),
               InferenceResult("b.nii.gz", None, 0.5, "b.nii.gz: truncated", rank=1, index=1),
               InferenceResult("c.nii.gz", str(tmp_path / "c_seg.nii.gz"), 1.0, inferer_seconds=0.5, rank=0, index=2)]
    summary = inference_summary(results, world_size=2, wall_seconds=3.25)
    assert summary["totals"] == {"inputs": 3, "written": 2, "failed": 1, "ranks": 2, "seconds": 4.0,
                                 "inferer_seconds": 1.75, "wall_seconds": 3.25}
    assert summary["inputs"][1] == {"input": "b.nii.gz", "output": None, "seconds": 0.5, "inferer_seconds": None,
                                    "error": "b.nii.gz: truncated", "rank": 1}
    (tmp_path / SUMMARY_NAME).write_text("{half a file from an earlier run")
    path = write_summary(tmp_path, results, world_size=2, wall_seconds=3.25)
    assert path == tmp_path / SUMMARY_NAME and json.loads(path.read_text()) == summary
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUMMARY_NAME]  # no temporary file left beside it


def test_torchrun_env_reads_the_launch_variables():
    assert torchrun_env({}) is None
    assert torchrun_env({"WORLD_SIZE": "4"}) is None  # RANK missing: not a torchrun worker
    assert torchrun_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}) == \
        TorchrunEnv(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert torchrun_env({"RANK": "1", "WORLD_SIZE": "2"}) == TorchrunEnv(1, 2, 1, 2)  # one machine by default
    with pytest.raises(ValueError, match=r"^environment variable RANK='x': not an integer"):
        torchrun_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="RANK=2 WORLD_SIZE=2"):
        torchrun_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_torchrun_device_per_rank():
    env = TorchrunEnv(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert torchrun_device(env, requested=False, cuda_devices=0) == (None, "gloo")  # the bundle's CPU
    assert torchrun_device(env, requested=False, cuda_devices=2) == ("cuda:1", "nccl")  # cuda:LOCAL_RANK
    assert torchrun_device(env, requested=True, cuda_devices=2) == (None, "gloo")  # --device: shared, not NCCL
    with pytest.raises(ValueError, match="starts 2 processes on this machine but it has 1 CUDA device"):
        torchrun_device(env, requested=False, cuda_devices=1)


def test_staging_folders_of_other_hosts_are_left_alone(tmp_path):
    from pipelines.inference import _STAGING_PREFIX, _host, _remove_dead_staging

    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    mine = tmp_path / f"{_STAGING_PREFIX}{dead}-{_host()}-abc_1"
    old_style = tmp_path / f"{_STAGING_PREFIX}{dead}-abc_2"
    other = tmp_path / f"{_STAGING_PREFIX}{dead}-{_host()}x-other-node-abc_3"
    alive = tmp_path / f"{_STAGING_PREFIX}{os.getpid()}-{_host()}-abc_4"
    for folder in (mine, old_style, other, alive):
        folder.mkdir()
    _remove_dead_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, alive.name])
