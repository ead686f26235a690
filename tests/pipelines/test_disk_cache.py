"""The on-disk preprocessing cache: reuse, exact rebuilds, kills, memory-mapped patches equal to in-RAM ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, MetaTensor

from pipelines.data import disk_cache
from pipelines.data.disk_cache import DiskCacheDataset, preprocess_cases
from pipelines.data.luna16 import luna16_datalist
from pipelines.distributed import partition_for_rank
from pipelines.transforms.ct import ct_eval_transforms, ct_train_transforms
from pipelines.transforms.indices import CropCentreIndicesd, sample_indices

REPO = Path(__file__).resolve().parents[2]
PIXDIM, PATCH = (2.0, 2.0, 3.0), (16, 16, 8)


@pytest.fixture(scope="module")
def items(luna16_tiny, tmp_path_factory) -> list[dict]:
    lists = luna16_datalist(luna16_tiny[0], tmp_path_factory.mktemp("masks"), val_fraction=0.0)
    return lists["training"] + lists["validation"]


def _entries(cache: Path) -> set[str]:
    return {p.name for p in (cache / "preprocessed").iterdir() if not p.name.startswith(".")}


def _count_writes(monkeypatch) -> list[str]:
    written: list[str] = []
    real = disk_cache._write_entry

    def counting(item, head, root, key):
        written.append(key)
        return real(item, head, root, key)

    monkeypatch.setattr(disk_cache, "_write_entry", counting)
    return written


def test_second_run_reads_every_case_from_disk(items, tmp_path, monkeypatch):
    written = _count_writes(monkeypatch)
    first = DiskCacheDataset(items, ct_eval_transforms(PIXDIM), tmp_path)
    assert len(written) == len(items) and len(_entries(tmp_path)) == len(items)
    second = DiskCacheDataset(items, ct_eval_transforms(PIXDIM), tmp_path)
    assert len(written) == len(items)  # nothing written again
    assert second.keys == first.keys


def test_a_changed_file_rebuilds_exactly_its_case(items, tmp_path, monkeypatch):
    data = [dict(i) for i in items]
    # private copies of the label files, so that touching one does not disturb the session fixture
    for i, item in enumerate(data):
        copy = tmp_path / f"label{i}.mha"
        copy.write_bytes(Path(item["label"]).read_bytes())
        item["label"] = str(copy)
    cache = tmp_path / "cache"
    before = preprocess_cases(data, ct_eval_transforms(PIXDIM), cache)
    written = _count_writes(monkeypatch)
    stat = os.stat(data[1]["label"])
    os.utime(data[1]["label"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, newer file
    after = preprocess_cases(data, ct_eval_transforms(PIXDIM), cache)
    assert written == [after[1]]
    assert [a == b for a, b in zip(before, after)] == [i != 1 for i in range(len(data))]


def test_a_changed_preset_value_rebuilds_every_case(items, tmp_path, monkeypatch):
    preprocess_cases(items, ct_eval_transforms(PIXDIM), tmp_path)
    written = _count_writes(monkeypatch)
    preprocess_cases(items, ct_eval_transforms(PIXDIM, hu_window=(-1000.0, 300.0)), tmp_path)
    assert len(written) == len(items)
    preprocess_cases(items, ct_eval_transforms(PIXDIM), tmp_path)  # the old setting's entries are still there
    assert len(written) == len(items)


def test_random_steps_are_not_cached(items, tmp_path):
    # the training chain's cached head ends where CacheDataset's does: before the first random crop
    train = ct_train_transforms(PIXDIM, PATCH, num_samples=2)
    head, first = disk_cache.split_transform(train)
    assert type(train.transforms[first]).__name__ == "RandCropByPosNegLabeld"
    assert isinstance(head.transforms[-1], CropCentreIndicesd)


def _same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.as_tensor() if isinstance(a, MetaTensor) else a,
                           b.as_tensor() if isinstance(b, MetaTensor) else b)
        if isinstance(a, MetaTensor):
            assert torch.equal(a.affine, b.affine)
            assert [op["class"] for op in a.applied_operations] == [op["class"] for op in b.applied_operations]
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b


def test_memory_mapped_patches_equal_in_ram_patches_and_cache_dataset(items, tmp_path):
    def chain():
        return ct_train_transforms(PIXDIM, PATCH, num_samples=3).set_random_state(seed=11)

    mapped = DiskCacheDataset(items, chain(), tmp_path, cache_memory_gb=0)
    in_ram = DiskCacheDataset(items, chain(), tmp_path, cache_memory_gb=64)
    reference = CacheDataset(items, chain(), cache_rate=1.0, progress=False)
    assert not any(mapped.in_ram(i) for i in range(len(items))) and all(in_ram.in_ram(i) for i in range(len(items)))
    for _epoch in range(2):
        for i in range(len(items)):
            a, b, c = mapped[i], in_ram[i], reference[i]
            _same(a, b)
            _same(a, c)
            assert all(p["image"].shape[1:] == PATCH for p in a)
            assert all(p["label"].dtype == torch.float32 for p in a)


def test_memory_mapped_cases_are_not_read_into_memory(items, tmp_path):
    ds = DiskCacheDataset(items, ct_eval_transforms(PIXDIM), tmp_path, cache_memory_gb=0)
    image = ds.cached_item(0)["image"]
    assert isinstance(image, MetaTensor)
    # the tensor's bytes are the file's pages: np.load(mmap_mode="c") of the entry, not a copy
    entry = ds.root / ds.keys[0]
    mapped = np.load(entry / ds._records[ds.keys[0]]["arrays"]["image"], mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    assert torch.equal(image.as_tensor(), torch.from_numpy(np.array(mapped)))


def test_ram_budget_holds_whole_cases_in_list_order(items, tmp_path):
    probe = DiskCacheDataset(items, ct_eval_transforms(PIXDIM), tmp_path, cache_memory_gb=0)
    sizes = [probe._records[k]["nbytes"] for k in probe.keys]
    budget = (sizes[0] + sizes[1] + 1) / 2**30
    ds = DiskCacheDataset(items, ct_eval_transforms(PIXDIM), tmp_path, cache_memory_gb=budget)
    assert [ds.in_ram(i) for i in range(len(items))][:2] == [True, True]
    assert ds.ram_bytes <= budget * 2**30
    assert ds.ram_bytes == sum(s for i, s in enumerate(sizes) if ds.in_ram(i))


def test_draws_leave_cases_held_in_ram_unchanged(items, tmp_path):
    ds = DiskCacheDataset(items, ct_train_transforms(PIXDIM, PATCH, num_samples=4), tmp_path, cache_memory_gb=64)
    before = [{k: v.copy() for k, v in ds._in_ram[key].items()} for key in ds.keys]
    for _ in range(3):
        for i in range(len(ds)):
            ds[i]
    for key, saved in zip(ds.keys, before):
        for name, array in saved.items():
            np.testing.assert_array_equal(ds._in_ram[key][name], array)


def test_labels_are_stored_as_uint8_and_trained_as_float32(items, tmp_path):
    ds = DiskCacheDataset(items, ct_train_transforms(PIXDIM, PATCH, num_samples=1), tmp_path, cache_memory_gb=0)
    assert ds.cached_item(0)["label"].dtype == torch.uint8
    assert ds[0][0]["label"].dtype == torch.float32


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from monai.transforms import Transform
    from pipelines.data.disk_cache import preprocess_cases
    from pipelines.transforms.ct import ct_eval_transforms

    class Slow(Transform):  # deterministic; sleeps so that the kill lands while a case is being written
        def __call__(self, d):
            time.sleep(0.6)
            return d

    import json
    items = json.loads(sys.argv[2])
    chain = ct_eval_transforms((2.0, 2.0, 3.0))
    chain.transforms = tuple(chain.transforms) + (Slow(),)
    preprocess_cases(items, chain, sys.argv[1], progress=lambda line: print(line, flush=True))
""")


