"""Bundle tools: derived copies (a CPU-sized variant of a bundle, say); export and verification come here too."""

from __future__ import annotations

from typing import Any

import json
import shutil
from pathlib import Path

from monai.bundle import ConfigParser

__all__ = ["config_bool", "derive_bundle", "parse_override"]

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


def derive_bundle(src: str | Path, dst: str | Path, overrides: dict, train_overrides: dict | None = None) -> Path:
    """Copy bundle ``src`` to ``dst`` with ``overrides`` written into its train and inference configs.

    ``train_overrides`` go into ``train.json`` only. The metadata's declared patch shape follows ``patch_size``.
    Trained weights, logs and caches are not copied. The copy is a complete bundle, e.g. a small CPU variant.
    """
    src, dst = Path(src), Path(dst)
    train_overrides = dict(train_overrides or {})
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache", "__pycache__"))
    for name, extra in (("train.json", {**overrides, **train_overrides}), ("inference.json", overrides)):
        path = dst / "configs" / name
        config = ConfigParser.load_config_file(path)
        config.update(extra)
        path.write_text(json.dumps(config, indent=4) + "\n")
    meta_path = dst / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    if "patch_size" in overrides:
        for io in ("inputs", "outputs"):
            for tensor in meta["network_data_format"][io].values():
                tensor["spatial_shape"] = list(overrides["patch_size"])
    meta["description"] += f" Derived copy with {json.dumps({**overrides, **train_overrides})}."
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    return dst


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of a ``--set`` option (VALUE parsed as JSON when it is JSON, else kept as a string)."""
    import argparse
    import json

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
