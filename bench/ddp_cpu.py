"""Wall time of the ISIC FRCU-Net bundle's training, 1 process vs 2 (torchrun, gloo) on the CPU, same work.

Same work: the same synthetic images, epochs and global batch (2 processes get half the batch each, and
``DistributedSampler`` gives each half of the images). Validation is included (every epoch), as in real runs.
Each configuration is timed end to end (``python -m monai.bundle run training`` / ``torch.distributed.run``:
interpreter start, config parsing, caching, training, validation, checkpoints)::

    python -m bench.ddp_cpu --images 48 --epochs 3          # prints a table; --json for machine-readable output

Threads: ``--threads`` per process (default: the CPU count divided by the processes, so both use every core).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "isic_skin_frcunet_segmentation"
SMALL = {"features": [8, 16, 32, 64, 128], "freq_channels": 16, "gauss_kernel_sizes": [3, 5],
         "spatial_size": [96, 96], "num_workers": 0}


def _run(work: Path, data: Path, processes: int, epochs: int, batch: int, threads: int, port: int) -> float:
    from pipelines.bundle import derive_bundle

    bundle = derive_bundle(BUNDLE, work / f"bundle{processes}", SMALL,
                           {"max_epochs": epochs, "batch_size": batch // processes, "learning_rate": 0.001})
    configs = bundle / "configs"
    files = [str(configs / "train.json")] + ([str(configs / "multi_gpu_train.json")] if processes > 1 else [])
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={port}"] \
        if processes > 1 else []
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *launcher, "-m", "monai.bundle", "run", "training",
                           "--config_file", json.dumps(files), "--bundle_root", str(bundle), "--dataset_dir", str(data),
                           "--val_fraction", "0.25"], cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="global batch size (each of 2 processes gets half)")
    parser.add_argument("--threads", type=int, default=None, help="threads per process (default: cores / processes)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from pipelines.synth.isic import write_isic_seg

    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_isic_seg(work / "data", cases=args.images, seed=0, height=(90, 120))
        for repeat in range(args.repeats):
            for processes in (1, 2):
                threads = args.threads or max(1, cores // processes)
                seconds = _run(work, work / "data", processes, args.epochs, args.batch, threads, 29650 + repeat)
                rows.append({"processes": processes, "threads_per_process": threads, "seconds": round(seconds, 1)})
                shutil.rmtree(work / f"bundle{processes}", ignore_errors=True)
    if args.json:
        print(json.dumps({"cores": cores, "images": args.images, "epochs": args.epochs, "runs": rows}, indent=2))
    else:
        print(f"ISIC FRCU-Net, {args.images} images, {args.epochs} epochs, global batch {args.batch}, {cores} cores")
        for r in rows:
            print(f"  {r['processes']} process(es) x {r['threads_per_process']} thread(s): {r['seconds']:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
