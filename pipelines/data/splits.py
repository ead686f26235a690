"""Deterministic train/validation splits."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

__all__ = ["split_by_hash"]


def split_by_hash(
    items: Sequence[dict], *, key: str, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Split ``items`` by a hash of ``item[key]`` and ``seed``: the same inputs always give the same split.

    The ``ceil(val_fraction * n)`` items with the smallest hashes go to validation (at least one when there are two
    or more items and ``val_fraction > 0``); both lists keep the input order.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = min(math.ceil(val_fraction * len(items)), len(items) - 1) if val_fraction > 0 and len(items) > 1 else 0

    def digest(item: dict) -> str:
        return hashlib.sha256(f"{seed}:{item[key]}".encode()).hexdigest()

    val_keys = {item[key] for item in sorted(items, key=digest)[:n_val]}
    return [i for i in items if i[key] not in val_keys], [i for i in items if i[key] in val_keys]
