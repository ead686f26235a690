"""Frozen regression outputs: every network and preset, 2D and 3D, against ``tests/data/frozen/<case>.npz``.

The case table, the seeded weights and the input live in ``tests/regenerate_frozen.py`` (shared with the generator).
Weights come from a seeded generator and not from PyTorch's or MONAI's initialisers, so a library upgrade that
changes a default init leaves these values alone; any change of a forward computation (a residual scale, a sign, an
activation, a filter kernel, a concatenation order) moves them.

Why float64 and 1e-5: the networks run in float64, where a different BLAS, thread count or CPU changes the result by
about 1e-13 relative; 1e-5 of the output's largest magnitude is far above that noise and far below the effect of any
change to the computation (the mutations tried when the files were made moved the outputs by 1e-3 to 1e+1 relative).
The bicubic/trilinear skip of RRDBNet interpolates in float32 by design, still ~1e-7 relative.

A failing case says which case, the largest difference and how to regenerate. Regenerating is a deliberate act that
the commit message must explain (``tests/data/README.md``).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.regenerate_frozen import (
    CASES,
    FROZEN_DIR,
    REGENERATE_HINT,
    architecture,
    build,
    compute,
    forward,
    frozen_path,
    load_frozen,
    npz_bytes,
)

RTOL_OF_MAX = 1e-5


def _frozen(case):
    path = frozen_path(case)
    assert path.exists(), f"{case.name}: no frozen file {path}; {REGENERATE_HINT}"
    return load_frozen(path)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_frozen_output(case):
    """The output of the seeded network on the seeded input equals the frozen one to 1e-5 of its largest magnitude."""
    frozen = _frozen(case)
    assert str(frozen["spec"]) == case.spec(), (
        f"{case.name}: the case definition in tests/regenerate_frozen.py differs from the frozen file "
        f"(frozen {frozen['spec']}, now {case.spec()}); {REGENERATE_HINT}"
    )
    net = build(case)
    count, layout = architecture(net)
    assert count == int(frozen["param_count"]), (
        f"{case.name}: architecture changed: parameter count {count} != frozen {int(frozen['param_count'])}; "
        f"{REGENERATE_HINT}"
    )
    frozen_layout = str(frozen["architecture"]).split("\n")
    if layout != frozen_layout:
        first = next(
            (i for i, (a, b) in enumerate(zip(layout, frozen_layout)) if a != b), min(len(layout), len(frozen_layout))
        )
        now = layout[first] if first < len(layout) else "<end>"
        was = frozen_layout[first] if first < len(frozen_layout) else "<end>"
        pytest.fail(
            f"{case.name}: architecture changed: state-dict entry {first} is {now!r}, frozen {was!r} "
            f"({len(layout)} entries, frozen {len(frozen_layout)}); {REGENERATE_HINT}"
        )

    expected = frozen["output"]
    actual = forward(net, case)
    assert actual.shape == expected.shape, (
        f"{case.name}: output shape {actual.shape} != frozen {expected.shape}; {REGENERATE_HINT}"
    )
    assert np.isfinite(actual).all(), f"{case.name}: the output has non-finite values"
    scale = float(np.abs(expected).max())
    diff = float(np.abs(actual - expected).max())
    tolerance = RTOL_OF_MAX * scale
    assert diff <= tolerance, (
        f"{case.name}: output differs from the frozen value: max |diff| = {diff:.3g} > {tolerance:.3g} "
        f"(= {RTOL_OF_MAX:g} x max |frozen| {scale:.3g}; relative {diff / scale:.3g}); {REGENERATE_HINT}"
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_frozen_output_is_not_trivial(case):
    """A frozen file must not freeze a broken network: the output varies (std well above zero), at most a tenth of
    its entries share one value (no large dead-ReLU or constant region), and the items of a batch differ."""
    expected = _frozen(case)["output"]
    scale = float(np.abs(expected).max())
    assert scale > 0 and expected.std() > 1e-3 * scale, f"{case.name}: the frozen output is (nearly) constant"
    _, counts = np.unique(expected, return_counts=True)
    assert counts.max() <= max(1, expected.size // 10), (
        f"{case.name}: {counts.max()} of {expected.size} frozen outputs share one value"
    )
    if expected.shape[0] > 1:
        assert not np.allclose(expected[0], expected[1]), f"{case.name}: the batch items have the same output"


def test_every_frozen_file_has_a_case():
    """A case removed from the table must take its file with it (a stale file would silently stop being tested)."""
    names = {case.name for case in CASES}
    assert len(names) == len(CASES), "case names must be unique"
    stale = sorted(p.name for p in FROZEN_DIR.glob("*.npz") if p.stem not in names)
    assert not stale, f"frozen files without a case in tests/regenerate_frozen.py: {stale}; delete them"


def test_frozen_data_stays_small():
    """The frozen files together stay well under 1 MB."""
    total = sum(p.stat().st_size for p in FROZEN_DIR.glob("*.npz"))
    assert total < 1_000_000, f"tests/data/frozen holds {total:,} bytes"


@pytest.mark.parametrize("name", ["edu_2d_dog_concat", "hemf_2d"])
def test_regeneration_is_deterministic(name, tmp_path):
    """Two regenerations in one process give byte-identical archives (fixed seeds, fixed zip timestamps), so rerunning
    the script leaves the tree clean; the archive reads back to what was computed."""
    case = next(c for c in CASES if c.name == name)
    first, second = compute(case), compute(case)
    data = npz_bytes(first)
    assert data == npz_bytes(second)
    (tmp_path / "case.npz").write_bytes(data)
    loaded = load_frozen(tmp_path / "case.npz")
    assert sorted(loaded) == sorted(first)
    np.testing.assert_array_equal(loaded["output"], first["output"])
    assert int(loaded["param_count"]) == int(first["param_count"]) and str(loaded["spec"]) == str(first["spec"])
