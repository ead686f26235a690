"""Progress bars: the one decision (a terminal, rank 0, not quiet), Ignite's bars with an ETA on a (fake) terminal and
nothing elsewhere, the bundles' wiring of that decision, the sliding window of ``pipelines infer`` and the disk cache.

Engines are tiny hand-made ignite ``Engine``s; no bundle is trained here."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from pipelines.bundle import workflow_configs
from pipelines.engines.progress import QUIET_ENV, ProgressBars, quiet_requested, show_progress

REPO = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs" / "train.json").is_file())
#: tqdm's "[elapsed<remaining" with the remaining time computed, not "?"
ETA = re.compile(r"\[\d\d:\d\d<\d\d:\d\d")


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Closed(io.StringIO):
    def isatty(self) -> bool:
        raise ValueError("I/O operation on closed file")


# --------------------------------------------------------------------------------------------------------- decision
@pytest.mark.parametrize("stream, quiet, env, expected", [
    (Terminal(), None, {}, True),
    (io.StringIO(), None, {}, False),  # a pipe, a file, pytest's capture
    (Terminal(), True, {}, False),  # --quiet
    (Terminal(), None, {QUIET_ENV: "1"}, False),
    (Terminal(), None, {QUIET_ENV: "yes"}, False),
    (Terminal(), None, {QUIET_ENV: "0"}, True),
    (Terminal(), None, {QUIET_ENV: ""}, True),
    (Terminal(), False, {QUIET_ENV: "1"}, True),  # an explicit quiet=False wins over the environment
    (Terminal(), None, {"RANK": "1"}, False),  # torchrun: rank 0 draws, the others do not
    (Terminal(), None, {"RANK": "0"}, True),
    (object(), None, {}, False),  # no isatty at all
    (Closed(), None, {}, False),
])
def test_show_progress_decision(stream, quiet, env, expected):
    assert show_progress(stream, quiet=quiet, environ=env) is expected


def test_quiet_values():
    assert [quiet_requested({QUIET_ENV: v}) for v in ("1", "true", "ON", "no", "off", "False", "0")] == \
        [True, True, True, False, False, False, False]
    assert quiet_requested({}) is False


def test_default_stream_is_stderr(monkeypatch):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr("sys.stderr", Terminal())
    assert show_progress() is True
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert show_progress() is False


# ------------------------------------------------------------------------------------------------------ engine bars
def _trainer(seconds: float = 0.06) -> Engine:
    def step(engine, batch):
        time.sleep(seconds)
        return [{"loss": torch.tensor(0.25), "pred": torch.zeros(2)}]

    return Engine(step)


def _handlers(engine: Engine) -> int:
    return sum(len(engine._event_handlers[e]) for e in list(engine._event_handlers))


def test_trainer_bars_show_iterations_epochs_loss_and_an_eta_on_a_terminal(monkeypatch):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    from monai.engines import SupervisedEvaluator
    from monai.handlers import ValidationHandler

    terminal = Terminal()
    trainer = _trainer()
    ProgressBars(file=terminal, output_keys=["loss"]).attach(trainer)  # enabled=None: decided on `file`
    # MONAI's evaluator, run by ValidationHandler: its state says epoch k of k, which its bar must not repeat
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=[{"image": torch.zeros(1, 1, 2), "label": 0}] * 2,
                                    epoch_length=2, network=torch.nn.Identity(),
                                    val_handlers=[ProgressBars(file=terminal, desc="validation", epochs=False)])
    ValidationHandler(validator=evaluator, interval=1, epoch_level=True).attach(trainer)
    logger = logging.getLogger("tests.progress")
    console = logging.StreamHandler(__import__("sys").stdout)
    logger.handlers, logger.propagate = [console], False
    seen: list[str] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(type(logger.handlers[0]).__name__))
    trainer.run(range(4), max_epochs=2)
    text = terminal.getvalue()
    assert "train [1/2]: [" in text and "train [2/2]: [" in text  # the iterations of each epoch
    assert "train epochs: [" in text and "/2]" in text  # the epochs of the run
    assert "loss=0.25" in text
    assert ETA.search(text), text[-500:]
    assert "validation: [" in text and "validation [" not in text  # the evaluator: no epoch counter of its own
    # log records go through tqdm while the engine runs (above the bars), and the handler is back afterwards
    assert seen and all(name == "_TqdmLoggingHandler" for name in seen)
    assert logger.handlers == [console]


def test_nothing_is_attached_or_written_when_not_a_terminal_or_quiet(monkeypatch):
    for stream, env in ((io.StringIO(), None), (Terminal(), "1")):
        if env is None:
            monkeypatch.delenv(QUIET_ENV, raising=False)
        else:
            monkeypatch.setenv(QUIET_ENV, env)
        trainer = _trainer(0.0)
        before = _handlers(trainer)
        bars = ProgressBars(file=stream, output_keys=["loss"])
        bars.attach(trainer)
        trainer.run(range(3), max_epochs=2)
        assert not bars.enabled and _handlers(trainer) == before and stream.getvalue() == ""


def test_forced_bars_draw_on_any_stream():
    stream = io.StringIO()
    trainer = _trainer(0.0)
    ProgressBars(enabled=True, file=stream).attach(trainer)
    trainer.run(range(3), max_epochs=1)
    assert "train: [" in stream.getvalue() and "train epochs" not in stream.getvalue()  # one epoch: no epoch bar


def test_a_resumed_run_starts_its_epoch_bar_at_the_epochs_done():
    stream = Terminal()
    trainer = _trainer(0.0)
    ProgressBars(enabled=True, file=stream).attach(trainer)
    trainer.load_state_dict({"epoch": 2, "max_epochs": 4, "epoch_length": 3})
    trainer.run(range(3), max_epochs=4)
    epochs = re.findall(r"train epochs: \[(\d)/4\]", stream.getvalue())
    assert epochs[0] == "2" and "0" not in epochs and "1" not in epochs and epochs[-1] == "4"
    assert "train [3/4]: [" in stream.getvalue() and "train [1/4]" not in stream.getvalue()


# --------------------------------------------------------------------------------------------------- bundle wiring
def _targets(items) -> list[dict]:
    return [h for h in items if isinstance(h, dict)]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_every_bundle_wires_the_decision(bundle, monkeypatch):
    from monai.bundle import ConfigParser

    monkeypatch.delenv(QUIET_ENV, raising=False)
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert train["show_progress"] == {"_target_": "pipelines.engines.progress.show_progress"}
    bars = "pipelines.engines.progress.ProgressBars"
    train_handlers = _targets(train["train"]["handlers"])
    assert train_handlers[0]["_target_"] == bars and train_handlers[0]["enabled"] == "@show_progress"
    val_handlers = _targets(train["validate"]["handlers"])
    assert val_handlers[0]["_target_"] == bars and val_handlers[0]["epochs"] is False
    evaluate = json.loads((bundle / "configs" / "evaluate.json").read_text())
    assert any(h["_target_"] == bars for h in _targets(evaluate["validate#handlers"]))
    stats = [i for i, h in enumerate(train["train"]["handlers"])
             if isinstance(h, dict) and h["_target_"] == "StatsHandler"]
    assert len(stats) == 1

    for shown in (False, True):
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "train.json"))
        if shown:
            parser["show_progress"] = True  # what a terminal gives; under pytest stderr is no terminal
        assert parser.get_parsed_content("show_progress") is shown
        handler = parser.get_parsed_content(f"train#handlers#{stats[0]}")
        assert handler.iteration_log is (not shown)  # per-iteration lines only where there is no bar
        assert handler.epoch_log is True
        assert parser.get_parsed_content("train#handlers#0").enabled is shown

    inference = ConfigParser.load_config_files([str(p) for p in workflow_configs(bundle, "inference")])
    if "SlidingWindow" in json.dumps(inference["inferer"]) or "sr_inferer" in json.dumps(inference["inferer"]):
        if inference["inferer"].get("progress") is not None:
            assert inference["inferer"]["progress"] == "@show_progress"
            parser = ConfigParser()
            parser.read_config([str(p) for p in workflow_configs(bundle, "inference")])
            parser.update({"bundle_root": str(bundle), "show_progress": True})
            assert parser.get_parsed_content("inferer").progress is True


def test_the_volume_bundles_show_their_sliding_window():
    from monai.bundle import ConfigParser

    for name in ("lung_nodule_ct_edu_segmentation", "brats_mri_frcunet_segmentation", "ct_se_esrgan_superresolution"):
        inference = ConfigParser.load_config_files([str(p) for p in workflow_configs(REPO / "bundles" / name,
                                                                                     "inference")])
        assert inference["inferer"]["progress"] == "@show_progress", name
        assert inference["show_progress"]["_target_"] == "pipelines.engines.progress.show_progress"


# ------------------------------------------------------------------------------------------ pipelines infer, the CLI
@pytest.fixture(scope="module")
def random_weights(tiny_lung_bundle, tmp_path_factory) -> Path:
    """Untrained weights of the tiny lung network (the bar does not care what the network predicts)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(p) for p in workflow_configs(tiny_lung_bundle, "inference")])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def test_pipelines_infer_draws_a_sliding_window_bar_per_volume(tiny_lung_bundle, random_weights, luna16_tiny,
                                                               tmp_path, capsys, monkeypatch):
    from pipelines.inference import BundleInferer

    monkeypatch.delenv(QUIET_ENV, raising=False)
    scan = sorted(luna16_tiny[0].glob("subset*/*.mhd"))[0]
    common = {"weights": random_weights, "overrides": {"device": "$torch.device('cpu')", "amp": False}}
    engine = BundleInferer(tiny_lung_bundle, tmp_path / "on", progress=True, **common)
    try:
        assert engine.inferer.progress is True and engine.parser["show_progress"] is True
        capsys.readouterr()
        assert engine(str(scan)).ok
        err = capsys.readouterr().err
        assert "100%" in err and re.search(r"\d+/\d+ \[\d\d:\d\d<\d\d:\d\d", err), err[-500:]
    finally:
        engine.close()
    # a bundle whose inferer does not use @show_progress (its own "progress": false) is switched all the same
    for progress, overrides, expected in ((None, {}, False), (False, {}, False), (None, {"show_progress": True}, True),
                                          (True, {"inferer#progress": False}, True)):
        engine = BundleInferer(tiny_lung_bundle, tmp_path / "off", progress=progress,
                               **{**common, "overrides": {**common["overrides"], **overrides}})
        try:
            assert engine.inferer.progress is expected  # under pytest stderr is no terminal: off by default
            if progress is None and not overrides:  # the default under pytest: no bar written
                capsys.readouterr()
                assert engine(str(scan)).ok
                assert "%|" not in capsys.readouterr().err
        finally:
            engine.close()


