"""A bundle's workflows and its network, read from its configs in one place; derived copies of a bundle.

Each setting of a bundle is written once, in ``configs/train.json``; the other workflows are overlays merged after it,
as MONAI merges a list of config files (``--config_file "['configs/train.json','configs/inference.json']"``; later
files replace or, with ``+key``, extend what earlier ones say). :data:`WORKFLOWS` is the one table of which files
make which workflow:

==============  ===============================================  =============================================
workflow        files, in merge order                            what the overlay changes
==============  ===============================================  =============================================
``train``       ``train.json``
``evaluate``    ``train.json``, ``evaluate.json``                the split scored, the checkpoint loader, reports
``inference``   ``train.json``, ``inference.json``               inputs, preprocessing, inferer, the saver
``multi_gpu``   ``train.json``, ``multi_gpu_train.json``         DDP, this rank's share of the data, rank 0's logs
==============  ===============================================  =============================================

So a network, spacing or patch size given once (``--features "[16, 32, 64, 128, 256]"`` to ``monai.bundle run``,
``--set features=...`` to ``pipelines infer`` or ``pipelines export``, :func:`derive_bundle`) reaches training,
evaluation, inference and export alike. :func:`workflow_configs` gives the list, :func:`bundle_parser` reads it,
:func:`build_network` builds the bundle's network from it (``pipelines infer``, ``pipelines export`` and ``pipelines
verify`` all use it) and loads weights with a one-line error when they do not fit.

A bundle without ``train.json`` (an inference-only bundle) runs its overlay alone, which must then be a whole config.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.bundle import ConfigParser

if TYPE_CHECKING:
    import torch

__all__ = ["WORKFLOWS", "workflow_configs", "bundle_parser", "build_network", "defining_config", "apply_overrides",
           "config_bool", "ensure_folders", "derive_bundle", "parse_override"]

#: workflow -> its config files in merge order, the first the base every other one overlays
WORKFLOWS: dict[str, tuple[str, ...]] = {
    "train": ("train.json",),
    "evaluate": ("train.json", "evaluate.json"),
    "inference": ("train.json", "inference.json"),
    "multi_gpu": ("train.json", "multi_gpu_train.json"),
}
BASE = WORKFLOWS["train"][0]

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def config_bool(value: Any, name: str) -> bool:
    """A switch of a bundle config as a ``bool``: ``True``/``False``, or the strings a command line gives.

    ``python -m monai.bundle run ... --memory_plan false`` passes the *string* ``"false"`` (MONAI reads its command
    line with ``fire``), which Python's ``bool`` takes for true; the usual spellings are read here, anything else is
    a one-line error naming the setting."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")


def workflow_configs(bundle_dir: str | os.PathLike, workflow: str = "inference") -> list[Path]:
    """The config files of ``workflow`` (a key of :data:`WORKFLOWS`) in ``<bundle_dir>/configs``, in merge order.

    ``train.json`` is left out only when the bundle has none. ``FileNotFoundError`` naming the missing file,
    ``ValueError`` for an unknown workflow."""
    if workflow not in WORKFLOWS:
        raise ValueError(f"unknown bundle workflow {workflow!r}; one of {', '.join(WORKFLOWS)}")
    configs = Path(bundle_dir) / "configs"
    files = [configs / name for name in WORKFLOWS[workflow]]
    if len(files) > 1 and not files[0].is_file():
        files = files[1:]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: bundle config not found (the {workflow} workflow needs it)")
    return files


def _read_config(path: Path) -> dict:
    try:
        config = ConfigParser.load_config_file(str(path))
    except Exception as e:  # noqa: BLE001 - a JSON/YAML error: one line naming the file, not a traceback
        raise ValueError(f"{path}: cannot read the config ({_one_line(e)})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a config (a JSON object of ids)")
    return config


def bundle_parser(bundle_dir: str | os.PathLike, workflow: str = "inference",
                  overrides: Mapping[str, Any] | None = None, *,
                  files: Sequence[str | os.PathLike] | None = None) -> ConfigParser:
    """A ``ConfigParser`` of the merged configs of ``workflow`` (or of ``files``, in that order) with ``bundle_root``
    set to ``bundle_dir`` (absolute) and then ``overrides`` applied (ids as on MONAI's command line: ``features``,
    ``network_def#num_blocks``). ``ValueError`` naming the file that cannot be read."""
    bundle_dir = Path(bundle_dir).resolve()
    files = [Path(f) for f in files] if files is not None else workflow_configs(bundle_dir, workflow)
    for path in files:  # each file read once on its own first, so that an error names it
        _read_config(path)
    parser = ConfigParser()
    parser.read_config([str(p) for p in files])
    parser.update({"bundle_root": str(bundle_dir), **dict(overrides or {})})
    return parser


def defining_config(files: Sequence[str | os.PathLike], key: str) -> Path | None:
    """The last of ``files`` whose top level sets ``key`` (or the id ``key`` starts with): where a setting of the
    merged config comes from, for messages."""
    head = key.split("#", 1)[0]
    found = None
    for path in files:
        try:
            config = ConfigParser.load_config_file(str(path))
        except Exception:  # noqa: BLE001 - an unreadable file defines nothing here; reading it reports it
            continue
        if isinstance(config, dict) and any(k.lstrip("+").split("#", 1)[0] == head for k in config):
            found = Path(path)
    return found


