"""The command line of an exported bundle: networks/ and pipelines/ only, no bench/ and no tests/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.conftest import REPO

# runs python -m pipelines with every import of bench/ or tests/ refused, from a folder holding only the product
RUNNER = """
import importlib.abc, runpy, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("bench", "tests"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Refuse())
sys.argv = ["pipelines", *sys.argv[1:]]
runpy.run_module("pipelines", run_name="__main__")
"""


def _run(folder, *args):
    env = dict(os.environ, PYTHONPATH=str(folder), PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)


def test_help_and_infer_help_run_with_only_networks_and_pipelines(tmp_path):
    for package in ("networks", "pipelines"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    top = _run(tmp_path, "--help")
    assert top.returncode == 0, top.stderr
    assert "infer" in top.stdout and "export" in top.stdout
    infer = _run(tmp_path, "infer", "--help")
    assert infer.returncode == 0, infer.stderr
    assert "--series" in infer.stdout and "--precision" in infer.stdout
    bench = _run(tmp_path, "bench", "--quick")
    assert bench.returncode == 2 and "needs the repository's bench/ package" in bench.stderr
