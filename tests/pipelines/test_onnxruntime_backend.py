"""Issue 17 item 5: ONNX Runtime as a CPU backend of ``python -m pipelines infer`` (``--backend onnxruntime``).

Each check compares against the torch backend or the eager network in the same process, never against a stored value:

- through :class:`~pipelines.inference.BundleInferer`, the sliding window's stitched logits of a tiny 3D lung bundle
  (three windows: one batch of two and one of one, so the exported batch axis is dynamic) and the logits of a tiny 2D
  ISIC FRCU-Net bundle (``SimpleInferer``) equal the torch backend's within 1e-4 of their scale, and the written
  predictions agree; mirror TTA runs through the same session;
- :class:`~pipelines.inferers.OnnxRuntimeNetwork` on a batch and spatial size other than the trace's equals the eager
  network (a MONAI ``MetaTensor`` input included) and runs with ``torch.get_num_threads()`` intra-op threads;
  :func:`~pipelines.inferers.export_onnx` refuses a trace that fixed the batch size;
- the cached export (named by the weights' SHA-256, computed here with ``hashlib``, and the input channels) is
  reused by a second engine without exporting, and rebuilt when the weights change (the old file removed, the new
  outputs those of the new weights) or when ONNX Runtime cannot load it;
- the bundle's ``backend`` key selects the backend, ``--backend`` overrides it, and the refusals are one line each:
  a CUDA device, bf16, channels-last, an unknown key value, a network that does not export (its output is a tuple;
  an exporter error), through the CLI with exit code 2.

Bundles are copies of the suite's untrained tiny ones with seeded random weights; one torch thread.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipelines.inference import BundleInferer
from pipelines.inferers import OnnxRuntimeNetwork, export_onnx

TOLERANCE = 1e-4  # of the torch output's largest magnitude


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_weights(bundle: Path, seed: int) -> Path:
    """Seeded random weights of the bundle's inference ``network_def`` in ``models/model.pt``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "inference.json")])
    parser["bundle_root"] = str(bundle)
    torch.manual_seed(seed)
    (bundle / "models").mkdir(exist_ok=True)
    path = bundle / "models" / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def _copy(tiny: Path, dst: Path, seed: int = 0) -> Path:
    bundle = Path(shutil.copytree(tiny, dst, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache")))
    _random_weights(bundle, seed)
    return bundle


@pytest.fixture(scope="module")
def lung(tiny_lung_bundle, tmp_path_factory) -> Path:
    return _copy(tiny_lung_bundle, tmp_path_factory.mktemp("ort") / "lung")


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    """A CT of 64 x 32 x 16 voxels at the tiny bundle's spacing (2, 2, 3 mm): three 32 x 32 x 16 windows at overlap
    0.5 along x, so batches of two and one."""
    array = np.random.default_rng(0).normal(-400.0, 350.0, (16, 32, 64)).astype(np.int16)  # (z, y, x)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 3.0))
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def _logits(engine: BundleInferer, item: dict) -> torch.Tensor:
    """The inferer's output for ``item``, as :meth:`BundleInferer.__call__` computes it before postprocessing."""
    data = engine.preprocessing(dict(item))
    with torch.inference_mode():
        out = engine.inferer(data["image"].unsqueeze(0).to(engine.device), engine.network)
    return torch.as_tensor(out).float().clone()


def _assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    scale = float(expected.abs().max())
    assert scale > 0
    error = float((got - expected).abs().max())
    assert error <= TOLERANCE * scale, f"max |onnxruntime - torch| = {error:.3g} (scale {scale:.3g})"


def _spy_batches(monkeypatch) -> list[tuple[int, ...]]:
    """Record the input shape of every ONNX Runtime call."""
    shapes = []
    original = OnnxRuntimeNetwork.forward

    def forward(self, x):
        shapes.append(tuple(x.shape))
        return original(self, x)

    monkeypatch.setattr(OnnxRuntimeNetwork, "forward", forward)
    return shapes


def test_3d_sliding_window_equals_torch(lung, ct, tmp_path, monkeypatch):
    torch_engine = BundleInferer(lung, tmp_path / "torch", precision="fp32")
    ort_engine = BundleInferer(lung, tmp_path / "ort", backend="onnxruntime")
    assert torch_engine.backend == "torch" and not isinstance(torch_engine.network, OnnxRuntimeNetwork)
    assert ort_engine.backend == "onnxruntime" and isinstance(ort_engine.network, OnnxRuntimeNetwork)
    shapes = _spy_batches(monkeypatch)
    expected = _logits(torch_engine, {"image": str(ct)})
    got = _logits(ort_engine, {"image": str(ct)})
    _assert_close(got, expected)
    assert sorted(s[0] for s in shapes) == [1, 2] and {s[2:] for s in shapes} == {(32, 32, 16)}, shapes
    written = {}
    for name, engine in (("torch", torch_engine), ("ort", ort_engine)):
        result = engine(str(ct))
        assert result.ok, result.error
        written[name] = sitk.GetArrayFromImage(sitk.ReadImage(result.output))
        engine.close()
    assert np.mean(written["torch"] == written["ort"]) > 0.999
    assert len(shapes) == 4  # the second volume ran through ONNX Runtime too


def test_2d_bundle_equals_torch(tiny_isic_bundle, tmp_path):
    from PIL import Image

    bundle = _copy(tiny_isic_bundle, tmp_path / "isic")
    rgb = np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    image = tmp_path / "ISIC_0000001.png"
    Image.fromarray(rgb).save(image)
    torch_engine = BundleInferer(bundle, tmp_path / "torch")
    ort_engine = BundleInferer(bundle, tmp_path / "ort", backend="onnxruntime")
    item = torch_engine.list_inputs(image)[0]
    _assert_close(_logits(ort_engine, item), _logits(torch_engine, item))
    masks = {}
    for name, engine in (("torch", torch_engine), ("ort", ort_engine)):
        result = engine(item)
        assert result.ok, result.error
        masks[name] = np.asarray(Image.open(result.output))
        engine.close()
    assert np.mean(masks["torch"] == masks["ort"]) > 0.999


def test_tta_runs_through_onnxruntime(lung, ct, tmp_path, monkeypatch):
    shapes = _spy_batches(monkeypatch)
    expected = _logits(BundleInferer(lung, tmp_path / "torch", tta=True), {"image": str(ct)})
    got = _logits(BundleInferer(lung, tmp_path / "ort", tta=True, backend="onnxruntime"), {"image": str(ct)})
    _assert_close(got, expected)
    assert len(shapes) == 2 * 8  # two window batches, each in its eight mirrorings


def test_network_runs_other_batch_and_spatial_sizes(lung, tmp_path):
    from monai.data import MetaTensor

    from tests.pipelines.test_bundle_commands import eager_network

    net = eager_network(lung)
    path = export_onnx(net, tmp_path / "net.onnx", (2, 1, 32, 32, 16))
    session = OnnxRuntimeNetwork(path)
    options = session.session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads() == 1 and options.inter_op_num_threads == 1
    assert session.session.get_providers() == ["CPUExecutionProvider"]
    x = torch.rand(3, 1, 48, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = net(x)
    _assert_close(session(x), expected)
    _assert_close(session(MetaTensor(x)), expected)


class _BatchBaked(torch.nn.Module):
    """Scales its input by the batch size read as a Python number: a trace fixes it at the example's batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(x.shape[0])


def test_export_refuses_a_trace_that_fixed_the_batch(tmp_path):
    with pytest.raises(ValueError, match=r"^the exported model differs from the network by "):
        export_onnx(_BatchBaked(), tmp_path / "baked.onnx", (2, 1, 4, 4))
    assert list(tmp_path.iterdir()) == []  # nothing left under the final name or a temporary one


def _exports(bundle: Path) -> list[Path]:
    return sorted((bundle / "models").glob("*.onnx"))


def test_cache_is_reused_and_rebuilt_when_the_weights_change(tiny_lung_bundle, ct, tmp_path, monkeypatch):
    import pipelines.inferers as inferers

    bundle = _copy(tiny_lung_bundle, tmp_path / "lung")
    weights = bundle / "models" / "model.pt"
    BundleInferer(bundle, tmp_path / "a", backend="onnxruntime").close()
    (first,) = _exports(bundle)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert first.name.startswith(f"model.onnxrt-{digest[:16]}-in1-")
    stamp = first.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    with monkeypatch.context() as patch:
        patch.setattr(inferers, "export_onnx", no_export)
        engine = BundleInferer(bundle, tmp_path / "b", backend="onnxruntime")
    assert engine.network.model_path == first and first.stat().st_mtime_ns == stamp
    engine.close()

    _random_weights(bundle, seed=1)  # retrained: other weights in the same file
    new_digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert new_digest != digest
    engine = BundleInferer(bundle, tmp_path / "c", backend="onnxruntime")
    (second,) = _exports(bundle)  # the first one, of weights that are gone, was removed
    assert second.name.startswith(f"model.onnxrt-{new_digest[:16]}-in1-") and engine.network.model_path == second
    _assert_close(_logits(engine, {"image": str(ct)}),
                  _logits(BundleInferer(bundle, tmp_path / "d"), {"image": str(ct)}))

    second.write_bytes(b"not an ONNX model")  # a file ONNX Runtime cannot load is exported again, not trusted
    engine = BundleInferer(bundle, tmp_path / "e", backend="onnxruntime")
    assert engine.network.model_path == second and second.stat().st_size > 1000


def test_bundle_key_chooses_the_backend(lung, tmp_path):
    chosen = BundleInferer(lung, tmp_path / "a", overrides={"backend": "onnxruntime"})
    assert chosen.backend == "onnxruntime" and isinstance(chosen.network, OnnxRuntimeNetwork)
    overruled = BundleInferer(lung, tmp_path / "b", overrides={"backend": "onnxruntime"}, backend="torch")
    assert overruled.backend == "torch" and not isinstance(overruled.network, OnnxRuntimeNetwork)
    with pytest.raises(ValueError) as error:
        BundleInferer(lung, tmp_path / "c", overrides={"backend": "tensorrt"})
    assert str(error.value) == (f"{lung / 'configs'}: 'backend' must be torch or onnxruntime, got 'tensorrt'")


@pytest.mark.parametrize("kwargs, message", [
    ({"overrides": {"device": "$torch.device('cuda:0')"}},
     "backend onnxruntime runs on the CPU (CPUExecutionProvider), not on cuda:0: use --device cpu, or --backend "
     "torch on a GPU"),
    ({"precision": "bf16"},
     "backend onnxruntime runs the network in fp32, not bf16: use --precision fp32, or --backend torch for bf16"),
    ({"channels_last": True},
     "backend onnxruntime chooses its own memory layout: --channels-last applies to --backend torch"),
])
def test_refusals(lung, tmp_path, kwargs, message):
    with pytest.raises(ValueError) as error:
        BundleInferer(lung, tmp_path / "out", backend="onnxruntime", **kwargs)
    assert str(error.value) == message


def _tuple_network(lung: Path, tmp_path: Path) -> tuple[dict, Path]:
    """MONAI's SegResNetVAE, whose forward returns ``(segmentation, vae_loss)``, and weights that fit it."""
    from monai.networks.nets import SegResNetVAE

    config = {"_target_": "monai.networks.nets.SegResNetVAE", "input_image_size": [32, 32, 16], "spatial_dims": 3,
              "in_channels": 1, "out_channels": 2, "init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]}
    args = {k: v for k, v in config.items() if k != "_target_"}
    weights = tmp_path / "vae.pt"
    torch.save(SegResNetVAE(**args).state_dict(), weights)
    return config, weights


def test_cli_onnxruntime_and_its_refusals(tiny_lung_bundle, ct, tmp_path, capsys, monkeypatch):
    import pipelines.__main__ as cli

    lung = _copy(tiny_lung_bundle, tmp_path / "lung")
    out = tmp_path / "out"
    assert cli.main(["infer", str(lung), str(ct), "--output", str(out), "--backend", "onnxruntime", "--quiet"]) == 0
    assert (out / "ct_seg.nii.gz").is_file()
    assert len(_exports(lung)) == 1  # it ran through the export
    summary = json.loads((out / "inference_summary.json").read_text())
    assert summary["totals"]["written"] == 1
    capsys.readouterr()

    def refused(argv: list[str]) -> str:
        code = cli.main(["infer", str(lung), str(ct), "--output", str(tmp_path / "refused"), "--quiet", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        return err[0]

    assert refused(["--backend", "onnxruntime", "--device", "cuda:0"]) == (
        "error: backend onnxruntime runs on the CPU (CPUExecutionProvider), not on cuda:0: use --device cpu, or "
        "--backend torch on a GPU")
    config, weights = _tuple_network(lung, tmp_path)
    assert refused(["--backend", "onnxruntime", "--weights", str(weights), "--set",
                    f"network_def={json.dumps(config)}"]) == (
        f"error: {lung}: its network does not export to ONNX for the onnxruntime backend (its output is tuple, not "
        "one tensor, which the ONNX backend runs)")

    def unsupported(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::foo' to ONNX opset version 20 is not supported.\nmore")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    for cached in _exports(lung):  # so that the exporter runs
        cached.unlink()
    assert refused(["--backend", "onnxruntime"]) == (
        f"error: {lung}: its network does not export to ONNX for the onnxruntime backend (RuntimeError: Exporting "
        "the operator 'aten::foo' to ONNX opset version 20 is not supported.)")
    assert not list((lung / "models").glob("*onnx*"))  # no partial export left behind
