"""Convert Xception-65 weights from timm or Keras names into this project's (``networks.blocks.xception.Xception65``)
for ``FRCUNet(encoder="xception", pretrained_encoder=...)``. Nothing is downloaded: the input is a local file.

    python -m networks.convert_xception xception65.pth encoder.pt                   # timm (torch.save / .safetensors)
    python -m networks.convert_xception deeplab_weights.npz encoder.pt --source keras

``--source timm`` (the default) reads a state dict of timm's ``xception65`` (``timm/models/xception_aligned.py``:
``stem.0/1``, ``blocks.0..20``, non-pre-activation), from ``torch.save`` (a ``state_dict`` / ``model`` entry of a
checkpoint dict is used when present) or ``.safetensors`` (needs the ``safetensors`` package); its classifier
``head.*`` is dropped. timm's ``xception65p`` (pre-activation) is another architecture and is refused.

``--source keras`` reads the Keras layer weights of the DeepLabv3+ Xception (the names of ``SepConv_BN``,
``xception_block`` and ``entry_flow_conv1_1`` in bonlime/keras-deeplab-v3-plus ``model.py``, which FRCU-Net's
``new_model.py`` copies): an ``.npz`` whose keys are ``<layer>/<weight>`` (``entry_flow_conv1_1/kernel:0``,
``..._BN/gamma:0``, ``/beta``, ``/moving_mean``, ``/moving_variance``, ``/depthwise_kernel``), or a Keras ``.h5``
weight file (``model.save_weights``; needs ``h5py``, which this project does not install, so that path is untested
here). Kernels are transposed from Keras's ``(kh, kw, in, out)`` / depthwise ``(kh, kw, in, 1)`` layouts; layers that
are not the encoder's (DeepLab's ASPP, decoder and logits, FRCU-Net's own layers) are skipped.

The result is checked by loading it into an :class:`Xception65` of the widths it implies and written atomically
(``torch.save`` to a temporary name, then renamed). Any problem: one line naming the file and the first bad key, exit 1.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .blocks.xception import Xception65, state_dict_mismatch

__all__ = [
    "timm_to_project",
    "project_to_timm",
    "keras_to_project",
    "project_to_keras",
    "infer_config",
    "convert",
    "main",
]

_BN_TIMM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BN_KERAS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_SEP_TIMM = {"conv_dw": "depthwise", "bn_dw": "depthwise_bn", "conv_pw": "pointwise", "bn_pw": "pointwise_bn"}


class ConversionError(ValueError):
    """A file that cannot be converted (the message names the key)."""


def _block_name(index: int, n_blocks: int) -> str:
    """This project's name of timm's ``blocks.<index>`` in an Xception with ``n_blocks`` blocks (3 + middle + 2)."""
    if index < 3:
        return f"entry_flow_block{index + 1}"
    if index >= n_blocks - 2:
        return f"exit_flow_block{index - (n_blocks - 2) + 1}"
    return f"middle_flow.{index - 3}"


def timm_to_project(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``xception65`` keys -> :class:`Xception65` keys (values unchanged; ``head.*`` dropped)."""
    if any(re.match(r"blocks\.\d+\.norm\.|blocks\.\d+\.stack\.conv\d\.norm\.", k) for k in state):
        first = next(k for k in state if ".norm." in k)
        raise ConversionError(
            f"key {first!r} belongs to timm's pre-activation xception65p, another architecture than the authors' "
            "Xception-65 (use timm's xception65)"
        )
    indices = [int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))]
    n_blocks = max(indices) + 1 if indices else 0
    if n_blocks < 5:
        raise ConversionError(f"expected timm 'blocks.0' .. 'blocks.N' keys with N >= 4, found {n_blocks} blocks")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("head."):
            continue
        m = re.fullmatch(r"stem\.([01])\.(conv\.weight|bn\.(\w+))", key)
        if m and (m.group(3) is None or m.group(3) in _BN_TIMM):
            name = f"entry_flow_conv1_{int(m.group(1)) + 1}"
            out[f"{name}.weight" if m.group(3) is None else f"{name}_bn.{m.group(3)}"] = value
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.stack\.conv([123])\.(conv_dw|bn_dw|conv_pw|bn_pw)\.(\w+)", key)
        if m and ((m.group(3).startswith("conv") and m.group(4) == "weight") or
                  (m.group(3).startswith("bn") and m.group(4) in _BN_TIMM)):
            block = _block_name(int(m.group(1)), n_blocks)
            out[f"{block}.separable_conv{m.group(2)}.{_SEP_TIMM[m.group(3)]}.{m.group(4)}"] = value
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.shortcut\.(conv\.weight|bn\.(\w+))", key)
        if m and (m.group(3) is None or m.group(3) in _BN_TIMM):
            block = _block_name(int(m.group(1)), n_blocks)
            out[f"{block}.shortcut.weight" if m.group(3) is None else f"{block}.shortcut_bn.{m.group(3)}"] = value
            continue
        raise ConversionError(f"key {key!r} is not a timm xception65 encoder key")
    return out


