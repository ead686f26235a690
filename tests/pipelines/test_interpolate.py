"""ESRGAN network interpolation (pipelines/interpolate.py, ``python -m pipelines interpolate``).

The blend is checked against NumPy (``(1 - alpha) * a + alpha * b`` in float64, rounded to float32), the end points
for exact equality with the inputs, the file layouts of the SR bundles (``model.pt`` and ``checkpoint.pt``), and the
one-line errors of mismatched networks and missing files.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from networks import RRDBNet
from pipelines.__main__ import main
from pipelines.interpolate import interpolate_files, interpolate_state_dicts
from pipelines.io.weights import read_state_dict


def _generator(seed: int) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(2, 1, 1, features=8, growth_channels=4, num_blocks=1, scale=2)


def _state(seed: int) -> dict[str, torch.Tensor]:
    """A generator's state dict plus a BatchNorm-like integer buffer and a half-precision tensor."""
    g = torch.Generator().manual_seed(seed)
    state = dict(_generator(seed).state_dict())
    state["extra.num_batches_tracked"] = torch.tensor(100 * (seed + 1), dtype=torch.int64)
    state["extra.half"] = torch.randn(3, 4, generator=g).half()
    return state


def _np_blend(a: torch.Tensor, b: torch.Tensor, alpha: float) -> np.ndarray:
    return ((1 - alpha) * a.double().numpy() + alpha * b.double().numpy()).astype(a.numpy().dtype)


def test_alpha_0_and_1_are_the_inputs_exactly():
    psnr, gan = _state(0), _state(1)
    for alpha, side in ((0.0, psnr), (1.0, gan)):
        out = interpolate_state_dicts(psnr, gan, alpha)
        assert list(out) == list(psnr)
        assert all(torch.equal(out[k], side[k]) and out[k].dtype == side[k].dtype for k in side)


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.8])
def test_blend_equals_numpy_and_integer_buffers_come_from_the_nearer_side(alpha):
    psnr, gan = _state(0), _state(1)
    out = interpolate_state_dicts(psnr, gan, alpha)
    for key, a in psnr.items():
        if a.dtype == torch.float32:  # the generators' dtype: the float64 blend rounded once, as NumPy
            assert np.array_equal(out[key].numpy(), _np_blend(a, gan[key], alpha)), key
        elif a.is_floating_point():  # PyTorch casts float64 to float16 through float32: one unit in the last place
            assert out[key].dtype == a.dtype
            expected = _np_blend(a, gan[key], alpha)
            assert (np.abs(out[key].numpy() - expected) <= np.spacing(np.abs(expected))).all(), key
    # num_batches_tracked: PSNR's 100 below alpha 0.5, GAN's 200 from 0.5 on
    assert int(out["extra.num_batches_tracked"]) == (100 if alpha < 0.5 else 200)


def test_blend_is_linear_in_alpha():
    psnr, gan = _state(0), _state(1)
    key = next(k for k, v in psnr.items() if v.is_floating_point() and v.numel() > 50)
    at = {alpha: interpolate_state_dicts(psnr, gan, alpha)[key].double() for alpha in (0.0, 0.25, 0.5, 0.75, 1.0)}
    step = (gan[key].double() - psnr[key].double()) / 4
    for lo, hi in ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)):
        assert torch.allclose(at[hi] - at[lo], step, atol=1e-6)