def test_a_kill_during_preprocessing_leaves_nothing_trusted_and_resumes(items, tmp_path):
    import json

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", KILL_SCRIPT, str(tmp_path), json.dumps(items)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root = tmp_path / "preprocessed"
    deadline = time.time() + 120
    while time.time() < deadline and not (root.exists() and _entries(tmp_path)):
        time.sleep(0.05)
    time.sleep(0.3)  # inside the next case's Slow step or its writing
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = _entries(tmp_path)
    assert 1 <= len(finished) < len(items)
    for name in finished:  # every entry that carries a key as its name is complete
        assert (root / name / "item.pkl").is_file()
    # a half-written entry from a writer that died (simulated: the kill may land between cases)
    fake = root / f".partial-{'0' * 40}-{__import__('socket').gethostname()}-999999"
    fake.mkdir()
    (fake / "00.npy").write_bytes(b"\x93NUMPY half")
    mtimes = {n: (root / n / "item.pkl").stat().st_mtime_ns for n in finished}
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(items) - len(finished)} of {len(items)} cases to write" in resumed.stdout
    assert len(_entries(tmp_path)) == len(items)
    assert not fake.exists()
    assert {n: (root / n / "item.pkl").stat().st_mtime_ns for n in finished} == mtimes  # not redone


def test_an_entry_folder_without_its_record_is_rebuilt(items, tmp_path):
    """A folder named by a key but without item.pkl (an interrupted copy of a cache) is not trusted: rebuilt."""
    keys = preprocess_cases(items[:1], ct_eval_transforms(PIXDIM), tmp_path)
    entry = tmp_path / "preprocessed" / keys[0]
    (entry / "item.pkl").unlink()
    (entry / "stray.npy").write_bytes(b"half a copy")
    ds = DiskCacheDataset(items[:1], ct_eval_transforms(PIXDIM), tmp_path, cache_memory_gb=0)
    assert (entry / "item.pkl").is_file() and not (entry / "stray.npy").exists()
    assert ds.cached_item(0)["image"].shape[0] == 1


