"""The classification report: metrics worked out by hand, ROC points, the files, and the Ignite handlers."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image

from pipelines.reports.classification import (
    ClassificationReport,
    ClassificationScore,
    PredictionWriter,
    classification_metrics,
    confusion_matrix,
    roc_curve,
    write_classification_report,
)

# Six images, three classes. Arg-max predictions 0, 1, 1, 1, 2, 0 against labels 0, 0, 1, 1, 2, 2.
PROBS = np.array([[.7, .2, .1], [.3, .6, .1], [.2, .7, .1], [.1, .8, .1], [.1, .2, .7], [.5, .2, .3]])
LABELS = [0, 0, 1, 1, 2, 2]
NAMES = ["a", "b", "c"]


def test_metrics_match_the_values_worked_out_by_hand():
    m = classification_metrics(LABELS, PROBS, NAMES)
    # confusion matrix, rows true: a -> a,b ; b -> b,b ; c -> a,c
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class: a P 1/2 R 1/2 F1 1/2 ; b P 2/3 R 1 F1 0.8 ; c P 1 R 1/2 F1 2/3
    assert [c["f1"] for c in m["per_class"]] == pytest.approx([0.5, 0.8, 2 / 3])
    assert [c["precision"] for c in m["per_class"]] == pytest.approx([0.5, 2 / 3, 1.0])
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    # MCC (Gorodkin): c = 4, s = 6, t = (2, 2, 2), p = (2, 3, 1): (24 - 12) / sqrt((36 - 14)(36 - 12))
    assert m["mcc"] == pytest.approx(12 / math.sqrt(22 * 24))
    # kappa: p_o = 2/3, p_e = 12/36
    assert m["kappa"] == pytest.approx(0.5)
    # AUC one vs rest by counting pairs: a: positives .7 and .3 against .2 .1 .1 .5 -> 7 of 8; b and c separate fully
    assert [c["auc"] for c in m["per_class"]] == pytest.approx([7 / 8, 1.0, 1.0])
    assert m["mean_auc"] == pytest.approx((7 / 8 + 2) / 3)


def test_perfect_and_degenerate_predictions():
    perfect = classification_metrics([0, 1, 2], np.eye(3), NAMES)
    assert perfect["accuracy"] == perfect["macro_f1"] == perfect["mcc"] == perfect["mean_auc"] == 1.0
    # a class absent from the labels has no AUC and stays out of the macro averages
    m = classification_metrics([0, 0, 1, 1], np.array([[.9, .1, 0], [.6, .4, 0], [.3, .7, 0], [.2, .8, 0]]), NAMES)
    assert m["per_class"][2]["auc"] is None and m["per_class"][2]["support"] == 0
    assert m["mean_auc"] == 1.0 and m["macro_f1"] == 1.0
    # always predicting the majority class: accuracy looks fine, macro-F1 and MCC do not
    always = classification_metrics([0] * 8 + [1, 2], np.tile([1.0, 0.0, 0.0], (10, 1)), NAMES)
    assert always["accuracy"] == 0.8 and always["mcc"] == 0.0
    assert always["macro_f1"] == pytest.approx((2 * 8 / (16 + 2)) / 3)
    with pytest.raises(ValueError, match=r"probabilities must be \(N, 3\)"):
        classification_metrics([0, 1], np.zeros((2, 2)), NAMES)


def test_roc_curve_points():
    fpr, tpr = roc_curve(np.array(LABELS) == 0, PROBS[:, 0])
    # scores sorted .7(+) .5(-) .3(+) .2(-) .1(-) .1(-), the tie at .1 gives one point
    assert fpr.tolist() == [0.0, 0.0, 0.25, 0.25, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0, 1.0]
    assert confusion_matrix([1, 1], [0, 1], 2).tolist() == [[0, 0], [1, 1]]


def test_report_files(tmp_path):
    summary = write_classification_report(tmp_path, files=list("uvwxyz"), labels=LABELS, probabilities=PROBS,
                                          class_names=NAMES, extra={"split": "test"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "classification_summary.json", "confusion_matrix.csv", "confusion_matrix.png", "probabilities.csv",
        "roc_curves.png"]
    on_disk = json.loads((tmp_path / "classification_summary.json").read_text())
    assert on_disk["split"] == "test" and on_disk["macro_f1"] == pytest.approx(summary["macro_f1"])
    rows = list(csv.DictReader(open(tmp_path / "probabilities.csv")))
    assert rows[5] == {"file": "z", "true_class": "c", "predicted_class": "a", "a": "0.500000", "b": "0.200000",
                       "c": "0.300000"}
    assert (tmp_path / "confusion_matrix.csv").read_text().splitlines()[3] == "c,1,0,1"
    for png in ("confusion_matrix.png", "roc_curves.png"):
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG" and im.size[0] > 200


class _Writer:
    def __init__(self):
        self.scalars, self.images = {}, {}

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = (value, step)

    def add_image(self, tag, image, step, dataformats="CHW"):
        self.images[tag] = (image.shape, dataformats, step)

    def flush(self):
        pass


def _engine(one_hot: bool) -> Engine:
    """An engine whose outputs look like a decollated SupervisedEvaluator's: two batches of three images."""

    def step(engine, batch):
        engine.state.batch = [{"id": i} for i in batch]
        return [{"pred": torch.tensor(PROBS[i]),
                 "label": torch.eye(3)[LABELS[i]] if one_hot else torch.tensor(LABELS[i])} for i in batch]

    return Engine(step)


