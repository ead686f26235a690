"""Every shipped bundle's metadata, network and standard workflow ids, one test per check parametrised over the six
bundles.

:data:`BUNDLES` is the table: each bundle's folder, the session fixture with its tiny data set, the overrides that
shrink its network to CPU-test size without changing the topology, and the bundle-specific facts the checks hold it
to (the network class, an input ``channel_def``, the classes its output names, the super-resolution scale, the
published network it reproduces). The checks themselves are the same for every bundle:

- ``metadata.json`` is valid against both MONAI schemas the repository ships (``pipelines/schemas``), names the newer
  one, lists its version in the changelog, and records the versions ``requirements.txt`` pins (MONAI, PyTorch, NumPy,
  every required and optional package); the bundle ships the repository's LICENSE, its workflow configs and docs;
- its ``network_def`` at small widths turns the declared input shape into the declared output shape, and every
  workflow (train, evaluate, inference, multi-GPU) resolves ``network_def`` to the same arguments;
- ``ConfigWorkflow`` of its train and infer workflows with its tiny copy's settings, on the tiny data
  (``initialize()`` and ``check_properties()``, no run; the latter builds the datasets, whose disk cache is the cost),
  has MONAI's required properties and the ids the README documents.

The per-bundle files (``test_lung_bundle.py`` ...) keep what only one bundle does: training, evaluation and inference
outputs, the CLI, resume, torchrun."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from networks.esrgan import se_esrgan
from pipelines.bundle import workflow_configs
from tests.conftest import (
    REPO,
    TINY_BRATS,
    TINY_BRATS_TRAIN,
    TINY_HEMF,
    TINY_HEMF_TRAIN,
    TINY_ISIC,
    TINY_ISIC_TRAIN,
    TINY_LUNG,
    TINY_LUNG_TRAIN,
    TINY_SR,
    load_schema,
)


@dataclass(frozen=True)
class Bundle:
    """One row of :data:`BUNDLES`."""

    folder: str  # under bundles/
    data: str  # the session fixture (tests/conftest.py) of its tiny data set: (root, items)
    tiny: dict[str, Any]  # the settings of its tiny copy (tests/conftest.py): sizes the tiny data set fits
    small: tuple[str, ...]  # the keys of ``tiny`` that shrink the network to CPU-test widths, same topology
    network: str  # the class network_def builds
    infer_data: str = ""  # the inference inputs' folder under the data set's root ("" is the root itself)
    batch: int = 1  # the batch of the shape check
    submodules: dict[str, str] = field(default_factory=dict)  # attribute of the network -> its class
    input_channel_def: dict[str, str] | None = None  # metadata's inputs.image.channel_def, when it matters
    output_channel_def_key: str = ""  # the config key whose list metadata's outputs.pred.channel_def must name
    sr_scale: bool = False  # SR: input spatial_shape == roi_size, output = input x the config's scale
    reference: Callable[[], torch.nn.Module] | None = None  # the network its full-size network_def reproduces

    def small_network(self) -> dict[str, Any]:
        return {k: self.tiny[k] for k in self.small}


BUNDLES = {
    "lung": Bundle("lung_nodule_ct_edu_segmentation", "luna16_tiny", {**TINY_LUNG, **TINY_LUNG_TRAIN}, ("features",),
                   "EDU"),
    "brats": Bundle("brats_mri_frcunet_segmentation", "brats_tiny", {**TINY_BRATS, **TINY_BRATS_TRAIN},
                    ("features", "freq_channels"), "FRCUNet",
                    input_channel_def={"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}),
    "isic_seg": Bundle("isic_skin_frcunet_segmentation", "isic_tiny", {**TINY_ISIC, **TINY_ISIC_TRAIN},
                       ("features", "freq_channels"), "FRCUNet"),
    "hemf": Bundle("isic_skin_hemf_classification", "isic_cls_tiny", {**TINY_HEMF, **TINY_HEMF_TRAIN},
                   ("widths", "elf_depths", "egf_depths", "num_heads"), "HEMF",
                   infer_data="ISIC2018_Task3_Training_Input", batch=2, output_channel_def_key="class_names"),
    # the GPU-sized 2D default is the Uneshance SE-ESRGAN generator (1 channel in and out)
    "us_sr": Bundle("ultrasound_se_esrgan_superresolution", "us_sr_tiny", {**TINY_SR["us"][0], **TINY_SR["us"][1]},
                    ("nf", "gc", "nb"), "RRDBNet", submodules={"se": "SqueezeExcitation"}, sr_scale=True,
                    reference=lambda: se_esrgan(2, 1, 1, scale=4)),
    "ct_sr": Bundle("ct_se_esrgan_superresolution", "ct_sr_tiny", {**TINY_SR["ct"][0], **TINY_SR["ct"][1]},
                    ("nf", "gc", "nb"), "RRDBNet", submodules={"se": "SqueezeExcitation"}, sr_scale=True),
}
NAMES = sorted(BUNDLES)

# every bundle ships these beside metadata.json
SHIPPED_FILES = ("configs/train.json", "configs/inference.json", "configs/evaluate.json",
                 "configs/multi_gpu_train.json", "configs/mlflow.json", "configs/logging.conf", "docs/README.md",
                 "LICENSE")
# ids every workflow has, and those of each workflow type (besides MONAI's own required properties)
COMMON_IDS = ("bundle_root", "device", "dataset_dir", "output_dir", "network_def")
WORKFLOW_IDS = {
    "train": ("train#trainer", "train#trainer#max_epochs", "train#dataset", "validate#evaluator", "val_interval",
              "training", "initialize", "run", "finalize"),
    "infer": ("inferer", "evaluator"),
}


def _root(name: str):
    return REPO / "bundles" / BUNDLES[name].folder


def _metadata(name: str) -> dict:
    return json.loads((_root(name) / "configs" / "metadata.json").read_text())


def _pins() -> dict[str, str]:
    return dict(line.split("==") for line in (REPO / "requirements.txt").read_text().split() if "==" in line)


def _parser(name: str, workflow: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(p) for p in workflow_configs(_root(name), workflow)])
    return parser


def _concrete(shape: list, n: int = 2) -> list[int]:
    """A metadata spatial shape with its symbolic sizes (``"32*n"``) at ``n``."""
    out = []
    for size in shape:
        if isinstance(size, str):
            match = re.fullmatch(r"\s*(\d+)\s*\*\s*n\s*", size)
            assert match, f"spatial_shape {size!r}: not an int or 'k*n'"
            size = int(match.group(1)) * n
        out.append(size)
    return out


# ------------------------------------------------------------------------------------------------------------ metadata
@pytest.mark.parametrize("name", NAMES)
def test_metadata_is_valid_and_pins_the_requirements(name):
    case, root, meta = BUNDLES[name], _root(name), _metadata(name)
    assert meta["schema"].endswith("meta_schema_20240725.json")
    for schema in ("meta_schema_20240725.json", "meta_schema_20220324.json"):
        jsonschema.validate(meta, load_schema(schema))
    assert meta["version"] in meta["changelog"]
    pins = _pins()
    assert meta["monai_version"] == pins["monai"] and meta["pytorch_version"] == pins["torch"]
    assert meta["numpy_version"] == pins["numpy"]
    for key in ("required_packages_version", "optional_packages_version"):
        for package, version in meta[key].items():
            assert pins.get(package) == version, f"{key} pins {package} {version}, requirements.txt {pins.get(package)}"
    for file in SHIPPED_FILES:
        assert (root / file).is_file(), f"{root / file} missing"
    assert (root / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    fmt = meta["network_data_format"]
    if case.input_channel_def is not None:
        assert fmt["inputs"]["image"]["channel_def"] == case.input_channel_def
    if case.output_channel_def_key:  # the names the inference workflow writes (train.json, or its overlay's)
        names = _parser(name, "inference").get_parsed_content(case.output_channel_def_key)
        assert list(fmt["outputs"]["pred"]["channel_def"].values()) == list(names)
    if case.sr_scale:  # output spatial = input spatial x scale, and the input is the inference window
        parser = _parser(name, "inference")
        scale, shape_in = parser.get_parsed_content("scale"), fmt["inputs"]["image"]["spatial_shape"]
        factors = [scale] * len(shape_in) if isinstance(scale, int) else list(scale)
        assert shape_in == list(parser.get_parsed_content("roi_size"))
        assert fmt["outputs"]["pred"]["spatial_shape"] == [s * f for s, f in zip(shape_in, factors)]


# ------------------------------------------------------------------------------------------------------------- network
@pytest.mark.parametrize("name", NAMES)
def test_network_def_gives_the_declared_output_shape(name):
    """The inference workflow's network, at small widths, maps metadata's input shape to its output shape."""
    case, fmt = BUNDLES[name], _metadata(name)["network_data_format"]
    parser = _parser(name, "inference")
    parser.update(case.small_network())  # same topology, small enough for a CPU test
    net = parser.get_parsed_content("network_def").eval()
    assert type(net).__name__ == case.network
    for attribute, cls in case.submodules.items():
        assert type(getattr(net, attribute)).__name__ == cls
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    x = torch.zeros(case.batch, image["num_channels"], *_concrete(image["spatial_shape"]))
    with torch.no_grad():
        y = net(x)
    assert tuple(y.shape) == (case.batch, pred["num_channels"], *_concrete(pred["spatial_shape"]))


@pytest.mark.parametrize("name", NAMES)
def test_every_workflow_builds_the_same_network(name):
    """Training, evaluation and multi-GPU training resolve network_def to the inference workflow's arguments, so the
    shape checked above is what every workflow trains and scores (resolved, not instantiated: no cost)."""
    def resolved(workflow: str) -> dict:
        return _parser(name, workflow).get_parsed_content("network_def", instantiate=False).get_config()

    inference = resolved("inference")
    assert inference["_target_"].rsplit(".", 1)[-1] == BUNDLES[name].network
    for workflow in ("train", "evaluate", "multi_gpu"):
        assert resolved(workflow) == inference, workflow


@pytest.mark.parametrize("name", [n for n in NAMES if BUNDLES[n].reference])
def test_shipped_network_is_its_reference_network(name):
    """The full-size network of train.json has as many parameters as the reference it reproduces (meta device)."""
    parser = _parser(name, "train")
    with torch.device("meta"):
        net = parser.get_parsed_content("network_def")
        reference = BUNDLES[name].reference()
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in reference.parameters())


# --------------------------------------------------------------------------------------------------- standard ids
@pytest.mark.parametrize("config, workflow_type", [("train", "train"), ("inference", "infer")])
@pytest.mark.parametrize("name", NAMES)
def test_standard_properties(name, config, workflow_type, tmp_path, request):
    case, root = BUNDLES[name], _root(name)
    data = request.getfixturevalue(case.data)[0]
    dataset = data / case.infer_data if workflow_type == "infer" and case.infer_data else data
    workflow = ConfigWorkflow(config_file=[str(p) for p in workflow_configs(root, config)],
                              workflow_type=workflow_type, meta_file=str(root / "configs" / "metadata.json"),
                              bundle_root=str(tmp_path), dataset_dir=str(dataset), **case.tiny)
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    for key in COMMON_IDS + WORKFLOW_IDS[workflow_type]:
        assert key in workflow.parser, key