def test_files_in_the_bundle_layouts_and_the_output_loads_into_the_generator(tmp_path):
    """PSNR side: a CheckpointSaver model.pt (the plain state dict); GAN side: a ResumableCheckpoint checkpoint.pt
    (the generator under "generator", beside the discriminator and trainer state, saved from DDP: "module.")."""
    psnr_net, gan_net = _generator(0), _generator(1)
    torch.save(psnr_net.state_dict(), tmp_path / "model.pt")
    torch.save({"generator": {f"module.{k}": v for k, v in gan_net.state_dict().items()},
                "discriminator": {"w": torch.zeros(2)}, "trainer": {"epoch": 3, "iteration": 30}},
               tmp_path / "checkpoint.pt")
    out = interpolate_files(tmp_path / "model.pt", tmp_path / "checkpoint.pt", 0.8, tmp_path / "blend.pt")
    assert out == tmp_path / "blend.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blend.pt", "checkpoint.pt", "model.pt"]  # no temporary
    blended = torch.load(out, weights_only=True)
    net = _generator(2)
    net.load_state_dict(blended)  # strict: a plain state dict of the generator, as model.pt
    for key, a in psnr_net.state_dict().items():
        assert np.array_equal(blended[key].numpy(), _np_blend(a, gan_net.state_dict()[key], 0.8))
    assert read_state_dict(tmp_path / "checkpoint.pt").keys() == psnr_net.state_dict().keys()


def test_mismatched_networks_give_one_line_naming_the_file_and_key(tmp_path):
    psnr = _state(0)
    key = next(iter(psnr))
    missing = {k: v for k, v in psnr.items() if k != key}
    with pytest.raises(ValueError, match=rf"^gan\.pt: has no key '{key}'") as info:
        interpolate_state_dicts(psnr, missing, 0.5, "psnr.pt", "gan.pt")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"^gan\.pt: key 'other' is not in psnr\.pt"):
        interpolate_state_dicts(psnr, {**psnr, "other": torch.zeros(1)}, 0.5, "psnr.pt", "gan.pt")
    reshaped = {**psnr, key: torch.zeros(7)}
    with pytest.raises(ValueError, match=rf"^gan\.pt: '{key}' has shape \(7,\), psnr\.pt \("):
        interpolate_state_dicts(psnr, reshaped, 0.5, "psnr.pt", "gan.pt")
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        interpolate_state_dicts(psnr, psnr, 1.5)
    # through the files: nothing is written
    torch.save(psnr, tmp_path / "psnr.pt")
    torch.save(reshaped, tmp_path / "gan.pt")
    with pytest.raises(ValueError, match=rf"gan\.pt: '{key}' has shape"):
        interpolate_files(tmp_path / "psnr.pt", tmp_path / "gan.pt", 0.5, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_cli_writes_the_blend(tmp_path, capsys):
    torch.save(_state(0), tmp_path / "psnr.pt")
    torch.save(_state(1), tmp_path / "gan.pt")
    assert main(["interpolate", str(tmp_path / "psnr.pt"), str(tmp_path / "gan.pt"), "--alpha", "0.3",
                 "--out", str(tmp_path / "out.pt")]) == 0
    assert "interpolate: wrote" in capsys.readouterr().out
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    key = "conv_first.weight" if "conv_first.weight" in out else next(iter(out))
    assert np.array_equal(out[key].numpy(), _np_blend(_state(0)[key], _state(1)[key], 0.3))


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    torch.save(_state(0), tmp_path / "psnr.pt")
    torch.save({"not": "a state dict"}, tmp_path / "bad.pt")
    assert main(["interpolate", str(tmp_path / "psnr.pt"), str(tmp_path / "bad.pt"), "--alpha", "0.5",
                 "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: interpolate: ") and "bad.pt" in err and "\n" not in err
    assert main(["interpolate", str(tmp_path / "psnr.pt"), str(tmp_path / "psnr.pt"), "--alpha", "-0.1",
                 "--out", str(tmp_path / "o.pt")]) == 2
    assert "alpha must lie in [0, 1]" in capsys.readouterr().err
    # a missing file: exit code 2 (``python -m pipelines`` exits with main's return value) and one line naming it
    missing = tmp_path / "missing.pt"
    assert main(["interpolate", str(missing), str(tmp_path / "psnr.pt"), "--alpha", "0.5",
                 "--out", str(tmp_path / "o.pt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: interpolate: {missing}: trained weights not found"
    assert not (tmp_path / "o.pt").exists()
