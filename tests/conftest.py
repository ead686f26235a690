"""Shared fixtures: tiny synthetic data sets written once per test session, and the lung bundle trained once."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LUNG_BUNDLE = REPO / "bundles" / "lung_nodule_ct_edu_segmentation"

# the smallest configuration that still runs every piece of the lung bundle
TINY_LUNG = {"features": [4, 8, 16, 32, 64], "pixdim": [2.0, 2.0, 3.0], "patch_size": [32, 32, 16], "sw_batch_size": 2,
             "num_workers": 0}
TINY_LUNG_TRAIN = {"num_samples": 1, "batch_size": 2, "max_epochs": 1}

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def luna16_tiny(tmp_path_factory) -> tuple[Path, list]:
    """Four small synthetic LUNA16 scans (one or more with a flipped direction matrix)."""
    from pipelines.synth.luna16 import write_luna16

    root = tmp_path_factory.mktemp("luna16")
    scans = write_luna16(root, cases=4, seed=3, fov_mm=56.0, length_mm=40.0, flip_fraction=0.5)
    assert any(s.flip != "none" for s in scans)
    return root, scans


@pytest.fixture(scope="session")
def tiny_lung_bundle(tmp_path_factory) -> Path:
    """A copy of the lung bundle with the TINY_LUNG configuration written into its configs (untrained)."""
    from pipelines.bundle import derive_bundle

    return derive_bundle(LUNG_BUNDLE, tmp_path_factory.mktemp("bundles") / "lung", TINY_LUNG, TINY_LUNG_TRAIN)


@pytest.fixture(scope="session")
def trained_lung_bundle(tiny_lung_bundle, luna16_tiny) -> Path:
    """The tiny lung bundle trained for one epoch by ``ConfigWorkflow`` (train, check_properties, run, finalize)."""
    from monai.bundle import ConfigWorkflow

    root, _ = luna16_tiny
    configs = tiny_lung_bundle / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "train.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="train",
        bundle_root=str(tiny_lung_bundle),
        dataset_dir=str(root),
    )
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    workflow.run()
    workflow.finalize()
    return tiny_lung_bundle
