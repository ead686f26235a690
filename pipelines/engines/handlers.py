"""Handlers that MONAI lacks: image panels and per-class metrics in TensorBoard, the learning rate.

The training summary (``TrainingSummary``, with its learning curve) moved to :mod:`pipelines.reports.training`, with
every other report writer; it stays importable from here and from :mod:`pipelines.engines`.

MONAI's ``TensorBoardImageHandler`` writes a 3D volume as an animated GIF of its last axis and cannot put the CT,
the label and the prediction side by side (nor LR | SR | HR for super-resolution, where the images differ in size);
``TensorBoardStatsHandler`` does not log the learning rate, and writes only scalar metrics, so a per-class metric
(MONAI keeps each case's per-class values in ``engine.state.metric_details``) never reaches TensorBoard.

The image panels (:class:`TensorBoardSlices`, :class:`TensorBoardTriplets`) are one RGB image per epoch:

* **size**: at least ``min_height`` (256) pixels high, small patches enlarged by an integer factor, nearest
  neighbour, so that voxels stay sharp blocks;
* **labels**: the panel names are burnt into the image (``image | label | prediction``, ``LR | SR | HR``) with PIL,
  rather than written as separate tags: TensorBoard shows each tag as its own card, sorted by name with its own step
  slider, so separate tags would lose the side-by-side comparison at one epoch that the panel is for;
* **plane**: for segmentation the axial plane through the centroid of the label's largest connected component
  (:func:`pipelines.reports.preview.focus_index`, the plane ``--preview`` uses; the middle plane when the label is
  empty), for super-resolution the axial plane of the HR image with the most structure (the largest in-plane
  gradient energy, :func:`structure_index`), not the middle one, which is flat soft tissue on most scans;
* **orientation**: 3D images are first turned to RAS from their affine (a MONAI ``MetaTensor``'s; a plain tensor is
  taken as RAS, what the bundles' ``Orientationd(axcodes="RAS")`` gives) and then shown in the radiological
  convention, as a scanner console or PACS shows an axial slice: anterior at the top and the patient's right on the
  screen's **left** (:func:`radiological`), marked ``R`` and ``L`` at the edges. 2D images (PNG/JPEG read by MONAI's
  PIL reader, arrays indexed ``(x, y)``) are shown as the photograph is: ``x`` across, ``y`` down.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import orientation_ras_lps

from pipelines.metrics import per_class_means
from pipelines.reports.training import TrainingSummary  # noqa: F401 - moved to pipelines.reports; old import path

__all__ = ["TensorBoardSlices", "TensorBoardTriplets", "TensorBoardClassMetrics", "LearningRateLogger",
           "TrainingSummary", "overlay_panels", "triplet_panel", "segmentation_planes", "radiological", "to_ras",
           "structure_index", "label_panels"]

#: minimum height of a TensorBoard panel in pixels
MIN_PANEL_HEIGHT = 256


def _first_item(output: Any) -> dict | None:
    if isinstance(output, list) and output:
        output = output[0]
    return output if isinstance(output, dict) else None


def _as_labels(x: torch.Tensor) -> np.ndarray:
    """(C, *spatial) one-hot/probabilities or (1, *spatial) labels -> integer label map (*spatial)."""
    x = torch.as_tensor(x).detach().float().cpu()
    return (x.argmax(0) if x.shape[0] > 1 else (x[0] > 0.5 if x.max() <= 1 else x[0])).numpy().astype(np.int64)


def _affine(x: Any) -> np.ndarray | None:
    """The 4 x 4 RAS affine of a 3D ``MetaTensor`` (the first of a batch), else ``None``; an affine in LPS space (meta
    ``space``, as ``ITKReader(affine_lps_to_ras=False)`` gives) is turned to RAS."""
    affine = getattr(x, "affine", None)
    if affine is None:
        return None
    affine = np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=np.float64)
    if affine.ndim == 3:
        affine = affine[0]
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        return None
    if str((getattr(x, "meta", None) or {}).get("space", "RAS")).upper() == "LPS":
        affine = np.asarray(orientation_ras_lps(affine))  # MONAI's LPS <-> RAS flip, as pipelines.io.geometry uses
    return affine


def to_ras(array: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
    """``array`` (spatial axes first, 3 of them) with its axes permuted and flipped so that they run towards the
    patient's right, anterior and superior (the nearest RAS axes of ``affine``, in MONAI's RAS world coordinates;
    nibabel's ``io_orientation``, as ``Orientation(axcodes="RAS")`` does). ``affine=None``: returned as is."""
    if affine is None:
        return np.asarray(array)
    from nibabel.orientations import apply_orientation, io_orientation

    return apply_orientation(np.asarray(array), io_orientation(affine))


