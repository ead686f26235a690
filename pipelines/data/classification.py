"""What every image-classification layout shares: stratified splits, cheap image checks, class weights.

A classification datalist is a dict::

    {
        "classes":    ["MEL", "NV", ...],                      # label i is classes[i]
        "training":   [{"image": "/abs/path.jpg", "label": 1, "id": "ISIC_0024306"}, ...],
        "validation": [...],
        "test":       [...],
    }

The layouts (``pipelines.data.isic_cls``, ``pipelines.data.image_folder``) build the list of items and call
:func:`stratified_split`; bundle configs index the result (``@datalist['training']``).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "SPLITS",
    "class_counts",
    "class_weights",
    "stratified_split",
    "verify_image",
]

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")


def verify_image(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``path`` if PIL cannot identify it or its data is truncated or corrupt.

    ``Image.verify()`` reads the header and checks the structure without decoding every pixel (a few milliseconds for a
    dermoscopy JPEG), so a whole data set can be checked before a long training run rather than failing in epoch 37.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except FileNotFoundError:
        raise ValueError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e


def _split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Sizes of the splits of ``n`` items: ``round(f * n)`` for validation and test, at least one each when the
    fraction is positive and the class has enough items, the rest to training."""
    sizes = [0] * len(fractions)
    for i in range(1, len(fractions)):
        if fractions[i] > 0:
            sizes[i] = max(1, int(math.floor(fractions[i] * n + 0.5)))
    limit = max(0, n - (1 if fractions[0] > 0 else 0))  # training keeps at least one image when it can
    while sum(sizes[1:]) > limit:
        # take from the largest held-out split first (the one with the smaller fraction on a tie)
        i = max(range(1, len(sizes)), key=lambda j: (sizes[j], -fractions[j]))
        sizes[i] -= 1
    sizes[0] = n - sum(sizes[1:])
    return sizes


def stratified_split(
    items: Sequence[dict],
    class_names: Sequence[str],
    *,
    fractions: Sequence[float] = (0.6, 0.1, 0.3),
    seed: int = 123,
    key: str = "id",
    strict: bool = True,
) -> dict[str, list[dict]]:
    """Split ``items`` into training / validation / test with the same class proportions in each.

    Per class, the items are sorted by ``item[key]`` and shuffled with ``numpy.random.default_rng(seed)``, then the
    first ``round(fractions[1] * n)`` go to validation, the next ``round(fractions[2] * n)`` to test and the rest to
    training, so the same files and seed always give the same split, whatever order the files were listed in.
    A held-out split with a positive fraction gets at least one image of a class that has enough images.

    A class with no image in a split whose fraction is positive makes the split's metrics for that class undefined
    (its AUC, recall and F1 cannot be computed): with ``strict=True`` (default) this raises ``ValueError`` naming the
    class and its count; with ``strict=False`` it is logged as a warning and the split goes ahead.

    Args:
        items: dicts with an integer ``"label"`` and a unique ``key``.
        class_names: the names of labels 0..K-1.
        fractions: training, validation, test fractions; they must sum to 1 (a 0 leaves that split empty).
        seed: random seed of the shuffle (123 is the reference code's).
        key: the field that identifies an item (sorting by it makes the split independent of listing order).
        strict: raise (``True``) or warn (``False``) when a class has no image in a split.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers (training, validation, test) summing to 1, "
                         f"got {fractions}")
    by_class: dict[int, list[dict]] = {k: [] for k in range(len(class_names))}
    for item in items:
        label = item["label"]
        if label not in by_class:
            raise ValueError(f"{item.get('image', item)}: label {label} is outside 0..{len(class_names) - 1}")
        by_class[label].append(item)
    rng = np.random.default_rng(seed)
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    problems = []
    for label, members in by_class.items():
        members = sorted(members, key=lambda m: str(m[key]))
        order = rng.permutation(len(members))
        members = [members[i] for i in order]
        n_train, n_val, n_test = _split_sizes(len(members), fractions)
        parts = {"validation": members[:n_val], "test": members[n_val:n_val + n_test],
                 "training": members[n_val + n_test:]}
        for split, fraction in zip(SPLITS, fractions):
            splits[split].extend(parts[split])
            if fraction > 0 and not parts[split]:
                problems.append(f"class {class_names[label]!r} ({len(members)} images in all) has none in {split}")
    if problems:
        message = ("stratified split: " + "; ".join(problems)
                   + " (add images of these classes, change the fractions, or pass strict=False)")
        if strict:
            raise ValueError(message)
        logger.warning(message)
    for split in SPLITS:  # a stable order for the data loaders and the reports
        splits[split].sort(key=lambda m: str(m[key]))
    return splits


def class_counts(items: Sequence[dict], num_classes: int) -> list[int]:
    """Number of items of each label 0..num_classes-1."""
    counts = Counter(item["label"] for item in items)
    return [counts.get(k, 0) for k in range(num_classes)]


def class_weights(items: Sequence[dict], num_classes: int, *, power: float = 1.0) -> list[float]:
    """Cross-entropy weights from the class frequencies of ``items`` (the training split).

    ``w_k = (n / (K * n_k)) ** power``: ``power=1`` is the "balanced" weighting (every class contributes the same total
    weight to the loss, as if the classes were balanced), ``power=0`` is unweighted, ``0.5`` is in between. A class
    with no training item gets weight 0 (it cannot contribute to the loss anyway) and a warning.
    """
    counts = class_counts(items, num_classes)
    n = sum(counts)
    if n == 0:
        raise ValueError("class_weights: no training items")
    weights = []
    for name, count in enumerate(counts):
        if count == 0:
            logger.warning("class_weights: class %d has no training item, its weight is 0", name)
            weights.append(0.0)
        else:
            weights.append(float((n / (num_classes * count)) ** power))
    return weights


def relative(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to ``root`` when it lies inside it, else the path as given (for error messages and ids)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