def project_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`timm_to_project` (no ``head``): :class:`Xception65` keys -> timm ``xception65`` keys."""
    middle = {int(m.group(1)) for k in state if (m := re.match(r"middle_flow\.(\d+)\.", k))}
    n_middle = max(middle) + 1 if middle else 0
    blocks = {f"entry_flow_block{i + 1}": i for i in range(3)}
    blocks.update({f"middle_flow.{i}": 3 + i for i in range(n_middle)})
    blocks.update({f"exit_flow_block{i + 1}": 3 + n_middle + i for i in range(2)})
    sep = {v: k for k, v in _SEP_TIMM.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"entry_flow_conv1_([12])(_bn)?\.(\w+)", key)
        if m:
            out[f"stem.{int(m.group(1)) - 1}.{'bn' if m.group(2) else 'conv'}.{m.group(3)}"] = value
            continue
        m = re.fullmatch(r"(\w+?(?:\.\d+)?)\.(separable_conv[123]\.(\w+)|shortcut(_bn)?)\.(\w+)", key)
        if not m or m.group(1) not in blocks:
            raise ConversionError(f"key {key!r} is not an Xception65 key")
        prefix = f"blocks.{blocks[m.group(1)]}"
        if m.group(3) is not None:
            out[f"{prefix}.stack.conv{m.group(2)[14]}.{sep[m.group(3)]}.{m.group(5)}"] = value
        else:
            out[f"{prefix}.shortcut.{'bn' if m.group(4) else 'conv'}.{m.group(5)}"] = value
    return out


def _keras_to_torch_layout(name: str, value: np.ndarray) -> torch.Tensor:
    if name == "depthwise_kernel":  # (kh, kw, in, 1) -> (in, 1, kh, kw)
        return torch.from_numpy(np.ascontiguousarray(value.transpose(2, 3, 0, 1)))
    if name == "kernel":  # (kh, kw, in, out) -> (out, in, kh, kw)
        return torch.from_numpy(np.ascontiguousarray(value.transpose(3, 2, 0, 1)))
    return torch.from_numpy(np.ascontiguousarray(value))


def keras_to_project(weights: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Keras DeepLab Xception weights ``{"<layer>/<weight>[:0]": array}`` -> :class:`Xception65` keys (kernels
    transposed, ``num_batches_tracked`` added as 0). Keys of other layers are skipped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        parts = key.replace(":0", "").split("/")
        if len(parts) < 2:
            raise ConversionError(f"key {key!r} is not '<layer>/<weight>'")
        layer, weight = parts[-2], parts[-1]
        m = re.fullmatch(r"entry_flow_conv1_([12])(_BN)?", layer)
        if m:
            target = f"entry_flow_conv1_{m.group(1)}" + ("_bn" if m.group(2) else "")
        else:
            m = re.fullmatch(
                r"(entry_flow_block[123]|middle_flow_unit_(\d+)|exit_flow_block[12])"
                r"_(separable_conv[123]_(depthwise|pointwise)|shortcut)(_BN)?",
                layer,
            )
            if not m:
                continue  # not an encoder layer (ASPP, decoder, logits, FRCU-Net's own layers)
            block = f"middle_flow.{int(m.group(2)) - 1}" if m.group(2) else m.group(1)
            if m.group(4):
                inner = f"{m.group(3)[:15]}.{m.group(4)}"
            else:
                inner = "shortcut"
            target = f"{block}.{inner}" + ("_bn" if m.group(5) else "")
        if target.endswith("_bn"):
            if weight not in _BN_KERAS:
                raise ConversionError(f"key {key!r}: a BatchNorm has no weight {weight!r}")
            out[f"{target}.{_BN_KERAS[weight]}"] = torch.from_numpy(np.ascontiguousarray(value))
            out.setdefault(f"{target}.num_batches_tracked", torch.tensor(0, dtype=torch.long))
        elif weight in ("kernel", "depthwise_kernel"):
            out[f"{target}.weight"] = _keras_to_torch_layout(weight, np.asarray(value))
        else:
            raise ConversionError(f"key {key!r}: the encoder's convolutions have no weight {weight!r}")
    if not out:
        raise ConversionError("no Keras Xception encoder layer (entry_flow_*, middle_flow_unit_*, exit_flow_*) found")
    return out


def project_to_keras(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The inverse of :func:`keras_to_project`: :class:`Xception65` keys -> ``"<layer>/<weight>:0"`` arrays."""
    bn = {v: k for k, v in _BN_KERAS.items()}
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        module, leaf = key.rsplit(".", 1)
        if leaf == "num_batches_tracked":
            continue
        module = re.sub(r"^middle_flow\.(\d+)", lambda m: f"middle_flow_unit_{int(m.group(1)) + 1}", module)
        layer = module.replace(".", "_").replace("_bn", "_BN")
        array = value.detach().cpu().numpy()
        if layer.endswith("_BN"):
            out[f"{layer}/{bn[leaf]}:0"] = array
        elif layer.endswith("_depthwise"):  # (in, 1, kh, kw) -> (kh, kw, in, 1)
            out[f"{layer}/depthwise_kernel:0"] = array.transpose(2, 3, 0, 1)
        else:  # (out, in, kh, kw) -> (kh, kw, in, out)
            out[f"{layer}/kernel:0"] = array.transpose(2, 3, 1, 0)
    return out


