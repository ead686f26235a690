"""Trained weights from a file into a network: one reader, one unwrap rule, one-line errors that name the file.

Every place that loads weights goes through :func:`load_weights` (``pipelines infer``, the SR trainer's
``pretrained_generator``, :func:`pipelines.bundle.build_network` for export and verify, and :class:`WeightsLoader`, the
handler a bundle's inference and evaluation configs use) or :func:`read_state_dict` (network interpolation, which
blends two state dicts without a network, and export's plain ``model.pt``).

The file is read with ``torch.load(weights_only=True)`` on the CPU: plain tensors only, so a pickle that would run
code when loaded is refused, never run. What it may hold:

==============================================  ====================================================================
layout                                          written by
==============================================  ====================================================================
a state dict (names -> tensors)                 MONAI's ``CheckpointSaver`` with one network (``model.pt``,
                                                ``model_final.pt``), ``pipelines interpolate``
``{"generator": state dict, ...}``              the SR bundles' ``checkpoint.pt`` (:class:`~pipelines.engines.
                                                ResumableCheckpoint` of the GAN trainer)
``{"network": state dict, ...}``                the other bundles' ``checkpoint.pt``
``{"model": state dict}``                       Model Zoo bundles, ``CheckpointSaver`` with ``save_dict={"model":..}``
``{"state_dict": state dict}``                  Lightning, timm and most research code
==============================================  ====================================================================

The first of those keys that holds a dict is taken (:data:`STATE_DICT_KEYS`, in that order); DDP's ``module.`` key
prefix is removed (torch's ``consume_prefix_in_state_dict_if_present``), and a network wrapped in
``DistributedDataParallel``/``DataParallel`` is loaded through its ``.module``.

Errors, each one line that starts with the file's name: ``FileNotFoundError`` for a URL (nothing is downloaded) or
a missing file; ``ValueError`` for a file ``torch.load(weights_only=True)`` refuses, one that holds no state dict, and
weights that do not fit the network: the count of missing or unexpected keys with the first one, or the first key
whose shape differs, with both shapes.

Upstream: ``torch.nn.Module.load_state_dict`` lists every mismatch in a multi-line ``RuntimeError`` and knows no
checkpoint layouts; MONAI's ``CheckpointLoader`` needs the checkpoint's own key names (``load_dict``) and raises
that same error; ``monai.networks.utils.copy_model_state`` skips what does not fit instead of refusing it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

__all__ = ["STATE_DICT_KEYS", "WeightsLoader", "load_weights", "read_state_dict"]

#: keys under which a checkpoint dict holds the network's state dict, tried in this order
STATE_DICT_KEYS: tuple[str, ...] = ("generator", "network", "model", "state_dict")

_KEYS_TEXT = ", ".join(repr(k) for k in STATE_DICT_KEYS[:-1]) + f" or {STATE_DICT_KEYS[-1]!r}"
_DDP_PREFIX = "module."
_MISMATCH_HINT = "was the network or one of its settings changed after these weights were trained?"


def _a(value: Any) -> str:
    """``"a list"``, ``"an int"``: the type of ``value`` with its article."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".")[:160]


