"""Export a trained bundle as one self-contained zip that runs without this repository.

The zip holds a single folder ``<bundle name>/`` with::

    configs/         the bundle's configs; the JSON ones that name project code get the ``_requires_`` below
    models/model.pt  the trained weights (a plain state dict, as the MONAI Model Zoo ships them)
    models/model.ts  TorchScript of the inference workflow's ``network_def`` (``train.json`` merged with
                     ``inference.json``) with those weights (``torch.jit.script``, else ``torch.jit.trace``);
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

The configs only wire: every use of project code is a ``_target_`` component (``networks.EDU``,
``pipelines.data.datalists.luna16``), never a ``$`` expression or a ``$from pipelines ... import`` line (such a config
is refused with one line naming the file and the id). So nothing of them is rewritten as Python. What an exported
bundle still needs is its own ``networks``/``pipelines`` on ``sys.path`` before the first of those ``_target_`` is
located: MONAI's ``ConfigWorkflow.run`` adds the bundle root to ``sys.path`` only after ``initialize`` has run (and
``initialize`` builds project components: the folder checks, a multi-GPU run's data shares), and ``ckpt_export``,
``onnx_export`` and ``monai.bundle.load`` never do. So each exported config that names project code gets, in JSON:

* ``"bundle_code"``: an expression that puts the absolute ``@bundle_root`` first on ``sys.path`` (once) and evaluates
  to it (``$import os`` / ``$import sys`` are added to ``imports``, or to ``+imports`` in an overlay);
* ``"_requires_": "@bundle_code"`` on every component whose ``_target_`` or arguments name project code
  (``networks.EDU``, ``"writer": "pipelines.io.AtomicNibabelWriter"``), so the path is set before they are located.

Tracking settings (``mlflow.json``: MONAI copies only their ``configs`` into the workflow's config) get the
``_requires_`` alone, the workflow's own config defining ``bundle_code``. ``_target_`` names are unchanged; configs that
name no project code are copied unchanged. The workflows merge as in
the repository (:data:`pipelines.bundle.WORKFLOWS`): inference is ``--config_file
"['configs/train.json','configs/inference.json']"``. ``monai.bundle.load(name, bundle_dir=..., workflow_type="train")``
builds ``network_def`` from ``train.json``, where it is defined (``workflow_type="inference"`` reads
``inference.json`` alone, an overlay without the network); ``bundle_root`` is left at its default ``"."`` (the working
directory): pass ``args_file`` with ``{"bundle_root": "<the bundle folder>"}``, or ``model=``, or
``load_ts_module=True`` (the TorchScript file needs no project code).
"""

from __future__ import annotations

from pipelines.io.digest import file_sha256
from pipelines.bundle import apply_overrides, build_network, parse_override, workflow_configs

import argparse
import datetime as _dt
import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import tempfile
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
# project code named inside a "$" expression or imported by one: the exported bundle could not find it in time
_INLINE_CODE = re.compile(r"(?<![\w.])(?:%s)\.\w|\b(?:import|from)\s+(?:%s)\b" % (("|".join(CODE_PACKAGES),) * 2))


class ExportError(RuntimeError):
    """The bundle cannot be exported (missing weights, weights that do not fit ``network_def``...)."""


file_digest = file_sha256  # the manifest's SHA-256 of a file (pipelines.io.digest)


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


def _mentions_code(node: Any) -> bool:
    if isinstance(node, dict):
        return any(_mentions_code(v) for v in node.values())
    if isinstance(node, list):
        return any(_mentions_code(v) for v in node)
    return _is_code_name(node) or (isinstance(node, str) and f"@{BOOT_ID}" in node)


def _inline_code(node: Any, path: str = "") -> list[str]:
    """``id: expression`` of each ``$`` expression that names or imports project code."""
    if isinstance(node, dict):
        return [hit for k, v in node.items() for hit in _inline_code(v, f"{path}#{k}" if path else str(k))]
    if isinstance(node, list):
        return [hit for i, v in enumerate(node) for hit in _inline_code(v, f"{path}#{i}")]
    if isinstance(node, str) and node.startswith("$") and _INLINE_CODE.search(node):
        return [f"{path}: {node}"]
    return []


