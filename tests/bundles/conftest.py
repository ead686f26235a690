"""Fixtures of the BraTS and ISIC FRCU-Net bundles: tiny synthetic data sets and bundles trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

BRATS_BUNDLE = REPO / "bundles" / "brats_mri_frcunet_segmentation"
ISIC_BUNDLE = REPO / "bundles" / "isic_skin_frcunet_segmentation"

# the smallest configurations that still run every piece of the bundles
TINY_BRATS = {"features": [4, 8, 16, 32, 64], "freq_channels": 8, "gauss_kernel_sizes": [3],
              "patch_size": [32, 32, 32], "sw_batch_size": 2, "num_workers": 0}
TINY_BRATS_TRAIN = {"num_samples": 1, "batch_size": 2, "max_epochs": 1, "learning_rate": 0.003}
TINY_ISIC = {"features": [4, 8, 16, 32, 64], "freq_channels": 8, "gauss_kernel_sizes": [3, 5],
             "spatial_size": [64, 64], "num_workers": 0}
TINY_ISIC_TRAIN = {"batch_size": 2, "max_epochs": 1, "learning_rate": 0.003}


def _train(bundle: Path, dataset_dir: Path) -> Path:
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"), workflow_type="train", bundle_root=str(bundle),
        dataset_dir=str(dataset_dir),
    )
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    workflow.run()
    workflow.finalize()
    return bundle


@pytest.fixture(scope="session")
def brats_tiny(tmp_path_factory) -> tuple[Path, list]:
    """Five small synthetic BraTS 2021 cases (48 x 48 x 32 voxels)."""
    from pipelines.synth.brats import write_brats

    root = tmp_path_factory.mktemp("brats")
    return root, write_brats(root, cases=5, naming="2021", seed=5, shape=(48, 48, 32))


@pytest.fixture(scope="session")
def brats2023_tiny(tmp_path_factory) -> tuple[Path, list]:
    """Two small synthetic cases in the BraTS 2023 naming (ET = 3)."""
    from pipelines.synth.brats import write_brats

    root = tmp_path_factory.mktemp("brats2023")
    return root, write_brats(root, cases=2, naming="2023", seed=6, shape=(48, 48, 32))


@pytest.fixture(scope="session")
def tiny_brats_bundle(tmp_path_factory) -> Path:
    from pipelines.bundle import derive_bundle

    return derive_bundle(BRATS_BUNDLE, tmp_path_factory.mktemp("bundles") / "brats", TINY_BRATS, TINY_BRATS_TRAIN)


@pytest.fixture(scope="session")
def trained_brats_bundle(tiny_brats_bundle, brats_tiny) -> Path:
    return _train(tiny_brats_bundle, brats_tiny[0])


@pytest.fixture(scope="session")
def isic_tiny(tmp_path_factory) -> tuple[Path, list]:
    """Six small synthetic ISIC images of varying sizes, with masks."""
    from pipelines.synth.isic import write_isic_seg

    root = tmp_path_factory.mktemp("isic")
    return root, write_isic_seg(root, cases=6, seed=7, height=(60, 90))


@pytest.fixture(scope="session")
def tiny_isic_bundle(tmp_path_factory) -> Path:
    from pipelines.bundle import derive_bundle

    return derive_bundle(ISIC_BUNDLE, tmp_path_factory.mktemp("bundles") / "isic", TINY_ISIC, TINY_ISIC_TRAIN)


@pytest.fixture(scope="session")
def trained_isic_bundle(tiny_isic_bundle, isic_tiny) -> Path:
    return _train(tiny_isic_bundle, isic_tiny[0])


HEMF_BUNDLE = REPO / "bundles" / "isic_skin_hemf_classification"

# the smallest HEMF that still has every block: 4 stages, one ELF and one retention layer each, 32 x 32 inputs
TINY_HEMF = {"widths": [16, 32, 64, 128], "elf_depths": 1, "egf_depths": 1, "num_heads": 2, "image_size": 32,
             "resize_size": 36, "num_workers": 0, "batch_size": 8, "cache_rate": 1.0}
TINY_HEMF_TRAIN = {"max_epochs": 1}


@pytest.fixture(scope="session")
def isic_cls_tiny(tmp_path_factory) -> tuple[Path, list]:
    """84 synthetic ISIC 2018 Task 3 images of 40 x 32 with the real imbalance (every class 6 or more)."""
    from pipelines.synth.isic_cls import write_isic_cls

    root = tmp_path_factory.mktemp("isic_cls_tiny")
    return root, write_isic_cls(root, images=84, size=(40, 32), seed=2)


@pytest.fixture(scope="session")
def tiny_hemf_bundle(tmp_path_factory) -> Path:
    from pipelines.bundle import derive_bundle

    return derive_bundle(HEMF_BUNDLE, tmp_path_factory.mktemp("bundles") / "hemf", TINY_HEMF, TINY_HEMF_TRAIN)
