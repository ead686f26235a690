"""Preprocess each case once to disk, then read training patches from memory-mapped arrays.

A bundle's transform chain is split where MONAI's ``CacheDataset`` splits it: the deterministic steps before the
first random one (load, orient, resample, normalise, crop to foreground, label rasterisation, crop-centre indices)
run once per case and are stored on disk; the random steps (patch sampling, augmentation) run on every draw. Layout::

    <cache_dir>/preprocessed/
    ├── 3f9c.../                  one finished case: the key hashes its files and the preprocessing settings
    │   ├── item.pkl              the non-array values, each MetaTensor's meta and applied operations, sizes
    │   ├── image.npy             arrays as written by numpy: np.load(mmap_mode=...) maps them without reading
    │   └── label.npy
    └── .partial-3f9c...-host-pid/  a case being written (renamed to its key when complete; a killed writer's
                                    leftovers are never read and are removed by the next run)

The **key** of a case is a SHA-256 of the preprocessing settings (the pickled deterministic transforms, so any
changed preset value changes it) and of each input file the case names: its path, size, modification time and
the bytes of its first and last MiB. A changed file or a changed setting therefore rebuilds exactly the cases it
touches; a second run with nothing changed reads every case from disk. Whole-content hashes of a 120 GB download
would take minutes on every start, which is why the fingerprint is ``make``-like plus a sample of the content.

**Memory.** Cases are loaded whole into RAM in data-list order while they fit ``cache_memory_gb`` (default: a
quarter of the memory available at start, divided among the ranks of this machine); the rest are memory-mapped
and a draw reads only the pages its patch covers (random crops slice a view; the copy happens after the crop).
Peak memory is therefore bounded by the budget plus one case's patch set, whatever the number of cases.

Why not MONAI's datasets: ``PersistentDataset`` keys its files by the data dict (the path strings, not the files'
contents, so a re-downloaded scan is never rebuilt), stores each case with ``torch.save`` and loads it whole, so
every draw reads the full volume; ``CacheDataset`` and ``SmartCacheDataset`` keep whole volumes in RAM;
``LMDBDataset`` stores pickles, again read whole. None maps arrays or budgets RAM in bytes (upstream lacks both).

The arrays are written with ``numpy.save``; ``item.pkl`` is a pickle the run itself wrote into the bundle's own
cache folder (the same trust as MONAI's ``PersistentDataset``, which ``torch.load``s with ``weights_only=False``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandomizableTrait, Transform

__all__ = [
    "DiskCacheDataset", "case_key", "settings_digest", "split_transform", "preprocess_cases", "available_memory_bytes",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"  # bump when the entry layout changes: every key changes with it
SAMPLE_BYTES = 1 << 20  # bytes hashed from the start and the end of each input file
ITEM_FILE = "item.pkl"
DEFAULT_MEMORY_FRACTION = 0.25


def split_transform(transform: Compose) -> tuple[Compose, int | None]:
    """The deterministic head of ``transform`` and the index of its first random step (None: all deterministic),
    with MONAI ``CacheDataset``'s rule (a random transform, or anything that is not a MONAI ``Transform``)."""
    if not isinstance(transform, Compose):
        transform = Compose(transform if isinstance(transform, Sequence) else [transform])
    first = transform.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))
    head = transform.transforms if first is None else transform.transforms[:first]
    return Compose(list(head)), first


def settings_digest(head: Compose) -> str:
    """SHA-256 of the deterministic preprocessing: its pickle holds every transform's class and settings."""
    return hashlib.sha256(FORMAT_VERSION.encode() + pickle.dumps(list(head.transforms), protocol=4)).hexdigest()


def _files_in(value: Any) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)] if os.path.isfile(value) else []
    if isinstance(value, (list, tuple)):
        return [f for v in value for f in _files_in(v)]
    if isinstance(value, dict):
        return [f for k in sorted(value, key=str) for f in _files_in(value[k])]
    return []


