"""Network interpolation (ESRGAN, Wang et al. ECCVW 2018): blend a PSNR-oriented and a GAN-trained generator.

``theta = (1 - alpha) * theta_PSNR + alpha * theta_GAN`` for every floating-point tensor of the two state dicts, as
xinntao/ESRGAN's ``net_interp.py`` (alpha weights the GAN model: 0 gives the PSNR model, 1 the GAN model, values in
between trade fidelity for texture without retraining).

- Each blend is computed in float64 and rounded to the tensors' dtype; alpha 0 and 1 return exact copies.
- Integer and boolean tensors (BatchNorm's ``num_batches_tracked``) cannot be blended: they are copied from the model
  alpha weights more, the PSNR model for alpha < 0.5 and the GAN model from 0.5 on.
- The two files must hold the same keys with the same shapes and dtypes; otherwise a one-line ``ValueError`` names the
  file and the first bad key.
- Inputs are read by :func:`pipelines.io.weights.read_state_dict`: a plain state dict (a bundle's ``model.pt`` /
  ``model_final.pt``) or one under ``"generator"`` (the SR bundles' ``checkpoint.pt``), ``"network"``, ``"model"`` or
  ``"state_dict"``, DDP's ``module.`` prefix removed. The output is a plain state dict, which a bundle's
  ``CheckpointLoader`` (``load_dict`` ``{"model": ...}``) and ``--ckpt_path`` take as they take ``model.pt``; it is
  written to a temporary name and renamed when complete.

    python -m pipelines interpolate PSNR.pt GAN.pt --alpha 0.8 --out interp_08.pt

MONAI and ignite have no network interpolation; this module is that small missing piece.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from pipelines.io.atomic import atomic_path
from pipelines.io.weights import read_state_dict

__all__ = ["interpolate_state_dicts", "interpolate_files"]


def _blend(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * a + alpha * b`` in float64, rounded to ``a.dtype``; exact copies at alpha 0 and 1."""
    if alpha == 0.0:
        return a.clone()
    if alpha == 1.0:
        return b.clone()
    return ((1.0 - alpha) * a.double() + alpha * b.double()).to(a.dtype)


def interpolate_state_dicts(
    psnr: Mapping[str, torch.Tensor],
    gan: Mapping[str, torch.Tensor],
    alpha: float,
    psnr_name: str = "PSNR model",
    gan_name: str = "GAN model",
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * psnr + alpha * gan`` for every floating-point tensor, in the key order of ``psnr``.

    Integer and boolean tensors come from ``psnr`` when ``alpha < 0.5`` and from ``gan`` otherwise.

    Args:
        psnr: state dict of the PSNR-oriented generator (alpha 0).
        gan: state dict of the GAN-trained generator (alpha 1), same keys, shapes and dtypes.
        alpha: weight of ``gan``, in [0, 1].
        psnr_name: how errors name ``psnr`` (its file).
        gan_name: how errors name ``gan``.

    Raises:
        ValueError: ``alpha`` outside [0, 1], or a key, shape or dtype that differs (the first one is named).
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (0: {psnr_name}, 1: {gan_name}), got {alpha:g}")
    missing = next((k for k in psnr if k not in gan), None)
    if missing is not None:
        raise ValueError(f"{gan_name}: has no key {missing!r}, which {psnr_name} has (not the same network)")
    extra = next((k for k in gan if k not in psnr), None)
    if extra is not None:
        raise ValueError(f"{gan_name}: key {extra!r} is not in {psnr_name} (not the same network)")
    out: dict[str, torch.Tensor] = {}
    for key, a in psnr.items():
        b = gan[key]
        if a.shape != b.shape:
            raise ValueError(f"{gan_name}: {key!r} has shape {tuple(b.shape)}, {psnr_name} {tuple(a.shape)}")
        if a.dtype != b.dtype:
            raise ValueError(f"{gan_name}: {key!r} has dtype {b.dtype}, {psnr_name} {a.dtype}")
        if a.is_floating_point():
            out[key] = _blend(a, b, alpha)
        else:  # integer / boolean buffers: from the model alpha weights more
            out[key] = (a if alpha < 0.5 else b).clone()
    return out


def interpolate_files(
    psnr_path: str | os.PathLike, gan_path: str | os.PathLike, alpha: float, out_path: str | os.PathLike
) -> Path:
    """Blend the generators of ``psnr_path`` and ``gan_path`` (:func:`interpolate_state_dicts`) and write the plain
    state dict to ``out_path`` atomically; returns ``out_path``.

    Raises:
        FileNotFoundError: an input file does not exist.
        ValueError: an unreadable input, mismatched networks, or ``alpha`` outside [0, 1].
    """
    psnr = read_state_dict(psnr_path)
    gan = read_state_dict(gan_path)
    blended = interpolate_state_dicts(psnr, gan, alpha, psnr_name=str(psnr_path), gan_name=str(gan_path))
    out = Path(out_path)
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; --out names the file to write")
    with atomic_path(out) as tmp:
        torch.save(blended, tmp)
    return out