def build_network(
    bundle_dir: str | os.PathLike,
    workflow: str = "inference",
    *,
    overrides: Mapping[str, Any] | None = None,
    weights: str | os.PathLike | None = None,
    weights_name: str | os.PathLike | None = None,
    parser: ConfigParser | None = None,
    files: Sequence[str | os.PathLike] | None = None,
    key: str = "network_def",
    relative_to: str | os.PathLike | None = None,
) -> torch.nn.Module:
    """The bundle's network: ``key`` of the merged configs of ``workflow`` (with ``overrides``), optionally with
    ``weights`` loaded strictly by :func:`pipelines.io.weights.load_weights`.

    ``parser``: an already read :func:`bundle_parser` (``pipelines infer`` builds its other pieces from the same
    one); ``files``: the config files read instead of ``workflow``'s, as :func:`bundle_parser` takes them.

    Errors are ``ValueError``, one line each, starting with the config that defines ``key`` (relative to
    ``relative_to`` when given): it does not build, or builds something that is not a ``torch.nn.Module``; for
    weights that do not fit, the weights file (``weights_name``, else ``weights``) and the first missing or
    unexpected key, or the first key whose shape differs with both shapes."""
    import torch

    from pipelines.io.weights import load_weights

    bundle_dir = Path(bundle_dir).resolve()
    files = [Path(f) for f in files] if files is not None else workflow_configs(bundle_dir, workflow)
    if parser is None:
        parser = bundle_parser(bundle_dir, overrides=overrides, files=files)
    elif overrides:
        parser.update(dict(overrides))
    source = defining_config(files, key) or files[-1]
    label = os.path.relpath(source, relative_to) if relative_to is not None else str(source)
    try:
        network = parser.get_parsed_content(key)
    except Exception as e:  # noqa: BLE001 - MONAI wraps every instantiation error; the user needs one line
        raise ValueError(f"{label}: cannot build {key!r} ({_one_line(e)})") from None
    if not isinstance(network, torch.nn.Module):
        raise ValueError(f"{label}: {key} builds a {type(network).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(network, weights, name=weights_name)
    return network


def apply_overrides(config: dict, overrides: Mapping[str, Any], *, add: bool = False) -> tuple[dict, list[str]]:
    """``config`` with each override whose id it holds (``"nf"``, ``"network_def#num_blocks"``, a literal top-level key
    such as ``"validate#dataset"``) set to its value; returns the new config and the ids applied. ``add``: an override
    that ``config`` does not hold is added as a top-level key (the base config of a derived bundle)."""
    if not overrides:
        return config, []
    parser = ConfigParser(json.loads(json.dumps(config)))
    applied = []
    for key, value in overrides.items():
        if key in config:  # a literal top-level key, "#" included
            parser.config[key] = value  # type: ignore[index]
        elif key in parser:
            parser[key] = value
        elif add:
            parser.config[key] = value  # type: ignore[index]
        else:
            continue
        applied.append(key)
    return parser.get(), applied


def ensure_folders(folders: Sequence[str | os.PathLike], what: str = "training output") -> list[str]:
    """:func:`pipelines.io.ensure_writable` of every folder of ``folders`` (created when missing), for a config's
    ``initialize``: a config component takes named arguments only, and ``ensure_writable`` takes the folders as
    positional ones. Returns the folders; ``ValueError`` naming the first that cannot be written."""
    from pipelines.io import ensure_writable

    ensure_writable(*folders, what=what)
    return [str(f) for f in folders]


def derive_bundle(src: str | Path, dst: str | Path, overrides: dict, train_overrides: dict | None = None) -> Path:
    """Copy bundle ``src`` to ``dst`` with ``overrides`` written once, into its ``train.json``.

    Every workflow overlays ``train.json`` (:data:`WORKFLOWS`), so the overrides reach them all; an overlay that sets
    one of the ids itself (``inference.json``'s ``sw_batch_size``, a setting that differs from training's on
    purpose) gets it too, as an override on MONAI's command line replaces the merged value. ``train_overrides`` go
    into ``train.json`` only. The metadata's declared patch shape follows ``patch_size``. Trained weights, logs and
    caches are not copied. The copy is a complete bundle, e.g. a small CPU variant; files are written atomically.
    """
    from pipelines.io.atomic import write_text_atomic

    src, dst = Path(src), Path(dst)
    train_overrides = dict(train_overrides or {})
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache", "__pycache__"))
    configs = dst / "configs"
    overlays = sorted({name for files in WORKFLOWS.values() for name in files[1:]})
    for name, extra, add in ((BASE, {**overrides, **train_overrides}, True),
                             *((name, overrides, False) for name in overlays)):
        path = configs / name
        if not path.is_file():
            continue
        config, applied = apply_overrides(_read_config(path), extra, add=add)
        if applied:
            write_text_atomic(path, json.dumps(config, indent=4) + "\n")
    meta_path = configs / "metadata.json"
    meta = json.loads(meta_path.read_text())
    if "patch_size" in overrides:
        for io in ("inputs", "outputs"):
            for tensor in meta["network_data_format"][io].values():
                tensor["spatial_shape"] = list(overrides["patch_size"])
    meta["description"] += f" Derived copy with {json.dumps({**overrides, **train_overrides})}."
    write_text_atomic(meta_path, json.dumps(meta, indent=4) + "\n")
    return dst


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of a ``--set`` option (VALUE parsed as JSON when it is JSON, else kept as a string)."""
    import argparse

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _one_line(error: BaseException) -> str:
    """The innermost cause of ``error`` as ``Type: first line`` (MONAI wraps instantiation errors in its own)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__