def _file_fingerprint(path: str) -> bytes:
    stat = os.stat(path)
    digest = hashlib.sha256(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    with open(path, "rb") as f:
        digest.update(f.read(SAMPLE_BYTES))
        if stat.st_size > 2 * SAMPLE_BYTES:
            f.seek(-SAMPLE_BYTES, os.SEEK_END)
            digest.update(f.read(SAMPLE_BYTES))
    return digest.digest()


def case_key(item: dict, settings: str) -> str:
    """The cache key of one data item under the preprocessing ``settings`` (see the module docstring)."""
    digest = hashlib.sha256(settings.encode())
    digest.update(repr(sorted((str(k), repr(v)) for k, v in item.items())).encode())
    for path in _files_in(item):
        digest.update(_file_fingerprint(path))
    return digest.hexdigest()[:40]


def available_memory_bytes() -> int:
    """Memory this process may still use: ``MemAvailable``, or less when a cgroup (a container) caps it."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        import psutil

        available = int(psutil.virtual_memory().available)
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(int(available), 0)


# -- writing one entry ------------------------------------------------------------------------------------------


def _to_numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if isinstance(value, MetaTensor):
            value = value.as_tensor()
        return np.ascontiguousarray(value.numpy())
    return np.ascontiguousarray(value)


def _write_entry(item: dict, head: Compose, root: Path, key: str) -> int:
    """Run ``head`` on ``item`` and store the result as ``root/key``; returns the bytes of its arrays."""
    data = head(dict(item))
    if isinstance(data, list):
        raise ValueError("the deterministic preprocessing returned several samples; only the random steps may")
    partial = root / f".partial-{key}-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    record: dict[str, Any] = {"arrays": {}, "numpy": [], "meta": {}, "objects": {}, "nbytes": 0}
    try:
        for i, (name, value) in enumerate(data.items()):
            if isinstance(value, (torch.Tensor, np.ndarray)):
                array = _to_numpy(value)
                filename = f"{i:02d}.npy"
                np.save(partial / filename, array, allow_pickle=False)
                record["arrays"][name] = filename
                record["nbytes"] += array.nbytes
                if isinstance(value, MetaTensor):
                    record["meta"][name] = (dict(value.meta), list(value.applied_operations))
                elif isinstance(value, np.ndarray):
                    record["numpy"].append(name)  # given back as NumPy, as the transforms made it
            else:
                record["objects"][name] = value
        with open(partial / ITEM_FILE, "wb") as f:
            pickle.dump(record, f, protocol=4)
        for path in partial.iterdir():  # the entry's bytes are on disk before its name says it is complete
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        incomplete = root / key
        if incomplete.is_dir() and not (incomplete / ITEM_FILE).is_file():
            shutil.rmtree(incomplete, ignore_errors=True)  # not written here (an interrupted copy of a cache): replace
        try:
            os.rename(partial, root / key)
        except OSError:  # another process (another rank, `pipelines preprocess`) finished the same case first
            if not (root / key / ITEM_FILE).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return record["nbytes"]


def _remove_dead_partials(root: Path) -> None:
    host = socket.gethostname()
    for path in root.glob(".partial-*"):
        owner_host, _, pid = path.name[len(".partial-") + 41:].rpartition("-")  # .partial-<key>-<host>-<pid>
        if owner_host != host:
            continue  # another machine's writer on a shared file system: not ours to judge
        try:
            os.kill(int(pid), 0)
            alive = int(pid) != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(path, ignore_errors=True)


_WORKER_HEAD: Compose | None = None


def _worker_init(head: Compose) -> None:
    global _WORKER_HEAD
    torch.set_num_threads(1)
    _WORKER_HEAD = head


def _worker_write(args: tuple[dict, str, str]) -> tuple[str, int, float]:
    item, root, key = args
    start = time.perf_counter()
    assert _WORKER_HEAD is not None
    nbytes = _write_entry(item, _WORKER_HEAD, Path(root), key)
    return key, nbytes, time.perf_counter() - start


def preprocess_cases(
    data: Sequence[dict],
    transform: Compose,
    cache_dir: str | os.PathLike,
    *,
    num_workers: int = 0,
    progress: Callable[[str], None] | None = None,
    bar: bool | None = None,
) -> list[str]:
    """Write the disk-cache entry of every case of ``data`` that has none yet; return the keys, in ``data`` order.

    Finished cases are skipped, so a run killed halfway resumes where it stopped; ``num_workers`` > 0 preprocesses
    that many cases at a time in separate processes. ``progress`` (default: the module's logger) receives a line
    saying how many cases are to be written and then one line per case written, with an estimate of the time left;
    ``bar`` replaces the per-case lines by a tqdm bar on stderr (cases, rate, ETA; ``None``: when stderr is a
    terminal and this is rank 0, :func:`pipelines.engines.progress.show_progress`).
    """
    head, _ = split_transform(transform)
    settings = settings_digest(head)
    root = Path(cache_dir) / "preprocessed"
    root.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(root)
    keys = [case_key(item, settings) for item in data]
    todo = [(item, str(root), key) for item, key in zip(data, keys) if not (root / key / ITEM_FILE).is_file()]
    todo = list({t[2]: t for t in todo}.values())  # the same case listed twice is written once
    say = progress or logger.info
    if not todo:
        return keys
    say(f"preprocess: {len(todo)} of {len(set(keys))} cases to write into {root}")
    start, written = time.perf_counter(), 0
    if bar is None:
        from pipelines.engines.progress import show_progress

        bar = show_progress()
    if bar:
        from tqdm import tqdm

        cases_bar = tqdm(total=len(todo), desc="preprocess", unit="case", dynamic_ncols=True)

    def report(key: str, nbytes: int, seconds: float) -> None:
        nonlocal written
        written += 1
        if bar:
            cases_bar.set_postfix_str(f"{key[:12]} {nbytes / 2**20:.0f} MiB in {seconds:.1f} s", refresh=False)
            cases_bar.update(1)
            return
        elapsed = time.perf_counter() - start
        eta = elapsed / written * (len(todo) - written)
        say(f"preprocess: [{written}/{len(todo)}] {key[:12]} {nbytes / 2**20:.0f} MiB in {seconds:.1f} s, "
            f"about {eta:.0f} s left")

    try:
        if num_workers > 0 and len(todo) > 1:
            import multiprocessing as mp

            context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(min(num_workers, len(todo)), mp_context=context, initializer=_worker_init,
                                     initargs=(head,)) as pool:
                for key, nbytes, seconds in pool.map(_worker_write, todo):
                    report(key, nbytes, seconds)
        else:
            for item, root_str, key in todo:
                t0 = time.perf_counter()
                nbytes = _write_entry(item, head, Path(root_str), key)
                report(key, nbytes, time.perf_counter() - t0)
    finally:
        if bar:
            cases_bar.close()
    return keys


# -- reading ----------------------------------------------------------------------------------------------------


def _read_record(path: Path) -> dict:
    with open(path / ITEM_FILE, "rb") as f:
        return pickle.load(f)  # noqa: S301 - written by this code into the bundle's own cache (module docstring)


def _as_item(record: dict, arrays: dict[str, np.ndarray]) -> dict:
    item: dict[str, Any] = {}
    for name in record["order"]:
        if name in record["numpy"]:  # small (coordinates, crop-centre indices): a plain array, as the transform made
            item[name] = np.array(arrays[name])
        elif name in arrays:
            tensor = torch.from_numpy(arrays[name])
            if name in record["meta"]:
                meta, ops = record["meta"][name]
                tensor = MetaTensor(tensor, meta=dict(meta), applied_operations=list(ops))
            item[name] = tensor
        else:
            item[name] = record["objects"][name]
    return item


class DiskCacheDataset(torch.utils.data.Dataset):
    """A MONAI-style dataset whose deterministic preprocessing is cached on disk and, within a budget, in RAM.

    ``dataset[i]`` equals what ``CacheDataset(data, transform)[i]`` gives for the same random state: the cached
    head is stored losslessly (arrays with their dtype, MetaTensor meta and applied operations), and the random
    tail of ``transform`` runs on it. Cases in RAM are shared, not copied, with each draw: the random steps must
    not modify their input in place, which holds for MONAI's transforms (they return new tensors or views).

    Args:
        data: the data list (dicts of file paths and values).
        transform: the bundle's full transform chain (a ``Compose``).
        cache_dir: folder for ``preprocessed/``; keep it on a fast local disk.
        cache_memory_gb: RAM for whole cases; ``None``: a quarter of the memory available now, shared among this
            machine's ranks (``LOCAL_WORLD_SIZE``); 0: every case memory-mapped.
        num_workers: processes for preprocessing missing cases (0: in this process).
    """

    def __init__(
        self,
        data: Sequence[dict],
        transform: Compose,
        cache_dir: str | os.PathLike,
        cache_memory_gb: float | None = None,
        num_workers: int = 0,
    ) -> None:
        self.data = list(data)
        self.transform = transform if isinstance(transform, Compose) else Compose(transform)
        self.root = Path(cache_dir) / "preprocessed"
        _, self.first_random = split_transform(self.transform)
        self.keys = preprocess_cases(self.data, self.transform, cache_dir, num_workers=num_workers)
        records = {}
        for key in dict.fromkeys(self.keys):
            record = _read_record(self.root / key)
            record["order"] = list(record["arrays"]) + [n for n in record["objects"]]
            records[key] = record
        self._records = records
        if cache_memory_gb is None:
            ranks_here = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
            budget = int(DEFAULT_MEMORY_FRACTION * available_memory_bytes() / ranks_here)
        else:
            budget = int(float(cache_memory_gb) * 2**30)
        self._in_ram: dict[str, dict[str, np.ndarray]] = {}
        used = 0
        for key, record in records.items():
            if used + record["nbytes"] > budget:
                continue
            self._in_ram[key] = {n: np.load(self.root / key / f, allow_pickle=False)
                                 for n, f in record["arrays"].items()}
            used += record["nbytes"]
        self.ram_bytes = used
        self.disk_bytes = sum(r["nbytes"] for r in records.values())
        logger.info(f"DiskCacheDataset: {len(self.data)} cases, {len(self._in_ram)} in RAM "
                    f"({used / 2**30:.2f} GiB of a {budget / 2**30:.2f} GiB budget), "
                    f"{len(records) - len(self._in_ram)} memory-mapped from {self.root}")

    def __len__(self) -> int:
        return len(self.data)

    def in_ram(self, index: int) -> bool:
        return self.keys[index] in self._in_ram

    def cached_item(self, index: int) -> dict:
        """Case ``index`` after the deterministic preprocessing, as stored (RAM or memory-mapped, never copied)."""
        key = self.keys[index]
        record = self._records[key]
        arrays = self._in_ram.get(key)
        if arrays is None:
            # copy-on-write mapping: writable for torch.from_numpy, nothing read until a page is touched
            arrays = {n: np.load(self.root / key / f, mmap_mode="c", allow_pickle=False)
                      for n, f in record["arrays"].items()}
        return _as_item(record, arrays)

    def __getitem__(self, index: int):
        item = self.cached_item(index)
        if self.first_random is None:
            return item
        return self.transform(item, start=self.first_random)
