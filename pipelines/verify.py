"""Check a bundle folder or an exported bundle zip offline, the way the MONAI Model Zoo checks a submission.

:func:`verify_bundle` returns one line per problem, each naming the file it is about (an empty list: the bundle is
fine). A zip is inspected before anything is extracted: entries with absolute paths, ``..`` components, symbolic
links, encryption, too many entries, members over a size limit, a total over a size limit or an absurd compression
ratio make it refused as a whole. A safe zip is extracted into a temporary folder and checked like a folder:

* required files: ``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt`` (or the manifest's
  declared weights), ``LICENSE``, ``docs/README.md``; every ``configs/*.json`` parses;
* the metadata's ``version`` is in its ``changelog``;
* the metadata is valid against the schema its ``schema`` URL names, read from ``pipelines/schemas/`` (no download);
* ``manifest.json`` (written by :func:`pipelines.export.export_bundle`): every file's SHA-256 and size, no file
  missing, none added;
* ``network_def`` of the inference workflow (``train.json`` merged with ``inference.json``,
  :func:`pipelines.bundle.build_network`), with the weights loaded, maps a random input of the declared input shape to
  the declared output shape (channels and spatial);
* the TorchScript model (``models/model.ts``, or the manifest's ``models/model.pt2``) gives the same outputs as that
  eager network.

What the bundle will run, found without running it (also with ``--no-network``):

* ``configs/logging.conf`` through MONAI's own screen (``fileConfig`` ``eval``s its ``class=``/``args=`` fields);
* ``models/model.pt`` read with ``torch.load(weights_only=True)``: a pickle that would run code is reported;
* every ``_target_`` and ``$`` expression that runs code outside MONAI, PyTorch, Ignite, NumPy and the bundle's own
  ``networks``/``pipelines`` (:mod:`pipelines.config_code`), listed as ``runs code: ...``; they make the exit code 1
  unless ``--allow-code`` is given;
* paths in ``manifest.json`` (``weights``, ``torchscript.file``) that leave the bundle folder;
* with ``--sha256 HEX``: the zip's digest; with ``--public-key FILE``: the Ed25519 signature ``manifest.sig`` of
  ``manifest.json`` (whose table covers every other file).

Building and running ``network_def`` (the shape and TorchScript checks) imports and runs the bundle's code:
``--no-network`` skips it for a bundle you do not trust.

MONAI's ``verify_metadata`` downloads the schema and reports only the first violation, and ``verify_net_in_out``
checks channels and dtype but not the spatial shape and runs without the weights, so both are reimplemented here
(the input shape patterns such as ``"32*n"`` are still expanded by MONAI's own helper).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from pipelines.export import MANIFEST, SIGNATURE, file_digest, manifest_files

__all__ = ["verify_bundle", "check_zip", "check_folder", "schema_path", "SCHEMAS", "add_arguments", "run_from_args",
           "verify_main"]

SCHEMAS = Path(__file__).resolve().parent / "schemas"
REQUIRED = ("configs/metadata.json", "configs/inference.json", "LICENSE", "docs/README.md")
MAX_MEMBER_BYTES = 4 << 30
MAX_TOTAL_BYTES = 8 << 30
MAX_RATIO = 200.0
RATIO_MIN_BYTES = 1 << 20  # small files (configs) may compress very well; the ratio is only checked above this
MAX_MEMBERS = 20_000


def schema_path(url: str) -> Path | None:
    """The local copy of the metadata schema ``url`` names (by file name), or ``None``."""
    path = SCHEMAS / PurePosixPath(str(url)).name
    return path if path.name and path.is_file() else None


# --------------------------------------------------------------------------------------------------------------- zip


def check_zip(
    zf: zipfile.ZipFile,
    label: str,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_ratio: float = MAX_RATIO,
    max_members: int = MAX_MEMBERS,
) -> list[str]:
    """Problems that make the archive unsafe to extract, found from its central directory alone."""
    problems = []
    infos = zf.infolist()
    if len(infos) > max_members:
        problems.append(f"{label}: {len(infos)} entries, more than the limit of {max_members}")
    total, seen = 0, set()
    for info in infos:
        name = info.filename
        entry = f"{label}: entry {name!r}"
        parts = [p for p in name.replace("\\", "/").split("/")]
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or info.orig_filename.startswith("/"):
            problems.append(f"{entry} has an absolute path")
        if ".." in parts:
            problems.append(f"{entry} has a '..' component (it would be written outside the target folder)")
        if "\x00" in name:
            problems.append(f"{entry} has a NUL character in its name")
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(mode):
            problems.append(f"{entry} is a symbolic link")
        elif info.create_system == 3 and mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            problems.append(f"{entry} is not a regular file nor a folder (mode {oct(mode)})")
        if info.flag_bits & 0x1:
            problems.append(f"{entry} is encrypted")
        if info.file_size > max_member_bytes:
            problems.append(f"{entry} is {info.file_size} bytes uncompressed, over the limit of {max_member_bytes}")
        if info.file_size > RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            problems.append(f"{entry} expands {info.file_size / max(info.compress_size, 1):.0f} times "
                            f"(limit {max_ratio:.0f}): a zip bomb?")
        key = name.rstrip("/")
        if key in seen:
            problems.append(f"{entry} appears more than once")
        seen.add(key)
        total += info.file_size
    if total > max_total_bytes:
        problems.append(f"{label}: {total} bytes uncompressed in all, over the limit of {max_total_bytes}")
    return problems


def _extract(zf: zipfile.ZipFile, dst: Path) -> None:
    """Extract the (already checked) entries into ``dst``, refusing again anything that would land outside it."""
    root = dst.resolve()
    for info in zf.infolist():
        target = (root / info.filename).resolve()
        if target != root and root not in target.parents:
            raise ValueError(f"entry {info.filename!r} escapes the target folder")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "xb") as out:
            remaining = info.file_size
            while chunk := src.read(1 << 20):
                remaining -= len(chunk)
                if remaining < 0:
                    raise ValueError(f"entry {info.filename!r} is longer than its declared size")
                out.write(chunk)


def _bundle_root(zf: zipfile.ZipFile, dst: Path) -> Path:
    """The single top folder of the archive when there is one, else the archive's root."""
    tops = {n.replace("\\", "/").split("/")[0] for n in zf.namelist() if n.strip("/")}
    if len(tops) == 1 and (dst / next(iter(tops))).is_dir():
        return dst / next(iter(tops))
    return dst