def test_quiet_flags_of_infer_and_preprocess(monkeypatch, tmp_path):
    import pipelines.inference
    import pipelines.preprocess
    from pipelines.__main__ import main

    calls: list[dict] = []
    monkeypatch.setattr(pipelines.inference, "infer_volumes", lambda *a, **k: calls.append(k) or [])
    monkeypatch.setattr(pipelines.inference, "write_summary", lambda *a, **k: None)
    assert main(["infer", str(tmp_path), "x.nii.gz", "--output", str(tmp_path / "out"), "--quiet"]) == 0
    assert main(["infer", str(tmp_path), "x.nii.gz", "--output", str(tmp_path / "out")]) == 0
    assert calls[0]["progress"] is False and "progress" not in calls[1]  # default: decided by the terminal

    runs: list[dict] = []
    monkeypatch.setattr(pipelines.preprocess, "preprocess_bundle", lambda *a, **k: runs.append(k) or {})
    assert main(["preprocess", str(tmp_path), "--dataset_dir", str(tmp_path), "--quiet"]) == 0
    assert main(["preprocess", str(tmp_path), "--dataset_dir", str(tmp_path)]) == 0
    assert runs[0]["progress"] is False and runs[1]["progress"] is None


# ------------------------------------------------------------------------------------------------------ disk cache
def test_preprocessing_shows_a_bar_on_a_terminal_and_lines_elsewhere(luna16_tiny, tmp_path, monkeypatch):
    from pipelines.data.disk_cache import preprocess_cases
    from pipelines.data.luna16 import luna16_datalist
    from pipelines.transforms.ct import ct_eval_transforms

    monkeypatch.delenv(QUIET_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    items = luna16_datalist(luna16_tiny[0], tmp_path / "masks", val_fraction=0.0)["training"][:2]
    transform = ct_eval_transforms((4.0, 4.0, 6.0))
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    lines: list[str] = []
    preprocess_cases(items, transform, tmp_path / "bar", progress=lines.append)
    assert lines == [f"preprocess: 2 of 2 cases to write into {tmp_path / 'bar' / 'preprocessed'}"]
    text = terminal.getvalue()
    assert "preprocess: 100%" in text and "2/2" in text and "case" in text and ETA.search(text), text[-300:]

    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)  # not a terminal: one line per case, as before, and no bar
    lines.clear()
    preprocess_cases(items, transform, tmp_path / "lines", progress=lines.append)
    assert len(lines) == 3 and lines[1].startswith("preprocess: [1/2] ") and "s left" in lines[2]
    assert pipe.getvalue() == ""


def test_a_command_line_false_switches_the_bars_off():
    """``--show_progress false`` reaches the handler as the string "false" (fire), which ``bool`` would take for
    true."""
    assert ProgressBars(enabled="false").enabled is False
    assert ProgressBars(enabled="True").enabled is True
    with pytest.raises(ValueError, match=r"^progress bars: enabled must be true or false, got 'maybe'$"):
        ProgressBars(enabled="maybe")
