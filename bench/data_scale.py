"""Does the training data path keep its memory flat and keep up with the train step as the data set grows?

Full-size synthetic LUNA16 (512 x 512 x 120-400 slices, :func:`pipelines.synth.luna16.write_luna16` ``size="full"``)
and BraTS (4 x 240 x 240 x 155, :func:`pipelines.synth.brats.write_brats` ``size="full"``), at N = 8, 16 and 32
training cases, through the lung and BraTS bundles' shipped ``train#preprocessing`` (shipped pixdim, patch size,
``num_samples``) and shipped ``batch_size``, for two datasets in the same run:

- ``cache``: today's ``CacheDataset(cache_rate=1.0)``, every preprocessed case in RAM;
- ``disk``: :class:`pipelines.data.disk_cache.DiskCacheDataset` with ``cache_memory_gb=0`` (every case
  memory-mapped: the RAM budget is a constant added on top, so this shows what grows with N).

Each measurement runs in a fresh process with ``--workers`` DataLoader workers; memory is the peak of the summed PSS
(``/proc/<pid>/smaps_rollup``, so pages shared by the workers count once) of the process and its workers, sampled
every 0.2 s. ``disk`` is measured on a cache filled beforehand (its preprocessing time is reported separately, per
case). Time to first batch counts from the dataset's construction, so for ``cache`` it includes caching every case.
The bundle network's train step (forward, backward, AdamW step; shipped widths, one patch of the shipped size, fp32,
this CPU) gives the rate the loader must reach here; for a GPU, the rate comes from nnU-Net's published epoch times
(see ``GPU_REFERENCE``).

Writes ``bench/results_data_scale.{json,md}``.

    python -m bench.data_scale                          # both data sets, N = 8 16 32 (about 45 minutes, 2 cores)
    python -m bench.data_scale --datasets brats --sizes 8 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUNDLES = {"luna16": REPO / "bundles" / "lung_nodule_ct_edu_segmentation",
           "brats": REPO / "bundles" / "brats_mri_frcunet_segmentation"}
#: the real data sets' sizes, for the extrapolation: LUNA16's 888 scans (about 600 for training after a validation
#: and test split) and BraTS 2021's 1,251 training cases (1,000 after a validation split)
REAL = {"luna16": ("LUNA16", 888, 600), "brats": ("BraTS 2021", 1251, 1000)}
#: nnU-Net v1 documentation/expected_epoch_times.md: 3d_fullres (batch 2, patch about 128^3, mixed precision),
#: 250 iterations per epoch, fastest of 5 epochs; Task003_Liver 137.08 s on a V100 32 GB SXM3 (DGX-2)
GPU_REFERENCE = {"source": "nnU-Net v1 documentation/expected_epoch_times.md, Task003_Liver 3d_fullres, V100 SXM3",
                 "seconds_per_epoch": 137.08, "iterations": 250, "batch": 2, "patch_voxels": 128 ** 3}


# -- measuring memory -------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found + [g for c in found for g in _children(c)]


def _pss_bytes(pid: int) -> int:
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class PeakMemory:
    """Peak of the summed PSS of this process and its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.peak, self._stop, self.interval = 0, threading.Event(), interval
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _pss_bytes(os.getpid()))
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _pss_bytes(os.getpid()))


# -- one measurement (child process) ----------------------------------------------------------------------------


def _parser(dataset: str, overrides: dict | None = None):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES[dataset] / "configs" / "train.json"))
    parser.update(overrides or {})
    return parser


def _datalist(dataset: str, data_dir: Path, masks: Path, n: int) -> list[dict]:
    if dataset == "luna16":
        from pipelines.data.luna16 import luna16_datalist

        lists = luna16_datalist(data_dir, masks, val_fraction=0.0)
    else:
        from pipelines.data.brats import brats_datalist

        lists = brats_datalist(data_dir, val_fraction=0.0)
    items = lists["training"] + lists["validation"]
    if len(items) < n:
        raise SystemExit(f"{data_dir}: {len(items)} cases, {n} asked")
    return items[:n]


