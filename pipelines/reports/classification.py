"""The classification report a clinician reads: scores, a confusion matrix, ROC curves and per-image probabilities.

``write_classification_report(output_dir, ...)`` writes, all five published together (each at a temporary name, all
renamed once complete, :func:`pipelines.reports.base.publish_together`):

    output_dir/
    ├── classification_summary.json     accuracy, balanced accuracy, macro precision / recall / F1, weighted F1, MCC,
    │                                   Cohen's kappa, mean AUC, and per class: support, precision, recall, F1, AUC
    ├── confusion_matrix.png            counts, coloured by the fraction of each true class (rows)
    ├── confusion_matrix.csv            the same counts, true classes down, predicted across
    ├── roc_curves.png                  one-vs-rest ROC of every class with its AUC in the legend
    └── probabilities.csv               file, true class, predicted class, one probability column per class

What comes from MONAI: per-class one-vs-rest counts and the precision / recall / F1 made from them
(``monai.metrics.get_confusion_matrix`` and ``compute_confusion_matrix_metric``) and the AUC (``compute_roc_auc``).
What MONAI lacks and is written here: the K x K confusion matrix, multi-class MCC (Gorodkin's R_K, MONAI's MCC is
per class, one-vs-rest), Cohen's kappa, the ROC curve points (MONAI returns only the area) and the plots.

``ClassificationReport`` is an Ignite handler for an evaluator (a :class:`~pipelines.reports.base.CollectThenWrite`): it
collects the decollated outputs of a run and, at the run's end, gathers them over the ranks, writes the report (when
given a folder; its five files published together) and logs the scores, the confusion matrix and the ROC curves to
TensorBoard; ``PredictionWriter`` is its inference counterpart (one CSV of per-image probabilities).
``ClassificationScore`` is an Ignite metric (accuracy, macro-F1, MCC, ...) from the accumulated confusion matrix, usable
as an evaluator's key metric; it is reduced across processes in distributed runs.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from pipelines.reports.base import CollectThenWrite, Staging, publish_together

__all__ = [
    "confusion_matrix",
    "scores_from_confusion",
    "roc_curve",
    "classification_metrics",
    "plot_confusion_matrix",
    "plot_roc_curves",
    "write_probabilities_csv",
    "write_classification_report",
    "ClassificationScore",
    "ClassificationReport",
    "PredictionWriter",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- metrics
def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """``(K, K)`` integer counts, true classes down the rows, predicted classes across (MONAI has one-vs-rest only)."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    return np.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def scores_from_confusion(matrix: np.ndarray) -> dict[str, Any]:
    """Scores of a ``(K, K)`` confusion matrix (rows true, columns predicted).

    Per class (one-vs-rest counts through MONAI's ``compute_confusion_matrix_metric``): precision, recall, F1. A
    precision or F1 that is 0/0 (a class never predicted, or absent and never predicted) counts as 0 in the macro
    averages, as scikit-learn's ``zero_division=0``; classes absent from the labels are left out of the macro averages.
    Multi-class MCC is Gorodkin's R_K: ``(c s - sum_k p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2))``, with
    ``c`` the correct count, ``s`` the total, ``p_k`` / ``t_k`` the predicted / true counts of class k (hand-written:
    MONAI's MCC is per class). Cohen's kappa: ``(p_o - p_e) / (1 - p_e)`` (hand-written).
    """
    from monai.metrics import compute_confusion_matrix_metric

    m = np.asarray(matrix, dtype=np.float64)
    k = m.shape[0]
    s = m.sum()
    tp = np.diag(m)
    t = m.sum(1)  # true counts
    p = m.sum(0)  # predicted counts
    fp, fn = p - tp, t - tp
    tn = s - tp - fp - fn
    counts = torch.as_tensor(np.stack([tp, fp, tn, fn], axis=-1))  # MONAI's (C, 4) layout: tp, fp, tn, fn
    precision = np.nan_to_num(compute_confusion_matrix_metric("precision", counts).numpy(), nan=0.0)
    recall = np.nan_to_num(compute_confusion_matrix_metric("sensitivity", counts).numpy(), nan=0.0)
    f1 = np.nan_to_num(compute_confusion_matrix_metric("f1 score", counts).numpy(), nan=0.0)
    present = t > 0
    mean = (lambda v: float(v[present].mean())) if present.any() else (lambda v: 0.0)
    c = tp.sum()
    mcc_den = math.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    expected = _safe_div((p * t).sum(), s * s)
    observed = _safe_div(c, s)
    return {
        "n": int(s),
        "accuracy": observed,
        "balanced_accuracy": mean(recall),
        "macro_precision": mean(precision),
        "macro_recall": mean(recall),
        "macro_f1": mean(f1),
        "weighted_f1": _safe_div((f1 * t).sum(), s),
        "mcc": _safe_div(c * s - (p * t).sum(), mcc_den),
        "kappa": _safe_div(observed - expected, 1.0 - expected),
        "per_class": [
            {"support": int(t[i]), "predicted": int(p[i]), "precision": float(precision[i]),
             "recall": float(recall[i]), "f1": float(f1[i])}
            for i in range(k)
        ],
    }


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of a one-vs-rest ROC curve, one point per distinct score (from (0,0) to (1,1)).

    Hand-written: MONAI's ``compute_roc_auc`` returns the area but not the curve.
    """
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(positive)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    n_pos, n_neg = positive.sum(), (~positive).sum()
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.r_[0.0, np.zeros_like(tps, dtype=float)]
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.r_[0.0, np.zeros_like(fps, dtype=float)]
    return fpr, tpr


def classification_metrics(labels: Sequence[int], probabilities: np.ndarray, class_names: Sequence[str]) -> dict:
    """Every score of the report for integer ``labels`` ``(N,)`` and class ``probabilities`` ``(N, K)``.

    The predicted class is the arg-max of the probabilities. AUC is one-vs-rest per class (MONAI's
    ``compute_roc_auc``), ``None`` for a class that is absent from the labels or the only one present; ``mean_auc``
    is the mean over the classes that have one.
    """
    from monai.metrics import compute_roc_auc

    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    k = len(class_names)
    if probabilities.ndim != 2 or probabilities.shape != (len(labels), k):
        raise ValueError(f"probabilities must be (N, {k}) for N = {len(labels)} labels, got {probabilities.shape}")
    predictions = probabilities.argmax(1) if len(labels) else np.zeros(0, np.int64)
    matrix = confusion_matrix(labels, predictions, k)
    result = scores_from_confusion(matrix)
    aucs: list[float | None] = []
    for i in range(k):
        positive = labels == i
        if positive.all() or not positive.any():
            aucs.append(None)
            continue
        aucs.append(float(compute_roc_auc(torch.as_tensor(probabilities[:, i]),
                                          torch.as_tensor(positive.astype(np.float32)))))
    defined = [a for a in aucs if a is not None]
    result["mean_auc"] = float(np.mean(defined)) if defined else None
    for i, name in enumerate(class_names):
        result["per_class"][i] = {"class": name, **result["per_class"][i], "auc": aucs[i]}
    result["classes"] = list(class_names)
    result["confusion_matrix"] = matrix.tolist()
    return result


# --------------------------------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed: files and TensorBoard only
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix"):
    """A matplotlib figure: counts in the cells, colour = fraction of the true class (row), so rare classes show."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    k = len(class_names)
    rows = matrix.sum(1, keepdims=True)
    fraction = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    size = 2.0 + 0.6 * k
    fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=100)
    im = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), [f"{n} ({int(r)})" for n, r in zip(class_names, rows[:, 0])])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (number of images)")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                    color="white" if fraction[i, j] > 0.5 else "black", fontsize=9)
    fig.tight_layout()
    return fig


