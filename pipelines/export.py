"""Export a trained bundle as one self-contained zip that runs without this repository.

The zip holds a single folder ``<bundle name>/`` with::

    configs/         the bundle's configs; the JSON ones rewritten so that the project code inside the bundle is found
    models/model.pt  the trained weights (a plain state dict, as the MONAI Model Zoo ships them)
    models/model.ts  TorchScript of ``network_def`` with those weights (``torch.jit.script``, else ``torch.jit.trace``);
                     ``models/model.pt2`` (``torch.export``) when neither works
    docs/, LICENSE
    networks/, pipelines/   the project code the configs name (``.py`` files, plus the metadata schemas)
    large_files.yml  the MONAI Model Zoo's list of the model files over 25 MiB (``path``, ``hash_val``, ``hash_type:
                     sha256``, and ``url`` where ``--url`` gave one); only when there is such a file
    manifest.json    every other file with its SHA-256 and size, the versions it was made with, the TorchScript kind,
                     the overrides applied and where ``eval_metrics`` came from
    manifest.sig     with ``--sign-key``: the Ed25519 signature of ``manifest.json`` (base64), so that a receiver who
                     holds the public key can check every file (``verify --public-key``)

``configs/metadata.json``'s ``eval_metrics`` are filled from the bundle's last evaluation report: ``evaluate.json``
names, under ``eval_metrics_report``, which value of which file of its ``output_dir`` (``<bundle>/eval``,
``--eval-dir``) each metric is. Without a report, or with one older than the weights, the shipped values are kept and
a one-line warning says so: no value is invented. A bundle trained with command-line overrides (``--nf 16``) is
exported with the same overrides (``--set nf=16``), written into every config that has the key, so that the shipped
configs build the network its weights belong to.

Beside the zip, ``<zip>.sha256`` holds the archive's SHA-256 in ``sha256sum`` format, for ``verify --sha256`` or
``sha256sum -c``.

Why the code sits at the bundle root and the configs are rewritten: MONAI evaluates every ``$import`` /
``$from ... import`` statement of a config eagerly, the first time *any* item is resolved, and a failed import is
not an error there (``optional_import`` stores a stub that raises when used). ``ConfigWorkflow.run`` adds the bundle
root to ``sys.path`` only after ``initialize`` has evaluated them, and ``monai.bundle.load`` never does. An early
``"$sys.path.insert(0, @bundle_root)"`` entry in ``imports`` cannot help: it is not an import statement, so it is not
evaluated early. So the exported configs get:

* ``"bundle_code"``: an expression that puts the absolute ``@bundle_root`` first on ``sys.path`` (once) and evaluates
  to it (``$import os`` / ``$import sys`` are added to ``imports`` for it);
* ``"_requires_": "@bundle_code"`` on every component whose ``_target_`` or arguments name project code
  (``networks.EDU``, ``"writer": "pipelines.io.AtomicNibabelWriter"``), so the path is set before they are located;
* for each ``$from pipelines.x import name`` statement (removed from ``imports``): an item
  ``"bundle_code_name": {"_target_": "pipelines.x.name", "_mode_": "callable", "_requires_": "@bundle_code"}``, and
  the expressions that used ``name`` refer to ``@bundle_code_name`` instead. (These could not be expressions such as
  ``"$importlib.import_module(...) if @bundle_code else None"``: MONAI parses every expression containing the word
  "import" as Python to spot import statements, and ``@bundle_code`` is a syntax error there.)

``_target_`` names are unchanged; configs that name no project code (``evaluate.json``) are copied unchanged.
``monai.bundle.load(name, bundle_dir=...)`` builds ``network_def`` from the bundle's config with ``bundle_root`` left
at its default ``"."`` (the working directory): pass ``args_file`` with ``{"bundle_root": "<the bundle folder>"}``,
or ``model=``, or ``load_ts_module=True`` (the TorchScript file needs no project code).
"""

from __future__ import annotations

from pipelines.bundle import parse_override

