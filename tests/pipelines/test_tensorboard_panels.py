"""TensorBoard panels and per-class scalars: size, titles, the plane through the lesion, radiological left/right from
the affine, the super-resolution plane with the most structure, and per-class Dice equal to NumPy's.

Every handler runs on a tiny hand-made ignite ``Engine`` whose output is what MONAI's evaluators give after
decollation (a list of dicts); images are read back from the event file where the test is about what is written."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from PIL import Image

from pipelines.engines.handlers import (
    TensorBoardClassMetrics,
    TensorBoardSlices,
    TensorBoardTriplets,
    overlay_panels,
    segmentation_planes,
    structure_index,
    triplet_panel,
)
from pipelines.reports.preview import COLOURS

RED = np.array([int(COLOURS[0][i:i + 2], 16) / 255 for i in (1, 3, 5)])


def _engine(outputs: list) -> Engine:
    """An engine whose iteration ``i`` outputs ``outputs[i]`` (a decollated list of dicts)."""
    return Engine(lambda engine, i: outputs[i])


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def _decode(event) -> np.ndarray:
    """(H, W, 3) float in [0, 1] of a TensorBoard image event."""
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"), dtype=np.float64) / 255.0


def _run_slices(tmp_path, image, label, pred, **kwargs) -> np.ndarray:
    """One TensorBoardSlices panel of one case written through a real SummaryWriter, read back and decoded."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    handler = TensorBoardSlices(writer, **kwargs)
    engine = _engine([[{"image": image, "label": label, "pred": pred}]])
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    writer.close()
    events = _events(tmp_path).Images("val/slices")
    assert len(events) == 1 and events[0].step == 1
    return _decode(events[0])