def test_sample_indices_is_a_seeded_sorted_subset():
    indices = np.arange(1000) * 3
    kept = sample_indices(indices, 10, seed=5)
    expected = indices[np.sort(np.random.default_rng(5).choice(1000, size=10, replace=False))]
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(sample_indices(indices[:7], 10), indices[:7])


def test_crop_centre_indices_follow_monai_rule_on_a_hand_case():
    label = torch.zeros(1, 4, 4, 4)
    label[0, 1, 1, 1] = 1
    label[0, 2, 2, 2] = 1
    image = torch.full((1, 4, 4, 4), 0.5)
    image[0, 0] = 0.0  # below the threshold: neither kind
    out = CropCentreIndicesd("label", image_key="image", image_threshold=0.1, max_indices=1000)(
        {"image": image, "label": label})
    np.testing.assert_array_equal(out["label_fg_indices"], [1 * 16 + 1 * 4 + 1, 2 * 16 + 2 * 4 + 2])
    flat = np.arange(64)
    expected_bg = flat[(flat >= 16) & ~np.isin(flat, [21, 42])]
    np.testing.assert_array_equal(out["label_bg_indices"], expected_bg)


def test_partition_for_rank_interleaves_and_refuses_too_few_cases(monkeypatch):
    import pipelines.distributed as distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    data = list(range(5))
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    r0 = partition_for_rank(data, even_divisible=True)
    r0_val = partition_for_rank(data, even_divisible=False)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    r1 = partition_for_rank(data, even_divisible=True)
    r1_val = partition_for_rank(data, even_divisible=False)
    assert (r0_val, r1_val) == ([0, 2, 4], [1, 3])
    assert len(r0) == len(r1) == 3 and set(r0) | set(r1) == set(data)
    with pytest.raises(ValueError, match=r"^the validation split has 1 case\(s\) for 2 ranks: every rank needs"):
        partition_for_rank([7], even_divisible=False, name="validation")
    assert partition_for_rank([7], even_divisible=True) == [7]  # training: the one case on every rank
    with pytest.raises(ValueError, match=r"^the training split has 0 case\(s\) for 2 ranks"):
        partition_for_rank([], even_divisible=True, name="training")
