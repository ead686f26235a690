"""Regenerate the frozen network outputs in ``tests/data/frozen`` (run on purpose only; see ``tests/data/README.md``).

    .venv/bin/python -m tests.regenerate_frozen            # rewrite every file
    .venv/bin/python -m tests.regenerate_frozen --check    # rewrite nothing; exit 1 unless every file is byte-identical
    .venv/bin/python -m tests.regenerate_frozen unet_2d    # rewrite only the named cases

This module is also the single case table of ``tests/networks/test_frozen_outputs.py``: each :class:`Case` names a
constructor, its keyword arguments and an input shape. For every case the network is built after
``torch.manual_seed(seed)`` and then every parameter and every BatchNorm running statistic is overwritten from a
``torch.Generator`` seeded with the case's seed (:func:`reinitialise`), so the frozen value does not depend on
PyTorch's or MONAI's default initialisers: an upgrade that changes a default init leaves it alone, while a change of the
forward computation (or of a fixed filter kernel, which is a buffer computed by the constructor) changes it.
The network runs in float64 in ``eval()`` mode (dropout and drop-path off, BatchNorm on its fixed running statistics)
under ``torch.no_grad()``.

Each ``<case>.npz`` stores the output, the parameter count, the parameter/buffer names and shapes of the state dict
and the case definition. The input is not stored: it is drawn again from the seed. The files are written with fixed zip
timestamps, so regenerating twice on one machine gives byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import sys
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from networks import (
    EDU,
    HEMF,
    FRCUNet,
    ResUNet,
    ResUNetPlusPlus,
    RRDBNet,
    UNet,
    UNetPlusPlus,
    VGGStyleDiscriminator,
)
from networks.esrgan import esrgan, se_esrgan
from networks.hemf import hemf_3d_light

FROZEN_DIR = Path(__file__).resolve().parent / "data" / "frozen"
FORMAT = 1
REGENERATE_HINT = (
    "if the change is intended, regenerate with `.venv/bin/python -m tests.regenerate_frozen` "
    "and say why in the commit message (tests/data/README.md)"
)


@dataclass(frozen=True)
class Case:
    """One frozen case: ``factory(**kwargs)`` applied to a seeded float64 input of ``input_shape``."""

    name: str
    factory: Callable[..., nn.Module]
    kwargs: dict = field(hash=False)
    input_shape: tuple[int, ...]

    @property
    def seed(self) -> int:
        """A seed fixed by the case name alone (independent of the order of the table)."""
        return zlib.crc32(self.name.encode())

    def spec(self) -> str:
        """The case definition as canonical JSON, stored in the file to detect a table edit without regeneration."""
        return json.dumps(
            {
                "format": FORMAT,
                "factory": f"{self.factory.__module__}.{self.factory.__qualname__}",
                "kwargs": self.kwargs,
                "input_shape": list(self.input_shape),
                "seed": self.seed,
            },
            sort_keys=True,
        )


EDU_TINY = {"in_channels": 1, "out_channels": 2, "features": (4, 8, 8), "dense_layers": 2}
FRCU_TINY = {"in_channels": 1, "out_channels": 2, "features": (4, 8, 8), "freq_channels": 8,
             "gauss_kernel_sizes": (3, 5), "se_reduction": 4}
RRDB_TINY = {"nf": 8, "gc": 4, "nb": 1}
DISC_TINY = {"in_channels": 1, "base_features": 4, "channel_mults": (1, 2), "fc_hidden": 8}
HEMF_TINY = {"widths": (8, 16), "elf_depths": 1, "egf_depths": 1, "num_heads": 2, "memory_size": 4, "ca_ratio": 4,
             "sa_kernel_size": 3, "lepe_kernel_size": 3}
SEG = {"in_channels": 1, "out_channels": 2, "base_filters": 2}
SEG4 = {**SEG, "base_filters": 4}  # U-Net and UNet++ end in plain ReLU layers: 2 channels would leave many dead

CASES: list[Case] = [
    # E-DU: both MDE enhancements, both fusions, and the plain dense U-Net (mde=False)
    Case("edu_2d_dog_concat", EDU, {"spatial_dims": 2, **EDU_TINY}, (1, 1, 8, 12)),
    Case("edu_3d_dog_concat", EDU, {"spatial_dims": 3, **EDU_TINY}, (1, 1, 8, 8, 4)),
    Case("edu_2d_laplacian_concat", EDU, {"spatial_dims": 2, **EDU_TINY, "mde_enhance": "laplacian"}, (1, 1, 8, 12)),
    Case("edu_3d_laplacian_concat", EDU, {"spatial_dims": 3, **EDU_TINY, "mde_enhance": "laplacian"}, (1, 1, 8, 8, 4)),
    Case("edu_2d_dog_sum", EDU, {"spatial_dims": 2, **EDU_TINY, "mde_fusion": "sum"}, (1, 1, 8, 12)),
    Case("edu_2d_laplacian_sum", EDU, {"spatial_dims": 2, **EDU_TINY, "mde_enhance": "laplacian", "mde_fusion": "sum"},
         (1, 1, 8, 12)),
    Case("edu_2d_alpha_scales", EDU, {"spatial_dims": 2, **EDU_TINY, "mde_alpha": 0.5, "mde_scales": (3, 5)},
         (1, 1, 8, 12)),
    Case("edu_2d_no_mde", EDU, {"spatial_dims": 2, **EDU_TINY, "mde": False}, (1, 1, 8, 12)),
    Case("edu_3d_no_mde", EDU, {"spatial_dims": 3, **EDU_TINY, "mde": False}, (1, 1, 8, 8, 4)),
    # E-DU's second reading: the UNet++-style nested skip pathway (four levels: nodes x0_1, x1_1, x0_2), of dense
    # blocks and with MDE in their place (concat fusion; sum fusion, projected to the level's width)
    Case("edu_2d_dense", EDU, {"spatial_dims": 2, **EDU_TINY, "features": (4, 8, 8, 8), "skip": "dense"},
         (1, 1, 8, 16)),
    Case("edu_3d_dense", EDU, {"spatial_dims": 3, **EDU_TINY, "features": (4, 8, 8, 8), "skip": "dense"},
         (1, 1, 8, 8, 8)),
    Case("edu_2d_dense_mde", EDU, {"spatial_dims": 2, **EDU_TINY, "features": (4, 8, 8, 8), "skip": "dense_mde"},
         (1, 1, 8, 16)),
    Case("edu_3d_dense_mde", EDU, {"spatial_dims": 3, **EDU_TINY, "features": (4, 8, 8, 8), "skip": "dense_mde"},
         (1, 1, 8, 8, 8)),
    Case("edu_2d_dense_mde_sum", EDU,
         {"spatial_dims": 2, **EDU_TINY, "features": (4, 8, 8, 8), "skip": "dense_mde", "mde_fusion": "sum"},
         (1, 1, 8, 16)),
    # FRCU-Net: zero / reflect / replicate padding of the DoG stack, other sigmas and three Gaussians, instance norm
    Case("frcunet_2d", FRCUNet, {"spatial_dims": 2, **FRCU_TINY}, (1, 1, 16, 16)),
    Case("frcunet_3d", FRCUNet, {"spatial_dims": 3, **FRCU_TINY}, (1, 1, 8, 8, 8)),
    Case("frcunet_2d_reflect", FRCUNet, {"spatial_dims": 2, **FRCU_TINY, "padding_mode": "reflect"}, (1, 1, 16, 16)),
    Case("frcunet_3d_replicate", FRCUNet, {"spatial_dims": 3, **FRCU_TINY, "padding_mode": "replicate"},
         (1, 1, 16, 16, 8)),
    Case("frcunet_2d_sigmas", FRCUNet,
         {"spatial_dims": 2, **FRCU_TINY, "gauss_kernel_sizes": (3, 5, 7), "sigma0": 1.0, "sigma_step": 1.5},
         (1, 1, 16, 16)),
    Case("frcunet_2d_instance_bias", FRCUNet,
         {"spatial_dims": 2, **FRCU_TINY, "norm": ("instance", {"affine": True}), "bias": True}, (1, 1, 16, 16)),
    # the authors' network: Xception-65 encoder (reduced widths, one middle block), reduction, FR, 3-skip decoder
    Case("frcunet_2d_xception", FRCUNet,
         {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "encoder": "xception",
          "xception_features": (2, 4, 4, 6, 8, 10, 12, 14), "middle_blocks": 1, "reduction_features": (8,),
          "freq_channels": 8, "gauss_kernel_sizes": (3, 5), "se_reduction": 4, "decoder_features": (8, 8, 4, 4, 4)},
         (2, 3, 32, 32)),
    # RRDBNet and its presets: nearest+conv / pixel shuffle, SE block, interpolation skip, per-axis scales, x1 and x4
    Case("rrdbnet_2d_x2", RRDBNet, {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "scale": 2, **RRDB_TINY},
         (1, 1, 6, 5)),
    Case("rrdbnet_2d_x1", RRDBNet, {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "scale": 1, **RRDB_TINY},
         (1, 1, 6, 5)),
    Case("rrdbnet_2d_se_bias", RRDBNet,
         {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "scale": 2, "se_after_upsample": True,
          "se_ratio": 4, "se_bias": True, **RRDB_TINY}, (1, 1, 6, 5)),
    Case("rrdbnet_2d_bicubic_skip", RRDBNet,
         {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "scale": 2, "interpolation_skip": "auto",
          **RRDB_TINY}, (1, 1, 6, 5)),
    Case("rrdbnet_3d_trilinear_skip", RRDBNet,
         {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "scale": (1, 1, 2), "interpolation_skip": "auto",
          **RRDB_TINY}, (1, 1, 4, 5, 3)),
    Case("rrdbnet_3d_nearest_skip", RRDBNet,
         {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "scale": 2, "interpolation_skip": "nearest",
          **RRDB_TINY}, (1, 1, 3, 4, 3)),
    Case("esrgan_2d_x4", esrgan, {"spatial_dims": 2, "in_channels": 3, "out_channels": 3, "scale": 4, **RRDB_TINY},
         (1, 3, 4, 3)),
    Case("esrgan_3d_slice_x4", esrgan,
         {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "scale": (1, 1, 4), **RRDB_TINY}, (1, 1, 4, 3, 2)),
    Case("se_esrgan_2d_x2", se_esrgan,
         {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "scale": 2, "se_ratio": 4, **RRDB_TINY},
         (1, 1, 6, 5)),
    Case("se_esrgan_3d_x2", se_esrgan,
         {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "scale": 2, "se_ratio": 4, **RRDB_TINY},
         (1, 1, 3, 4, 3)),
    Case("se_esrgan_3d_anisotropic", se_esrgan,
         {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "scale": (2, 2, 4), "se_ratio": 4, **RRDB_TINY},
         (1, 1, 3, 2, 2)),
    # VGG-style discriminator: fc, patch (Uneshance layout) and gap heads
    Case("disc_2d_fc", VGGStyleDiscriminator, {"spatial_dims": 2, **DISC_TINY, "in_shape": 8}, (3, 1, 8, 8)),
    Case("disc_3d_fc", VGGStyleDiscriminator, {"spatial_dims": 3, **DISC_TINY, "in_shape": (8, 8, 4)},
         (3, 1, 8, 8, 4)),
    Case("disc_2d_patch", VGGStyleDiscriminator,
         {"spatial_dims": 2, **DISC_TINY, "head": "patch", "down_kernel_size": 3, "bias": True}, (2, 1, 16, 12)),
    Case("disc_3d_patch", VGGStyleDiscriminator, {"spatial_dims": 3, **DISC_TINY, "head": "patch"}, (2, 1, 8, 8, 12)),
    Case("disc_2d_gap", VGGStyleDiscriminator, {"spatial_dims": 2, **DISC_TINY, "head": "gap"}, (3, 1, 8, 12)),
    Case("disc_3d_gap", VGGStyleDiscriminator, {"spatial_dims": 3, **DISC_TINY, "head": "gap"}, (3, 1, 8, 4, 8)),
    # HEMF: 2D, 3D, the figure's layout (depthwise SIRMLP, only the used fusion layers), the 3D light preset
    Case("hemf_2d", HEMF, {"spatial_dims": 2, "in_channels": 1, "num_classes": 3, **HEMF_TINY}, (2, 1, 16, 24)),
    Case("hemf_3d", HEMF, {"spatial_dims": 3, "in_channels": 1, "num_classes": 3, **HEMF_TINY}, (2, 1, 16, 24, 16)),
    Case("hemf_2d_figure", HEMF,
         {"spatial_dims": 2, "in_channels": 1, "num_classes": 3, **HEMF_TINY, "sirmlp_depthwise": True,
          "reference_fusion_layers": False}, (2, 1, 24, 16)),
    Case("hemf_3d_light", hemf_3d_light,
         {"in_channels": 1, "num_classes": 3, **{k: v for k, v in HEMF_TINY.items() if not k.endswith("_depths")}},
         (2, 1, 16, 16, 24)),
    # the teaching U-Net family
    Case("unet_2d", UNet, {"spatial_dims": 2, **SEG4}, (1, 1, 16, 32)),
    Case("unet_3d", UNet, {"spatial_dims": 3, **SEG4}, (1, 1, 16, 16, 16)),
    Case("unet_2d_batchnorm", UNet, {"spatial_dims": 2, **SEG4, "norm": "batch"}, (1, 1, 16, 32)),
    Case("unetpp_2d", UNetPlusPlus, {"spatial_dims": 2, **SEG4}, (1, 1, 16, 32)),
    Case("unetpp_3d", UNetPlusPlus, {"spatial_dims": 3, **SEG4}, (1, 1, 16, 16, 16)),
    Case("unetpp_2d_uniform", UNetPlusPlus, {"spatial_dims": 2, **SEG4, "x03_quirk": False, "norm": "batch"},
         (1, 1, 16, 32)),
    # UNet++ deep supervision in eval mode: the mean of the four heads, the pruned fast mode, the softmax average
    Case("unetpp_2d_ds_accurate", UNetPlusPlus, {"spatial_dims": 2, **SEG4, "deep_supervision": True},
         (1, 1, 16, 32)),
    Case("unetpp_2d_ds_fast", UNetPlusPlus,
         {"spatial_dims": 2, **SEG4, "deep_supervision": True, "ds_mode": "fast", "ds_head": 2}, (1, 1, 16, 32)),
    Case("unetpp_3d_ds_accurate_softmax", UNetPlusPlus,
         {"spatial_dims": 3, **SEG4, "deep_supervision": True, "ds_average": "softmax", "norm": "batch"},
         (1, 1, 16, 16, 16)),
    Case("resunet_2d", ResUNet, {"spatial_dims": 2, **SEG}, (1, 1, 16, 32)),
    Case("resunet_3d", ResUNet, {"spatial_dims": 3, **SEG}, (1, 1, 16, 16, 16)),
    Case("resunet_2d_no_norm", ResUNet, {"spatial_dims": 2, **SEG, "norm": None}, (1, 1, 16, 32)),
    Case("resunetpp_2d", ResUNetPlusPlus, {"spatial_dims": 2, **SEG}, (1, 1, 16, 24)),
    Case("resunetpp_3d", ResUNetPlusPlus, {"spatial_dims": 3, **SEG, "rate_scale": 0.25}, (1, 1, 16, 16, 8)),
    Case("resunetpp_2d_sigmoid_rates", ResUNetPlusPlus,
         {"spatial_dims": 2, **SEG, "attention_sigmoid": True, "rate_scale": 0.25}, (1, 1, 16, 24)),
]


def reinitialise(net: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter and BatchNorm running statistic from ``torch.Generator().manual_seed(seed)``.

    In ``named_parameters()`` order: weights of two or more dimensions (convolutions, transposed convolutions, linear
    layers) get ``N(0, 2 / fan_in)`` (He scaling, so that activations stay of order one through ReLU-like layers);
    one-dimensional weights (norm scales) get ``1 + 0.1 N(0, 1)``; biases and any other parameter ``0.1 N(0, 1)``. Then
    in ``named_buffers()`` order: BatchNorm ``running_mean`` ``0.1 N(0, 1)``, ``running_var`` ``U(0.5, 1.5)``,
    ``num_batches_tracked`` 0. Other buffers (the fixed Gaussian/Laplace kernels, the retention angles and decays) are
    computed by the constructors from their arguments and are left as they are: they are part of the computation.
    """
    g = torch.Generator().manual_seed(seed)
    params = dict(net.named_parameters())
    transposed = {
        f"{prefix}.weight" if prefix else "weight": m
        for prefix, m in net.named_modules()
        if isinstance(m, nn.modules.conv._ConvTransposeNd)
    }
    with torch.no_grad():
        for name, p in params.items():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.ndim >= 2:
                if name in transposed:  # (in, out / groups, *k): each output sums in * prod(k / stride) taps
                    m = transposed[name]
                    fan_in = p.shape[0] * math.prod(p.shape[2:]) / math.prod(m.stride)
                else:  # (out, in / groups, *k)
                    fan_in = math.prod(p.shape[1:])
                value = noise * math.sqrt(2.0 / fan_in)
            elif name.rsplit(".", 1)[-1] == "weight":
                value = 1.0 + 0.1 * noise
            else:
                value = 0.1 * noise
            p.copy_(value)
        for name, b in net.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_mean":
                b.copy_(0.1 * torch.randn(b.shape, generator=g, dtype=torch.float64))
            elif leaf == "running_var":
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=torch.float64))
            elif leaf == "num_batches_tracked":
                b.zero_()
    return net


