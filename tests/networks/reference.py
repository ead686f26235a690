"""NumPy references shared by the network tests (written out, never calling the code under test)."""

from __future__ import annotations

import numpy as np


def np_opencv_sigma(k: int) -> float:
    """OpenCV's default sigma of a k-tap Gaussian: 0.3 * ((k - 1) / 2 - 1) + 0.8."""
    return 0.3 * ((k - 1) / 2 - 1) + 0.8


def np_gaussian(k: int, sigma: float, dims: int) -> np.ndarray:
    """exp(-x^2 / (2 sigma^2)) at the taps x = -(k-1)/2 .. (k-1)/2, normalised, outer product over ``dims`` axes."""
    x = np.arange(k) - (k - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    out = g
    for _ in range(dims - 1):
        out = np.multiply.outer(out, g)
    return out
