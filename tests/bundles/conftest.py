"""Fixtures of the BraTS and ISIC FRCU-Net bundles and of HEMF.

The tiny data sets and the bundles trained once per session (``brats_tiny``, ``tiny_brats_bundle``,
``trained_brats_bundle``, ``isic_tiny``, ``tiny_isic_bundle``, ``trained_isic_bundle``, ``isic_cls_tiny``,
``tiny_hemf_bundle``, ``trained_hemf_bundle``, and the SR ones) are defined in ``tests/conftest.py``, so that tests
outside this folder share the same session copies; their configurations are importable from here as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import (  # re-exported: tests import these names from tests.bundles.conftest
    BRATS_BUNDLE,
    HEMF_BUNDLE,
    ISIC_BUNDLE,
    REPO,
    TINY_BRATS,
    TINY_BRATS_TRAIN,
    TINY_HEMF,
    TINY_HEMF_TRAIN,
    TINY_ISIC,
    TINY_ISIC_TRAIN,
    train_bundle,
)

__all__ = ["BRATS_BUNDLE", "HEMF_BUNDLE", "ISIC_BUNDLE", "REPO", "TINY_BRATS", "TINY_BRATS_TRAIN", "TINY_HEMF",
           "TINY_HEMF_TRAIN", "TINY_ISIC", "TINY_ISIC_TRAIN", "brats2023_tiny"]


def _train(bundle: Path, dataset_dir: Path) -> Path:
    return train_bundle(bundle, dataset_dir)


@pytest.fixture(scope="session")
def brats2023_tiny(tmp_path_factory) -> tuple[Path, list]:
    """Two small synthetic cases in the BraTS 2023 naming (ET = 3)."""
    from pipelines.synth.brats import write_brats

    root = tmp_path_factory.mktemp("brats2023")
    return root, write_brats(root, cases=2, naming="2023", seed=6, shape=(48, 48, 32))