def _loader_child(args: argparse.Namespace) -> dict:
    import torch
    from monai.data import CacheDataset, DataLoader

    from pipelines.data.disk_cache import DiskCacheDataset

    torch.set_num_threads(1)
    parser = _parser(args.dataset)
    items = _datalist(args.dataset, Path(args.data), Path(args.work) / "masks", args.n)
    transform = parser.get_parsed_content("train#preprocessing")
    batch_size = parser.get_parsed_content("batch_size")
    start = time.perf_counter()
    with PeakMemory() as memory:
        if args.path == "cache":
            ds = CacheDataset(items, transform, cache_rate=1.0, num_workers=args.workers, progress=False)
        else:
            ds = DiskCacheDataset(items, transform, Path(args.work) / "cache", cache_memory_gb=0,
                                  num_workers=args.workers)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=args.workers,
                            persistent_workers=args.workers > 0)
        epochs, first_batch = [], None
        for _ in range(2):
            t0, patches = time.perf_counter(), 0
            for batch in loader:
                if first_batch is None:
                    first_batch = time.perf_counter() - start
                patches += batch["image"].shape[0]
            epochs.append({"patches": patches, "seconds": time.perf_counter() - t0})
    return {"first_batch_s": first_batch, "patches_per_s": [e["patches"] / e["seconds"] for e in epochs],
            "epochs": epochs, "peak_pss_bytes": memory.peak}


