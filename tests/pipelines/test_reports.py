"""The reports package: its collect-then-write base (rows written once, atomically, by rank 0 only, all files or none),
the segmentation and super-resolution report handlers, the training summary's learning curve, and the old import
paths of every moved name. Values are worked out by hand in the comments."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

import pipelines.reports.base as base
from pipelines.reports.base import CollectThenWrite, Staging
from pipelines.reports.segmentation import SegmentationReport
from pipelines.reports.super_resolution import SuperResolutionReport
from pipelines.reports.training import TrainingSummary
from tests.conftest import tiny_trainer


class _Lines(CollectThenWrite):
    """A report of one line per item: ``summary.txt`` (the row count, staged first) and ``rows.txt``."""

    def __init__(self, folder: Path, fail: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.folder, self.fail = folder, fail
        self.writes, self.seen_while_writing = 0, []

    def rows_of(self, engine: Engine) -> list[str]:
        return [f"{engine.state.epoch}:{x}" for x in engine.state.batch]

    def write(self, rows: list, engine: Engine, staging: Staging) -> dict:
        self.writes += 1
        staging.text(self.folder / "summary.txt", f"{len(rows)}\n")
        staging.text(self.folder / "rows.txt", "".join(f"{r}\n" for r in rows))
        self.seen_while_writing = sorted(p.name for p in self.folder.iterdir())
        if self.fail:
            raise RuntimeError("disk full")
        return {"rows": len(rows)}


def _engine() -> Engine:
    def step(engine, batch):
        engine.state.batch = batch
        return None

    return Engine(step)


def _run(report: CollectThenWrite, max_epochs: int = 1) -> Engine:
    engine = _engine()
    report.attach(engine)
    engine.run([["a", "b"], ["c"]], max_epochs=max_epochs)
    return engine


def test_rows_are_collected_per_iteration_and_written_once_at_the_end(tmp_path):
    report = _Lines(tmp_path)
    _run(report, max_epochs=2)
    assert report.writes == 2  # once per run of the evaluator (one epoch each here)
    # the second epoch's rows only: the rows are emptied when a run starts
    assert (tmp_path / "rows.txt").read_text() == "2:a\n2:b\n2:c\n"
    assert (tmp_path / "summary.txt").read_text() == "3\n" and report.summary == {"rows": 3}
    # while the report was being written, only temporary files existed besides the first epoch's report
    assert [n for n in report.seen_while_writing if not n.startswith(".")] == ["rows.txt", "summary.txt"]
    assert sum(".partial-" in n for n in report.seen_while_writing) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.txt", "summary.txt"]  # no temporary file left
    assert report.rows == []


def test_a_run_that_stopped_midway_leaves_no_rows_to_the_next(tmp_path):
    def step(engine, batch):
        engine.state.batch = batch
        if batch == ["boom"]:
            raise RuntimeError("the evaluator failed")

    report, engine = _Lines(tmp_path), Engine(step)
    report.attach(engine)
    with pytest.raises(RuntimeError, match="the evaluator failed"):
        engine.run([["stale"], ["boom"]], max_epochs=1)
    assert report.writes == 0 and report.rows == ["1:stale"]
    engine = _engine()  # the next run (MONAI's evaluators start each run afresh)
    report.attach(engine)
    engine.run([["a"]], max_epochs=1)
    assert (tmp_path / "rows.txt").read_text() == "1:a\n"


def test_nothing_is_published_before_the_report_is_complete(tmp_path):
    report = _Lines(tmp_path)
    _run(report)
    assert report.seen_while_writing and not any(n in ("rows.txt", "summary.txt") for n in report.seen_while_writing)


def test_an_error_while_writing_publishes_no_file_and_keeps_the_earlier_report(tmp_path):
    (tmp_path / "summary.txt").write_text("old summary\n")
    (tmp_path / "rows.txt").write_text("old rows\n")
    with pytest.raises(RuntimeError, match="disk full"):
        _run(_Lines(tmp_path, fail=True))
    assert (tmp_path / "summary.txt").read_text() == "old summary\n"  # neither half of the new report
    assert (tmp_path / "rows.txt").read_text() == "old rows\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.txt", "summary.txt"]


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "is_main_process", lambda: False)
    report = _Lines(tmp_path / "out")
    _run(report)
    assert report.writes == 0 and not (tmp_path / "out").exists() and report.rows == []


def test_the_rows_of_every_rank_are_gathered_in_rank_order(tmp_path, monkeypatch):
    calls = []

    def all_gather_object(parts, rows):  # a world of two ranks; rank 1 evaluated the same items
        calls.append(len(parts))
        parts[0], parts[1] = rows, [f"rank1 {r}" for r in rows]

    monkeypatch.setattr(base, "world_size", lambda: 2)
    monkeypatch.setattr(base.dist, "all_gather_object", all_gather_object)
    _run(_Lines(tmp_path))
    assert calls == [2]
    assert (tmp_path / "rows.txt").read_text() == "1:a\n1:b\n1:c\nrank1 1:a\nrank1 1:b\nrank1 1:c\n"
    # gather=False (a handler on rank 0 alone, whose rows are reduced already): no collective call
    _run(_Lines(tmp_path / "alone", gather=False))
    assert calls == [2] and (tmp_path / "alone" / "rows.txt").read_text() == "1:a\n1:b\n1:c\n"


def test_the_file_staged_first_is_renamed_last(tmp_path, monkeypatch):
    import os

    renamed, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(Path(dst).name), replace(src, dst)))
    _run(_Lines(tmp_path))
    assert renamed == ["rows.txt", "summary.txt"]


def test_a_disabled_report_attaches_nothing(tmp_path):
    report = _Lines(tmp_path, enabled=False)
    _run(report)
    assert report.writes == 0 and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------- segmentation


def _mask(*pixels: tuple[int, int]) -> torch.Tensor:
    lesion = torch.zeros(4, 4)
    for p in pixels:
        lesion[p] = 1
    return torch.stack([1 - lesion, lesion])


def test_segmentation_report_handler_scores_every_case_and_pools_the_pixels(tmp_path):
    """Case a: label = top-left 2 x 2, prediction = the top row: lesion Dice 2*2/(4+4) = 0.5; background 10 shared of
    12 + 12: 5/6. Case b: one pixel each, the same: Dice 1. Pooled lesion counts: tp 2 + 1, fp 2 + 0, fn 2 + 0,
    tn (16 - 6) + 15 = 25: Dice 6/10, Jaccard 3/7, sensitivity 3/5, specificity 25/27."""
    cases = {"a": (_mask((0, 0), (0, 1), (0, 2), (0, 3)), _mask((0, 0), (0, 1), (1, 0), (1, 1))),
             "b": (_mask((2, 2)), _mask((2, 2)))}

    def step(engine, batch):
        engine.state.batch = [{"case": name} for name in batch]
        return [{"pred": cases[name][0], "label": cases[name][1]} for name in batch]

    engine = Engine(step)
    report = SegmentationReport(str(tmp_path), ["background", "lesion"], metrics=("dice",), pooled=True)
    report.attach(engine)
    engine.run([["a"], ["b"]], max_epochs=1)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    dice = {(r["case"], r["class"]): r["dice"] for r in rows}
    assert float(dice["a", "lesion"]) == pytest.approx(0.5) and float(dice["a", "background"]) == pytest.approx(5 / 6)
    assert float(dice["b", "lesion"]) == 1.0 and dice["a", "all"] == ""
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["summary"]["dice"]["lesion"]["mean"] == pytest.approx(0.75)
    pooled = summary["pooled"]["lesion"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"], pooled["tn"]) == (3, 2, 2, 25)
    assert pooled["dice"] == pytest.approx(0.6) and pooled["jaccard"] == pytest.approx(3 / 7)
    assert pooled["sensitivity"] == pytest.approx(0.6) and pooled["specificity"] == pytest.approx(25 / 27)
    assert summary == report.summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "summary.json"]


def test_super_resolution_report_handler_reads_the_evaluators_per_case_values(tmp_path):
    """PSNR 20, 30, 25 dB against interpolation's 18, 31, 24: gain mean(2, -1, 1) = 2/3 dB, network ahead on 2 of 3;
    MSE 0.01, 0.02, 0.03 against 0.02, 0.01, 0.04: lower (better) on 2 of 3."""
    values = {"val_psnr": [20.0, 30.0, 25.0], "val_psnr_interp": [18.0, 31.0, 24.0],
              "val_mse": [0.01, 0.02, 0.03], "val_mse_interp": [0.02, 0.01, 0.04]}

    def step(engine, batch):
        engine.state.batch = [{"name": n} for n in batch]
        seen = engine.state.iteration
        engine.state.metric_details = {k: torch.tensor(v[:seen], dtype=torch.float64)[:, None]
                                       for k, v in values.items()}
        return [{"pred": torch.zeros(1, 2, 2)} for _ in batch]

    engine = Engine(step)
    report = SuperResolutionReport(str(tmp_path), prefix="sr_")
    report.attach(engine)
    engine.run([["img0"], ["img1"], ["img2"]], max_epochs=1)
    rows = list(csv.reader(open(tmp_path / "sr_metrics.csv")))
    assert rows[0] == ["case", "val_psnr", "val_mse", "val_psnr_interp", "val_mse_interp"]  # DEFAULT_METRICS order
    assert rows[1:] == [["img0", "20", "0.01", "18", "0.02"], ["img1", "30", "0.02", "31", "0.01"],
                        ["img2", "25", "0.03", "24", "0.04"]]
    summary = json.loads((tmp_path / "sr_summary.json").read_text())
    assert summary["cases"] == 3 and summary["case_names"] == ["img0", "img1", "img2"]
    assert summary["gain"]["psnr"] == pytest.approx(2 / 3) and summary["gain"]["mse"] == pytest.approx(-0.01 / 3)
    assert summary["network_beats_interpolation"] == pytest.approx({"psnr": 2 / 3, "mse": 2 / 3})
    assert summary["metrics"]["val_psnr"]["mean"] == 25.0 and summary["metrics"]["val_psnr"]["median"] == 25.0


# --------------------------------------------------------------------------------------------- training summary


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _evaluator(clock: _Clock, details: list[list[list[float]]]) -> Engine:
    """A validation evaluator of one iteration (1 s on ``clock``) whose metrics are those of its ``n``-th run."""

    def step(engine, batch):
        clock.now += 1.0
        return None

    evaluator = Engine(step)
    runs = iter(details)

    def metrics(engine):  # attached before the summary, as an evaluator's metric handlers are
        table = torch.tensor(next(runs))
        engine.state.metrics = {"val_mean_dice": float(table.nanmean()), "val_hd95_left_out": 1}
        engine.state.metric_details = {"val_mean_dice": table}

    evaluator.add_event_handler(Events.EPOCH_COMPLETED, metrics)
    return evaluator


# per-case Dice of TC, WT, ET at two validations (NaN: the region is absent from that case)
DETAILS = [[[0.5, float("nan"), 0.2], [0.7, float("nan"), 0.4]], [[0.8, 0.9, 0.6], [0.6, 0.7, float("nan")]]]


def _expect(record: dict, expected: dict) -> None:
    assert set(record) == set(expected)
    for key, value in expected.items():
        assert record[key] == (None if value is None else pytest.approx(value, rel=1e-6)), key


def test_the_training_summary_holds_the_learning_curve_per_region_with_wall_time(tmp_path):
    """The tiny trainer (3 iterations per epoch, 5 s each on a fake clock) validated after each of 2 epochs (1 s):
    records at 3 x 5 + 1 = 16 s and 2 x 16 = 32 s; TC (0.5 + 0.7) / 2 = 0.6 then 0.7, WT undefined (null) then 0.8,
    ET 0.3 then 0.6 (its NaN case left out)."""
    trainer, data = tiny_trainer(tmp_path / "ckpt")
    clock = _Clock(100.0)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: setattr(clock, "now", clock.now + 5.0))
    evaluator = _evaluator(clock, DETAILS)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0], max_epochs=1))
    summary = TrainingSummary(evaluator, str(tmp_path / "eval" / "train_summary.json"), extra={"bundle": "tiny"},
                              class_names=["TC", "WT", "ET"])
    summary.clock = clock
    summary.attach(trainer)
    trainer.run(data, max_epochs=2)
    written = json.loads((tmp_path / "eval" / "train_summary.json").read_text())
    curve = written["learning_curve"]
    assert len(curve) == 2
    _expect(curve[0], {"epoch": 1, "iteration": 3, "wall_s": 16.0, "val_mean_dice": 0.45, "val_hd95_left_out": 1,
                       "val_mean_dice/TC": 0.6, "val_mean_dice/WT": None, "val_mean_dice/ET": 0.3})
    _expect(curve[1], {"epoch": 2, "iteration": 6, "wall_s": 32.0, "val_mean_dice": 3.6 / 5, "val_hd95_left_out": 1,
                       "val_mean_dice/TC": 0.7, "val_mean_dice/WT": 0.8, "val_mean_dice/ET": 0.6})
    assert written["bundle"] == "tiny" and written["epochs"] == 2 and written["iterations"] == 6
    assert written["seconds"] == 32.0 and written["last_metrics"]["val_mean_dice"] == pytest.approx(0.72)


def test_unnamed_channels_are_numbered_and_a_resumed_run_continues_the_curve(tmp_path):
    clock = _Clock(0.0)

    def step(engine, batch):
        clock.now += 5.0

    first, saved = Engine(step), {}
    evaluator = _evaluator(clock, DETAILS)
    first.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0], max_epochs=1))
    summary = TrainingSummary(evaluator, str(tmp_path / "first.json"))
    summary.clock = clock
    summary.attach(first)
    first.add_event_handler(Events.EPOCH_COMPLETED, lambda e: saved.update(summary.state_dict()))  # the checkpoint
    first.run([0, 0], max_epochs=1)  # 2 iterations (10 s) and a validation (1 s): killed after this epoch
    assert saved["wall_s"] == 11.0
    assert set(saved["learning_curve"][0]) >= {"val_mean_dice/0", "val_mean_dice/1", "val_mean_dice/2"}

    clock.now = 500.0  # the run started again later: its time goes on from 11 s
    resumed = Engine(step)
    resumed.load_state_dict({"epoch": 1, "max_epochs": 2, "epoch_length": 2})
    summary = TrainingSummary(evaluator, str(tmp_path / "resumed.json"))
    summary.clock = clock
    summary.load_state_dict(saved)
    resumed.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0], max_epochs=1))
    summary.attach(resumed)
    resumed.run([0, 0])
    curve = json.loads((tmp_path / "resumed.json").read_text())["learning_curve"]
    assert [(r["epoch"], r["iteration"], r["wall_s"]) for r in curve] == [(1, 2, 11.0), (2, 4, 22.0)]
    assert curve[1]["val_mean_dice/1"] == pytest.approx(0.8)


# --------------------------------------------------------------------------------------------- old import paths


def test_every_moved_name_is_importable_from_its_old_path():
    import pipelines.engines
    import pipelines.engines.handlers
    import pipelines.engines.report
    import pipelines.metrics
    import pipelines.reports
    import pipelines.reports.segmentation
    import pipelines.reports.super_resolution
    import pipelines.reports.training

    assert pipelines.engines.report.SegmentationReport is pipelines.reports.segmentation.SegmentationReport
    assert pipelines.engines.report.SuperResolutionReport is pipelines.reports.super_resolution.SuperResolutionReport
    for name in ("HD95", "channel_output", "pooled_scores"):
        assert getattr(pipelines.engines.report, name) is getattr(pipelines.metrics, name), name
    assert pipelines.metrics.segmentation_report is pipelines.reports.segmentation.segmentation_report
    assert pipelines.engines.TrainingSummary is pipelines.reports.training.TrainingSummary
    assert pipelines.engines.handlers.TrainingSummary is pipelines.reports.training.TrainingSummary
    assert pipelines.reports.SegmentationReport is pipelines.reports.segmentation.SegmentationReport
    with pytest.raises(AttributeError):
        pipelines.metrics.no_such_name  # noqa: B018