# ------------------------------------------------------------------------------------------------------------ folder


def _load_json(root: Path, rel: str, problems: list[str]) -> Any:
    try:
        return json.loads((root / rel).read_text())
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{rel}: cannot be read: {e}")
    except json.JSONDecodeError as e:
        problems.append(f"{rel}: not valid JSON: {e}")
    return None


def _check_metadata(meta: dict, problems: list[str]) -> None:
    rel = "configs/metadata.json"
    version, changelog = meta.get("version"), meta.get("changelog")
    if version is None:
        problems.append(f"{rel}: no 'version'")
    elif not isinstance(changelog, dict) or str(version) not in changelog:
        problems.append(f"{rel}: version {version!r} is not listed in its changelog")
    url = meta.get("schema")
    if not url:
        problems.append(f"{rel}: no 'schema' URL naming the metadata schema")
        return
    path = schema_path(url)
    if path is None:
        known = ", ".join(sorted(p.name for p in SCHEMAS.glob("*.json"))) or "none"
        problems.append(f"{rel}: schema {PurePosixPath(url).name!r} is not available offline (known: {known})")
        return
    try:
        import jsonschema
    except ImportError:
        problems.append(f"{rel}: cannot be checked against {path.name}: jsonschema is not installed")
        return
    schema = json.loads(path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    for error in sorted(validator.iter_errors(meta), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
        problems.append(f"{rel}: schema {path.name} violated at {where}: {message}")


def _inside(root: Path, rel: Any, what: str, problems: list[str]) -> str | None:
    """``rel`` when it is a relative path that stays inside ``root``; else a problem and ``None``."""
    if not isinstance(rel, str) or not rel:
        problems.append(f"{MANIFEST}: {what} is {rel!r}, not a path inside the bundle")
        return None
    target = (root / rel).resolve()
    if Path(rel).is_absolute() or (target != root.resolve() and root.resolve() not in target.parents):
        problems.append(f"{MANIFEST}: {what} {rel!r} points outside the bundle; refusing to read it")
        return None
    return rel


def _check_logging(root: Path, problems: list[str]) -> None:
    path = root / "configs" / "logging.conf"
    if not path.is_file():
        return
    try:  # MONAI's own screen of the INI file (private in MONAI 1.6: monai.bundle.workflows)
        from monai.bundle.workflows import _reject_executable_logging_config
    except ImportError:
        problems.append("configs/logging.conf: cannot be screened (this MONAI has no logging-config check)")
        return
    try:
        _reject_executable_logging_config(str(path))
    except Exception as e:  # noqa: BLE001 - MONAI raises ValueError; anything else is as bad
        problems.append(f"configs/logging.conf: MONAI refuses it: {_first_line(e)}")


def _check_weights_file(root: Path, rel: str, problems: list[str]) -> bool:
    """Can ``rel`` be read as plain tensors (``weights_only=True``)? Reading it runs nothing."""
    import torch

    try:
        torch.load(root / rel, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        problems.append(f"{rel}: not a plain weights file: torch.load(weights_only=True) refuses it, so loading it "
                        f"would unpickle arbitrary objects ({_first_line(e)[:160]})")
        return False
    return True


def _check_signature(root: Path, public_key: str | os.PathLike, problems: list[str]) -> None:
    import base64

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(public_key).read_bytes())
    except (OSError, ValueError, TypeError) as e:
        problems.append(f"{public_key}: not a readable PEM public key ({e})")
        return
    if not isinstance(key, Ed25519PublicKey):
        problems.append(f"{public_key}: not an Ed25519 public key")
        return
    if not (root / SIGNATURE).is_file() or not (root / MANIFEST).is_file():
        problems.append(f"{SIGNATURE}: missing: the bundle is not signed (export --sign-key)")
        return
    try:
        key.verify(base64.b64decode((root / SIGNATURE).read_bytes().strip(), validate=True),
                   (root / MANIFEST).read_bytes())
    except (InvalidSignature, ValueError):
        problems.append(f"{SIGNATURE}: does not match {MANIFEST} under {Path(public_key).name}: the bundle was not "
                        "signed with that key, or it was changed after signing")


def _check_manifest(root: Path, manifest: dict, problems: list[str]) -> None:
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        problems.append(f"{MANIFEST}: no 'files' table")
        return
    present = manifest_files(root)
    for rel, entry in sorted(listed.items()):
        if rel not in present:
            problems.append(f"{rel}: listed in {MANIFEST} but missing")
        elif entry.get("sha256") != present[rel]["sha256"] or entry.get("size") != present[rel]["size"]:
            problems.append(f"{rel}: SHA-256/size differ from {MANIFEST} (the file was changed)")
    for rel in sorted(set(present) - set(listed)):
        problems.append(f"{rel}: not listed in {MANIFEST} (a file was added)")


@contextlib.contextmanager
def _bundle_imports(root: Path):
    """Let the bundle's configs put its code on ``sys.path``; afterwards restore ``sys.path`` and forget the modules
    imported from ``root`` (a temporary folder may be about to disappear)."""
    path, modules = list(sys.path), set(sys.modules)
    try:
        yield
    finally:
        sys.path[:] = path
        prefix = str(root.resolve())
        for name in set(sys.modules) - modules:
            file = getattr(sys.modules.get(name), "__file__", None) or ""
            if file.startswith(prefix):
                del sys.modules[name]


def _declared_shapes(meta: dict) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    from monai.bundle.scripts import _get_fake_spatial_shape

    fmt = meta["network_data_format"]
    image = fmt["inputs"]["image"]
    pred = next(iter(fmt["outputs"].values()))
    inp = (1, int(image["num_channels"]), *_get_fake_spatial_shape(image["spatial_shape"]))
    spatial = pred.get("spatial_shape")
    if spatial is None or any(s == "*" for s in spatial):
        return inp, None
    return inp, (1, int(pred["num_channels"]), *_get_fake_spatial_shape(spatial))


def _check_network(root: Path, meta: dict, weights: Path | None, ts_record: dict | None, problems: list[str],
                   rtol: float, atol: float) -> None:
    import torch

    from pipelines.bundle import build_network, defining_config, workflow_configs
    from pipelines.io.weights import load_weights

    files = workflow_configs(root, "inference")  # check_folder has made sure that inference.json is there
    rel = os.path.relpath(defining_config(files, "network_def") or files[-1], root)
    try:
        in_shape, out_shape = _declared_shapes(meta)
    except (KeyError, TypeError, ValueError, StopIteration) as e:
        problems.append(f"configs/metadata.json: network_data_format does not declare the input/output shapes ({e})")
        return
    with _bundle_imports(root):
        try:
            net = build_network(root, "inference", relative_to=root)
        except Exception as e:  # noqa: BLE001 - any config or import error is a problem of the bundle
            problems.append(str(e) if isinstance(e, ValueError) else f"{rel}: network_def cannot be built: "
                            f"{_first_line(e)}")
            return
        if weights is not None and weights.is_file():
            try:
                load_weights(net, weights, name=weights.relative_to(root).as_posix())
            except (FileNotFoundError, ValueError) as e:
                problems.append(str(e))
                weights = None
        net = net.eval()
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(in_shape, generator=generator)
        try:
            with torch.no_grad():
                y = net(x)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{rel}: network_def fails on the declared input shape {tuple(in_shape)}: {_first_line(e)}")
            return
        if not isinstance(y, torch.Tensor):
            problems.append(f"{rel}: network_def returns {type(y).__name__}, not a tensor")
            return
        if out_shape is not None and tuple(y.shape) != tuple(out_shape):
            problems.append(f"{rel}: network_def maps input {tuple(in_shape)} to {tuple(y.shape)}, but "
                            f"configs/metadata.json declares output {tuple(out_shape)}")
        elif out_shape is None and y.shape[1] != int(next(iter(meta["network_data_format"]["outputs"].values()))
                                                       ["num_channels"]):
            problems.append(f"{rel}: network_def gives {y.shape[1]} output channels, configs/metadata.json declares "
                            "otherwise")
    if ts_record is None or weights is None:
        return
    ts_rel = ts_record["file"]
    try:
        if ts_record.get("kind") == "export":
            scripted = torch.export.load(str(root / ts_rel)).module()
        else:
            scripted = torch.jit.load(str(root / ts_rel), map_location="cpu").eval()
        with torch.no_grad():
            z = scripted(x)
    except Exception as e:  # noqa: BLE001
        problems.append(f"{ts_rel}: cannot be loaded and run: {_first_line(e)}")
        return
    if not isinstance(z, torch.Tensor) or z.shape != y.shape:
        problems.append(f"{ts_rel}: output shape {tuple(getattr(z, 'shape', ()))} differs from the eager "
                        f"network_def's {tuple(y.shape)}")
    elif not torch.allclose(z, y, rtol=rtol, atol=atol):
        problems.append(f"{ts_rel}: outputs differ from network_def with {weights.relative_to(root).as_posix()} "
                        f"(max abs difference {(z - y).abs().max().item():.3g})")


def _first_line(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def check_folder(root: str | os.PathLike, *, run_network: bool = True, require_manifest: bool = False,
                 rtol: float = 1e-4, atol: float = 1e-5, public_key: str | os.PathLike | None = None) -> list[str]:
    """The Model Zoo style checks of an (extracted) bundle folder; see the module doc."""
    from pipelines.config_code import code_findings

    root = Path(root)
    problems: list[str] = []
    manifest = None
    if (root / MANIFEST).is_file():
        manifest = _load_json(root, MANIFEST, problems)
        if isinstance(manifest, dict):
            _check_manifest(root, manifest, problems)  # first: the checks below may write byte code caches
        elif manifest is not None:
            problems.append(f"{MANIFEST}: not a JSON object")
            manifest = None
    elif require_manifest:
        problems.append(f"{MANIFEST}: missing (every exported bundle has one)")
    if public_key is not None:
        _check_signature(root, public_key, problems)
    weights_rel = (manifest or {}).get("weights", "models/model.pt") or "models/model.pt"
    weights_rel = _inside(root, weights_rel, "weights", problems)
    for rel in (*REQUIRED, *([weights_rel] if weights_rel else [])):
        if not (root / rel).is_file():
            problems.append(f"{rel}: missing (required)")
    weights_ok = bool(weights_rel) and (root / weights_rel).is_file() \
        and _check_weights_file(root, weights_rel, problems)
    _check_logging(root, problems)
    problems += code_findings(root)
    for config in sorted((root / "configs").glob("*.json")) if (root / "configs").is_dir() else []:
        if config.name != "metadata.json":
            _load_json(root, f"configs/{config.name}", problems)
    meta = _load_json(root, "configs/metadata.json", problems) if (root / "configs/metadata.json").is_file() else None
    if isinstance(meta, dict):
        _check_metadata(meta, problems)
    elif meta is not None:
        problems.append("configs/metadata.json: not a JSON object")
    ts_record = (manifest or {}).get("torchscript")
    if ts_record is None and (root / "models" / "model.ts").is_file():
        ts_record = {"kind": "script", "file": "models/model.ts"}
    if ts_record is not None and (not isinstance(ts_record, dict)
                                  or _inside(root, ts_record.get("file"), "torchscript.file", problems) is None):
        ts_record = None
    if ts_record is not None and not (root / ts_record.get("file", "")).is_file():
        problems.append(f"{ts_record.get('file')}: missing (declared in {MANIFEST})")
        ts_record = None
    if run_network and isinstance(meta, dict) and (root / "configs/inference.json").is_file() \
            and not any(p.startswith("configs/inference.json: not valid") for p in problems):
        _check_network(root, meta, root / weights_rel if weights_ok else None, ts_record, problems, rtol, atol)
    return problems


def verify_bundle(
    path: str | os.PathLike,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_ratio: float = MAX_RATIO,
    max_members: int = MAX_MEMBERS,
    workdir: str | os.PathLike | None = None,
    run_network: bool = True,
    sha256: str | None = None,
    public_key: str | os.PathLike | None = None,
) -> list[str]:
    """Problems of the bundle folder or bundle zip ``path``, one line each naming the file; ``[]`` when it is fine.

    A zip is refused as a whole (nothing extracted) when :func:`check_zip` finds it unsafe; otherwise it is
    extracted into a temporary folder under ``workdir`` (default: the system's), checked, and removed.
    ``run_network=False`` skips building and running the network (and the TorchScript comparison). ``sha256``: the
    zip's expected digest (hex). ``public_key``: a PEM Ed25519 public key that must have signed ``manifest.json``.
    """
    path = Path(path)
    if path.is_dir():
        if sha256:
            return [f"{path}: --sha256 checks an exported zip, not a folder"]
        return check_folder(path, run_network=run_network, public_key=public_key)
    if not path.is_file():
        return [f"{path}: no such bundle folder or zip"]
    if not zipfile.is_zipfile(path):
        return [f"{path}: neither a bundle folder nor a zip archive"]
    if sha256:
        actual = file_digest(path)
        if actual.lower() != sha256.strip().lower():
            return [f"{path.name}: SHA-256 {actual} differs from the expected {sha256.strip()}: not the file that was "
                    "published (or damaged in transit); nothing was extracted"]
    try:
        with zipfile.ZipFile(path) as zf:
            unsafe = check_zip(zf, path.name, max_member_bytes=max_member_bytes, max_total_bytes=max_total_bytes,
                               max_ratio=max_ratio, max_members=max_members)
            if unsafe:
                return unsafe
            with tempfile.TemporaryDirectory(prefix=".verify-", dir=workdir) as tmp:
                try:
                    _extract(zf, Path(tmp))
                except (ValueError, zipfile.BadZipFile, OSError, EOFError) as e:
                    return [f"{path.name}: cannot be extracted: {e}"]
                return check_folder(_bundle_root(zf, Path(tmp)), run_network=run_network, require_manifest=True,
                                    public_key=public_key)
    except zipfile.BadZipFile as e:
        return [f"{path.name}: not a readable zip archive: {e}"]


# --------------------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``python -m pipelines verify``."""
    parser.add_argument("bundle", help="bundle folder or exported bundle zip")
    parser.add_argument("--max-member-mb", type=float, default=MAX_MEMBER_BYTES / 2**20,
                        help="refuse a zip with a member larger than this, uncompressed (default %(default).0f)")
    parser.add_argument("--max-total-mb", type=float, default=MAX_TOTAL_BYTES / 2**20,
                        help="refuse a zip larger than this in all, uncompressed (default %(default).0f)")
    parser.add_argument("--no-network", action="store_true",
                        help="do not build or run network_def (it runs the bundle's code); "
                             "every static check still runs")
    parser.add_argument("--allow-code", action="store_true",
                        help="list configs that run code outside MONAI/PyTorch/NumPy/networks/pipelines, but exit 0")
    parser.add_argument("--sha256", metavar="HEX", help="the zip's expected SHA-256 (the exported <zip>.sha256)")
    parser.add_argument("--public-key", metavar="KEY.pub", help="PEM Ed25519 public key that signed manifest.json")


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``python -m pipelines verify``: exit code 0 when no problem was found, else 1 after one line per problem."""
    problems = verify_bundle(args.bundle, max_member_bytes=int(args.max_member_mb * 2**20),
                             max_total_bytes=int(args.max_total_mb * 2**20), run_network=not args.no_network,
                             sha256=args.sha256, public_key=args.public_key)
    for problem in problems:
        print(problem)
    code = [p for p in problems if ": runs code: " in p]
    blocking = [p for p in problems if p not in code] + ([] if args.allow_code else code)
    if not problems:
        print(f"verify: {args.bundle}: no problems found")
    elif not blocking:
        print(f"verify: {args.bundle}: no problems found; {len(code)} place(s) run code outside the trusted "
              "namespaces (--allow-code)")
    return 1 if blocking else 0


def verify_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines verify", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(verify_main())
