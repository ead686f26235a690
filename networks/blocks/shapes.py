"""Input-shape checks that TorchScript can compile, shared by the networks' ``forward`` methods.

``any(s % d for s in x.shape[2:])`` and ``tuple(x.shape)`` are Python-only (a generator, a tuple of unknown length);
these helpers say the same with loops and lists, so a scripted network refuses a bad input with the eager message.
"""

from __future__ import annotations

import torch

__all__ = ["divisible_spatial", "shape_text", "sizes_text"]


def divisible_spatial(x: torch.Tensor, spatial_dims: int, divisor: int) -> bool:
    """Whether ``x`` is ``(B, C, *spatial)`` with ``spatial_dims`` spatial axes, each a multiple of ``divisor``."""
    if x.ndim != spatial_dims + 2:
        return False
    for size in x.shape[2:]:
        if size % divisor != 0:
            return False
    return True


def shape_text(x: torch.Tensor) -> str:
    """``x``'s shape written as ``tuple(x.shape)`` prints it, e.g. ``"(1, 1, 16, 16, 20)"``."""
    return sizes_text(list(x.shape))


def sizes_text(sizes: list[int]) -> str:
    """A list of sizes written as Python prints the tuple: ``[48, 32] -> "(48, 32)"``, ``[5] -> "(5,)"``."""
    text = [str(s) for s in sizes]
    return "(" + ", ".join(text) + ("," if len(text) == 1 else "") + ")"
