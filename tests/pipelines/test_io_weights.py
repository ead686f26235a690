"""The one weights loader (:mod:`pipelines.io.weights`): every checkpoint layout, DDP prefixes and wrappers, load
hooks, and the exact one-line error of each way a file can fail to fit."""

from __future__ import annotations

import torch
import pytest
from ignite.engine import Engine

from pipelines.io.weights import STATE_DICT_KEYS, WeightsLoader, load_weights, read_state_dict

HINT = "(was the network or one of its settings changed after these weights were trained?)"
LAYOUTS = "'generator', 'network', 'model' or 'state_dict'"


def _net(width: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.BatchNorm1d(width))


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _Evil:
    """Unpickling it would create a file: the proof that a refused file never ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ---------------------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout", ["plain", "generator", "network", "model", "state_dict"])
def test_every_checkpoint_layout_loads_the_same_weights(tmp_path, layout):
    source = _net(seed=1)
    state = source.state_dict()
    content = state if layout == "plain" else {layout: state, "optimizer": {"state": {}, "param_groups": []},
                                               "epoch": 3}
    torch.save(content, tmp_path / "w.pt")
    target = _net(seed=2)
    assert not _same(source, target)
    assert load_weights(target, tmp_path / "w.pt") is target
    assert _same(source, target)


def test_the_first_layout_key_wins_in_a_fixed_order(tmp_path):
    assert STATE_DICT_KEYS == ("generator", "network", "model", "state_dict")
    generator, network = _net(seed=1), _net(seed=2)
    # an SR checkpoint holds the generator and the discriminator; here "network" stands for a second network
    torch.save({"network": network.state_dict(), "generator": generator.state_dict()}, tmp_path / "both.pt")
    assert _same(load_weights(_net(seed=3), tmp_path / "both.pt"), generator)
    torch.save({"state_dict": generator.state_dict(), "model": network.state_dict()}, tmp_path / "two.pt")
    assert _same(load_weights(_net(seed=3), tmp_path / "two.pt"), network)


def test_the_ddp_prefix_is_removed_and_a_wrapped_network_is_loaded_through_its_module(tmp_path):
    source = _net(seed=1)
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ddp.pt")
    state = read_state_dict(tmp_path / "ddp.pt")
    assert list(state) == list(source.state_dict())  # the order of the file, no prefix left
    assert all(v.device.type == "cpu" for v in state.values())
    wrapped = torch.nn.DataParallel(_net(seed=2))  # the same .module rule as DistributedDataParallel
    load_weights(wrapped, tmp_path / "ddp.pt")
    assert _same(wrapped.module, source)
    torch.save(wrapped.state_dict(), tmp_path / "wrapped.pt")  # saved from the wrapper: module.* keys
    assert _same(load_weights(_net(seed=3), tmp_path / "wrapped.pt"), source)


def test_load_hooks_run_before_the_keys_are_compared(tmp_path):
    """A network that folds an older layout of its state dict in (E-DU's up-convolution biases) loads that layout
    strictly: missing and unexpected keys are the ones left after its hooks."""

    class Renamed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Linear(2, 2)
            self.register_load_state_dict_pre_hook(self._legacy)

        @staticmethod
        def _legacy(module, state_dict, prefix, *args):
            for name in ("weight", "bias"):
                if f"{prefix}old.{name}" in state_dict:
                    state_dict[f"{prefix}conv.{name}"] = state_dict.pop(f"{prefix}old.{name}")

    source = Renamed()
    torch.save({f"old.{k.split('.')[1]}": v for k, v in source.state_dict().items()}, tmp_path / "old.pt")
    assert _same(load_weights(Renamed(), tmp_path / "old.pt"), source)


def test_strict_false_leaves_missing_and_unexpected_keys_but_never_a_wrong_shape(tmp_path):
    source = torch.nn.Sequential(torch.nn.Linear(3, 4))
    torch.save({**source.state_dict(), "extra": torch.zeros(1)}, tmp_path / "w.pt")
    bigger = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    untouched = bigger[1].weight.detach().clone()
    load_weights(bigger, tmp_path / "w.pt", strict=False)
    assert torch.equal(bigger[0].weight, source[0].weight) and torch.equal(bigger[1].weight, untouched)
    with pytest.raises(ValueError, match=r"'0\.weight' is \(4, 3\) in the file, \(5, 3\) in the network"):
        load_weights(torch.nn.Sequential(torch.nn.Linear(3, 5)), tmp_path / "w.pt", strict=False)


def test_weights_loader_loads_when_the_engine_starts(tmp_path):
    source, target = _net(seed=1), _net(seed=2)
    torch.save({"model": source.state_dict()}, tmp_path / "model.pt")
    engine = Engine(lambda e, b: None)
    WeightsLoader(tmp_path / "model.pt", target).attach(engine)
    assert not _same(source, target)
    engine.run([0], max_epochs=1)
    assert _same(source, target)
    engine = Engine(lambda e, b: None)
    WeightsLoader(tmp_path / "absent.pt", target).attach(engine)
    with pytest.raises(FileNotFoundError, match="absent.pt: trained weights not found$"):
        engine.run([0], max_epochs=1)


# ---------------------------------------------------------------------------------------------------- errors


def test_a_url_and_a_missing_file_are_refused_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError) as url:
        load_weights(_net(), "https://example.org/g.pt")
    assert str(url.value) == "https://example.org/g.pt: weights must be a local file, not a URL; nothing is downloaded"
    missing = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError) as plain:
        load_weights(_net(), missing)
    assert str(plain.value) == f"{missing}: trained weights not found"
    with pytest.raises(FileNotFoundError) as hinted:
        read_state_dict(missing, missing_hint="train the bundle first, or pass --weights")
    assert str(hinted.value) == f"{missing}: trained weights not found (train the bundle first, or pass --weights)"
    with pytest.raises(FileNotFoundError) as folder:
        read_state_dict(tmp_path)
    assert str(folder.value) == f"{tmp_path}: trained weights not found"


def test_a_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"model": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as refused:
        load_weights(_net(), tmp_path / "evil.pt")
    assert not marker.exists()
    text = str(refused.value)
    assert text.startswith(f"{tmp_path / 'evil.pt'}: not a plain weights file (torch.load with weights_only=True "
                           "refuses it: Unsupported global: GLOBAL ")
    assert text.endswith("); objects other than tensors are never unpickled, since that can run code")
    assert "\n" not in text and "PyTorch 2.6" not in text  # torch's paragraph on defaults is left out


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_file_is_one_line(tmp_path, damage):
    path = tmp_path / "w.pt"
    torch.save(_net().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint" * 8)
    with pytest.raises(ValueError) as refused:
        read_state_dict(path)
    text = str(refused.value)
    assert text.startswith(f"{path}: not a plain weights file (torch.load with weights_only=True refuses it: ")
    assert "\n" not in text
    if damage == "truncated":
        assert "PytorchStreamReader failed reading zip archive" in text


@pytest.mark.parametrize("content, problem", [
    ([torch.zeros(1)], f"holds a list, not a state dict (a dict of tensors, or one under {LAYOUTS})"),
    (3, f"holds an int, not a state dict (a dict of tensors, or one under {LAYOUTS})"),
    ({}, "holds an empty state dict"),
    ({"model": {}}, "holds an empty state dict"),
    ({"weight": torch.zeros(1), "epoch": 3},
     f"entry 'epoch' holds an int, not a tensor: not a state dict (a dict of tensors, or one under {LAYOUTS})"),
    ({"optimizer": {"lr": 0.1}},  # a checkpoint without any network
     f"entry 'optimizer' holds a dict, not a tensor: not a state dict (a dict of tensors, or one under {LAYOUTS})"),
])
def test_what_is_not_a_state_dict_is_named(tmp_path, content, problem):
    torch.save(content, tmp_path / "w.pt")
    with pytest.raises(ValueError) as refused:
        read_state_dict(tmp_path / "w.pt")
    assert str(refused.value) == f"{tmp_path / 'w.pt'}: {problem}"


def test_weights_that_do_not_fit_name_the_count_and_the_first_bad_key(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).state_dict(), path)
    with pytest.raises(ValueError) as shape:
        load_weights(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 3)), path)
    assert str(shape.value) == f"{path}: does not fit the network: '1.weight' is (2, 4) in the file, (3, 4) in the " \
        f"network {HINT}"
    with pytest.raises(ValueError) as missing:
        load_weights(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2), torch.nn.Linear(2, 2)), path)
    assert str(missing.value) == f"{path}: does not fit the network: 2 of its key(s) missing from the file, the " \
        f"first '2.weight' {HINT}"
    with pytest.raises(ValueError) as unexpected:
        load_weights(torch.nn.Sequential(torch.nn.Linear(3, 4)), path)
    assert str(unexpected.value) == f"{path}: does not fit the network: 2 key(s) in the file that the network does " \
        f"not have, the first '1.weight' {HINT}"


def test_errors_name_the_users_file_not_a_staged_copy(tmp_path):
    staged = tmp_path / ".stage" / "model.pt"
    staged.parent.mkdir()
    torch.save(torch.nn.Linear(3, 4).state_dict(), staged)
    with pytest.raises(ValueError) as refused:
        load_weights(torch.nn.Linear(3, 5), staged, name="my/model.pt")
    assert str(refused.value).startswith("my/model.pt: does not fit the network: 'weight' is (4, 3) in the file")
    with pytest.raises(FileNotFoundError, match=r"^my/absent\.pt: trained weights not found$"):
        read_state_dict(tmp_path / "absent.pt", name="my/absent.pt")
