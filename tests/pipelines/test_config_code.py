"""verify's reading of what a bundle's configs run: hostile targets and expressions are listed, the shipped ones not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.config_code import code_findings, expression_findings
from tests.conftest import REPO

IMPORTS = {"os": "os", "torch": "torch", "monai": "monai", "list_volumes": "pipelines.data.volumes.list_volumes"}


@pytest.mark.parametrize("bundle", sorted(p.name for p in (REPO / "bundles").iterdir() if p.is_dir()))
def test_the_shipped_bundles_run_only_trusted_code(bundle):
    assert code_findings(REPO / "bundles" / bundle) == []


@pytest.mark.parametrize("expression, reason", [
    ("os.system('touch x')", "calls os.system"),
    ("__import__('os').system('x')", "uses the name __import__"),
    ("open('/etc/passwd').read()", "uses the name open"),
    ("eval('1 + 1')", "uses the name eval"),
    ("@network_def.__class__.__base__", "uses the attribute __class__"),
    ("[c for c in ().__class__.__bases__[0].__subclasses__()]", "uses the attribute __subclasses__"),
    ("import subprocess", "imports subprocess"),
    ("from shutil import rmtree", "imports from shutil"),
    ("getattr(torch, 'load')('x')", "uses the name getattr"),
    ("lambda e: os.remove(e)", "calls os.remove"),
    ("not python at all (", "does not parse as Python"),
])
def test_hostile_expressions_are_reported(expression, reason):
    assert reason in expression_findings(expression, IMPORTS)


@pytest.mark.parametrize("expression", [
    "@bundle_root + '/models/model.pt'",
    "torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "monai.handlers.from_engine(['pred', 'label'])",
    "list_volumes(@dataset_dir)",
    "@network_def.to(@device)",
    "[h for h in @handlers if h is not None]",
    "lambda x: x * 2",
    "os.environ['LOCAL_RANK']",
    "numpy.uint8",
])
def test_trusted_expressions_are_not_reported(expression):
    assert expression_findings(expression, dict(IMPORTS, numpy="numpy")) == []


def test_a_target_outside_the_trusted_namespaces_is_reported(tmp_path: Path):
    (tmp_path / "configs").mkdir()
    config = {"imports": ["$import os"], "a": {"_target_": "os.system", "command": "touch x"},
              "b": {"_target_": "Dataset", "data": []}, "c": {"_target_": "networks.EDU"},
              "run": ["$os.system('x')"]}
    (tmp_path / "configs" / "inference.json").write_text(json.dumps(config))
    findings = code_findings(tmp_path)
    assert findings == ["configs/inference.json: a: runs code: _target_ 'os.system'",
                        "configs/inference.json: run#0: runs code: $os.system('x') (calls os.system)"]


def _expressions_of(node, where=""):
    """``(id, expression)`` of every ``$`` string of a config, found by walking the JSON (not by the code under
    test)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _expressions_of(value, f"{where}#{key}" if where else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _expressions_of(value, f"{where}#{i}")
    elif isinstance(node, str) and node.startswith("$"):
        yield where, node


SHIPPED_CONFIGS = sorted((REPO / "bundles").glob("*/configs/*.json"))


@pytest.mark.parametrize("config", SHIPPED_CONFIGS, ids=lambda p: f"{p.parents[1].name}/{p.name}")
def test_shipped_configs_only_wire_project_code(config):
    """Issue 15 item 1: project code is reached only through ``_target_`` components; what is left as ``$`` Python is
    short and names neither ``pipelines`` nor ``networks`` (no call, no attribute, no import)."""
    expressions = list(_expressions_of(json.loads(config.read_text())))
    longest = max(expressions, key=lambda e: len(e[1]), default=("", ""))
    assert len(longest[1]) <= 60, f"{longest[0]}: {len(longest[1])} characters: {longest[1]}"
    import re

    project = re.compile(r"(?<![\w.])(pipelines|networks)\b")
    assert [e for e in expressions if project.search(e[1])] == []
