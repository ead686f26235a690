"""Issue 15 item 2: one source per setting. A bundle's workflows are ``train.json`` and an overlay merged after it
(:data:`pipelines.bundle.WORKFLOWS`), so one override reaches training, evaluation, inference, export and ``pipelines
infer`` alike; a checkpoint that does not fit the configured network is one line naming it and the first bad key.

Every check parses and instantiates configs (tiny networks, no training). The expected parameter shapes come from
the network class built here directly, not from the config code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from pipelines.bundle import WORKFLOWS, bundle_parser, derive_bundle, workflow_configs
from tests.conftest import LUNG_BUNDLE, REPO, TINY_LUNG

SMALL = [4, 8, 8, 16, 16]  # an E-DU no shipped or tiny config has
BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs" / "train.json").is_file())


def _shapes(network: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


def _edu(features: list[int]) -> torch.nn.Module:
    """The lung bundle's network with ``features``, built from the class (the shipped network_def's arguments)."""
    from networks import EDU

    return EDU(spatial_dims=3, in_channels=1, out_channels=2, features=features, skip="mde")


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """The lung bundle derived with ``features=SMALL`` (written once, into train.json) and seeded weights of that
    network."""
    bundle = derive_bundle(LUNG_BUNDLE, tmp_path_factory.mktemp("one_source") / "lung",
                           {**TINY_LUNG, "features": SMALL}, {"max_epochs": 1})
    torch.manual_seed(0)
    weights = bundle / "small.pt"
    torch.save(_edu(SMALL).state_dict(), weights)
    return bundle, weights


# ------------------------------------------------------------------------------------------------ the one table


def test_each_workflow_is_train_json_and_its_overlay(tmp_path):
    configs = LUNG_BUNDLE / "configs"
    assert {w: [p.name for p in workflow_configs(LUNG_BUNDLE, w)] for w in WORKFLOWS} == {
        "train": ["train.json"], "evaluate": ["train.json", "evaluate.json"],
        "inference": ["train.json", "inference.json"], "multi_gpu": ["train.json", "multi_gpu_train.json"]}
    assert workflow_configs(LUNG_BUNDLE)[0] == configs / "train.json"  # inference by default
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.json").write_text("{}")
    assert workflow_configs(tmp_path, "inference") == [tmp_path / "configs" / "inference.json"]  # inference-only
    with pytest.raises(FileNotFoundError, match=r"evaluate\.json: bundle config not found"):
        workflow_configs(tmp_path, "evaluate")
    with pytest.raises(ValueError, match="unknown bundle workflow 'infer'"):
        workflow_configs(tmp_path, "infer")


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_overlays_carry_only_what_differs_from_train_json(bundle):
    """No overlay repeats a value of train.json (network_def, pixdim, patch_size...: written once), and lists that
    extend train.json's (initialize, finalize) use MONAI's ``+`` merge key."""
    train = json.loads((bundle / "configs" / "train.json").read_text())
    base = ConfigParser(train)  # ids such as "validate#preprocessing#crop_size" are looked up where they point
    for _, overlay in (files for files in WORKFLOWS.values() if len(files) == 2):
        config = json.loads((bundle / "configs" / overlay).read_text())
        repeated = [k for k, v in config.items() if not k.startswith("+") and k in base and base[k] == v]
        assert repeated == [], f"{overlay} repeats {repeated} of train.json"
        assert "network_def" not in config and "imports" not in config, overlay
    merged = ConfigParser.load_config_files([str(p) for p in workflow_configs(bundle, "multi_gpu")])
    multi = json.loads((bundle / "configs" / "multi_gpu_train.json").read_text())
    assert merged["initialize"] == train["initialize"] + multi["+initialize"]
    assert merged["finalize"] == train["finalize"] + multi["+finalize"]


# ------------------------------------------------------------------------------------- one override, everywhere


def test_derive_bundle_writes_an_override_once(small_bundle):
    bundle, _ = small_bundle
    train = json.loads((bundle / "configs" / "train.json").read_text())
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert train["features"] == SMALL and train["max_epochs"] == 1
    assert "features" not in inference and "max_epochs" not in inference
    # inference.json's own sw_batch_size ("auto" as shipped) is a setting that differs on purpose: an override of it
    # replaces it there too, as an override on MONAI's command line replaces the merged value
    assert train["sw_batch_size"] == inference["sw_batch_size"] == TINY_LUNG["sw_batch_size"]


@pytest.mark.parametrize("workflow", ["train", "evaluate", "inference"])
def test_a_derived_setting_reaches_every_workflow(small_bundle, workflow):
    bundle, _ = small_bundle
    parser = bundle_parser(bundle, workflow)
    assert _shapes(parser.get_parsed_content("network")) == _shapes(_edu(SMALL))


def test_a_derived_setting_reaches_export_and_pipelines_infer(small_bundle, tmp_path):
    from pipelines.export import _build_network, export_bundle
    from pipelines.inference import BundleInferer

    bundle, weights = small_bundle
    expected = _shapes(_edu(SMALL))
    assert _shapes(_build_network(bundle, weights)) == expected  # what export scripts / traces
    inferer = BundleInferer(bundle, tmp_path / "out", weights=weights, overrides={"device": "$torch.device('cpu')"})
    try:
        assert _shapes(inferer.network) == expected
    finally:
        inferer.close()
    out = export_bundle(bundle, tmp_path / "lung.zip", weights=weights, torchscript=False)
    assert out.is_file()


@pytest.mark.parametrize("override", [
    {"features": SMALL},
    {"network_def#features": SMALL},
    {"network_def": {"_target_": "networks.EDU", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                     "features": SMALL, "skip": "mde"}},
])
def test_one_command_line_override_reaches_every_workflow(override, tmp_path):
    """The same override given once (``--features``, ``--network_def#features``, a whole ``--network_def``) to each
    workflow of the shipped bundle, to ``pipelines infer`` (``--set``) and to export: the same network everywhere."""
    from pipelines.export import _build_network
    from pipelines.inference import BundleInferer

    expected = _shapes(_edu(SMALL))
    for workflow in WORKFLOWS:
        parser = bundle_parser(LUNG_BUNDLE, workflow, override)
        assert _shapes(parser.get_parsed_content("network_def")) == expected, workflow
    weights = tmp_path / "small.pt"
    torch.save(_edu(SMALL).state_dict(), weights)
    assert _shapes(_build_network(LUNG_BUNDLE, weights, override)) == expected
    inferer = BundleInferer(LUNG_BUNDLE, tmp_path / "out", weights=weights,
                            overrides={**override, "device": "$torch.device('cpu')"})
    try:
        assert _shapes(inferer.network) == expected
    finally:
        inferer.close()


# --------------------------------------------------------------------------------- a checkpoint of another network


def _first_mismatch(weights: Path, network: torch.nn.Module) -> str:
    """The one-line error the loaders must give, computed from the two state dicts: the file, the first of its keys
    whose shape differs, both shapes."""
    state = torch.load(weights, weights_only=True)
    expected = network.state_dict()
    key = next(k for k in state if state[k].shape != expected[k].shape)

    def shape(tensor: torch.Tensor) -> str:
        return "(" + ", ".join(str(s) for s in tensor.shape) + ")"

    return (f"{weights}: does not fit the network: {key!r} is {shape(state[key])} in the file, "
            f"{shape(expected[key])} in the network")


def test_a_checkpoint_of_another_network_is_one_line_in_pipelines_infer(small_bundle, tmp_path):
    from pipelines.inference import BundleInferer

    bundle, _ = small_bundle
    other = tmp_path / "other.pt"
    torch.save(_edu(TINY_LUNG["features"]).state_dict(), other)  # trained before features=SMALL was set
    with pytest.raises(ValueError) as refused:
        BundleInferer(bundle, tmp_path / "out", weights=other, overrides={"device": "$torch.device('cpu')"})
    message = str(refused.value)
    assert "\n" not in message and message.startswith(_first_mismatch(other, _edu(SMALL))), message
    assert not list((tmp_path / "out").iterdir()), "nothing is left behind"


@pytest.mark.parametrize("workflow, handlers", [("inference", "handlers"), ("evaluate", "validate#handlers")])
def test_the_workflows_checkpoint_loader_refuses_another_network_in_one_line(small_bundle, tmp_path, workflow,
                                                                             handlers):
    """``monai.bundle run`` of inference / evaluation: the checked loader the configs wire (not MONAI's
    ``CheckpointLoader``, whose error lists every key over many lines) loads ``ckpt_path`` when the run starts."""
    from pipelines.io.weights import WeightsLoader

    bundle, weights = small_bundle
    other = tmp_path / "other.pt"
    torch.save(_edu(TINY_LUNG["features"]).state_dict(), other)
    parser = bundle_parser(bundle, workflow, {"ckpt_path": str(other), "device": "$torch.device('cpu')"})
    loaders = [h for h in parser.get_parsed_content(handlers) if isinstance(h, WeightsLoader)]
    assert len(loaders) == 1 and loaders[0].network is parser.get_parsed_content("network")
    with pytest.raises(ValueError) as refused:
        loaders[0](None)
    assert "\n" not in str(refused.value) and str(refused.value).startswith(_first_mismatch(other, _edu(SMALL)))
    parser = bundle_parser(bundle, workflow, {"ckpt_path": str(weights), "device": "$torch.device('cpu')"})
    loader = next(h for h in parser.get_parsed_content(handlers) if isinstance(h, WeightsLoader))
    loader(None)  # the right weights load
    state = torch.load(weights, weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in loader.network.state_dict().items())
