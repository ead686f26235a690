"""Export a trained bundle as one self-contained zip that runs without this repository.

The zip holds a single folder ``<bundle name>/`` with::

    configs/         the bundle's configs; the JSON ones rewritten so that the project code inside the bundle is found
    models/model.pt  the trained weights (a plain state dict, as the MONAI Model Zoo ships them)
    models/model.ts  TorchScript of ``network_def`` with those weights (``torch.jit.script``, else ``torch.jit.trace``);
                     ``models/model.pt2`` (``torch.export``) when neither works
    docs/, LICENSE
    networks/, pipelines/   the project code the configs name (``.py`` files, plus the metadata schemas)
    manifest.json    every other file with its SHA-256 and size, the versions it was made with, the TorchScript kind
    manifest.sig     with ``--sign-key``: the Ed25519 signature of ``manifest.json`` (base64), so that a receiver who
                     holds the public key can check every file (``verify --public-key``)

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

import argparse
import ast
import datetime as _dt
import hashlib
import io
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import tokenize
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["export_bundle", "bundle_config", "file_digest", "manifest_files", "sign_manifest", "MANIFEST", "SIGNATURE",
           "CODE_PACKAGES", "add_arguments", "run_from_args", "export_main"]

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
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


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _input_shape(meta: dict) -> tuple[int, ...]:
    """``(1, channels, *spatial)`` of the metadata's declared ``image`` input (``"32*n"`` -> 32, ``"*"`` -> 1)."""
    from monai.bundle.scripts import _get_fake_spatial_shape

    image = meta["network_data_format"]["inputs"]["image"]
    return (1, int(image["num_channels"]), *_get_fake_spatial_shape(image["spatial_shape"]))


def _state_dict(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ExportError(f"{path}: not a state dict")
    return state


def _build_network(bundle_dir: Path, config_file: Path, weights: Path):
    """``network_def`` of ``config_file`` on the CPU, in eval mode, with ``weights`` loaded (strictly)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(bundle_dir)
    net = parser.get_parsed_content("network_def").eval()
    try:
        net.load_state_dict(_state_dict(weights))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ExportError(f"{weights}: does not fit network_def of {config_file}: {first}") from e
    return net


def _export_model(bundle_dir: Path, stage: Path, meta: dict) -> dict:
    """Write ``models/model.ts`` (``torch.jit.script``, else ``torch.jit.trace`` on a random input of the declared
    shape) or, when neither gives a loadable file, ``models/model.pt2`` (``torch.export``); return its record.

    The TorchScript file carries the metadata and ``inference.json`` as extra files, as ``monai.bundle ckpt_export``
    writes it (its converter and saver are reused; ``ckpt_export`` itself would rebuild the network for each try)."""
    import torch
    from monai.data import save_net_with_metadata
    from monai.networks.utils import convert_to_torchscript

    config = bundle_dir / "configs" / "inference.json"
    net = _build_network(bundle_dir, config, stage / "models" / "model.pt")
    shape = _input_shape(meta)
    example = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    extra = {"inference.json": json.dumps(_read_json(config)).encode()}
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


# ------------------------------------------------------------------------------------------------------------ export


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

    Raises:
        FileNotFoundError: a required file is missing (configs, the weights unless ``allow_missing_weights``).
        ExportError: the weights do not fit ``network_def``, or no export method worked.
    """
    import monai
    import torch

    from pipelines.io.atomic import atomic_path

    bundle_dir = Path(bundle_dir).resolve()
    name = name or bundle_dir.name
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"bundle name {name!r}: only letters, digits, '_', '-' and '.'")
    for required in ("configs/metadata.json", "configs/inference.json", "LICENSE"):
        if not (bundle_dir / required).is_file():
            raise FileNotFoundError(f"{bundle_dir / required}: required bundle file not found")
    weights_path = Path(weights) if weights else bundle_dir / "models" / "model.pt"
    if not weights_path.is_file() and not allow_missing_weights:
        raise FileNotFoundError(f"{weights_path}: trained weights not found (train the bundle first, pass weights=, "
                                "or allow_missing_weights=True to export it untrained)")
    meta = _read_json(bundle_dir / "configs" / "metadata.json")

    Path(out_zip).resolve().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=Path(out_zip).resolve().parent) as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        for folder in ("configs", "docs"):
            if (bundle_dir / folder).is_dir():
                shutil.copytree(bundle_dir / folder, stage / folder,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        shutil.copy2(bundle_dir / "LICENSE", stage / "LICENSE")
        for config in sorted((stage / "configs").glob("*.json")):
            if config.name == "metadata.json":
                continue
            content, changed = bundle_config(_read_json(config))
            if changed:
                config.write_text(json.dumps(content, indent=4) + "\n")
        _copy_code(stage)

        model: dict[str, Any] | None = None
        if weights_path.is_file():
            (stage / "models").mkdir()
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                torch.save(state["model"], stage / "models" / "model.pt")  # the Model Zoo's plain state dict
            else:
                shutil.copy2(weights_path, stage / "models" / "model.pt")
            if torchscript:
                model = _export_model(bundle_dir, stage, meta)
            else:  # still make sure that the weights fit network_def
                _build_network(bundle_dir, bundle_dir / "configs" / "inference.json", stage / "models" / "model.pt")

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


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``python -m pipelines export``: 0 when written, 2 on an error (one line on stderr)."""
    try:
        out = export_bundle(args.bundle, args.out, weights=args.weights, torchscript=not args.no_torchscript,
                            name=args.name, allow_missing_weights=args.allow_untrained, sign_key=args.sign_key)
    except (FileNotFoundError, ValueError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = json.loads(zipfile.ZipFile(out).read(f"{args.name or Path(args.bundle).resolve().name}/{MANIFEST}"))
    kind = (manifest.get("torchscript") or {}).get("kind", "none")
    signed = ", manifest signed" if args.sign_key else ""
    print(f"export: wrote {out} ({len(manifest['files'])} files, TorchScript: {kind}{signed}); SHA-256 in {out}.sha256")
    return 0


def export_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines export", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(export_main())