def infer_config(state: Mapping[str, torch.Tensor]) -> dict:
    """``in_channels``, ``widths`` and ``middle_blocks`` of the :class:`Xception65` that ``state`` (project keys)
    fits."""
    def out_channels(key: str) -> int:
        if key not in state:
            raise ConversionError(f"missing key {key!r}")
        return int(state[key].shape[0])

    middle = {int(m.group(1)) for k in state if (m := re.match(r"middle_flow\.(\d+)\.", k))}
    if "entry_flow_conv1_1.weight" not in state:
        raise ConversionError("missing key 'entry_flow_conv1_1.weight'")
    widths = (
        out_channels("entry_flow_conv1_1.weight"),
        out_channels("entry_flow_conv1_2.weight"),
        out_channels("entry_flow_block1.separable_conv3.pointwise.weight"),
        out_channels("entry_flow_block2.separable_conv3.pointwise.weight"),
        out_channels("entry_flow_block3.separable_conv3.pointwise.weight"),
        out_channels("exit_flow_block1.separable_conv3.pointwise.weight"),
        out_channels("exit_flow_block2.separable_conv1.pointwise.weight"),
        out_channels("exit_flow_block2.separable_conv3.pointwise.weight"),
    )
    return {
        "in_channels": int(state["entry_flow_conv1_1.weight"].shape[1]),
        "widths": widths,
        "middle_blocks": max(middle) + 1 if middle else 0,
    }


def _read(path: Path, source: str) -> Mapping:
    suffix = path.suffix.lower()
    if source == "keras":
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        if suffix in (".h5", ".hdf5"):
            try:
                import h5py
            except ImportError:
                raise ConversionError(
                    "reading a Keras .h5 file needs h5py (pip install h5py), or save it as .npz"
                ) from None
            weights = {}
            with h5py.File(path, "r") as f:
                group = f["model_weights"] if "model_weights" in f else f
                for layer in group.attrs.get("layer_names", []):
                    layer = layer.decode() if isinstance(layer, bytes) else layer
                    for name in group[layer].attrs.get("weight_names", []):
                        name = name.decode() if isinstance(name, bytes) else name
                        weights[name] = np.asarray(group[layer][name])
            return weights
        raise ConversionError(f"a Keras source must be .npz or .h5, got {suffix or 'no suffix'!r}")
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConversionError("reading .safetensors needs the safetensors package") from None
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"expected a state dict of tensors, got {type(state).__name__}")
    return state


def convert(src: str | Path, dst: str | Path, source: str = "timm") -> dict:
    """Convert ``src`` (``source``: ``"timm"`` or ``"keras"``) into ``dst`` in this project's key names, checked by
    loading it into an :class:`Xception65`. Returns the :func:`infer_config` of the weights and the tensor count.
    Raises ``ValueError`` (one line naming ``src``) for any problem."""
    src, dst = Path(src), Path(dst)
    if source not in ("timm", "keras"):
        raise ValueError(f"convert_xception: --source must be 'timm' or 'keras', got {source!r}")
    if not src.is_file():
        raise ValueError(f"convert_xception {str(src)!r}: no such file")
    try:
        raw = _read(src, source)
        state = timm_to_project(raw) if source == "timm" else keras_to_project(raw)
        config = infer_config(state)
        encoder = Xception65(config["in_channels"], config["widths"], config["middle_blocks"], keras_init=False)
        expected = encoder.state_dict()
        problem = state_dict_mismatch(expected, state)
        if problem is not None:
            kind, key = problem
            if kind == "shape":
                raise ConversionError(
                    f"key {key!r} has shape {tuple(state[key].shape)}, an Xception65 of {config} expects "
                    f"{tuple(expected[key].shape)}"
                )
            raise ConversionError(f"{kind} key {key!r} for an Xception65 of {config}")
        encoder.load_state_dict(state, strict=True)
    except ConversionError as e:
        raise ValueError(f"convert_xception {str(src)!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - an unreadable or cut-off file: one line naming it
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(
            f"convert_xception {str(src)!r}: cannot read it as {source} weights ({type(e).__name__}: {first})"
        ) from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        torch.save({k: v.contiguous() for k, v in state.items()}, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {**config, "tensors": len(state)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m networks.convert_xception", description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("src", type=Path, help="timm state dict (.pth/.pt/.bin/.safetensors) or Keras .npz/.h5")
    parser.add_argument("dst", type=Path, help="output state dict in this project's Xception65 key names")
    parser.add_argument("--source", choices=("timm", "keras"), default="timm", help="naming of src (default timm)")
    args = parser.parse_args(argv)
    try:
        info = convert(args.src, args.dst, args.source)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.dst} ({info['tensors']} tensors): FRCUNet(2, in_channels={info['in_channels']}, ..., "
        f"encoder='xception', xception_features={info['widths']}, middle_blocks={info['middle_blocks']}, "
        f"pretrained_encoder={str(args.dst)!r})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