# ------------------------------------------------------------------------------------------------ size, titles, layout
def test_small_planes_are_enlarged_by_nearest_neighbour_to_at_least_256_pixels():
    rng = np.random.default_rng(0)
    image = rng.random((20, 30))
    label = np.zeros((20, 30), int)
    label[5:9, 5:12] = 1
    pred = np.zeros((20, 30), int)
    pred[6:10, 14:20] = 1
    panel = overlay_panels(image, label, pred, titles=None)
    factor = math.ceil(256 / 20)  # 13: the smallest integer factor reaching 256 rows
    assert panel.shape == (3, 20 * factor, 3 * 30 * factor)
    # each voxel is a factor x factor block of one value (nearest neighbour, no interpolation)
    small = panel[:, ::factor, ::factor]
    np.testing.assert_array_equal(panel, np.repeat(np.repeat(small, factor, axis=1), factor, axis=2))
    # the panels: the image in grey (0.5-99.5 % window), then the label and the prediction filled in red
    lo, hi = np.percentile(image, (0.5, 99.5))
    grey = np.clip((image - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(small[0, :, :30], grey, atol=1e-6)
    for mask, columns in ((label, slice(30, 60)), (pred, slice(60, 90))):
        expected = np.stack([grey * 0.8] * 3)
        expected[:, mask > 0] = 0.4 * expected[:, mask > 0] + 0.6 * RED[:, None]
        np.testing.assert_allclose(small[:, :, columns], expected, atol=1e-6)
    # a plane already 256 rows high is not enlarged
    assert overlay_panels(np.zeros((300, 10)), None, None, titles=None).shape == (3, 300, 30)


def test_titles_are_written_into_the_top_of_each_panel_and_the_three_panels_differ():
    image = np.tile(np.linspace(0, 1, 32), (32, 1))
    label = np.zeros((32, 32), int)
    label[20:28, 4:12] = 1
    pred = np.zeros((32, 32), int)
    pred[18:26, 16:30] = 1
    plain = overlay_panels(image, label, pred, titles=None)
    titled = overlay_panels(image, label, pred)
    height, width = plain.shape[1], plain.shape[2] // 3
    assert height >= 256
    changed = np.abs(titled - plain).max(axis=0) > 0.05
    rows, cols = np.nonzero(changed)
    assert rows.max() < 0.12 * height  # only the title band at the top
    for i in range(3):  # every panel got its title, at its left
        in_panel = (cols >= i * width) & (cols < (i + 1) * width)
        assert in_panel.any() and cols[in_panel].min() < i * width + 0.1 * width
    # the three titles differ ("image", "label", "prediction"), and so do the three panels
    bands = [changed[: int(0.12 * height), i * width:(i + 1) * width] for i in range(3)]
    assert not np.array_equal(bands[0], bands[1]) and not np.array_equal(bands[1], bands[2])
    panels = [titled[:, :, i * width:(i + 1) * width] for i in range(3)]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert np.abs(panels[a] - panels[b]).max() > 0.3


def test_tensorboard_slices_writes_a_titled_panel_at_least_256_pixels_high(tmp_path):
    image = MetaTensor(torch.rand(1, 24, 20, 10), affine=torch.eye(4))
    label = torch.zeros(1, 24, 20, 10)
    label[0, 8:12, 6:10, 4:6] = 1
    pred = torch.zeros(2, 24, 20, 10)  # one-hot, as AsDiscreted(to_onehot=2) gives
    pred[1, 9:13, 6:10, 4:6] = 1
    pred[0] = 1 - pred[1]
    panel = _run_slices(tmp_path, image, label, pred)
    factor = math.ceil(256 / 20)  # the axial plane of a RAS (24, 20, 10) volume is 20 rows (y) by 24 columns (x)
    assert panel.shape == (20 * factor, 3 * 24 * factor, 3)


# ----------------------------------------------------------------------------------------- the plane through the lesion
def test_the_axial_plane_goes_through_the_largest_label_component(tmp_path):
    X, Y, Z = 16, 12, 20
    image = torch.zeros(1, X, Y, Z)  # constant: the grey panel is black, so a label shows as pure colour
    label = torch.zeros(1, X, Y, Z)
    label[0, 2:6, 3:9, 11:16] = 1  # the largest component: 4 x 6 x 5 = 120 voxels, centroid at z = 13
    label[0, 8:16, 0:12, 6] = 1  # a sheet of 8 x 12 = 96 voxels on z = 6: the largest area of any slice, not the lesion
    pred = label.clone()
    panel = _run_slices(tmp_path, MetaTensor(image, affine=torch.eye(4)), label, pred)
    factor = math.ceil(256 / Y)
    label_panel = panel[:, X * factor:2 * X * factor]
    coloured = (label_panel[..., 0] > 0.3) & (label_panel[..., 1] < 0.3)  # the label's red, not the white title
    rows, cols = np.nonzero(coloured[::factor, ::factor])
    # radiological view of a RAS plane: row = Y - 1 - y (anterior up), column = X - 1 - x (patient's right on the left)
    assert set(zip(rows.tolist(), cols.tolist())) == {(Y - 1 - y, X - 1 - x) for x in range(2, 6) for y in range(3, 9)}


def test_without_a_label_the_middle_plane_is_shown():
    X, Y, Z = 6, 5, 9
    volume = np.zeros((1, X, Y, Z))
    volume[0, 1, 1, :] = np.arange(Z)  # a voxel whose value is its slice index
    image, label, pred, z = segmentation_planes(volume, np.zeros((X, Y, Z), int), None)
    assert z == Z // 2 and label is not None and not label.any() and pred is None
    assert image[Y - 1 - 1, X - 1 - 1] == Z // 2
    image, label, _, z = segmentation_planes(volume, None, None)
    assert z == Z // 2 and label is None


# ------------------------------------------------------------------------------------------------------ left and right
def _marker_volume(affine: np.ndarray, shape=(20, 16, 6)) -> np.ndarray:
    """A volume holding one bright block at the patient's right and anterior, found from the affine alone: the voxels
    whose world position (MONAI's RAS: +x towards the patient's right, +y anterior) is in the top quarter of both."""
    index = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    x, y = world[:, 0], world[:, 1]
    right = x >= np.quantile(x, 0.75)
    anterior = y >= np.quantile(y, 0.75)
    volume = np.zeros(shape, dtype=np.float32)
    volume.reshape(-1)[np.flatnonzero(right & anterior)] = 1.0
    return volume


AFFINES = {
    "RAS": np.diag([0.7, 0.7, 1.25, 1.0]),
    "LPS": np.diag([-0.7, -0.7, 1.25, 1.0]),  # as a DICOM series reads without reorientation
    "PLS, axes swapped": np.array([[0, -0.8, 0, 0], [-0.8, 0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1.0]]),
}


@pytest.mark.parametrize("name", [*AFFINES, "LPS, in LPS space"])
def test_radiological_convention_from_the_affine(tmp_path, name):
    affine = AFFINES[name.replace(", in LPS space", "")]
    volume = _marker_volume(affine)
    image = MetaTensor(torch.from_numpy(volume)[None], affine=torch.from_numpy(affine))
    if name.endswith("LPS space"):  # the same voxels, their affine in LPS world coordinates (ITK's, not converted)
        image = MetaTensor(torch.from_numpy(volume)[None], affine=torch.from_numpy(np.diag([-1.0, -1, 1, 1]) @ affine),
                           meta={"space": "LPS"})
    panel = _run_slices(tmp_path / "marker", image, torch.zeros_like(image), torch.zeros_like(image))
    blank = _run_slices(tmp_path / "blank", torch.zeros_like(image), torch.zeros_like(image),
                           torch.zeros_like(image))
    height, width = panel.shape[0], panel.shape[1] // 3
    # the marker: where the image panel differs from the same panel of an empty volume (titles and R/L marks alike)
    rows, cols = np.nonzero(panel[:, :width, 0] - blank[:, :width, 0] > 0.5)
    # the patient's right is on the screen's LEFT, anterior at the top
    assert cols.size and cols.max() < width / 2 - 0.05 * width
    assert rows.max() < height / 2
    # and the R / L marks say so: bright text near the left and right edges at mid-height
    middle = blank[int(0.4 * height):int(0.6 * height), :width, 0] > 0.9
    assert middle[:, : int(0.1 * width)].any() and middle[:, int(0.9 * width):].any()


def test_2d_images_are_shown_as_photographs():
    # MONAI's PIL reader gives (x, y): the marker at small x and small y is the photograph's top left
    image = np.zeros((1, 40, 30))
    image[0, 2:8, 3:9] = 1.0
    shown, _, _, z = segmentation_planes(image, None, None)
    assert z is None and shown.shape == (30, 40)
    rows, cols = np.nonzero(shown)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 8, 2, 7)


# --------------------------------------------------------------------------------------------------- super-resolution
def test_sr_panel_is_the_axial_plane_with_the_most_structure():
    X, Y, Z = 12, 10, 8
    rng = np.random.default_rng(1)
    hr = np.full((1, X, Y, Z), 0.5, dtype=np.float32)
    hr[0, :, :, 5] = rng.random((X, Y))  # structure on one slice only
    hr[0, :, :, 2] = 0.5 + 0.1 * (np.arange(X)[:, None] > 5)  # one faint edge on another
    assert structure_index(hr[0]) == 5
    lr = hr[..., ::2]
    panel = triplet_panel(torch.from_numpy(lr), torch.from_numpy(hr), torch.from_numpy(hr))
    assert panel.shape == (3, Y, 3 * X)
    np.testing.assert_allclose(panel[0, :, 2 * X:], np.flip(hr[0, :, :, 5], (0, 1)).T, atol=1e-6)
    # LR, nearest up-sampled: HR slice 5 lies in LR slice 2 (= HR slice 4, which is flat)
    np.testing.assert_allclose(panel[0, :, :X], 0.5, atol=1e-6)


def test_sr_handler_writes_a_titled_radiological_panel(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    affine = AFFINES["LPS"]
    volume = _marker_volume(affine)
    hr = MetaTensor(torch.from_numpy(volume)[None], affine=torch.from_numpy(affine))
    panels = []
    for name, volume in (("marker", hr), ("blank", torch.zeros_like(hr))):
        writer = SummaryWriter(log_dir=str(tmp_path / name))
        engine = _engine([[{"image": volume[..., ::2], "pred": volume, "label": volume}]])
        TensorBoardTriplets(writer).attach(engine)
        engine.run([0], max_epochs=1)
        writer.close()
        panels.append(_decode(_events(tmp_path / name).Images("val/lr_sr_hr")[0]))
    panel, blank = panels
    height, width = panel.shape[0], panel.shape[1] // 3
    assert height >= 256
    band = int(0.12 * height)  # the titles hold the plane index, which may differ: compare below them
    rows, cols = np.nonzero(panel[band:, 2 * width:, 0] - blank[band:, 2 * width:, 0] > 0.5)  # the HR panel
    assert cols.size and cols.max() < width / 2 and rows.max() + band < height / 2


# -------------------------------------------------------------------------------------------------- per-class scalars
def _one_hot(labels: np.ndarray, classes: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([labels == c for c in range(classes)]).astype(np.float32))


def test_per_class_dice_scalars_equal_numpy(tmp_path):
    from monai.handlers import MeanDice, from_engine
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(2)
    epochs = []
    for _ in range(2):
        cases = []
        for case in range(3):
            label = rng.integers(0, 3, size=(8, 8))
            pred = np.where(rng.random((8, 8)) < 0.7, label, rng.integers(0, 3, size=(8, 8)))
            if case == 1:
                label[label == 2] = 0  # class 2 absent from this case's ground truth: NaN, left out of the mean
            cases.append((pred, label))
        epochs.append(cases)
    expected = []
    for cases in epochs:
        per_class = {}
        for c, name in ((1, "a"), (2, "b")):
            values = []
            for pred, label in cases:
                p, g = pred == c, label == c
                if g.sum() == 0:
                    continue
                values.append(2 * (p & g).sum() / (p.sum() + g.sum()))
            per_class[name] = float(np.mean(values))
        expected.append(per_class)

    writer = SummaryWriter(log_dir=str(tmp_path))
    engine = Engine(lambda e, i: [{"pred": _one_hot(p, 3), "label": _one_hot(g, 3)}
                                  for p, g in [epochs[e.state.epoch - 1][i]]])
    MeanDice(include_background=False, output_transform=from_engine(["pred", "label"])).attach(engine, "val_mean_dice")
    TensorBoardClassMetrics(writer, ["a", "b"]).attach(engine)
    engine.run(range(3), max_epochs=2)
    writer.close()
    acc = _events(tmp_path)
    assert {"val/dice/a", "val/dice/b"} <= set(acc.Tags()["scalars"])
    for name in ("a", "b"):
        events = acc.Scalars(f"val/dice/{name}")
        assert [e.step for e in events] == [1, 2]
        np.testing.assert_allclose([e.value for e in events], [x[name] for x in expected], rtol=1e-5)


def test_class_metrics_refuse_a_wrong_number_of_names_and_skip_an_undefined_class():
    engine = Engine(lambda e, i: None)
    engine.state.metric_details = {"val_mean_dice": torch.tensor([[0.5, float("nan")], [0.7, float("nan")]])}
    assert TensorBoardClassMetrics(None, ["a", "b"]).values(engine) == pytest.approx({"a": 0.6})
    with pytest.raises(ValueError, match="val_mean_dice has 2 channel.*class_names names 3"):
        TensorBoardClassMetrics(None, ["a", "b", "c"]).values(engine)
