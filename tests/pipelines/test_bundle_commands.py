"""Issue 18 item 1: MONAI's own bundle commands, as MONAI documents them, on every bundle.

- ``ckpt_export`` in its default mode (``torch.jit.script``) and ``onnx_export`` of every bundle's ``network_def``
  with seeded random weights: the TorchScript module and the ONNX model (onnxruntime) equal the eager network within
  1e-4 of its output's scale at two input sizes (batch and spatial size both change, so nothing was fixed at export),
  and the scripted module refuses an input the network cannot take with the eager error's text. ``onnx_export`` runs
  with the TorchScript-based exporter (``'dynamo': False``, seconds) on every bundle and with MONAI's default
  (``torch.export`` + onnxscript, much slower) on the smallest one. The SR bundles' discriminators script too.
- ``verify_metadata`` of every bundle offline, with the schema the repository ships (``--filepath``); a broken copy
  fails with MONAI's message (the bad value and the schema's URL).
- ``run training --tracking <bundle>/configs/mlflow.json`` of the tiny ISIC bundle for two epochs, read back with
  MLflow's own client: the parameters, the loss per iteration and the validation metrics per epoch equal what the
  bundle's TensorBoard logs and ``eval/train_summary.json`` hold, and the best-model artifact is ``models/model.pt``.
  Then ``run --config_file "['configs/train.json','configs/evaluate.json']"`` re-scores that best model: the
  evaluator's mean Dice equals the best ``val_mean_dice`` MLflow logged.

Every command goes through ``python -m monai.bundle``'s own entry point (``runpy`` of ``monai.bundle.__main__``
with the command line in ``sys.argv``, so that Fire parses the strings exactly as in a shell), in this process: a
subprocess would add seconds of imports per command and test nothing more (``tests/bundles/test_lung_bundle.py``
runs ``python -m monai.bundle run training`` in a fresh process from another directory). The bundles are copies of
the suite's untrained tiny ones (``tests/conftest.py``); nothing but the MLflow run trains.
"""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, SCHEMA_DIR

# bundle: (its tiny copy's fixture, two input shapes (B, C, *spatial), the output axes that follow the input's,
#          an input the network refuses with a ValueError, or None)
BUNDLES = {
    "lung_nodule_ct_edu_segmentation":
        ("tiny_lung_bundle", [(1, 1, 32, 32, 16), (2, 1, 48, 32, 32)], "spatial", (1, 1, 32, 32, 20)),
    "brats_mri_frcunet_segmentation":
        ("tiny_brats_bundle", [(1, 4, 32, 32, 32), (2, 4, 48, 32, 16)], "spatial", (1, 4, 32, 40, 32)),
    "isic_skin_frcunet_segmentation":
        ("tiny_isic_bundle", [(1, 3, 64, 64), (2, 3, 96, 64)], "spatial", (1, 3, 64, 72)),
    "isic_skin_hemf_classification":
        ("tiny_hemf_bundle", [(1, 3, 32, 32), (2, 3, 64, 32)], "batch", (1, 3, 32, 40)),
    "ultrasound_se_esrgan_superresolution":
        ("tiny_sr_bundles", [(1, 1, 16, 16), (2, 1, 24, 20)], "spatial", None),
    "ct_se_esrgan_superresolution":
        ("tiny_sr_bundles", [(1, 1, 24, 24, 8), (2, 1, 16, 20, 12)], "spatial", None),
}
NAMES = sorted(BUNDLES)
TOLERANCE = 1e-4  # of the eager output's largest magnitude


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: one thread runs this module in half the time of the suite's two (measured 7 s
    against 16 s for the lung bundle's ckpt_export test); the suite's setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def monai_bundle(*argv: str) -> None:
    """``python -m monai.bundle ARGV`` in this process; an exception of the command propagates, a Fire usage error
    (``SystemExit`` with a non-zero code) fails the test."""
    saved = sys.argv
    sys.argv = ["monai.bundle", *argv]
    try:
        runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code not in (None, 0):
            pytest.fail(f"python -m monai.bundle {' '.join(argv)}: exit code {e.code}")
    finally:
        sys.argv = saved


