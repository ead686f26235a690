"""Shared fixtures: tiny synthetic data sets written once per test session, every bundle trained once (tiny), and the
metadata schemas the repository ships in ``pipelines/schemas/``.

The trained bundles live here, not in ``tests/bundles/conftest.py``, so that tests outside ``tests/bundles/`` (the
export of every bundle in ``tests/pipelines/test_export_verify.py``) share the one session copy instead of training
again."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LUNG_BUNDLE = REPO / "bundles" / "lung_nodule_ct_edu_segmentation"
SCHEMA_DIR = REPO / "pipelines" / "schemas"  # shipped in the repository (and inside every exported bundle)

# the smallest configuration that still runs every piece of the lung bundle
TINY_LUNG = {"features": [4, 8, 16, 32, 64], "pixdim": [2.0, 2.0, 3.0], "patch_size": [32, 32, 16], "sw_batch_size": 2,
             "num_workers": 0}
# The tiny copies switch the memory plan off: its probes cost more than their one-epoch trainings (several steps
# each). tests/pipelines/test_memory_plan.py and the lung bundle's refusal test run it.
NO_PLAN = {"memory_plan": False}
TINY_LUNG_TRAIN = {"num_samples": 1, "batch_size": 2, "max_epochs": 1, **NO_PLAN}

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs pytest-xdist with one worker per core: one torch thread each, and the same for every subprocess
    # a test starts (bundle runs, torchrun), since two-thread OpenMP pools on a shared core spin and run many times
    # slower than one thread
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    torch.set_num_threads(1)
else:
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


def load_schema(name: str) -> dict:
    """The metadata schema ``name`` from the repository's ``pipelines/schemas/``; a missing one fails the test (the
    schemas ship with the repository, so a missing file is a broken checkout, never a reason to skip)."""
    import json

    path = SCHEMA_DIR / name
    if not path.is_file():
        pytest.fail(f"{path}: metadata schema missing from the repository", pytrace=False)
    return json.loads(path.read_text())


def train_bundle(bundle: Path, dataset_dir: Path, check_properties: bool = True) -> Path:
    """Train ``bundle`` in process through ``ConfigWorkflow`` (initialize, check_properties, run, finalize)."""
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"), workflow_type="train", bundle_root=str(bundle),
        dataset_dir=str(dataset_dir),
    )
    workflow.initialize()
    if check_properties:
        assert workflow.check_properties() in (None, [])
    workflow.run()
    workflow.finalize()
    return bundle


def evaluate_bundle(bundle: Path, dataset_dir: Path, output_dir: Path, **overrides) -> Path:
    """The bundle's own evaluation, ``[train.json, evaluate.json]``, of its ``models/model.pt`` on ``dataset_dir``,
    in process; ``overrides`` such as ``eval_all=True``. Returns ``output_dir``."""
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    workflow = ConfigWorkflow(config_file=[str(configs / "train.json"), str(configs / "evaluate.json")],
                              workflow_type="train", bundle_root=str(bundle), dataset_dir=str(dataset_dir),
                              output_dir=str(output_dir), **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return output_dir


# ------------------------------------------------------------------------------------ BraTS and ISIC FRCU-Net bundles
BRATS_BUNDLE = REPO / "bundles" / "brats_mri_frcunet_segmentation"
ISIC_BUNDLE = REPO / "bundles" / "isic_skin_frcunet_segmentation"

# the smallest configurations that still run every piece of the bundles
TINY_BRATS = {"features": [4, 8, 16, 32, 64], "freq_channels": 8, "gauss_kernel_sizes": [3],
              "patch_size": [32, 32, 32], "sw_batch_size": 2, "num_workers": 0}
TINY_BRATS_TRAIN = {"num_samples": 1, "batch_size": 2, "max_epochs": 1, "learning_rate": 0.003, **NO_PLAN}
TINY_ISIC = {"features": [4, 8, 16, 32, 64], "freq_channels": 8, "gauss_kernel_sizes": [3, 5],
             "spatial_size": [64, 64], "num_workers": 0}
TINY_ISIC_TRAIN = {"batch_size": 2, "max_epochs": 1, "learning_rate": 0.003, **NO_PLAN}


@pytest.fixture(scope="session")
def brats_tiny(tmp_path_factory) -> tuple[Path, list]:
    """Five small synthetic BraTS 2021 cases (48 x 48 x 32 voxels)."""
    from pipelines.synth.brats import write_brats

    root = tmp_path_factory.mktemp("brats")
    return root, write_brats(root, cases=5, naming="2021", seed=5, shape=(48, 48, 32))


@pytest.fixture(scope="session")
def tiny_brats_bundle(tmp_path_factory) -> Path:
    from pipelines.bundle import derive_bundle

    return derive_bundle(BRATS_BUNDLE, tmp_path_factory.mktemp("bundles") / "brats", TINY_BRATS, TINY_BRATS_TRAIN)


@pytest.fixture(scope="session")
def trained_brats_bundle(tiny_brats_bundle, brats_tiny) -> Path:
    return train_bundle(tiny_brats_bundle, brats_tiny[0])


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
    return train_bundle(tiny_isic_bundle, isic_tiny[0])


# ------------------------------------------------------------------------------------------ ISIC HEMF classification
HEMF_BUNDLE = REPO / "bundles" / "isic_skin_hemf_classification"

# the smallest HEMF that still has every block: 4 stages, one ELF and one retention layer each, 32 x 32 inputs
TINY_HEMF = {"widths": [16, 32, 64, 128], "elf_depths": 1, "egf_depths": 1, "num_heads": 2, "image_size": 32,
             "resize_size": 36, "num_workers": 0, "batch_size": 8, "cache_rate": 1.0}
TINY_HEMF_TRAIN = {"max_epochs": 1, **NO_PLAN}


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


@pytest.fixture(scope="session")
def trained_hemf_bundle(tiny_hemf_bundle, isic_cls_tiny) -> Path:
    """The tiny HEMF bundle trained for one epoch."""
    return train_bundle(tiny_hemf_bundle, isic_cls_tiny[0])


# ------------------------------------------------------------------------------------ SE-ESRGAN super-resolution
US_SR_BUNDLE = REPO / "bundles" / "ultrasound_se_esrgan_superresolution"
CT_SR_BUNDLE = REPO / "bundles" / "ct_se_esrgan_superresolution"
SR_BUNDLES = {"us": US_SR_BUNDLE, "ct": CT_SR_BUNDLE}

# the smallest configurations that still run every piece of the bundles (generator, SE, discriminator, both phases)
TINY_SR = {
    "us": ({"nf": 8, "gc": 8, "nb": 1, "roi_size": [16, 16], "sw_batch_size": 2, "num_workers": 0},
           {"hr_patch_size": [32, 32], "batch_size": 2, "num_samples": 1, "pretrain_epochs": 1, "max_epochs": 2,
            "disc_features": 8, "disc_channel_mults": [1, 2], "ssim_win_size": 7, "val_fraction": 0.34, **NO_PLAN}),
    "ct": ({"nf": 8, "gc": 8, "nb": 1, "roi_size": [24, 24, 8], "sw_batch_size": 2, "num_workers": 0},
           {"hr_patch_size": [24, 24, 16], "val_crop_size": [32, 32, 16], "batch_size": 2, "num_samples": 1,
            "pretrain_epochs": 1, "max_epochs": 2, "disc_features": 8, "disc_channel_mults": [1, 2],
            "ssim_win_size": 3, "val_fraction": 0.5, **NO_PLAN}),
}


@pytest.fixture(scope="session")
def us_sr_tiny(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Six small synthetic ultrasound images (52 x 40) in the BUSI layout, masks beside them."""
    from pipelines.synth.ultrasound import write_ultrasound

    root = tmp_path_factory.mktemp("us")
    return root, write_ultrasound(root, n_images=6, size=(40, 52), seed=1)