@pytest.mark.parametrize("one_hot", [True, False])
def test_report_handler_and_score_metric_on_an_engine(tmp_path, one_hot):
    engine = _engine(one_hot)
    writer = _Writer()
    report = ClassificationReport(NAMES, output_dir=str(tmp_path), summary_writer=writer, tag="test")
    report.attach(engine)
    ClassificationScore("macro_f1", 3, output_transform=lambda o: ([x["pred"] for x in o], [x["label"] for x in o])
                        ).attach(engine, "f1")
    ClassificationScore("mcc", 3, output_transform=lambda o: ([x["pred"] for x in o], [x["label"] for x in o])
                        ).attach(engine, "mcc")
    state = engine.run([[0, 1, 2], [3, 4, 5]], max_epochs=1)
    assert state.metrics["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert state.metrics["mcc"] == pytest.approx(12 / math.sqrt(22 * 24))
    assert report.summary["accuracy"] == pytest.approx(4 / 6)
    files = [r["file"] for r in csv.DictReader(open(tmp_path / "probabilities.csv"))]
    assert files == ["0", "1", "2", "3", "4", "5"]
    assert writer.scalars["test/macro_f1"] == (pytest.approx(state.metrics["f1"]), 1)
    assert {"test/mean_auc", "test/mcc", "test/auc_a", "test/auc_c"} <= set(writer.scalars)
    assert writer.images["test/confusion_matrix"][0][2] == 3 and writer.images["test/roc_curves"][1] == "HWC"
    assert not list(tmp_path.glob(".*partial-*"))


def test_prediction_writer(tmp_path):
    def step(engine, batch):
        engine.state.batch = [{"id": f"img{i}.jpg"} for i in batch]
        return [{"pred": torch.tensor(PROBS[i])} for i in batch]

    engine = Engine(step)
    PredictionWriter(NAMES, str(tmp_path / "out" / "predictions.csv")).attach(engine)
    engine.run([[0, 1], [2, 3], [4, 5]], max_epochs=1)
    rows = list(csv.reader(open(tmp_path / "out" / "predictions.csv")))
    assert rows[0] == ["file", "predicted_class", "a", "b", "c"]
    assert [r[:2] for r in rows[1:]] == [["img0.jpg", "a"], ["img1.jpg", "b"], ["img2.jpg", "b"], ["img3.jpg", "b"],
                                         ["img4.jpg", "c"], ["img5.jpg", "a"]]