def _step_child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    parser = _parser(args.dataset, {"device": "$torch.device('cpu')"})
    network = parser.get_parsed_content("network_def")
    patch = parser.get_parsed_content("patch_size")
    loss = parser.get_parsed_content("loss")
    channels = parser["network_def"]["in_channels"]
    out_channels = parser["network_def"]["out_channels"]
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    x = torch.randn(1, channels, *patch)
    label_channels = 1 if args.dataset == "luna16" else out_channels
    y = (torch.rand(1, label_channels, *patch) > 0.5).float()
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss(network(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return {"step_s": min(times), "patch": list(patch), "threads": args.threads,
            "parameters": sum(p.numel() for p in network.parameters())}


def _preprocess_child(args: argparse.Namespace) -> dict:
    import torch

    from pipelines.data.disk_cache import preprocess_cases, split_transform

    torch.set_num_threads(1)
    parser = _parser(args.dataset)
    items = _datalist(args.dataset, Path(args.data), Path(args.work) / "masks", args.n)
    transform = parser.get_parsed_content("train#preprocessing")
    cache = Path(args.work) / "cache"
    root = cache / "preprocessed"
    before = {p.name for p in root.iterdir()} if root.exists() else set()
    t0 = time.perf_counter()
    keys = preprocess_cases(items, transform, cache, num_workers=args.workers)
    seconds = time.perf_counter() - t0
    new = [k for k in dict.fromkeys(keys) if k not in before]
    sizes = [sum(f.stat().st_size for f in (root / k).iterdir()) for k in dict.fromkeys(keys)]
    del split_transform
    return {"written": len(new), "seconds": seconds, "entry_bytes": sizes}


# -- orchestration ----------------------------------------------------------------------------------------------


def _child(kind: str, **kwargs) -> dict:
    args = [sys.executable, "-m", "bench.data_scale", "--child", kind]
    for k, v in kwargs.items():
        args += [f"--{k}", str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1],
                "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _write_data(dataset: str, out: Path, n: int) -> None:
    if (out / ".complete").exists():
        return
    if dataset == "luna16":
        from pipelines.synth.luna16 import write_luna16

        write_luna16(out, cases=n, seed=0, size="full", subsets=4)
    else:
        from pipelines.synth.brats import write_brats

        write_brats(out, cases=n, seed=0, size="full")
    (out / ".complete").write_text("")


def _available_bytes() -> int:
    from pipelines.data.disk_cache import available_memory_bytes

    return available_memory_bytes()


def run(datasets: list[str], sizes: list[int], work: Path, workers: int) -> dict:
    results: dict = {"sizes": sizes, "workers": workers, "gpu_reference": GPU_REFERENCE, "datasets": {}}
    for dataset in datasets:
        data = work / dataset / "data"
        _write_data(dataset, data, max(sizes))
        common = {"dataset": dataset, "data": data, "work": work / dataset}
        entry: dict = {"preprocess": {}, "cache": {}, "disk": {}}
        print(f"[{dataset}] train step of the shipped network", flush=True)
        entry["train_step"] = _child("step", dataset=dataset, threads=2)
        for n in sizes:
            print(f"[{dataset}] N={n}: preprocessing into the disk cache", flush=True)
            entry["preprocess"][n] = _child("preprocess", n=n, workers=workers, **common)
            print(f"[{dataset}] N={n}: disk path", flush=True)
            entry["disk"][n] = _child("loader", path="disk", n=n, workers=workers, **common)
            measured = [m for m in sizes if m < n and "peak_pss_bytes" in entry["cache"].get(m, {})]
            if measured:  # today's path needs about (peak per case) x N: skip it where that cannot fit
                per_case = entry["cache"][measured[-1]]["peak_pss_bytes"] / measured[-1]
                if per_case * n > 0.8 * _available_bytes():
                    entry["cache"][n] = {"skipped": f"needs about {per_case * n / 2**30:.1f} GiB by the N = "
                                                    f"{measured[-1]} peak per case; this machine has "
                                                    f"{_available_bytes() / 2**30:.1f} GiB available"}
                    continue
            print(f"[{dataset}] N={n}: CacheDataset path", flush=True)
            entry["cache"][n] = _child("loader", path="cache", n=n, workers=workers, **common)
        results["datasets"][dataset] = entry
        (HERE / "results_data_scale.json").write_text(json.dumps(results, indent=1, default=str))
    return results


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def report(results: dict) -> str:
    ref = results["gpu_reference"]
    gpu_rate = ref["iterations"] * ref["batch"] / ref["seconds_per_epoch"]
    lines = [
        "# Data path at full size: memory and throughput against N",
        "",
        "`python -m bench.data_scale` (see its docstring). Full-size synthetic data, shipped preprocessing, patch "
        "size,",
        f"`num_samples` and `batch_size`; {results['workers']} DataLoader workers; 2-core machine, one run. Memory: "
        "peak",
        "summed PSS of the loader process and its workers. `disk` = `DiskCacheDataset` with `cache_memory_gb=0` (all",
        "memory-mapped), read from a filled cache; `cache` = `CacheDataset(cache_rate=1.0)`.",
        "",
    ]
    for dataset, entry in results["datasets"].items():
        step = entry["train_step"]
        name = REAL[dataset][0]
        lines += [f"## {name}-like", ""]
        if "step_s" in step:
            patch_voxels = 1
            for s in step["patch"]:
                patch_voxels *= s
            gpu_here = gpu_rate * ref["patch_voxels"] / patch_voxels
            lines += [
                f"Train step of the shipped network ({step['parameters'] / 1e6:.2f} M parameters, one "
                f"{'x'.join(map(str, step['patch']))} patch, fp32, {step['threads']} threads): {step['step_s']:.2f} s, "
                f"so **{1 / step['step_s']:.3f} patches/s** on this CPU. GPU reference: nnU-Net's 3d_fullres U-Net "
                f"trains {gpu_rate:.2f} patches/s of 128^3 on a V100 ({ref['source']}); scaled to this patch size "
                f"by voxels, **{gpu_here:.1f} patches/s** (an upper bound for this network, which costs more per "
                "voxel than nnU-Net's U-Net).",
                "",
            ]
        lines += ["| N | path | first batch s | epoch 1 patches/s | epoch 2 patches/s | peak memory GiB |",
                  "|---:|---|---:|---:|---:|---:|"]
        for n in results["sizes"]:
            for path in ("cache", "disk"):
                r = entry[path].get(n) or entry[path].get(str(n)) or {}
                if "skipped" in r or "error" in r:
                    lines.append(f"| {n} | {path} | {r.get('skipped') or r.get('error')} | | | |")
                    continue
                rates = r["patches_per_s"]
                lines.append(f"| {n} | {path} | {r['first_batch_s']:.1f} | {rates[0]:.2f} | {rates[1]:.2f} | "
                             f"{_gib(r['peak_pss_bytes'])} |")
        pre = [entry["preprocess"].get(n) or entry["preprocess"].get(str(n)) for n in results["sizes"]]
        written = sum(p.get("written", 0) for p in pre if p)
        seconds = sum(p.get("seconds", 0) for p in pre if p)
        sizes_b = (pre[-1] or {}).get("entry_bytes") or []
        mean_entry = sum(sizes_b) / max(len(sizes_b), 1)
        lines += ["", f"Preprocessing into the disk cache: {written} cases in {seconds:.0f} s "
                      f"({seconds / max(written, 1):.1f} s per case, {results['workers']} processes); "
                      f"{mean_entry / 2**20:.0f} MiB per case on disk.", ""]
        lines += _extrapolation(dataset, entry, results["sizes"], mean_entry)
    return "\n".join(lines) + "\n"


def _extrapolation(dataset: str, entry: dict, sizes: list[int], entry_bytes: float) -> list[str]:
    name, total, train = REAL[dataset]
    cache = [(n, entry["cache"].get(n) or entry["cache"].get(str(n))) for n in sizes]
    cache = [(n, r["peak_pss_bytes"]) for n, r in cache if r and "peak_pss_bytes" in r]
    disk = [(n, (entry["disk"].get(n) or entry["disk"].get(str(n)) or {}).get("peak_pss_bytes")) for n in sizes]
    disk = [(n, b) for n, b in disk if b]
    if not cache or not disk:
        return []
    if len(cache) >= 2:
        (n0, b0), (n1, b1) = cache[0], cache[-1]
        slope = (b1 - b0) / (n1 - n0)
        how = "linear in N through the measured points"
    else:  # one point: the whole peak counted per case (an upper bound: the process's own base is included)
        (n0, b0), slope = cache[0], cache[0][1] / cache[0][0]
        how = f"the N = {cache[0][0]} peak divided by N, the larger N not fitting this machine"
    base = b0 - slope * n0
    return [
        f"Extrapolated to {name} ({train} training cases of {total}; {how}):",
        "",
        "| path | RAM for training | disk cache |",
        "|---|---:|---:|",
        f"| `CacheDataset` | {_gib(base + slope * train)} GiB ({_gib(slope)} GiB per case) | none |",
        f"| `DiskCacheDataset` (`cache_memory_gb=0`) | {_gib(max(b for _, b in disk))} GiB, flat | "
        f"{_gib(entry_bytes * total)} GiB for all {total} |",
        "",
        "Add `cache_memory_gb` (default: a quarter of the available memory) to the disk path's RAM: that much of the "
        "data set is then held in RAM, the rest stays on disk.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["luna16", "brats"], choices=list(BUNDLES))
    ap.add_argument("--sizes", nargs="+", type=int, default=[8, 16, 32])
    ap.add_argument("--work", default="/tmp/bench_data_scale", help="folder for the data and the caches")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the committed .json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    for hidden in ("dataset", "data", "path", "n", "threads"):
        ap.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.n = int(args.n) if args.n else 0
        args.threads = int(args.threads) if args.threads else 1
        args.workers = int(args.workers)
        out = {"loader": _loader_child, "step": _step_child, "preprocess": _preprocess_child}[args.child](args)
        print(json.dumps(out))
        return 0
    if args.report_only:
        results = json.loads((HERE / "results_data_scale.json").read_text())
    else:
        results = run(args.datasets, sorted(args.sizes), Path(args.work), args.workers)
    (HERE / "results_data_scale.json").write_text(json.dumps(results, indent=1, default=str))
    (HERE / "results_data_scale.md").write_text(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