def plot_roc_curves(labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str],
                    aucs: Sequence[float | None], title: str = "ROC curves (one vs rest)"):
    """A matplotlib figure with one ROC curve per class that has positives and negatives, AUC in the legend."""
    plt = _pyplot()
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(6.0, 5.5), dpi=100)
    for i, name in enumerate(class_names):
        if aucs[i] is None:
            continue
        fpr, tpr = roc_curve(labels == i, probabilities[:, i])
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {aucs[i]:.3f}, n={int((labels == i).sum())})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _figure_to_rgb(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _save_figure(fig, path: Path, staging: Staging) -> None:
    fig.savefig(staging.path(path), format="png")


# --------------------------------------------------------------------------------------------------- files
def write_probabilities_csv(path: str | os.PathLike, files: Sequence[str], probabilities: np.ndarray,
                            class_names: Sequence[str], labels: Sequence[int] | None = None,
                            staging: Staging | None = None) -> Path:
    """One row per image: ``file, [true_class,] predicted_class, <one probability column per class>``, atomically
    (or joining an open ``staging``)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", *(["true_class"] if labels is not None else []), "predicted_class", *class_names])
    for n, name in enumerate(files):
        row = [name]
        if labels is not None:
            row.append(class_names[int(labels[n])])
        row.append(class_names[int(probabilities[n].argmax())])
        row.extend(f"{v:.6f}" for v in probabilities[n])
        writer.writerow(row)
    with publish_together(staging) as report:
        return report.text(path, buffer.getvalue())


def write_classification_report(output_dir: str | os.PathLike, *, files: Sequence[str], labels: Sequence[int],
                                probabilities: np.ndarray, class_names: Sequence[str],
                                extra: dict | None = None, staging: Staging | None = None) -> dict:
    """Compute :func:`classification_metrics` and write the five report files into ``output_dir``, published
    together (or joining an open ``staging``); return the summary."""
    plt = _pyplot()
    out = Path(output_dir)
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    summary = {**(extra or {}), **classification_metrics(labels, probabilities, class_names)}
    matrix = np.asarray(summary["confusion_matrix"])
    with publish_together(staging) as report:
        report.json(out / "classification_summary.json", summary)  # staged first: renamed last
        write_probabilities_csv(out / "probabilities.csv", files, probabilities, class_names, labels, staging=report)
        report.text(out / "confusion_matrix.csv", "true\\predicted," + ",".join(class_names) + "\n" + "".join(
            f"{name}," + ",".join(str(int(v)) for v in row) + "\n" for name, row in zip(class_names, matrix)))
        for name, fig in (("confusion_matrix.png", plot_confusion_matrix(matrix, class_names)),
                          ("roc_curves.png", plot_roc_curves(labels, probabilities, class_names,
                                                             [c["auc"] for c in summary["per_class"]]))):
            try:
                _save_figure(fig, out / name, report)
            finally:
                plt.close(fig)
    return summary


# --------------------------------------------------------------------------------------------------- engine glue
def _as_probabilities(pred: Any) -> np.ndarray:
    return torch.as_tensor(pred).detach().float().cpu().reshape(-1).numpy()


def _as_label(label: Any) -> int:
    label = torch.as_tensor(label).detach().cpu().reshape(-1)
    return int(label.argmax()) if label.numel() > 1 else int(label[0])


def _item_name(batch_item: Any, output_item: Any, id_key: str, image_key: str) -> str:
    for item in (batch_item, output_item):
        if isinstance(item, dict) and id_key in item:
            return str(item[id_key])
    image = output_item.get(image_key) if isinstance(output_item, dict) else None
    meta = getattr(image, "meta", None) or {}
    return str(meta.get("filename_or_obj", ""))


class ClassificationScore(Metric):
    """An Ignite metric from the accumulated ``(K, K)`` confusion matrix: ``accuracy``, ``balanced_accuracy``,
    ``macro_f1``, ``macro_precision``, ``macro_recall``, ``weighted_f1``, ``mcc`` or ``kappa``.

    ``output_transform`` gives ``(preds, labels)``: lists of per-image probabilities ``(K,)`` and labels (an index or
    a one-hot ``(K,)``), as ``monai.handlers.from_engine(["pred", "label"])`` does on decollated outputs. Under
    ``torch.distributed`` the matrix is summed over the processes before the score is computed. Written here because
    MONAI's ``ConfusionMatrix`` handler averages one-vs-rest scores (its "accuracy" is not the multi-class accuracy)
    and has no multi-class MCC.
    """

    def __init__(self, metric: str = "macro_f1", num_classes: int = 2,
                 output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        self.metric = metric
        self.num_classes = int(num_classes)
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64, device=self._device)

    @reinit__is_reduced
    def update(self, output: Sequence) -> None:
        preds, labels = output
        for pred, label in zip(preds, labels):
            self._matrix[_as_label(label), int(np.argmax(_as_probabilities(pred)))] += 1

    @sync_all_reduce("_matrix")
    def compute(self) -> float:
        scores = scores_from_confusion(self._matrix.cpu().numpy())
        if self.metric not in scores or self.metric == "per_class":
            raise ValueError(f"unknown metric {self.metric!r}")
        return float(scores[self.metric])


class _ClassificationRows(CollectThenWrite):
    """One row per image of a classification run: ``(file, label or None, probabilities)``, gathered over the ranks."""

    def __init__(self, pred_key: str, label_key: str | None, id_key: str, image_key: str) -> None:
        super().__init__(gather=True)
        self.pred_key, self.label_key, self.id_key, self.image_key = pred_key, label_key, id_key, image_key

    def rows_of(self, engine: Engine) -> list[tuple[str, int | None, np.ndarray]]:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [None] * len(outputs)
        return [(_item_name(batch_item, item, self.id_key, self.image_key),
                 _as_label(item[self.label_key]) if self.label_key is not None else None,
                 _as_probabilities(item[self.pred_key])) for batch_item, item in zip(batch, outputs)]

    @staticmethod
    def arrays(rows: list) -> tuple[list[str], np.ndarray, np.ndarray]:
        """File names, labels ``(N,)`` and probabilities ``(N, K)`` of ``rows``."""
        files = [r[0] for r in rows]
        labels = np.asarray([r[1] for r in rows if r[1] is not None], dtype=np.int64)
        k = rows[0][2].shape[0] if rows else 0
        return files, labels, np.asarray([r[2] for r in rows], dtype=np.float64).reshape(-1, k)


class ClassificationReport(_ClassificationRows):
    """At the end of each evaluator run, the full classification report: files and TensorBoard.

    Attach to an evaluator whose postprocessed output has class probabilities under ``pred_key`` (softmax, ``(K,)``)
    and the label under ``label_key`` (an index or one-hot). At ``EPOCH_COMPLETED``:

    - with ``output_dir``: :func:`write_classification_report` (summary JSON, confusion matrix PNG / CSV, ROC PNG,
      per-image probabilities CSV, published together);
    - with ``summary_writer``: scalars ``<tag>/accuracy``, ``macro_f1``, ``mean_auc``, ``mcc``, ``balanced_accuracy``,
      ``auc_<class>``, and the confusion matrix and ROC curves as images ``<tag>/confusion_matrix``,
      ``<tag>/roc_curves``, at step ``engine.state.epoch`` (the trainer's epoch when run by ``ValidationHandler``).

    In distributed runs the outputs are gathered from every process and rank 0 alone writes
    (:class:`~pipelines.reports.base.CollectThenWrite`; attach it on every rank). A run without images writes nothing.

    Args:
        class_names: names of the classes in label order.
        output_dir: folder of the report files; ``None`` writes none (TensorBoard only).
        summary_writer: a ``SummaryWriter`` or ``None``.
        tag: TensorBoard tag prefix.
        images_every: log the two figures to TensorBoard every this many epochs (plots cost about a second).
        pred_key, label_key, id_key, image_key: keys of the decollated outputs and batch; the file column is
            ``batch[id_key]`` when present, else the image's ``filename_or_obj``.
        extra: fixed fields added to the summary JSON.
    """

    def __init__(self, class_names: Sequence[str], output_dir: str | None = None, summary_writer: Any = None,
                 tag: str = "val", images_every: int = 1, pred_key: str = "pred", label_key: str = "label",
                 id_key: str = "id", image_key: str = "image", extra: dict | None = None) -> None:
        super().__init__(pred_key, label_key, id_key, image_key)
        self.class_names = list(class_names)
        self.output_dir = output_dir
        self.writer = summary_writer
        self.tag = tag
        self.images_every = max(1, int(images_every))
        self.extra = dict(extra or {})

    def write(self, rows: list, engine: Engine, staging: Staging) -> dict | None:
        if not rows:
            return self.summary
        files, labels, probabilities = self.arrays(rows)
        if self.output_dir is not None:
            return write_classification_report(self.output_dir, files=files, labels=labels,
                                               probabilities=probabilities, class_names=self.class_names,
                                               extra=self.extra, staging=staging)
        return classification_metrics(labels, probabilities, self.class_names)

    def published(self, rows: list, engine: Engine) -> None:
        if not rows:
            return
        _, labels, probabilities = self.arrays(rows)
        epoch = int(engine.state.epoch)
        s = self.summary
        logger.info("%s classification report (%d images): accuracy %.4f, balanced accuracy %.4f, macro-F1 %.4f, "
                    "mean AUC %s, MCC %.4f%s", self.tag, s["n"], s["accuracy"], s["balanced_accuracy"], s["macro_f1"],
                    "n/a" if s["mean_auc"] is None else f"{s['mean_auc']:.4f}", s["mcc"],
                    f", written to {self.output_dir}" if self.output_dir else "")
        if self.writer is None:
            return
        for name in ("accuracy", "balanced_accuracy", "macro_f1", "mean_auc", "mcc", "kappa"):
            if s[name] is not None:
                self.writer.add_scalar(f"{self.tag}/{name}", s[name], epoch)
        for c in s["per_class"]:
            if c["auc"] is not None:
                self.writer.add_scalar(f"{self.tag}/auc_{c['class']}", c["auc"], epoch)
        if (epoch - 1) % self.images_every == 0 or engine.state.max_epochs == epoch:
            plt = _pyplot()
            figures = (("confusion_matrix", plot_confusion_matrix(np.asarray(s["confusion_matrix"]), self.class_names)),
                       ("roc_curves", plot_roc_curves(labels, probabilities, self.class_names,
                                                      [c["auc"] for c in s["per_class"]])))
            for name, fig in figures:
                self.writer.add_image(f"{self.tag}/{name}", _figure_to_rgb(fig), epoch, dataformats="HWC")
                plt.close(fig)
        self.writer.flush()


class PredictionWriter(_ClassificationRows):
    """At the end of an inference run, write ``file, predicted_class, <probabilities>`` for every image to a CSV.

    Attach to the inference evaluator; ``pred_key`` holds the softmax probabilities. The file is written atomically
    (by rank 0, with every rank's images, in distributed runs) and a one-line summary is logged.
    """

    def __init__(self, class_names: Sequence[str], path: str, pred_key: str = "pred", id_key: str = "id",
                 image_key: str = "image") -> None:
        super().__init__(pred_key, None, id_key, image_key)
        self.class_names = list(class_names)
        self.path = Path(path)

    def write(self, rows: list, engine: Engine, staging: Staging) -> None:
        files, _, probabilities = self.arrays(rows)
        write_probabilities_csv(self.path, files, probabilities, self.class_names, staging=staging)

    def published(self, rows: list, engine: Engine) -> None:
        files, _, probabilities = self.arrays(rows)
        counts = np.bincount(probabilities.argmax(1), minlength=len(self.class_names)) if len(files) else []
        logger.info("predictions for %d images written to %s (%s)", len(files), self.path,
                    ", ".join(f"{n} {int(c)}" for n, c in zip(self.class_names, counts)))