def radiological(plane: np.ndarray) -> np.ndarray:
    """An axial plane of a RAS array, indexed ``(x, y)`` (towards the patient's right, anterior), as it is viewed:
    rows from anterior (top) to posterior, columns from the patient's right (left of the screen) to the left."""
    return np.ascontiguousarray(np.flip(np.asarray(plane), (0, 1)).T)


def _rgb_of(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) / 255.0 for i in (1, 3, 5)])


def label_colour(value: int) -> np.ndarray:
    """RGB in [0, 1] of label ``value`` (>= 1), the same in every panel and epoch (the preview's colours)."""
    from pipelines.reports.preview import COLOURS

    return _rgb_of(COLOURS[(int(value) - 1) % len(COLOURS)])


def _enlarge(panel: np.ndarray, min_height: int) -> np.ndarray:
    """``(C, H, W)`` enlarged by the smallest integer factor that makes it ``min_height`` high, nearest neighbour."""
    factor = max(1, math.ceil(min_height / max(panel.shape[1], 1)))
    return panel if factor == 1 else np.repeat(np.repeat(panel, factor, axis=1), factor, axis=2)


def _burn_text(panel: np.ndarray, texts: Sequence[tuple[float, float, str, str]]) -> np.ndarray:
    """Write ``(x, y, anchor, text)`` (x, y as fractions of the width and height, PIL anchors) in white with a black
    outline into the ``(3, H, W)`` float panel; returns a new panel."""
    from PIL import Image, ImageDraw, ImageFont

    height, width = panel.shape[1:]
    size = int(min(24, max(11, height // 16)))
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    image = Image.fromarray((np.clip(panel, 0.0, 1.0).transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    stroke = 1 if isinstance(font, ImageFont.FreeTypeFont) else 0
    for x, y, anchor, text in texts:
        draw.text((x * width, y * height), text, fill=(255, 255, 255), font=font, anchor=anchor,
                  stroke_width=stroke, stroke_fill=(0, 0, 0))
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0


def _titled(panels: Sequence[np.ndarray], titles: Sequence[str] | None, min_height: int,
            sides: tuple[str, str] | None = None) -> np.ndarray:
    """Panels ``(3, H, W)`` enlarged to ``min_height``, each titled at its top left, side by side ``(3, H', n W')``;
    ``sides`` (``("R", "L")``) marks the left and right edges of the first panel."""
    panels = [_enlarge(p, min_height) for p in panels]
    if titles is not None:
        out = []
        for i, (panel, title) in enumerate(zip(panels, titles)):
            texts = [(0.02, 0.015, "la", title)]
            if sides is not None and i == 0:
                texts += [(0.02, 0.5, "lm", sides[0]), (0.98, 0.5, "rm", sides[1])]
            out.append(_burn_text(panel, texts))
        panels = out
    return np.ascontiguousarray(np.concatenate(panels, axis=2), dtype=np.float32)


def _grey(image: np.ndarray) -> np.ndarray:
    """Grey ``(H, W)`` or RGB ``(3, H, W)`` -> ``(3, H, W)`` in [0, 1] through the 0.5-99.5 percentile window."""
    image = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(image, (0.5, 99.5)) if image.size else (0.0, 1.0)
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return image if image.ndim == 3 else np.stack([image] * 3)


def label_panels(image: np.ndarray, label: np.ndarray | None, pred: np.ndarray | None,
                 alpha: float = 0.6) -> list[np.ndarray]:
    """The three ``(3, H, W)`` panels of :func:`overlay_panels`, before enlarging and titles: the image, the image
    with the label and with the prediction, each label value filled in its colour (:func:`label_colour`)."""
    grey = _grey(image)
    panels = [grey]
    for mask in (label, pred):
        rgb = grey * 0.8
        if mask is not None:
            mask = np.asarray(mask)
            for value in np.unique(mask[mask > 0]).tolist():
                where = mask == value
                rgb[:, where] = (1 - alpha) * rgb[:, where] + alpha * label_colour(int(value))[:, None]
        panels.append(rgb)
    return panels


def overlay_panels(image: np.ndarray, label: np.ndarray | None, pred: np.ndarray | None, *,
                   min_height: int = MIN_PANEL_HEIGHT,
                   titles: Sequence[str] | None = ("image", "label", "prediction"),
                   sides: tuple[str, str] | None = None) -> np.ndarray:
    """Three RGB panels side by side, ``(3, H, 3W)`` in [0, 1]: the image, the image with the label, the image with the
    prediction (:func:`label_panels`), enlarged to at least ``min_height`` pixels and titled.

    ``image`` is a grey ``(H, W)`` or RGB ``(3, H, W)`` plane and ``label``/``pred`` ``(H, W)`` label maps, all
    already oriented for viewing (row 0 at the top)."""
    return _titled(label_panels(image, label, pred), titles, min_height, sides)


def segmentation_planes(image: np.ndarray, label: np.ndarray | None, pred: np.ndarray | None,
                        affine: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None,
                                                                   int | None]:
    """The planes :class:`TensorBoardSlices` shows, oriented for viewing, and the axial index (``None`` in 2D).

    ``image`` is ``(C, *spatial)`` with C = 1 (grey) or 3 (RGB), ``label``/``pred`` label maps ``(*spatial)``. 3D:
    turned to RAS by ``affine`` (:func:`to_ras`), the axial plane through the centroid of the label's largest
    connected component (the middle plane when there is no label or it is empty), shown radiologically
    (:func:`radiological`). 2D (MONAI's PIL reader order ``(x, y)``): transposed, ``x`` across and ``y`` down."""
    from pipelines.reports.preview import focus_index

    image = np.asarray(image)
    if image.ndim == 4:
        image = np.stack([to_ras(c, affine) for c in image])
        label, pred = (to_ras(a, affine) if a is not None else None for a in (label, pred))
        z = focus_index(label)[2] if label is not None else image.shape[-1] // 2
        planes = [np.stack([radiological(c[..., z]) for c in image]),
                  *(radiological(a[..., z]) if a is not None else None for a in (label, pred))]
        return planes[0] if planes[0].shape[0] == 3 else planes[0][0], planes[1], planes[2], int(z)
    if image.ndim != 3:
        raise ValueError(f"segmentation panels need (C, H, W) or (C, H, W, D) images, got shape {image.shape}")
    image = np.swapaxes(image, 1, 2)
    label, pred = (np.ascontiguousarray(a.T) if a is not None else None for a in (label, pred))
    return (image if image.shape[0] == 3 else image[0]), label, pred, None


class _EpochPanel:
    """One image panel per epoch: ``_capture`` builds ``self._panel`` from an iteration's output (the first that
    has what it needs), and it is written to TensorBoard at the epoch's end."""

    writer: Any
    tag: str
    _panel: np.ndarray | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._capture)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._panel = None

    def _capture(self, engine: Engine) -> None:
        raise NotImplementedError

    def _write(self, engine: Engine) -> None:
        if self._panel is not None:
            self.writer.add_image(self.tag, self._panel, engine.state.epoch, dataformats="CHW")
            self.writer.flush()


class TensorBoardSlices(_EpochPanel):
    """Log the first validation case of each epoch as one ``image | label | prediction`` panel.

    3D: the axial plane through the label's largest connected component, radiological convention (patient's right on
    the screen's left, marked ``R``/``L``), from the image's affine; 2D: the image as a photograph. See the module
    docstring. Labels are filled in one colour per label value. Attach to an evaluator; the step is the evaluator's
    epoch (the trainer's epoch when run by ``ValidationHandler``).

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``.
        tag: TensorBoard tag.
        image_key, label_key, pred_key: keys of the decollated engine output.
        channel: image channel to show; ``None``: the three channels in colour when there are three (ISIC), else
            the first.
        min_height: the panel's minimum height in pixels.
    """

    def __init__(self, summary_writer, tag: str = "val/slices", image_key: str = "image", label_key: str = "label",
                 pred_key: str = "pred", channel: int | None = None, min_height: int = MIN_PANEL_HEIGHT) -> None:
        self.writer = summary_writer
        self.tag = tag
        self.keys = (image_key, label_key, pred_key)
        self.channel = channel
        self.min_height = int(min_height)
        self._panel: np.ndarray | None = None

    def _capture(self, engine: Engine) -> None:
        if self._panel is not None:
            return
        item = _first_item(engine.state.output)
        if item is None or self.keys[0] not in item:
            return
        source = item[self.keys[0]]
        image = torch.as_tensor(source).detach().float().cpu().numpy()
        if self.channel is not None or image.shape[0] != 3:
            image = image[(self.channel or 0):(self.channel or 0) + 1]
        label = _as_labels(item[self.keys[1]]) if self.keys[1] in item else None
        pred = _as_labels(item[self.keys[2]]) if self.keys[2] in item else None
        image, label, pred, z = segmentation_planes(image, label, pred, _affine(source))
        first = "image" if z is None else f"image (axial {z})"
        self._panel = overlay_panels(image, label, pred, min_height=self.min_height,
                                     titles=(first, "label", "prediction"), sides=None if z is None else ("R", "L"))


def structure_index(volume: np.ndarray) -> int:
    """The index along the last axis of ``volume`` (``(X, Y, Z)``) whose plane has the largest in-plane gradient
    energy (sum of squared differences of neighbouring voxels): the axial slice with the most structure."""
    volume = np.asarray(volume, dtype=np.float64)
    energy = (np.diff(volume, axis=0) ** 2).sum(axis=(0, 1)) + (np.diff(volume, axis=1) ** 2).sum(axis=(0, 1))
    return int(np.argmax(energy))


def triplet_panel(
    lr: torch.Tensor,
    sr: torch.Tensor,
    hr: torch.Tensor,
    slice_axis: int | None = None,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    channel: int = 0,
    *,
    affine: np.ndarray | None = None,
    min_height: int = 0,
    titles: Sequence[str] | None = None,
) -> np.ndarray:
    """LR | SR | HR side by side as one ``(3, H, 3W)`` RGB float image in [0, 1].

    ``lr``, ``sr`` and ``hr`` are channel-first ``(C, *spatial)`` images of one item; ``lr`` is up-sampled to the HR
    size by nearest neighbour so its pixels show as blocks. Three channels are shown in colour, otherwise
    ``channel`` in grey. 2D images (MONAI's PIL reader order ``(x, y)``) are shown as photographs (``x`` across,
    ``y`` down). 3D, ``slice_axis=None``: turned to RAS by ``affine`` (:func:`to_ras`; ``None``: taken as RAS), the
    axial plane (across the last axis, the slice axis that slice-axis super-resolution up-samples) where the HR image
    has the most structure (:func:`structure_index`), in the radiological convention (:func:`radiological`);
    ``slice_axis=k``: the middle plane across spatial axis ``k``, the last axis running upwards (a plane that shows
    the gain along the slice axis). All three panels share ``value_range`` (``None``: the HR image's 0.5-99.5
    percentile window). ``min_height`` enlarges the panels (nearest neighbour) and ``titles`` names them (3D: the
    first title gets the plane, ``"LR (axial 12)"``).
    """
    hr = torch.as_tensor(hr).detach().float().cpu()
    sr = torch.as_tensor(sr).detach().float().cpu()
    lr = torch.as_tensor(lr).detach().float().cpu()
    size = tuple(hr.shape[1:])
    if tuple(sr.shape[1:]) != size:
        raise ValueError(f"SR shape {tuple(sr.shape)} differs from HR shape {tuple(hr.shape)}.")
    lr = torch.nn.functional.interpolate(lr[None], size=size, mode="nearest")[0]
    images = []
    for image in (lr, sr, hr):
        image = image.numpy()
        images.append(image if image.shape[0] == 3 else image[channel: channel + 1])
    plane = None
    if len(size) == 3 and slice_axis is None:
        images = [np.stack([to_ras(c, affine) for c in image]) for image in images]
        z = structure_index(images[2].mean(axis=0))
        images = [np.stack([radiological(c[..., z]) for c in image]) for image in images]
        plane = f"axial {z}"
    elif len(size) == 3:  # (C, H, W, D): middle plane across `slice_axis`, last axis upwards
        images = [np.flip(np.swapaxes(np.take(image, image.shape[1 + slice_axis] // 2, axis=1 + slice_axis), 1, 2),
                          axis=1) for image in images]
        plane = f"axis {slice_axis} middle"
    elif len(size) == 2:
        images = [np.swapaxes(image, 1, 2) for image in images]
    if value_range is None:
        lo, hi = np.percentile(images[2], (0.5, 99.5))
    else:
        lo, hi = value_range
    panels = []
    for image in images:
        image = np.clip((image - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
        panels.append(np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image)
    if titles is not None and plane is not None:
        titles = [f"{titles[0]} ({plane})", *titles[1:]]
    sides = ("R", "L") if plane is not None and plane.startswith("axial") and titles is not None else None
    return _titled(panels, titles, min_height, sides)


class TensorBoardTriplets(_EpochPanel):
    """Write LR (nearest up-sampled) | SR | HR of the first item of each epoch as one titled TensorBoard image.

    For 3D data the shown plane is the axial plane with the most structure, radiological (see :func:`triplet_panel`;
    ``slice_axis=0`` shows the middle plane that contains the slice axis instead). Attach to the super-resolution
    evaluator (its output keys ``"image"``, ``"pred"``, ``"label"``, the defaults) or to the trainer with
    ``lr_key="lr", hr_key="hr"``. The step is the engine's epoch (the trainer's epoch when run by
    ``ValidationHandler``). Rank zero only through the writer passed in
    (:func:`pipelines.engines.tensorboard.rank_zero_summary_writer`).

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``.
        tag: TensorBoard tag.
        lr_key, sr_key, hr_key: keys of the (decollated) engine output.
        slice_axis: for 3D, ``None`` (axial, most structure) or the spatial axis cut at its middle.
        value_range: display window shared by the three panels; ``None`` for the HR percentile window.
        channel: channel shown when the images do not have 3 channels.
        min_height: the panel's minimum height in pixels.
    """

    def __init__(
        self,
        summary_writer,
        tag: str = "val/lr_sr_hr",
        lr_key: str = "image",
        sr_key: str = "pred",
        hr_key: str = "label",
        slice_axis: int | None = None,
        value_range: tuple[float, float] | None = (0.0, 1.0),
        channel: int = 0,
        min_height: int = MIN_PANEL_HEIGHT,
    ) -> None:
        self.writer = summary_writer
        self.tag = tag
        self.keys = (lr_key, sr_key, hr_key)
        self.slice_axis = slice_axis
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        self.channel = channel
        self.min_height = int(min_height)
        self._panel: np.ndarray | None = None

    def _capture(self, engine: Engine) -> None:
        if self._panel is not None:
            return
        output = engine.state.output
        if isinstance(output, dict):  # not decollated: take the first item of the batch
            if not all(k in output for k in self.keys):
                return
            lr, sr, hr = (output[k][0] for k in self.keys)
            affine = _affine(output[self.keys[2]])
        else:
            item = _first_item(output)
            if item is None or not all(k in item for k in self.keys):
                return
            lr, sr, hr = (item[k] for k in self.keys)
            affine = _affine(hr)
        self._panel = triplet_panel(lr, sr, hr, self.slice_axis, self.value_range, self.channel, affine=affine,
                                    min_height=self.min_height, titles=("LR", "SR", "HR"))


class TensorBoardClassMetrics:
    """Write a MONAI metric's value for each class (or region) as its own TensorBoard scalar at each epoch's end.

    MONAI's metric handlers keep each case's per-class values in ``engine.state.metric_details[metric_name]``
    (``(cases, classes)``, gathered from every rank); this writes the mean over cases of each class, cases where the
    class is undefined (NaN: an empty ground truth under MONAI's ``ignore_empty``) left out, as MONAI's
    ``reduction="mean_batch"`` does, to ``<tag>/<class name>`` (``val/dice/nodule``; BraTS ``val/dice/TC``,
    ``val/dice/WT``, ``val/dice/ET``) with the engine's epoch as the step. A class undefined in every case is not
    written. Attach to the evaluator, after its metrics (``val_handlers`` are).

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``.
        class_names: one name per metric channel, in channel order (without the background when the metric
            leaves it out).
        metric_name: the metric of the evaluator (``key_val_metric`` or ``additional_metrics``).
        tag: prefix of the scalars.
    """

    def __init__(self, summary_writer, class_names: Sequence[str], metric_name: str = "val_mean_dice",
                 tag: str = "val/dice") -> None:
        if not class_names:
            raise ValueError("TensorBoardClassMetrics: class_names is empty")
        self.writer = summary_writer
        self.class_names = [str(n) for n in class_names]
        self.metric_name = metric_name
        self.tag = tag.rstrip("/")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def values(self, engine: Engine) -> dict[str, float]:
        """``{class name: mean over cases}`` of this epoch (classes undefined in every case left out)."""
        details = (getattr(engine.state, "metric_details", None) or {}).get(self.metric_name)
        if details is None:
            warnings.warn(f"TensorBoardClassMetrics: the engine has no per-case values of {self.metric_name!r} "
                          "(is it one of its metrics, with save_details=True?)", stacklevel=2)
            return {}
        means = per_class_means(details)
        if len(means) != len(self.class_names):
            raise ValueError(f"TensorBoardClassMetrics: {self.metric_name} has {len(means)} channel(s), "
                             f"class_names names {len(self.class_names)} ({', '.join(self.class_names)})")
        return {name: value for name, value in zip(self.class_names, means) if math.isfinite(value)}

    def __call__(self, engine: Engine) -> None:
        for name, value in self.values(engine).items():
            self.writer.add_scalar(f"{self.tag}/{name}", value, engine.state.epoch)
        self.writer.flush()


class LearningRateLogger:
    """Write the learning rate of each optimiser parameter group to TensorBoard, at the step that used it.

    ``every="epoch"`` logs at ``EPOCH_STARTED`` with the epoch number as the step: the rate the whole epoch trains
    with (an epoch-level ``LrScheduleHandler`` steps at ``EPOCH_COMPLETED``, after it). ``every="iteration"`` logs at
    ``ITERATION_STARTED`` with the iteration number, for schedulers stepped every iteration. Logging at
    ``EPOCH_COMPLETED``, as before, recorded the rate of the *next* epoch under this one's step (a 1-epoch cosine run
    trained at 1e-4 showed 1e-6).
    """

    def __init__(self, summary_writer, optimizer: torch.optim.Optimizer, tag: str = "train/lr",
                 every: str = "epoch") -> None:
        if every not in ("epoch", "iteration"):
            raise ValueError(f"every must be 'epoch' or 'iteration', got {every!r}")
        self.writer = summary_writer
        self.optimizer = optimizer
        self.tag = tag
        self.every = every

    def attach(self, engine: Engine) -> None:
        event = Events.EPOCH_STARTED if self.every == "epoch" else Events.ITERATION_STARTED
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        step = engine.state.epoch if self.every == "epoch" else engine.state.iteration
        for i, group in enumerate(self.optimizer.param_groups):
            tag = self.tag if i == 0 else f"{self.tag}_{i}"
            self.writer.add_scalar(tag, group["lr"], step)