def inference_configs(bundle: Path) -> list[str]:
    """The inference workflow's configs, ``train.json`` then the ``inference.json`` overlay (``network_def`` is
    defined once, in ``train.json``)."""
    return [str(bundle / "configs" / "train.json"), str(bundle / "configs" / "inference.json")]


def eager_network(bundle: Path) -> torch.nn.Module:
    """The bundle's ``network_def`` (the inference workflow's) with its ``models/model.pt``, in eval mode."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(inference_configs(bundle))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    return net.eval()


def assert_equals_eager(run, net: torch.nn.Module, shapes: list[tuple[int, ...]]) -> None:
    """``run(x)`` (an exported model) equals ``net(x)`` within :data:`TOLERANCE` of its scale at every shape."""
    generator = torch.Generator().manual_seed(1)
    for shape in shapes:
        x = torch.rand(shape, generator=generator)
        with torch.no_grad():
            expected = net(x)
        got = torch.as_tensor(run(x))
        assert got.shape == expected.shape, (shape, tuple(got.shape), tuple(expected.shape))
        scale = float(expected.abs().max())
        assert scale > 0
        error = float((got - expected).abs().max())
        assert error <= TOLERANCE * scale, f"input {shape}: max |exported - eager| = {error:.3g} (scale {scale:.3g})"


@pytest.fixture(scope="module")
def random_bundles(request, tmp_path_factory) -> dict[str, Path]:
    """Copies of the six untrained tiny bundles, each with seeded random weights of its ``network_def`` in
    ``models/model.pt`` (built from the inference workflow's configs, as ``ckpt_export`` builds it)."""
    from monai.bundle import ConfigParser

    root = tmp_path_factory.mktemp("bundle_commands")
    out = {}
    for name, (fixture, *_) in BUNDLES.items():
        tiny = request.getfixturevalue(fixture)
        if isinstance(tiny, dict):  # the two SR bundles come as one fixture
            tiny = tiny["us" if name.startswith("ultrasound") else "ct"]
        bundle = Path(shutil.copytree(tiny, root / name, ignore=shutil.ignore_patterns("models", "eval", "logs")))
        parser = ConfigParser()
        parser.read_config(inference_configs(bundle))
        torch.manual_seed(0)
        (bundle / "models").mkdir()
        torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
        out[name] = bundle
    return out


def _export_args(bundle: Path) -> list[str]:
    """The arguments the README's export commands give (``$B/...``, from whatever folder the test runs in)."""
    configs = "[" + ",".join(f"'{p}'" for p in inference_configs(bundle)) + "]"  # "['$B/configs/train.json',...]"
    return ["network_def", "--ckpt_file", str(bundle / "models" / "model.pt"), "--meta_file",
            str(bundle / "configs" / "metadata.json"), "--config_file", configs]


# ------------------------------------------------------------------------------------------------------- ckpt_export


@pytest.mark.parametrize("name", NAMES)
def test_ckpt_export_default_mode_equals_eager(name, random_bundles, tmp_path):
    """``ckpt_export`` without ``--use_trace`` scripts the network; the TorchScript file carries the bundle's configs,
    equals the eager network at two input sizes and, being scripted rather than traced, still refuses an input the
    network cannot take, with the eager error's text."""
    bundle = random_bundles[name]
    target = tmp_path / "model.ts"
    monai_bundle("ckpt_export", *_export_args(bundle), "--filepath", str(target))
    extra = {"metadata.json": "", "train.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(target), _extra_files=extra)
    for config in ("train.json", "inference.json"):
        assert json.loads(extra[config]) == json.loads((bundle / "configs" / config).read_text())
    assert json.loads(extra["metadata.json"])["name"] == json.loads(
        (bundle / "configs" / "metadata.json").read_text())["name"]
    net = eager_network(bundle)
    assert_equals_eager(scripted, net, BUNDLES[name][1])
    refused = BUNDLES[name][3]
    if refused is not None:
        with pytest.raises(ValueError) as eager_error:
            net(torch.zeros(refused))
        with pytest.raises(Exception) as scripted_error:  # TorchScript raises its own error type around the text
            scripted(torch.zeros(refused))
        assert str(eager_error.value) in str(scripted_error.value)
        assert str(tuple(refused)) in str(eager_error.value)


# ------------------------------------------------------------------------------------------------------- onnx_export


def _onnx_kwargs(name: str, dynamo: bool) -> str:
    """``--converter_kwargs`` of the README: named input and output, every axis but the channels dynamic."""
    shape = BUNDLES[name][1][0]
    axes = [0] + list(range(2, len(shape)))
    out_axes = [0] if BUNDLES[name][2] == "batch" else axes
    kwargs = {"input_names": ["image"], "output_names": ["pred"], "dynamic_axes": {"image": axes, "pred": out_axes}}
    if not dynamo:
        kwargs = {"dynamo": False, **kwargs}
    return repr(kwargs)


def _onnx_matches_eager(name: str, bundle: Path, target: Path) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert_equals_eager(lambda x: session.run(None, {"image": x.numpy()})[0], eager_network(bundle), BUNDLES[name][1])


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_equals_eager(name, random_bundles, tmp_path):
    """``onnx_export --use_trace True`` with the TorchScript-based exporter (``'dynamo': False``), exported at batch 2
    and the first shape's spatial size, run by onnxruntime at both shapes."""
    bundle = random_bundles[name]
    target = tmp_path / "model.onnx"
    example = [2, *BUNDLES[name][1][0][1:]]
    monai_bundle("onnx_export", *_export_args(bundle), "--filepath", str(target), "--use_trace", "True",
                 "--input_shape", str(example), "--converter_kwargs", _onnx_kwargs(name, dynamo=False))
    _onnx_matches_eager(name, bundle, target)


def test_onnx_export_default_exporter_equals_eager(random_bundles, tmp_path):
    """MONAI's default ``onnx_export`` (no ``--use_trace``: ``torch.onnx.export`` of the module through
    ``torch.export``, which needs onnxscript) on the smallest bundle, at both shapes."""
    name = "ultrasound_se_esrgan_superresolution"
    bundle = random_bundles[name]
    target = tmp_path / "model.onnx"
    example = [2, *BUNDLES[name][1][0][1:]]
    monai_bundle("onnx_export", *_export_args(bundle), "--filepath", str(target), "--input_shape", str(example),
                 "--converter_kwargs", _onnx_kwargs(name, dynamo=True))
    _onnx_matches_eager(name, bundle, target)


@pytest.mark.parametrize("head", ["patch", "fc"])
@pytest.mark.parametrize("name", ["ultrasound_se_esrgan_superresolution", "ct_se_esrgan_superresolution"])
def test_sr_discriminators_script_too(name, head, random_bundles):
    """The SR bundles' ``discriminator_def`` scripts, with the shipped patch head and with ``--disc_head fc``: equal
    logits and features; the fc head's scripted module refuses another input size with the eager error."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(random_bundles[name] / "configs" / "train.json"))
    parser["disc_head"] = head
    torch.manual_seed(0)
    disc = parser.get_parsed_content("discriminator_def").eval()
    scripted = torch.jit.script(disc)
    x = torch.rand(2, 1, *parser.get_parsed_content("hr_patch_size"))
    with torch.no_grad():
        logits, features = disc(x, True)
        got_logits, got_features = scripted(x, True)
        torch.testing.assert_close(scripted(x), logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_logits, logits, rtol=0, atol=1e-6)
    assert len(got_features) == len(features) and all(torch.equal(a, b) for a, b in zip(got_features, features))
    if head == "fc":
        wrong = torch.rand(1, 1, *(s + 4 for s in x.shape[2:]))
        with pytest.raises(ValueError) as eager_error:
            disc(wrong)
        with pytest.raises(Exception) as scripted_error:
            scripted(wrong)
        assert str(eager_error.value) in str(scripted_error.value)
        assert str(tuple(wrong.shape[2:])) in str(eager_error.value)


# --------------------------------------------------------------------------------------------------- verify_metadata


def _shipped_schema(metadata: Path) -> Path:
    """The repository's copy of the schema the metadata names (``pipelines/schemas/<file name of its URL>``)."""
    return SCHEMA_DIR / json.loads(metadata.read_text())["schema"].rsplit("/", 1)[-1]


@pytest.fixture
def no_download(monkeypatch):
    """Any download MONAI would start fails the test."""
    import monai.apps.utils

    def refuse(url, *args, **kwargs):
        pytest.fail(f"tried to download {url}")

    monkeypatch.setattr(monai.apps.utils, "_download_with_progress", refuse)


@pytest.mark.parametrize("name", NAMES)
def test_verify_metadata_offline_with_the_shipped_schema(name, no_download, caplog):
    metadata = REPO / "bundles" / name / "configs" / "metadata.json"
    schema = _shipped_schema(metadata)
    assert schema.is_file(), f"{schema}: the schema {metadata} names is not shipped"
    with caplog.at_level("INFO"):
        monai_bundle("verify_metadata", "--meta_file", str(metadata), "--filepath", str(schema))
    assert "metadata is verified with no error" in caplog.text


def test_verify_metadata_names_what_is_wrong(no_download, tmp_path):
    metadata = json.loads((REPO / "bundles" / NAMES[0] / "configs" / "metadata.json").read_text())
    metadata["version"] = 3  # the schema wants a string
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"(?s)3 is not of type 'string'.* against schema `https://.*/meta_schema_"):
        monai_bundle("verify_metadata", "--meta_file", str(broken), "--filepath", str(_shipped_schema(broken)))


# ------------------------------------------------------------------------------------------------- MLflow, evaluate

MLFLOW_ADDITIONS = {  # what configs/mlflow.json adds to MONAI's `--tracking mlflow` (README: "MLflow tracking")
    ("trainer", "experiment_param"): {"learning_rate": "@learning_rate", "batch_size": "@batch_size",
                                      "val_interval": "@val_interval"},
    ("trainer", "artifacts"): ["@save_execute_config", "@ckpt_path"],  # train.json's ckpt_path: <ckpt_dir>/model.pt
    # MONAI's 109-character rank test as a component: the configs wire, pipelines.distributed computes
    ("is_not_rank0",): {"_target_": "pipelines.distributed.is_not_main_process"},
    ("validator", "state_attributes"): ["best_metric", "best_metric_epoch"],
}


@pytest.mark.parametrize("name", NAMES)
def test_mlflow_settings_are_monais_defaults_plus_the_documented_additions(name):
    """Each bundle's ``configs/mlflow.json`` is MONAI's default tracking settings with exactly the README's additions
    (the six copies cannot drift from MONAI's defaults or from each other)."""
    import copy

    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    settings = json.loads((REPO / "bundles" / name / "configs" / "mlflow.json").read_text())
    expected = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    for path, value in MLFLOW_ADDITIONS.items():
        *parents, key = path
        node = expected["configs"]
        for parent in parents:
            node = node[parent]
        node[key] = value
    assert settings == json.loads(json.dumps(expected))


@pytest.fixture(scope="module")
def mlflow_trained(tiny_isic_bundle, isic_tiny, tmp_path_factory, monkeypatch_module) -> Path:
    """The tiny ISIC bundle trained for two epochs by the README's command with ``--tracking configs/mlflow.json``."""
    bundle = Path(shutil.copytree(tiny_isic_bundle, tmp_path_factory.mktemp("mlflow") / "isic",
                                  ignore=shutil.ignore_patterns("models", "eval", "logs", "cache")))
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)  # it would take precedence over the settings
    configs = bundle / "configs"
    monai_bundle("run", "training", "--meta_file", str(configs / "metadata.json"), "--config_file",
                 str(configs / "train.json"), "--logging_file", str(configs / "logging.conf"), "--bundle_root",
                 str(bundle), "--dataset_dir", str(isic_tiny[0]), "--max_epochs", "2", "--learning_rate", "0.03",
                 "--tracking", str(configs / "mlflow.json"))
    return bundle


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_mlflow_run_holds_params_metrics_per_epoch_and_the_best_model(mlflow_trained):
    import mlflow
    from monai.utils import path_to_sqlite_uri

    bundle = mlflow_trained
    database = bundle / "eval" / "mlruns.db"
    assert database.is_file()
    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(str(database)))
    experiment = client.get_experiment_by_name("monai_experiment")
    (run,) = client.search_runs(experiment.experiment_id)
    assert run.info.status == "FINISHED"
    train = json.loads((bundle / "configs" / "train.json").read_text())
    summary = json.loads((bundle / "eval" / "train_summary.json").read_text())
    epoch_length = summary["iterations"] // summary["epochs"]
    assert run.data.params == {"max_epochs": "2", "epoch_length": str(epoch_length), "learning_rate": "0.03",
                               "batch_size": str(train["batch_size"]), "val_interval": str(train["val_interval"])}

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    # what the evaluator wrote: TensorBoard, per epoch (validation) and per iteration (loss), and the summary
    board = _tensorboard_scalars(bundle / "logs")
    val = history("val_mean_dice")
    assert [step for step, _ in val] == [1, 2]
    np.testing.assert_allclose([v for _, v in val], [v for _, v in board["val_mean_dice"]], rtol=1e-6)
    assert [s for s, _ in board["val_mean_dice"]] == [1, 2]
    loss = history("train_loss")
    assert [step for step, _ in loss] == list(range(1, summary["iterations"] + 1))
    np.testing.assert_allclose([v for _, v in loss], [v for _, v in board["train_loss"]], rtol=1e-6)
    best = max(v for _, v in val)
    assert summary["best_metric"] == pytest.approx(best, rel=1e-6)
    assert summary["last_metrics"]["val_mean_dice"] == pytest.approx(val[-1][1], rel=1e-6)
    assert history("best_metric")[-1][1] == pytest.approx(best, rel=1e-6)
    assert history("best_metric_epoch")[-1][1] == summary["best_metric_epoch"]
    # the best model and the executed config, under <bundle>/eval/mlruns/
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "model.pt" in artifacts and any(a.startswith("config_") and a.endswith(".json") for a in artifacts)
    local = Path(run.info.artifact_uri.removeprefix("file://"))
    assert local.is_relative_to(bundle / "eval" / "mlruns")
    assert (local / "model.pt").read_bytes() == (bundle / "models" / "model.pt").read_bytes()


def test_run_train_and_evaluate_scores_the_best_model_as_mlflow_logged(mlflow_trained, isic_tiny, tmp_path):
    """The README's evaluation command, ``run --config_file "['configs/train.json','configs/evaluate.json']"``, on
    the MLflow run's best model: the evaluator's mean lesion Dice equals the best ``val_mean_dice`` MLflow logged."""
    import mlflow
    from monai.utils import path_to_sqlite_uri

    bundle = mlflow_trained
    configs = bundle / "configs"
    monai_bundle("run", "--config_file", f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']",
                 "--logging_file", str(configs / "logging.conf"), "--bundle_root", str(bundle), "--dataset_dir",
                 str(isic_tiny[0]), "--output_dir", str(tmp_path))
    report = json.loads((tmp_path / "summary.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(str(bundle / "eval" / "mlruns.db")))
    (run,) = client.search_runs(client.get_experiment_by_name("monai_experiment").experiment_id)
    best = max(m.value for m in client.get_metric_history(run.info.run_id, "val_mean_dice"))
    assert report["summary"]["dice"]["lesion"]["mean"] == pytest.approx(best, rel=1e-5)
