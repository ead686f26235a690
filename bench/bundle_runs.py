"""Run a bundle's ``training`` and ``evaluate`` workflows in fresh processes, as a user would, for the quality benches
(:mod:`bench.sr_quality`, :mod:`bench.brats_regions`, :mod:`bench.isic_segmentation`).

Each command runs ``python -m monai.bundle run ...`` with ``OMP_NUM_THREADS`` set, appends its output to a log
file and raises with the log's path when it fails. Training can be stopped by wall time at the first epoch end
(after validation and checkpointing) through an extra config file, so a bench fits a time budget on any machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def bench_env(threads: int) -> dict:
    """The environment of a bench subprocess: ``threads`` OpenMP/MKL threads, warnings off, no ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"})
    return env


def time_limit_config(path: Path, seconds: float, bundle: Path) -> Path:
    """Write an extra config that stops training at the first epoch end (after validation and checkpoint) past
    ``seconds``, and return its path.

    A later config file replaces top-level ids, so the bundle's ``imports`` are repeated with ``time`` added."""
    imports = json.loads((bundle / "configs" / "train.json").read_text()).get("imports", [])
    stop = ("$@train#trainer.add_event_handler(ignite.engine.Events.EPOCH_COMPLETED, lambda e, t0=time.time(): "
            f"e.terminate() if time.time() - t0 > {float(seconds)} else None)")
    config = {"imports": [*imports, "$import time", "$import ignite"], "training": [stop, "$@train#trainer.run()"]}
    path.write_text(json.dumps(config, indent=4))
    return path


def run_logged(command: list[str], log: Path, threads: int, cwd: Path) -> float:
    """Run ``command`` in ``cwd`` with its output appended to ``log``; return the wall time in seconds."""
    start = time.time()
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(command)}\n")
        f.flush()
        proc = subprocess.run(command, cwd=cwd, env=bench_env(threads), stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}), see {log}: {' '.join(command)}")
    return time.time() - start


def train_bundle(bundle: Path, data: Path, extra: Path | None, overrides: dict, log: Path, threads: int,
                 work: Path) -> float:
    """``monai.bundle run training`` on ``data`` with ``extra`` (e.g. a time limit) after ``train.json``."""
    configs = bundle / "configs"
    config_files = [str(configs / "train.json")] + ([str(extra)] if extra is not None else [])
    command = [sys.executable, "-m", "monai.bundle", "run", "training",
               "--meta_file", str(configs / "metadata.json"),
               "--config_file", json.dumps(config_files),
               "--logging_file", str(configs / "logging.conf"), "--bundle_root", str(bundle),
               "--dataset_dir", str(data)]
    for key, value in overrides.items():
        command += [f"--{key}", json.dumps(value)]
    return run_logged(command, log, threads, work)


def evaluate_bundle(bundle: Path, data: Path, ckpt: Path, out: Path, log: Path, threads: int, work: Path) -> dict:
    """``evaluate.json`` over every case of ``data`` (``eval_all``) with the weights ``ckpt``; returns the report's
    ``summary.json`` with the wall time added."""
    configs = bundle / "configs"
    command = [sys.executable, "-m", "monai.bundle", "run",
               "--config_file", json.dumps([str(configs / "train.json"), str(configs / "evaluate.json")]),
               "--logging_file", str(configs / "logging.conf"), "--bundle_root", str(bundle),
               "--dataset_dir", str(data), "--eval_all", "true", "--ckpt_path", str(ckpt), "--output_dir", str(out)]
    seconds = run_logged(command, log, threads, work)
    summary = json.loads((out / "summary.json").read_text())
    summary["seconds"] = round(seconds, 1)
    return summary


def network_parameters(bundle: Path) -> int:
    """Parameter count of the network ``train.json`` of ``bundle`` builds (``network_def``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    return sum(p.numel() for p in parser.get_parsed_content("network_def").parameters())


def write_report(out: Path, stem: str, report: dict, markdown) -> None:
    """Stamp ``report`` with the time, write ``<out>/<stem>.json`` and ``<out>/<stem>.md`` (``markdown(report)``)
    atomically, and print the Markdown."""
    from pipelines.io import write_json_atomic, write_text_atomic

    report["generated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json_atomic(out / f"{stem}.json", report)
    text = markdown(report)
    write_text_atomic(out / f"{stem}.md", text)
    print(text, flush=True)