def bundle_config(config: dict, name: str | os.PathLike = "config") -> tuple[dict, bool]:
    """The exported form of one bundle config (see the module doc): JSON wiring only, nothing rewritten as Python.

    Returns the new config and whether anything needed the code. Configs that name no project code come back
    unchanged, so override files such as ``evaluate.json`` keep working when merged over ``train.json``. A ``$``
    expression that names or imports project code is an ``ExportError`` naming ``name`` (the file) and the id.
    """
    inline = _inline_code(config)
    if inline:
        more = f" (and {len(inline) - 1} more)" if len(inline) > 1 else ""
        raise ExportError(f"{name}: {inline[0]}{more}: project code in a $ expression; wire it as a _target_ "
                          "component with named arguments (the exported bundle finds its code only for those)")

    def wire(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: wire(v) for k, v in node.items()}
            if "_target_" in node and _mentions_code(node):
                requires = node.get("_requires_")
                ref = f"@{BOOT_ID}"
                if requires is None:
                    node["_requires_"] = ref
                elif ref not in (requires if isinstance(requires, list) else [requires]):
                    node["_requires_"] = (requires if isinstance(requires, list) else [requires]) + [ref]
            return node
        if isinstance(node, list):
            return [wire(v) for v in node]
        return node

    config = wire(json.loads(json.dumps(config)))
    if not _mentions_code(config):
        return config, False
    if "handlers_id" in config and "configs" in config:
        # tracking settings (mlflow.json): MONAI copies only their "configs" into the workflow's config, whose own
        # exported train.json / inference.json defines @bundle_code
        return config, True
    imports_key = "imports" if "imports" in config else "+imports"  # "+": merged into a base config's imports
    imports = list(config.get(imports_key, []))
    imports += [s for s in BOOT_IMPORTS if s not in imports]
    out: dict[str, Any] = {imports_key: imports, BOOT_ID: BOOT_EXPR}
    out.update({k: v for k, v in config.items() if k != imports_key})
    return out, True


# ------------------------------------------------------------------------------------------------------------ models


def _read_json(path: Path, name: Path | None = None) -> dict:
    """A JSON config; ``ExportError`` naming ``name`` (the user's file, when ``path`` is a staged copy) if invalid."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{name or path}: cannot be read as JSON ({e})") from None


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
    """The state dict in ``path`` (:func:`pipelines.io.weights.read_state_dict`); errors name ``name`` (the user's
    file)."""
    from pipelines.io.weights import read_state_dict

    try:
        return read_state_dict(path, name=name)
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(str(e)) from None


def _build_network(bundle_dir: Path, weights: Path, overrides: Mapping[str, Any] | None = None,
                   weights_name: Path | None = None):
    """The inference workflow's ``network_def`` (:func:`pipelines.bundle.build_network`, with ``overrides``) on the
    CPU, in eval mode, with ``weights`` loaded strictly. Errors name ``weights_name`` (the user's weights file) or the
    config that defines ``network_def``, never a staged copy."""
    try:
        return build_network(bundle_dir, "inference", overrides=overrides, weights=weights,
                             weights_name=weights_name).eval()
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(f"{e}{_overrides_hint(overrides or {})}") from None


def _export_model(bundle_dir: Path, stage: Path, meta: dict, overrides: Mapping[str, Any] | None = None,
                  weights_name: Path | None = None) -> dict:
    """Write ``models/model.ts`` (``torch.jit.script``, else ``torch.jit.trace`` on a random input of the declared
    shape) or, when neither gives a loadable file, ``models/model.pt2`` (``torch.export``); return its record.

    The TorchScript file carries the metadata and the inference workflow's configs (``train.json``,
    ``inference.json``, with the overrides) as extra files, as ``monai.bundle ckpt_export --config_file "[...]"``
    writes them (its converter and saver are reused; ``ckpt_export`` itself would rebuild the network for each try)."""
    import torch
    from monai.data import save_net_with_metadata
    from monai.networks.utils import convert_to_torchscript

    net = _build_network(bundle_dir, stage / "models" / "model.pt", overrides, weights_name)
    shape = _input_shape(meta)
    example = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    extra = {path.name: json.dumps(apply_overrides(_read_json(path), overrides or {})[0]).encode()
             for path in workflow_configs(bundle_dir, "inference")}
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
    for required in ("configs/metadata.json", "configs/train.json", "configs/inference.json", "LICENSE"):
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
            content, changed = bundle_config(config, bundle_dir / "configs" / config_name)
            if changed or config_name in overridden:
                (stage / "configs" / config_name).write_text(json.dumps(content, indent=4) + "\n")
        _copy_code(stage)

        model: dict[str, Any] | None = None
        if weights_path.is_file():
            (stage / "models").mkdir()
            # the Model Zoo's plain state dict, whatever layout the file has (pipelines.io.weights reads them all)
            torch.save(_state_dict(weights_path), stage / "models" / "model.pt")
            if torchscript:
                model = _export_model(bundle_dir, stage, meta, overrides, weights_path)
            else:  # still make sure that the weights fit network_def
                _build_network(bundle_dir, stage / "models" / "model.pt", overrides, weights_path)

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