def _reason(error: BaseException) -> str:
    """The useful part of ``torch.load``'s error: the weights-only unpickler's finding (its message opens with a
    paragraph on ``weights_only`` defaults), else the first sentence."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    marker = "WeightsUnpickler error:"
    for i, line in enumerate(lines):
        if marker in line:
            found = line.split(marker, 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return _sentence(found) or type(error).__name__
    return f"{type(error).__name__}: {_sentence(lines[0])}" if lines else type(error).__name__


def read_state_dict(
    path: str | os.PathLike, *, name: str | os.PathLike | None = None, missing_hint: str = ""
) -> dict[str, torch.Tensor]:
    """The state dict that ``path`` holds, on the CPU, unwrapped (see the module docstring), its keys without DDP's
    ``module.`` prefix.

    Args:
        path: a local weights file.
        name: how errors name the file (default ``path``): the user's file when ``path`` is a staged copy.
        missing_hint: added in parentheses to the error of a missing file (what the user should do).

    Raises:
        FileNotFoundError: ``path`` is a URL, or not an existing file.
        ValueError: ``torch.load(weights_only=True)`` refuses the file, or it holds no state dict of tensors.
    """
    text = str(path)
    shown = str(name) if name is not None else text
    if "://" in text:
        raise FileNotFoundError(f"{shown}: weights must be a local file, not a URL; nothing is downloaded")
    file = Path(text).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{shown}: trained weights not found" + (f" ({missing_hint})" if missing_hint else ""))
    try:
        state: Any = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a pickle of objects, a cut-off zip, not a torch file: one line
        raise ValueError(f"{shown}: not a plain weights file (torch.load with weights_only=True refuses it: "
                         f"{_reason(e)}); objects other than tensors are never unpickled, since that can run code") \
            from None
    if isinstance(state, Mapping):
        key = next((k for k in STATE_DICT_KEYS if isinstance(state.get(k), Mapping)), None)
        if key is not None:
            state = state[key]
    if not isinstance(state, Mapping):
        raise ValueError(f"{shown}: holds {_a(state)}, not a state dict (a dict of tensors, or one under "
                         f"{_KEYS_TEXT})")
    if not state:
        raise ValueError(f"{shown}: holds an empty state dict")
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ValueError(f"{shown}: entry {bad!r} holds {_a(state[bad])}, not a tensor: not a state dict (a dict of "
                         f"tensors, or one under {_KEYS_TEXT})")
    plain: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    if getattr(state, "_metadata", None) is not None:  # module versions, which some load hooks read
        plain._metadata = state._metadata  # type: ignore[attr-defined]
    consume_prefix_in_state_dict_if_present(plain, _DDP_PREFIX)
    return plain


def _unwrapped(network: torch.nn.Module) -> torch.nn.Module:
    if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return network.module
    return network


def _shape(shape: torch.Size) -> str:
    return f"({', '.join(str(s) for s in shape)})"


def load_weights(
    network: torch.nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    name: str | os.PathLike | None = None,
    missing_hint: str = "",
) -> torch.nn.Module:
    """Load the weights of ``path`` into ``network`` (in place, on the network's device) and return ``network``.

    ``strict`` (the default) refuses a file with keys the network lacks or without keys it has; with ``strict=False``
    those are left as they are. A tensor whose shape differs from the network's is refused either way. Load hooks of
    the network run (an older layout of its state dict is folded in before the keys are compared). On an error the
    network may hold some of the file's tensors: build it again before using it.

    Args:
        network: the module to load into (``DistributedDataParallel``/``DataParallel``: its ``.module``).
        path, name, missing_hint: as :func:`read_state_dict`.
        strict: whether every key must match.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_state_dict`; ``ValueError`` also for weights that do not fit.
    """
    shown = str(name) if name is not None else str(path)
    state = read_state_dict(path, name=name, missing_hint=missing_hint)
    target = _unwrapped(network)
    expected = target.state_dict()
    for key, tensor in state.items():
        if key in expected and expected[key].shape != tensor.shape:
            raise ValueError(f"{shown}: does not fit the network: {key!r} is {_shape(tensor.shape)} in the file, "
                             f"{_shape(expected[key].shape)} in the network ({_MISMATCH_HINT})")
    try:
        result = target.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape that a load hook changed: torch's own message, its first useful line
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Error(s) in loading")]
        raise ValueError(f"{shown}: does not fit the network ({(lines[0] if lines else '')[:200]})") from None
    if strict and result.missing_keys:
        missing = result.missing_keys
        raise ValueError(f"{shown}: does not fit the network: {len(missing)} of its key(s) missing from the file, the "
                         f"first {missing[0]!r} ({_MISMATCH_HINT})")
    if strict and result.unexpected_keys:
        extra = result.unexpected_keys
        raise ValueError(f"{shown}: does not fit the network: {len(extra)} key(s) in the file that the network does "
                         f"not have, the first {extra[0]!r} ({_MISMATCH_HINT})")
    return network


class WeightsLoader:
    """An Ignite handler that loads ``load_path`` into ``network`` with :func:`load_weights` when the engine starts:
    the checked counterpart of MONAI's ``CheckpointLoader(load_path, {"model": network})`` for a bundle's inference
    or evaluation config (same layouts accepted, one-line errors).

    Args:
        load_path: the weights file (a bundle's ``@ckpt_path``).
        network: the module to load into.
        strict: as :func:`load_weights`.
    """

    def __init__(self, load_path: str | os.PathLike, network: torch.nn.Module, strict: bool = True) -> None:
        self.load_path = load_path
        self.network = network
        self.strict = strict

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any = None) -> None:
        load_weights(self.network, self.load_path, strict=self.strict)
