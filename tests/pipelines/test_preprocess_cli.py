"""``python -m pipelines preprocess``: fills the bundle's disk cache in parallel, and training then writes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipelines.data import disk_cache
from tests.conftest import train_bundle

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "pipelines", "preprocess", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_preprocess_then_train_reads_every_case_from_the_cache(tiny_lung_bundle, luna16_tiny, tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_lung_bundle, bundle, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache"))
    first = _run(str(bundle), "--dataset_dir", str(luna16_tiny[0]), "--workers", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    entries = [p for p in (bundle / "cache" / "preprocessed").iterdir() if not p.name.startswith(".")]
    n_cases = len(luna16_tiny[1])
    assert len(entries) == n_cases  # training and validation cases, one entry each
    assert first.stdout.count("preprocess: [") == n_cases
    assert "preprocess: done (3 training, 1 validation cases)" in first.stdout

    again = _run(str(bundle), "--dataset-dir", str(luna16_tiny[0]))
    assert again.returncode == 0 and "preprocess: [" not in again.stdout

    written: list[str] = []
    real = disk_cache._write_entry
    monkeypatch.setattr(disk_cache, "_write_entry", lambda *a: written.append(a[3]) or real(*a))
    train_bundle(bundle, luna16_tiny[0], check_properties=False)
    assert written == []
    assert (bundle / "models" / "model.pt").is_file()


def test_preprocess_of_a_folder_that_is_no_bundle_is_one_line_and_exit_2(tmp_path):
    proc = _run(str(tmp_path), "--dataset_dir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path}/configs/train.json: no such file (is {tmp_path} a bundle folder?)"
