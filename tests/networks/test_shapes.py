"""``networks.blocks.shapes``: the TorchScript-compatible input checks, eager and scripted, against Python itself."""

from __future__ import annotations

import pytest
import torch

from networks.blocks.shapes import divisible_spatial, shape_text, sizes_text

SIZES = [[5], [48, 32], [1, 1, 16, 16, 20], []]


@pytest.mark.parametrize("scripted", [False, True])
def test_sizes_text_prints_as_a_tuple(scripted):
    fn = torch.jit.script(sizes_text) if scripted else sizes_text
    for sizes in SIZES:
        assert fn(sizes) == str(tuple(sizes))


@pytest.mark.parametrize("scripted", [False, True])
def test_shape_text_and_divisible_spatial(scripted):
    text = torch.jit.script(shape_text) if scripted else shape_text
    divisible = torch.jit.script(divisible_spatial) if scripted else divisible_spatial
    x = torch.zeros(1, 2, 16, 32, 48)
    assert text(x) == "(1, 2, 16, 32, 48)"
    assert divisible(x, 3, 16) and not divisible(x, 3, 32) and not divisible(x, 2, 16)
    assert not divisible(torch.zeros(1, 2, 16, 20), 2, 8) and divisible(torch.zeros(1, 2, 16, 24), 2, 8)