import argparse
import ast
import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import tokenize
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["export_bundle", "bundle_config", "file_digest", "manifest_files", "sign_manifest", "MANIFEST", "SIGNATURE",
           "CODE_PACKAGES", "LARGE_FILES", "LARGE_FILE_BYTES", "EVAL_REPORT_KEY", "eval_metrics_from_report",
           "large_files_entries", "apply_overrides", "add_arguments", "run_from_args", "export_main"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
LARGE_FILES = "large_files.yml"
#: model files above this size are listed in ``large_files.yml`` (the Model Zoo keeps them out of its git repository)
LARGE_FILE_BYTES = 25 * 1024 * 1024
#: the key of ``evaluate.json`` mapping each ``eval_metrics`` name to a value of the evaluation report
EVAL_REPORT_KEY = "eval_metrics_report"
CODE_PACKAGES = ("networks", "pipelines")
BOOT_ID = "bundle_code"
# puts the absolute bundle root first on sys.path (once) and evaluates to it. No "import" may appear in an expression
# that holds an @reference: MONAI parses every expression containing that word as Python to test for an import
# statement, and "@x" is a syntax error there.
BOOT_EXPR = ("$(lambda root: root if root in sys.path else sys.path.insert(0, root) or root)"
             "(os.path.abspath(@bundle_root))")
BOOT_IMPORTS = ("$import os", "$import sys")
# files of the code packages that go into the bundle: Python sources and the metadata schemas (package data)
CODE_PATTERNS = ("*.py", "schemas/*.json")
REPO = Path(__file__).resolve().parents[1]
_REF = re.compile(r"@\w*(?:(?:::|#)\w*)*")  # MONAI's reference syntax (``@a#b``, ``@a::b``) inside "$" expressions


class ExportError(RuntimeError):
    """The bundle cannot be exported (missing weights, weights that do not fit ``network_def``...)."""


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_files(root: str | os.PathLike) -> dict[str, dict]:
    """``{relative posix path: {"sha256", "size"}}`` of every file under ``root`` except the manifest itself and
    Python byte code caches."""
    root = Path(root)
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel in (MANIFEST, SIGNATURE) or "__pycache__" in path.parts or path.suffix == ".pyc" or not path.is_file():
            continue
        files[rel] = {"sha256": file_digest(path), "size": path.stat().st_size}
    return files


def sign_manifest(manifest: bytes, key_file: str | os.PathLike) -> bytes:
    """The base64 Ed25519 signature of ``manifest`` with the PEM private key in ``key_file`` (``cryptography``)."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(Path(key_file).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ExportError(f"{key_file}: not a readable unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ExportError(f"{key_file}: not an Ed25519 private key (make one with: openssl genpkey -algorithm "
                          "ed25519 -out key.pem)")
    return base64.b64encode(key.sign(manifest)) + b"\n"


# ----------------------------------------------------------------------------------------------------------- configs


def _is_code_name(text: Any) -> bool:
    return isinstance(text, str) and any(text == p or text.startswith(p + ".") for p in CODE_PACKAGES)


def _code_import(expr: Any) -> list[tuple[str, str, str | None]] | None:
    """``[(bound name, module, attribute or None)]`` when ``expr`` is a ``$`` import statement of project code."""
    if not (isinstance(expr, str) and expr.startswith("$") and "import" in expr):
        return None
    try:
        tree = ast.parse(expr[1:])
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], (ast.Import, ast.ImportFrom)):
        return None
    node = tree.body[0]
    if isinstance(node, ast.ImportFrom):
        if node.level or not _is_code_name(node.module):
            return None
        return [(a.asname or a.name, node.module, a.name) for a in node.names]
    if not all(_is_code_name(a.name) for a in node.names):
        return None
    # ``import a.b`` binds ``a`` (a.b imported); ``import a.b as c`` binds the module a.b
    return [(a.asname, a.name, None) if a.asname else (a.name.split(".")[0], a.name, None) for a in node.names]


def _rename_names(expr: str, names: dict[str, str]) -> str:
    """Replace the free names ``names`` keys in a ``$`` expression by their values (``@id`` references).

    References are masked first (``@train#dataset`` is not Python), then the expression is tokenized so that
    attributes (``x.name``), keyword arguments (``name=``) and string contents are left alone."""
    refs: list[str] = []

    def mask(m: re.Match) -> str:
        refs.append(m.group(0))
        return f"__bundle_ref_{len(refs) - 1}__"

    body = _REF.sub(mask, expr[1:])
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(body).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        tokens = None
    if tokens is None:  # not tokenizable: whole words not after a dot nor before "=" (but "==" is fine)
        pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, names)) + r")\b(?!\s*=(?!=))")
        out = pattern.sub(lambda m: names[m.group(1)], body)
    else:
        lines = body.splitlines(keepends=True)
        starts = [0]
        for line in lines:
            starts.append(starts[-1] + len(line))
        edits = []
        significant = [t for t in tokens if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT,
                                                           tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)]
        for i, t in enumerate(significant):
            if t.type != tokenize.NAME or t.string not in names:
                continue
            if i > 0 and significant[i - 1].string == ".":
                continue
            if i + 1 < len(significant) and significant[i + 1].string == "=":
                continue
            start = starts[t.start[0] - 1] + t.start[1]
            edits.append((start, start + len(t.string), names[t.string]))
        out = body
        for start, end, new in reversed(edits):
            out = out[:start] + new + out[end:]
    out = re.sub(r"__bundle_ref_(\d+)__", lambda m: refs[int(m.group(1))], out)
    return "$" + out


def _mentions_code(node: Any) -> bool:
    if isinstance(node, dict):
        return any(_mentions_code(v) for v in node.values())
    if isinstance(node, list):
        return any(_mentions_code(v) for v in node)
    return _is_code_name(node) or (isinstance(node, str) and f"@{BOOT_ID}" in node)


def bundle_config(config: dict) -> tuple[dict, bool]:
    """Rewrite one bundle config so that the project code is imported from ``@bundle_root`` (see the module doc).

    Returns the new config and whether anything needed the code. Configs that name no project code come back
    unchanged, so override files such as ``evaluate.json`` keep working when merged over ``train.json``.
    """
    config = json.loads(json.dumps(config))
    imported: dict[str, str] = {}
    new_items: dict[str, Any] = {}

    def strip_imports(node: Any) -> Any:
        if isinstance(node, list):
            kept = []
            for item in node:
                spec = _code_import(item)
                if spec is None:
                    kept.append(strip_imports(item))
                    continue
                for name, module, attr in spec:
                    if attr is not None:  # from module import attr: the object itself
                        item_config = {"_target_": f"{module}.{attr}", "_mode_": "callable"}
                    else:  # import module (as name)
                        item_config = {"_target_": "importlib.import_module", "name": module}
                        if "." in module and name == module.split(".")[0]:  # ``import a.b`` binds ``a``
                            new_items[f"{BOOT_ID}_{module.replace('.', '_')}"] = {**item_config,
                                                                                   "_requires_": f"@{BOOT_ID}"}
                            item_config = {"_target_": "importlib.import_module", "name": name,
                                           "_requires_": f"@{BOOT_ID}_{module.replace('.', '_')}"}
                    new_items[f"{BOOT_ID}_{name}"] = {**item_config, "_requires_": item_config.get(
                        "_requires_", f"@{BOOT_ID}")}
                    imported[name] = f"@{BOOT_ID}_{name}"
            return kept
        if isinstance(node, dict):
            return {k: strip_imports(v) for k, v in node.items()}
        return node

    config = strip_imports(config)

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: rewrite(v) for k, v in node.items()}
            if "_target_" in node and _mentions_code(node):
                requires = node.get("_requires_")
                ref = f"@{BOOT_ID}"
                if requires is None:
                    node["_requires_"] = ref
                elif ref not in (requires if isinstance(requires, list) else [requires]):
                    node["_requires_"] = (requires if isinstance(requires, list) else [requires]) + [ref]
            return node
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        if imported and isinstance(node, str) and node.startswith("$"):
            return _rename_names(node, imported)
        return node

    config = rewrite(config)
    if not (new_items or _mentions_code(config)):
        return config, False
    imports_key = "imports" if "imports" in config else "+imports"  # "+": merged into a base config's imports
    imports = list(config.get(imports_key, []))
    imports += [s for s in BOOT_IMPORTS if s not in imports]
    out: dict[str, Any] = {imports_key: imports, BOOT_ID: BOOT_EXPR, **new_items}
    out.update({k: v for k, v in config.items() if k != imports_key})
    return out, True


# ------------------------------------------------------------------------------------------------------------ models


def _read_json(path: Path, name: Path | None = None) -> dict:
    """A JSON config; ``ExportError`` naming ``name`` (the user's file, when ``path`` is a staged copy) if invalid."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{name or path}: cannot be read as JSON ({e})") from None


def apply_overrides(config: dict, overrides: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """``config`` with each override whose id it holds (``"nf"``, ``"network_def#nb"``, a literal top-level key such
    as ``"validate#dataset"``) set to its value; returns the new config and the ids applied."""
    from monai.bundle import ConfigParser

    if not overrides:
        return config, []
    parser = ConfigParser(json.loads(json.dumps(config)))
    applied = []
    for key, value in overrides.items():
        if key in config:  # a literal top-level key, "#" included
            parser.config[key] = value  # type: ignore[index]
        elif key in parser:
            parser[key] = value
        else:
            continue
        applied.append(key)
    return parser.get(), applied


def _overrides_hint(overrides: Mapping[str, Any]) -> str:
    if overrides:
        return " with the overrides " + ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())
    return ("; was it trained with command-line overrides (--nf 16 ...)? Export it with the same ones "
            "(--set nf=16)")


def _input_shape(meta: dict) -> tuple[int, ...]:
    """``(1, channels, *spatial)`` of the metadata's declared ``image`` input (``"32*n"`` -> 32, ``"*"`` -> 1)."""
    from monai.bundle.scripts import _get_fake_spatial_shape

    image = meta["network_data_format"]["inputs"]["image"]
    return (1, int(image["num_channels"]), *_get_fake_spatial_shape(image["spatial_shape"]))


def _state_dict(path: Path, name: Path | None = None) -> dict:
    """The state dict in ``path`` (a plain one or ``{"model": state}``); errors name ``name`` (the user's file)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a pickle that needs code, a cut-off file...: one line naming the file
        raise ExportError(f"{name or path}: cannot be read as plain tensors (torch.load weights_only=True: "
                          f"{_first_line(e)})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ExportError(f"{name or path}: not a state dict")
    return state


def _build_network(bundle_dir: Path, config_file: Path, weights: Path, overrides: Mapping[str, Any] | None = None,
                   weights_name: Path | None = None):
    """``network_def`` of ``config_file`` (with ``overrides``) on the CPU, in eval mode, with ``weights`` loaded
    strictly. Errors name ``weights_name`` (the user's weights file) and ``config_file``, never a staged copy."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(bundle_dir)
    if overrides:
        parser.update(dict(overrides))
    try:
        net = parser.get_parsed_content("network_def").eval()
    except Exception as e:  # noqa: BLE001 - MONAI wraps every instantiation error; one line naming the config
        raise ExportError(f"{config_file}: network_def does not build{_overrides_hint(overrides or {})}: "
                          f"{_first_line(e)}") from None
    try:
        net.load_state_dict(_state_dict(weights, weights_name))
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        detail = detail if len(detail) <= 200 else detail[:197] + "..."
        raise ExportError(f"{weights_name or weights}: does not fit network_def of {config_file} ({detail})"
                          f"{_overrides_hint(overrides or {})}") from None
    return net


def _export_model(bundle_dir: Path, stage: Path, meta: dict, overrides: Mapping[str, Any] | None = None,
                  weights_name: Path | None = None) -> dict:
    """Write ``models/model.ts`` (``torch.jit.script``, else ``torch.jit.trace`` on a random input of the declared
    shape) or, when neither gives a loadable file, ``models/model.pt2`` (``torch.export``); return its record.

    The TorchScript file carries the metadata and ``inference.json`` as extra files, as ``monai.bundle ckpt_export``
    writes it (its converter and saver are reused; ``ckpt_export`` itself would rebuild the network for each try)."""
    import torch
    from monai.data import save_net_with_metadata
    from monai.networks.utils import convert_to_torchscript

    config = bundle_dir / "configs" / "inference.json"
    net = _build_network(bundle_dir, config, stage / "models" / "model.pt", overrides, weights_name)
    shape = _input_shape(meta)
    example = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    extra = {"inference.json": json.dumps(apply_overrides(_read_json(config), overrides or {})[0]).encode()}
    ts_path = stage / "models" / "model.ts"
    errors = []
    for kind in ("script", "trace"):
        try:
            with torch.no_grad():
                # no check_trace: it runs the network twice more, and verify_bundle compares the outputs anyway
                module = convert_to_torchscript(net, use_trace=kind == "trace", inputs=[example],
                                                **({"check_trace": False} if kind == "trace" else {}))
            save_net_with_metadata(module, str(ts_path), include_config_vals=False, append_timestamp=False,
                                   meta_values=meta, more_extra_files=extra)
            return {"kind": kind, "file": "models/model.ts", "input_shape": list(shape)}
        except Exception as e:  # noqa: BLE001 - torch.jit raises many kinds; the next method is tried
            errors.append(f"{kind}: {_first_line(e)}")
            ts_path.unlink(missing_ok=True)
    try:
        program = torch.export.export(net, (example,))
        torch.export.save(program, str(stage / "models" / "model.pt2"))
    except Exception as e:  # noqa: BLE001
        errors.append(f"export: {_first_line(e)}")
        raise ExportError("network_def could not be exported by torch.jit.script, torch.jit.trace nor torch.export: "
                          + "; ".join(errors)) from e
    return {"kind": "export", "file": "models/model.pt2", "input_shape": list(shape), "fallback_reasons": errors}


def _first_line(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


# -------------------------------------------------------------------------------------------- eval metrics, large files


def _report_value(folder: Path, path: Sequence[str]) -> tuple[float | None, str]:
    """The number at ``path`` = ``[file, key, key...]`` in ``folder``: a JSON file's nested keys, or the row named by
    the one key of a ``name,value`` CSV (``MetricsSaver``'s ``metrics.csv``). ``(None, why)`` when it is not there."""
    if not isinstance(path, (list, tuple)) or len(path) < 2 or not all(isinstance(k, str) for k in path):
        return None, f"{list(path) if isinstance(path, (list, tuple)) else path!r} is not [file, key, ...]"
    file = folder / path[0]
    if not file.is_file():
        return None, f"{file} not found"
    value: Any
    if file.suffix == ".csv":
        import csv

        with file.open(newline="") as f:
            rows = {row[0]: row[1] for row in csv.reader(f) if len(row) >= 2}
        if len(path) != 2 or path[1] not in rows:
            return None, f"{file} has no row {path[1]!r}"
        value = rows[path[1]]
    else:
        try:
            value = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return None, f"{file} cannot be read as JSON ({e})"
        for key in path[1:]:
            if not isinstance(value, dict) or key not in value:
                return None, f"{file} has no {'/'.join(path[1:])}"
            value = value[key]
    if value is None:
        return None, f"{file}: {'/'.join(path[1:])} is null"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"{file}: {'/'.join(path[1:])} is {value!r}, not a number"
    if not math.isfinite(number):
        return None, f"{file}: {'/'.join(path[1:])} is {value}"
    return number, ""


def eval_metrics_from_report(spec: Mapping[str, Any], eval_dir: str | os.PathLike,
                             weights: str | os.PathLike | None = None
                             ) -> tuple[dict[str, float], list[str], list[tuple[str, str]]]:
    """The ``eval_metrics`` an evaluation report in ``eval_dir`` gives, by ``spec`` (``evaluate.json``'s
    ``eval_metrics_report``): ``{name: [file, key, ...]}`` or ``{name: {"mean": [[file, key, ...], ...]}}``.

    Returns ``(values, files used, [(metric, problem)])``. A metric whose value is missing, not finite, or in a
    file older than ``weights`` (a report of other weights) is left out with its problem: nothing is made up.
    """
    folder = Path(eval_dir)
    weights_mtime = Path(weights).stat().st_mtime if weights is not None and Path(weights).is_file() else None
    values: dict[str, float] = {}
    used: set[str] = set()
    problems: list[str] = []
    for name, source in spec.items():
        paths = source["mean"] if isinstance(source, dict) and "mean" in source else [source]
        numbers, why = [], ""
        for path in paths if isinstance(paths, list) else [paths]:
            number, why = _report_value(folder, path)
            if number is None:
                break
            file = folder / path[0]
            if weights_mtime is not None and file.stat().st_mtime < weights_mtime:
                number, why = None, f"{file} is older than the weights {weights} (a report of earlier weights)"
                break
            numbers.append(number)
            used.add(str(file))
        if numbers and len(numbers) == len(paths):
            values[name] = float(sum(numbers) / len(numbers))
        else:
            problems.append((name, why))
    return values, sorted(used), problems


def large_files_entries(stage: str | os.PathLike, urls: Mapping[str, str] | None = None,
                        threshold: int = LARGE_FILE_BYTES) -> list[dict[str, str]]:
    """``large_files.yml`` entries (Model Zoo format) of the files under ``<stage>/models`` above ``threshold`` bytes:
    ``{"path", ["url",] "hash_val", "hash_type": "sha256"}``. ``urls`` maps a relative path to its download URL; a
    URL for a file that is not large is an ``ExportError`` (the file ships inside the zip)."""
    stage = Path(stage)
    urls = dict(urls or {})
    entries = []
    models = stage / "models"
    for path in sorted(models.rglob("*")) if models.is_dir() else []:
        if not path.is_file() or path.stat().st_size <= threshold:
            continue
        rel = path.relative_to(stage).as_posix()
        entry = {"path": rel}
        if rel in urls:
            entry["url"] = urls.pop(rel)
        entry.update({"hash_val": file_digest(path), "hash_type": "sha256"})
        entries.append(entry)
    for rel in urls:
        size = (stage / rel).stat().st_size if (stage / rel).is_file() else None
        what = "is not in the bundle" if size is None else (f"is {size / 2 ** 20:.1f} MiB, not over "
                                                            f"{threshold / 2 ** 20:g} MiB: it ships inside the zip")
        raise ExportError(f"--url {rel}: {what}; a url belongs to a file of {LARGE_FILES}")
    return entries


def _write_large_files(stage: Path, entries: list[dict[str, str]]) -> None:
    import yaml

    (stage / LARGE_FILES).write_text(yaml.safe_dump({"large_files": entries}, sort_keys=False))


def _parse_url(text: str) -> tuple[str, str]:
    """``URL`` (of ``models/model.pt``) or ``PATH=URL`` -> ``(path, url)``."""
    head, sep, tail = text.partition("=")
    if sep and "://" not in head and "?" not in head:
        path, url = head.strip(), tail.strip()
    else:
        path, url = "models/model.pt", text.strip()
    if "://" not in url:
        raise argparse.ArgumentTypeError(f"--url expects URL or PATH=URL (https://...), got {text!r}")
    return path, url



def _copy_code(dst: Path, repo: Path = REPO) -> None:
    for package in CODE_PACKAGES:
        src = repo / package
        for pattern in CODE_PATTERNS:
            for path in sorted(src.rglob(pattern)) if "/" not in pattern else sorted(src.glob(pattern)):
                rel = path.relative_to(repo)
                if "__pycache__" in rel.parts or "tests" in rel.parts or path.name.startswith("test_"):
                    continue
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dst / rel)


def export_bundle(
    bundle_dir: str | os.PathLike,
    out_zip: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    torchscript: bool = True,
    name: str | None = None,
    allow_missing_weights: bool = False,
    sign_key: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    eval_dir: str | os.PathLike | None = None,
    urls: Mapping[str, str] | None = None,
    large_file_bytes: int = LARGE_FILE_BYTES,
    on_warning: Callable[[str], None] | None = None,
) -> Path:
    """Write ``bundle_dir`` as a self-contained zip ``out_zip`` (see the module doc for the layout); return its path.

    Args:
        bundle_dir: the bundle folder (``configs/``, ``docs/``, ``LICENSE``, ``models/model.pt``).
        out_zip: the zip to write; written under a temporary name in the same folder and renamed when complete.
        weights: weights to ship instead of ``<bundle>/models/model.pt`` (a state dict or ``{"model": state}``).
        torchscript: also write the TorchScript (or ``torch.export``) model made from ``network_def`` and the weights.
        name: the bundle's name, the zip's top folder (default: the folder name of ``bundle_dir``).
        allow_missing_weights: export an untrained bundle (no ``models/``) instead of raising.
        sign_key: an Ed25519 private key (PEM) to sign ``manifest.json`` with (``manifest.sig``).
        overrides: the command-line overrides the bundle was trained with (``{"nf": 16}``), written into every
            exported config that has the id; one that no config has is an ``ExportError``.
        eval_dir: the folder of the last evaluation report (default ``<bundle>/eval``, ``evaluate.json``'s
            ``output_dir``), from which ``eval_metrics`` are filled.
        urls: download URLs of large files, by path in the bundle (``{"models/model.pt": "https://..."}``).
        large_file_bytes: files under ``models/`` above this size go into ``large_files.yml``.
        on_warning: called with each one-line warning (no evaluation report...); default: this module's logger.

    Raises:
        FileNotFoundError: a required file is missing (configs, the weights unless ``allow_missing_weights``).
        ExportError: the weights do not fit ``network_def``, no export method worked, an override or URL names
            nothing. Messages name the user's files, never the staging copy.
    """
    import monai
    import torch

    from pipelines.io.atomic import atomic_path

    warn = on_warning or (lambda message: logger.warning("%s", message))
    overrides = dict(overrides or {})
    bundle_dir = Path(bundle_dir).resolve()
    name = name or bundle_dir.name
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"bundle name {name!r}: only letters, digits, '_', '-' and '.'")
    for required in ("configs/metadata.json", "configs/inference.json", "LICENSE"):
        if not (bundle_dir / required).is_file():
            raise FileNotFoundError(f"{bundle_dir / required}: required bundle file not found")
    weights_path = Path(weights).resolve() if weights else bundle_dir / "models" / "model.pt"
    if not weights_path.is_file() and not allow_missing_weights:
        raise FileNotFoundError(f"{weights_path}: trained weights not found (train the bundle first, pass weights=, "
                                "or allow_missing_weights=True to export it untrained)")
    meta = _read_json(bundle_dir / "configs" / "metadata.json")
    configs = {path.name: _read_json(path) for path in sorted((bundle_dir / "configs").glob("*.json"))
               if path.name != "metadata.json" and not path.name.startswith(".")}
    applied: set[str] = set()
    overridden: set[str] = set()  # the configs an override changed (the others are copied byte for byte)
    for config_name in list(configs):
        configs[config_name], keys = apply_overrides(configs[config_name], overrides)
        applied.update(keys)
        if keys:
            overridden.add(config_name)
    unknown = [key for key in overrides if key not in applied]
    if unknown:
        raise ExportError(f"--set {', '.join(unknown)}: no config in {bundle_dir / 'configs'} has "
                          f"{'this id' if len(unknown) == 1 else 'these ids'}")
    meta_changed = False
    if "patch_size" in overrides:  # the declared shapes follow the patch size, as in derive_bundle
        meta_changed = True
        for io_key in ("inputs", "outputs"):
            for tensor in meta.get("network_data_format", {}).get(io_key, {}).values():
                tensor["spatial_shape"] = list(overrides["patch_size"])

    # eval_metrics from the last evaluation report, never made up
    eval_folder = Path(eval_dir).resolve() if eval_dir else bundle_dir / "eval"
    spec = configs.get("evaluate.json", {}).get(EVAL_REPORT_KEY)
    eval_record: dict[str, Any] = {"source": None, "values": None}
    if not isinstance(spec, dict) or not spec:
        eval_record["reason"] = f"{bundle_dir / 'configs' / 'evaluate.json'} has no {EVAL_REPORT_KEY}"
    else:
        values, used, problems = eval_metrics_from_report(spec, eval_folder,
                                                          weights_path if weights_path.is_file() else None)
        if values:
            meta["eval_metrics"] = {**meta.get("eval_metrics", {}), **values}
            meta_changed = True
            eval_record = {"source": [os.path.relpath(f, bundle_dir) if Path(f).is_relative_to(bundle_dir) else f
                                      for f in used], "values": values}
        if problems:
            whys = list(dict.fromkeys(why for _, why in problems))
            eval_record["reason"] = "; ".join(whys) if len(whys) == 1 else "; ".join(f"{k}: {w}" for k, w in problems)
            if any("not found" in why for why in whys):
                eval_record["reason"] += " (run the bundle's evaluation first, or give its folder with --eval-dir)"
    if eval_record.get("reason"):
        kept = {k: v for k, v in meta.get("eval_metrics", {}).items() if k not in (eval_record["values"] or {})}
        shown = ", ".join(f"{k}={v}" for k, v in kept.items()) or "(none)"
        warn(f"eval_metrics {shown} left as shipped in configs/metadata.json, no value made up: "
             f"{eval_record['reason']}")

    Path(out_zip).resolve().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=Path(out_zip).resolve().parent) as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        for folder in ("configs", "docs"):
            if (bundle_dir / folder).is_dir():
                shutil.copytree(bundle_dir / folder, stage / folder,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        shutil.copy2(bundle_dir / "LICENSE", stage / "LICENSE")
        if meta_changed:
            (stage / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")
        for config_name, config in configs.items():
            content, changed = bundle_config(config)
            if changed or config_name in overridden:
                (stage / "configs" / config_name).write_text(json.dumps(content, indent=4) + "\n")
        _copy_code(stage)

        model: dict[str, Any] | None = None
        if weights_path.is_file():
            (stage / "models").mkdir()
            try:
                state = torch.load(weights_path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - a pickle that needs code, a cut-off file...
                raise ExportError(f"{weights_path}: cannot be read as plain tensors (torch.load weights_only=True: "
                                  f"{_first_line(e)})") from None
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                torch.save(state["model"], stage / "models" / "model.pt")  # the Model Zoo's plain state dict
            else:
                shutil.copy2(weights_path, stage / "models" / "model.pt")
            if torchscript:
                model = _export_model(bundle_dir, stage, meta, overrides, weights_path)
            else:  # still make sure that the weights fit network_def
                _build_network(bundle_dir, bundle_dir / "configs" / "inference.json", stage / "models" / "model.pt",
                               overrides, weights_path)

        large = large_files_entries(stage, urls, large_file_bytes)
        if large:
            _write_large_files(stage, large)

        manifest = {
            "bundle": name,
            "name": meta.get("name"),
            "version": meta.get("version"),
            "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "python_version": platform.python_version(),
            "torch_version": torch.__version__,
            "monai_version": monai.__version__,
            "weights": "models/model.pt" if weights_path.is_file() else None,
            "torchscript": model,
            "overrides": overrides,
            "eval_metrics": eval_record,
            "large_files": [entry["path"] for entry in large],
            "files": manifest_files(stage),
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if sign_key is not None:
            (stage / SIGNATURE).write_bytes(sign_manifest((stage / MANIFEST).read_bytes(), sign_key))

        with atomic_path(out_zip) as partial:
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.write(stage, f"{name}/")
                for path in sorted(stage.rglob("*")):
                    zf.write(path, f"{name}/{path.relative_to(stage).as_posix()}")
    out = Path(out_zip)
    digest = Path(f"{out}.sha256")
    with atomic_path(digest) as partial:
        partial.write_text(f"{file_digest(out)}  {out.name}\n")
    return out


# --------------------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``python -m pipelines export``."""
    parser.add_argument("bundle", help="bundle folder (configs/, docs/, LICENSE, models/model.pt)")
    parser.add_argument("--out", required=True, help="the zip file to write")
    parser.add_argument("--weights", help="weights file instead of <bundle>/models/model.pt")
    parser.add_argument("--name", help="bundle name, the zip's top folder (default: the bundle folder's name)")
    parser.add_argument("--no-torchscript", action="store_true", help="do not write models/model.ts")
    parser.add_argument("--allow-untrained", action="store_true", help="export without trained weights")
    parser.add_argument("--sign-key", metavar="KEY.pem", help="sign manifest.json with this Ed25519 private key "
                        "(openssl genpkey -algorithm ed25519 -out KEY.pem; the receiver checks it with the public key:"
                        " openssl pkey -in KEY.pem -pubout -out KEY.pub, verify --public-key KEY.pub)")
    parser.add_argument("--set", action="append", type=parse_override, metavar="KEY=VALUE",
                        help="an override the bundle was trained with (--nf 16 -> --set nf=16), written into every "
                        "exported config that has KEY (repeatable)")
    parser.add_argument("--eval-dir", metavar="DIR", help="folder of the last evaluation report, for eval_metrics "
                        "(default: <bundle>/eval, where evaluate.json writes)")
    parser.add_argument("--url", action="append", type=_parse_url, metavar="[PATH=]URL",
                        help=f"download URL of a file of {LARGE_FILES} (over {LARGE_FILE_BYTES // 2 ** 20} MiB); a "
                        "bare URL is that of models/model.pt (repeatable)")


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``python -m pipelines export``: 0 when written, 2 on an error (one line on stderr); warnings (no
    evaluation report for ``eval_metrics``...) are one line each on stderr and do not fail the export."""
    def warn(message: str) -> None:
        print(f"export: warning: {message}", file=sys.stderr)

    try:
        out = export_bundle(args.bundle, args.out, weights=args.weights, torchscript=not args.no_torchscript,
                            name=args.name, allow_missing_weights=args.allow_untrained, sign_key=args.sign_key,
                            overrides=dict(getattr(args, "set", None) or []), eval_dir=getattr(args, "eval_dir", None),
                            urls=dict(getattr(args, "url", None) or []), on_warning=warn)
    except (FileNotFoundError, ValueError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = json.loads(zipfile.ZipFile(out).read(f"{args.name or Path(args.bundle).resolve().name}/{MANIFEST}"))
    kind = (manifest.get("torchscript") or {}).get("kind", "none")
    signed = ", manifest signed" if args.sign_key else ""
    source = (manifest.get("eval_metrics") or {}).get("source")
    evaluated = f", eval_metrics from {', '.join(source)}" if source else ""
    large = f", {LARGE_FILES}: {len(manifest['large_files'])} file(s)" if manifest.get("large_files") else ""
    print(f"export: wrote {out} ({len(manifest['files'])} files, TorchScript: {kind}{signed}{evaluated}{large}); "
          f"SHA-256 in {out}.sha256")
    return 0


def export_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines export", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(export_main())