def build(case: Case) -> nn.Module:
    """The case's network: seeded construction, :func:`reinitialise`, float64, ``eval()``."""
    torch.manual_seed(case.seed)
    net = case.factory(**case.kwargs)
    return reinitialise(net, case.seed).double().eval()


def make_input(case: Case) -> torch.Tensor:
    """The case's float64 input, ``N(0, 1)`` from a generator seeded by the case (not stored in the file)."""
    g = torch.Generator().manual_seed(case.seed + 1)
    return torch.randn(case.input_shape, generator=g, dtype=torch.float64)


def forward(net: nn.Module, case: Case) -> np.ndarray:
    """The network's output on the case's input, as a float64 NumPy array."""
    with torch.no_grad():
        return net(make_input(case)).numpy().astype(np.float64)


def architecture(net: nn.Module) -> tuple[int, list[str]]:
    """``(parameter count, ["<state-dict key> <shape>", ...])``."""
    count = sum(p.numel() for p in net.parameters())
    return count, [f"{k} {tuple(v.shape)}" for k, v in net.state_dict().items()]


def frozen_path(case: Case) -> Path:
    return FROZEN_DIR / f"{case.name}.npz"


def compute(case: Case) -> dict[str, np.ndarray]:
    """Everything a frozen file holds for ``case``."""
    net = build(case)
    count, layout = architecture(net)
    text = "\n".join(layout)
    return {
        "output": forward(net, case),
        "param_count": np.int64(count),
        "architecture": np.str_(text),
        "architecture_sha256": np.str_(hashlib.sha256(text.encode()).hexdigest()),
        "spec": np.str_(case.spec()),
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` archive (readable by ``np.load``) with fixed member order and timestamps: deterministic bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue(), compresslevel=9)
    return buffer.getvalue()


def load_frozen(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="case names to regenerate (default: all)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 unless all files are identical")
    args = parser.parse_args(argv)
    by_name = {case.name: case for case in CASES}
    unknown = sorted(set(args.cases) - set(by_name))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {sorted(by_name)}")
    selected = [by_name[n] for n in args.cases] if args.cases else CASES
    torch.set_num_threads(1)  # one summation order for the whole run
    FROZEN_DIR.mkdir(parents=True, exist_ok=True)
    differing = []
    for case in selected:
        data = npz_bytes(compute(case))
        path = frozen_path(case)
        same = path.exists() and path.read_bytes() == data
        if args.check:
            differing += [] if same else [case.name]
            print(f"{'same' if same else 'DIFFERENT':9s} {path.name}")
        else:
            path.write_bytes(data)
            print(f"{'unchanged' if same else 'written':9s} {path.name} ({len(data):,} bytes)")
    stale = sorted(p.name for p in FROZEN_DIR.glob("*.npz") if p.stem not in by_name)
    if stale:
        print(f"stale files without a case (delete them): {stale}")
    return 1 if (args.check and differing) or stale else 0


if __name__ == "__main__":
    sys.exit(main())