@pytest.fixture(scope="session")
def ct_sr_tiny(tmp_path_factory) -> tuple[Path, list]:
    """Three small synthetic LUNA16 scans; seed 7 stores two of them with a flipped z axis."""
    from pipelines.synth.luna16 import write_luna16

    root = tmp_path_factory.mktemp("luna_sr")
    scans = write_luna16(root, cases=3, seed=7, fov_mm=40.0, length_mm=24.0, flip_fraction=0.5)
    assert any(s.flip == "z" for s in scans)
    return root, scans


@pytest.fixture(scope="session")
def tiny_sr_bundles(tmp_path_factory) -> dict[str, Path]:
    """Both SR bundles with the TINY_SR configurations written into their configs (untrained)."""
    from pipelines.bundle import derive_bundle

    root = tmp_path_factory.mktemp("sr_bundles")
    return {k: derive_bundle(SR_BUNDLES[k], root / k, *TINY_SR[k]) for k in SR_BUNDLES}


@pytest.fixture(scope="session")
def trained_sr_bundles(tiny_sr_bundles, tmp_path_factory, us_sr_tiny, ct_sr_tiny) -> dict[str, Path]:
    """Copies of both tiny SR bundles trained in process for 2 epochs: 1 PSNR-oriented + 1 GAN."""
    import shutil

    root = tmp_path_factory.mktemp("sr_trained")
    data = {"us": us_sr_tiny, "ct": ct_sr_tiny}
    trained = {}
    for k, bundle in tiny_sr_bundles.items():
        copy = shutil.copytree(bundle, root / k, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache"))
        trained[k] = train_bundle(Path(copy), data[k][0])
    return trained


def tiny_trainer(ckpt_dir: Path):
    """A one-layer Ignite trainer with a :class:`~pipelines.engines.ResumableCheckpoint` in ``ckpt_dir``, and its data
    (3 batches): the checkpoint policy tested in process, in milliseconds."""
    from ignite.engine import Engine

    from pipelines.engines import ResumableCheckpoint

    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)

    def step(engine, batch):
        optimizer.zero_grad()
        loss = network(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    trainer = Engine(step)
    ResumableCheckpoint(str(ckpt_dir), {"network": network, "optimizer": optimizer}).attach(trainer)
    return trainer, [torch.ones(4, 2)] * 3
