"""What code a bundle's configs will run, found without running anything.

A MONAI bundle config runs code in two ways: ``"_target_"`` names a class or function that is instantiated or called,
and a ``"$..."`` string is Python evaluated with ``eval``. :func:`code_findings` reads every ``configs/*.json`` (and
``.yaml``) of a bundle and returns one line for each place that would run code outside the trusted namespaces
(:data:`TRUSTED`: MONAI, PyTorch, Ignite, NumPy and this project's ``networks`` and ``pipelines``, which an
exported bundle carries as source). The configs of a bundle are merged when run together (``train.json`` with
``evaluate.json``, ``inference.json`` or ``multi_gpu_train.json``: :data:`pipelines.bundle.WORKFLOWS`), so the
imports of all of them count for each:

- a ``_target_`` that does not resolve into a trusted namespace (MONAI's bare names such as ``"Dataset"`` do);
- in a ``$`` expression: a call whose callee is not a trusted module's function, a config reference (``@id``, whose
  own ``_target_`` is checked), a method of a value built inside the expression, or one of the harmless builtins
  (:data:`SAFE_BUILTINS`) or the folder and path functions of :data:`SAFE_CALLS`; any name the expression does
  not define or import; any dunder attribute; ``import`` of an
  untrusted module; and text that does not parse.

This is a reading aid, not a sandbox: a trusted function called with hostile arguments (a path, a pickle) can still
do harm, which is why ``verify`` also loads weights with ``weights_only=True`` and screens ``logging.conf``.
Upstream: MONAI checks the logging INI but has no audit of a config's expressions.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["TRUSTED", "SAFE_BUILTINS", "code_findings", "expression_findings"]

TRUSTED = ("monai", "torch", "numpy", "ignite", "networks", "pipelines")
#: what MONAI's ``ConfigExpression`` puts in every expression's globals
MONAI_GLOBALS = {"monai": "monai", "torch": "torch", "np": "numpy", "numpy": "numpy"}
SAFE_BUILTINS = frozenset({
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "int", "isinstance",
    "len", "list", "map", "max", "min", "range", "reversed", "round", "set", "slice", "sorted", "str", "sum", "tuple",
    "zip", "print", "True", "False", "None",
})
#: calls into untrusted modules that only create folders or read paths and the environment
SAFE_CALLS = frozenset({"os.makedirs", "os.path.join", "os.path.exists", "os.path.isdir", "os.path.isfile",
                        "os.path.abspath", "os.path.dirname", "os.path.basename", "os.environ.get", "os.getenv"})
_REF = re.compile(r"@([\w#:]+)")
_REF_NAME = "__config_ref__"


def _trusted(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in TRUSTED)


def _imports(config: Any) -> dict[str, str]:
    """``name -> module path`` of the config's ``"$import x"`` / ``"$from x import y"`` lines (and ``np``/``torch``)."""
    names: dict[str, str] = {}
    for text in _strings(config):
        if not text.startswith("$"):
            continue
        try:
            tree = ast.parse(text[1:].strip())
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                        alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _root(node: ast.AST) -> tuple[str | None, list[str]]:
    """For ``a.b.c`` the root name ``a`` and the attribute path ``[b, c]``; ``(None, [])`` when not a plain chain."""
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.insert(0, node.attr)
        node = node.value
    return (node.id, attrs) if isinstance(node, ast.Name) else (None, attrs)


def expression_findings(expression: str, imports: dict[str, str]) -> list[str]:
    """Why ``expression`` (without its leading ``$``) runs untrusted code; empty when it does not.

    The one expression ``pipelines.export`` writes into an exported config to put the bundle's own code first on
    ``sys.path`` is recognised by its exact text."""
    from pipelines.export import BOOT_EXPR

    if expression.strip() == BOOT_EXPR[1:]:
        return []
    source = _REF.sub(_REF_NAME, expression.strip())
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ["does not parse as Python"]
    problems: list[str] = []
    local: set[str] = {_REF_NAME}
    for node in ast.walk(tree):  # names bound inside the expression: lambda arguments, comprehension targets
        if isinstance(node, ast.arg):
            local.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            local.add(node.id)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            problems += [f"imports {a.name}" for a in node.names if not _trusted(a.name)
                         and a.name not in ("os", "sys", "math", "json", "pathlib")]
        elif isinstance(node, ast.ImportFrom):
            if not node.module or not _trusted(node.module):
                problems.append(f"imports from {node.module}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            problems.append(f"uses the attribute {node.attr}")
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id not in local and node.id not in imports and node.id not in SAFE_BUILTINS:
                problems.append(f"uses the name {node.id}")
        elif isinstance(node, ast.Call):
            root, attrs = _root(node.func)
            if root is None or root in local:
                continue  # a method of something built here or of a config reference
            if root in imports:
                module = imports[root]
                name = ".".join([module, *attrs])
                if not _trusted(module) and name not in SAFE_CALLS:
                    problems.append(f"calls {name}")
            elif root not in SAFE_BUILTINS:
                problems.append(f"calls {'.'.join([root, *attrs])}")
    return sorted(set(problems))


def _targets(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str):
            yield path or "<root>", target
        for key, value in node.items():
            yield from _targets(value, f"{path}#{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{path}#{i}")


def _expressions(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        if node.startswith("$"):
            yield path, node[1:]
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _expressions(value, f"{path}#{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _expressions(value, f"{path}#{i}")


def _target_trusted(target: str) -> bool:
    if target.startswith("$"):
        return False
    if "." not in target:  # a bare name: MONAI looks it up in its own modules only
        return True
    return _trusted(target)


def _load(path: Path) -> Any:
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(path.read_text())
    return json.loads(path.read_text())


def code_findings(bundle_root: str | Path) -> list[str]:
    """One line per place in ``<bundle_root>/configs`` that runs code outside :data:`TRUSTED` (see the module)."""
    root = Path(bundle_root)
    findings: list[str] = []
    configs: list[tuple[str, Any]] = []
    for path in sorted((root / "configs").glob("*")):
        if path.suffix not in (".json", ".yaml", ".yml") or path.name == "metadata.json":
            continue
        rel = path.relative_to(root).as_posix()
        try:
            configs.append((rel, _load(path)))
        except (ValueError, OSError) as e:
            findings.append(f"{rel}: cannot be read ({e})")
    imports = dict(MONAI_GLOBALS)
    for _, config in configs:
        imports.update(_imports(config))
    for rel, config in configs:
        for where, target in _targets(config):
            if not _target_trusted(target):
                findings.append(f"{rel}: {where}: runs code: _target_ {target!r}")
        for where, expression in _expressions(config):
            reasons = expression_findings(expression, imports)
            if reasons:
                short = expression if len(expression) <= 120 else expression[:117] + "..."
                findings.append(f"{rel}: {where}: runs code: ${short} ({'; '.join(reasons)})")
    return findings
