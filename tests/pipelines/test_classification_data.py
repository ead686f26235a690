"""Classification data: stratified splits, the ISIC 2018 and class-per-folder layouts, their synthetic writers, bad
inputs, the transforms preset and the optimiser schedule."""

from __future__ import annotations

import csv
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.data.classification import class_counts, class_weights, stratified_split, verify_image
from pipelines.data.image_folder import image_folder_datalist, image_list
from pipelines.data.isic_cls import GROUND_TRUTH_CSV, GROUND_TRUTH_DIR, INPUT_DIR, ISIC_CLASSES, isic2018_datalist
from pipelines.synth.image_folder import write_image_folder
from pipelines.synth.isic_cls import ISIC_FREQUENCIES, class_sizes, write_isic_cls


@pytest.fixture(scope="module")
def isic_small(tmp_path_factory):
    root = tmp_path_factory.mktemp("isic")
    return root, write_isic_cls(root, images=80, size=(32, 24), seed=5)


def _items(counts: dict[int, int]) -> list[dict]:
    return [{"id": f"c{label}_{n:03d}", "label": label} for label, count in counts.items() for n in range(count)]


# ----------------------------------------------------------------------------------------------- stratified split
@pytest.mark.parametrize("fractions, expected", [
    ((0.6, 0.1, 0.3), {0: (60, 10, 30), 1: (12, 2, 6), 2: (4, 1, 2)}),
    ((0.6, 0.15, 0.25), {0: (60, 15, 25), 1: (12, 3, 5), 2: (4, 1, 2)}),
    ((0.5, 0.0, 0.5), {0: (50, 0, 50), 1: (10, 0, 10), 2: (3, 0, 4)}),
])
def test_stratified_split_keeps_the_class_proportions(fractions, expected):
    items = _items({0: 100, 1: 20, 2: 7})
    splits = stratified_split(items, ["a", "b", "c"], fractions=fractions, seed=123)
    for label, sizes in expected.items():
        got = tuple(class_counts(splits[s], 3)[label] for s in ("training", "validation", "test"))
        assert got == sizes
    ids = [i["id"] for s in splits.values() for i in s]
    assert sorted(ids) == sorted(i["id"] for i in items)  # a partition: nothing lost, nothing twice


def test_stratified_split_is_deterministic_and_independent_of_listing_order():
    items = _items({0: 30, 1: 10})
    first = stratified_split(items, ["a", "b"], seed=123)
    again = stratified_split(list(reversed(items)), ["a", "b"], seed=123)
    other = stratified_split(items, ["a", "b"], seed=124)
    assert first == again
    assert [i["id"] for i in first["test"]] != [i["id"] for i in other["test"]]


def test_a_class_with_no_example_in_a_split_is_an_error_or_a_warning(caplog):
    items = _items({0: 20, 1: 2})  # 2 images cannot fill training, validation and test
    with pytest.raises(ValueError, match=r"class 'rare' \(2 images in all\) has none in validation"):
        stratified_split(items, ["common", "rare"], fractions=(0.6, 0.1, 0.3))
    with caplog.at_level(logging.WARNING):
        splits = stratified_split(items, ["common", "rare"], fractions=(0.6, 0.1, 0.3), strict=False)
    assert "has none in validation" in caplog.text
    assert class_counts(splits["training"], 2)[1] == 1 and class_counts(splits["test"], 2)[1] == 1


def test_stratified_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_split(_items({0: 5}), ["a"], fractions=(0.6, 0.1, 0.1))


def test_class_weights_are_balanced_inverse_frequencies():
    items = _items({0: 60, 1: 30, 2: 10})
    assert class_weights(items, 3) == pytest.approx([100 / 180, 100 / 90, 100 / 30])
    assert class_weights(items, 3, power=0.0) == [1.0, 1.0, 1.0]
    assert class_weights(items, 3, power=0.5) == pytest.approx([math.sqrt(100 / 180), math.sqrt(100 / 90),
                                                                math.sqrt(100 / 30)])


# ----------------------------------------------------------------------------------------------- ISIC 2018
def test_synthetic_isic_has_the_real_layout_and_imbalance(isic_small):
    root, written = isic_small
    rows = list(csv.reader(open(root / GROUND_TRUTH_DIR / GROUND_TRUTH_CSV)))
    assert rows[0] == ["image", *ISIC_CLASSES]
    assert len(rows) == 1 + 80 and rows[1][0] == "ISIC_0024306"
    for row in rows[1:]:
        assert sorted(row[1:]) == ["0.0"] * 6 + ["1.0"]
        assert (root / INPUT_DIR / f"{row[0]}.jpg").is_file()
    with Image.open(written[0]["path"]) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (32, 24)
    counts = {name: sum(w["class"] == name for w in written) for name in ISIC_CLASSES}
    assert counts == class_sizes(80, ISIC_FREQUENCIES, 6)
    assert max(counts, key=counts.get) == "NV" and min(counts.values()) >= 6
    assert class_sizes(10015, ISIC_FREQUENCIES, 6)["NV"] == pytest.approx(6705, abs=3)  # the real 67 %


def test_isic_datalist_is_stratified_with_every_class_in_every_split(isic_small):
    root, written = isic_small
    datalist = isic2018_datalist(root)
    assert datalist["classes"] == list(ISIC_CLASSES)
    assert sum(len(datalist[s]) for s in ("training", "validation", "test")) == len(written)
    for split in ("training", "validation", "test"):
        assert all(c > 0 for c in class_counts(datalist[split], 7)), split
    item = datalist["training"][0]
    assert set(item) == {"image", "label", "id"} and item["image"].endswith(item["id"] + ".jpg")
    truth = {w["id"]: w["label"] for w in written}
    assert all(truth[i["id"]] == i["label"] for s in ("training", "test") for i in datalist[s])
    assert isic2018_datalist(root) == datalist  # deterministic


def _copy_isic(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_isic_csv_row_naming_a_missing_image_is_an_error(isic_small, tmp_path):
    root = _copy_isic(isic_small[0], tmp_path / "isic")
    (root / INPUT_DIR / "ISIC_0024310.jpg").unlink()
    with pytest.raises(ValueError, match=r"GroundTruth.csv, line 6: image ISIC_0024310 is not in"):
        isic2018_datalist(root)


def test_isic_row_that_is_not_one_hot_is_an_error(isic_small, tmp_path):
    root = _copy_isic(isic_small[0], tmp_path / "isic")
    path = root / GROUND_TRUTH_DIR / GROUND_TRUTH_CSV
    lines = path.read_text().splitlines()
    lines[3] = lines[3].split(",")[0] + ",1.0,1.0,0.0,0.0,0.0,0.0,0.0"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 4 \(ISIC_0024308\): the class columns must be one-hot"):
        isic2018_datalist(root)
    path.write_text("image,MEL,NV\nISIC_0024306,1.0,0.0\n")
    with pytest.raises(ValueError, match="missing column"):
        isic2018_datalist(root)


def test_isic_unreadable_image_is_an_error_naming_the_file(isic_small, tmp_path):
    root = _copy_isic(isic_small[0], tmp_path / "isic")
    bad = root / INPUT_DIR / "ISIC_0024320.jpg"
    bad.write_bytes(b"this is not a JPEG")
    with pytest.raises(ValueError, match=r"ISIC_0024320.jpg: unreadable image"):
        isic2018_datalist(root)
    truncated = root / INPUT_DIR / "ISIC_0024321.jpg"
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(ValueError, match="unreadable image"):
        verify_image(truncated)
    with pytest.raises(ValueError, match="not found"):
        isic2018_datalist(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------- image folders
@pytest.mark.parametrize("preset, classes, ext, mode", [
    ("kvasir", 8, ".jpg", "RGB"),
    ("covid-ct", 2, ".png", "L"),
])
def test_synthetic_image_folders_and_their_datalist(tmp_path, preset, classes, ext, mode):
    written = write_image_folder(tmp_path, preset=preset, images=classes * 7, size=(24, 24), seed=1)
    datalist = image_folder_datalist(tmp_path, fractions=(0.6, 0.15, 0.25))
    assert datalist["classes"] == sorted(p.name for p in tmp_path.iterdir())
    assert len(datalist["classes"]) == classes
    assert sum(len(datalist[s]) for s in ("training", "validation", "test")) == len(written)
    with Image.open(written[0]["path"]) as im:
        assert im.mode == mode and written[0]["path"].suffix == ext
    for split in ("training", "validation", "test"):
        assert all(c > 0 for c in class_counts(datalist[split], classes))
    assert datalist["training"][0]["id"].startswith(datalist["classes"][datalist["training"][0]["label"]] + "/")
    assert len(image_list(tmp_path)) == len(written)


def test_image_folder_errors(tmp_path):
    write_image_folder(tmp_path, preset="covid-ct", images=12, size=(16, 16), seed=1)
    (tmp_path / "CT_COVID" / "notes.txt").write_text("ignored")
    assert len(image_folder_datalist(tmp_path, fractions=(0.5, 0.0, 0.5))["training"]) == 6
    with pytest.raises(ValueError, match="no folder for class"):
        image_folder_datalist(tmp_path, classes=["CT_COVID", "CT_Pneumonia"])
    (tmp_path / "CT_COVID" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"broken.png: unreadable image"):
        image_folder_datalist(tmp_path)
    with pytest.raises(ValueError, match="no class folder with images"):
        image_folder_datalist(tmp_path / "CT_COVID")


# ----------------------------------------------------------------------------------------------- transforms, schedule
def test_classification_transforms_give_normalised_square_rgb(isic_small, tmp_path):
    from pipelines.transforms.classification import (
        RandResizedCropd,
        ResizeShortSided,
        classification_eval_transforms,
        classification_train_transforms,
    )

    item = isic2018_datalist(isic_small[0])["training"][0]
    train = classification_train_transforms(image_size=32)
    train.set_random_state(0)
    out = train(item)
    assert out["image"].shape == (3, 32, 32) and out["label"] == item["label"]
    assert -1.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((20, 30), 255, np.uint8), "L").save(gray)
    out = classification_eval_transforms(image_size=16, resize_size=18)({"image": str(gray)})
    assert out["image"].shape == (3, 16, 16) and torch.allclose(out["image"], torch.ones(1))  # white -> +1
    # the shorter side goes to 18 and the aspect ratio is kept: 20 x 30 -> 18 x 27
    assert ResizeShortSided("image", 18)({"image": torch.zeros(3, 20, 30)})["image"].shape == (3, 18, 27)
    crop = RandResizedCropd("image", 8, scale=(0.2, 0.5), ratio=(0.75, 4 / 3))
    for seed in range(20):
        crop.set_random_state(seed)
        crop.randomize((60, 80))
        _, _, h, w = crop._box
        assert 0.2 * 4800 * 0.9 <= h * w <= 0.5 * 4800 * 1.1 and 0.7 <= w / h <= 1.4


def test_warmup_cosine_schedule_and_parameter_groups():
    from pipelines.engines.schedules import param_groups, warmup_cosine

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    groups = param_groups(net, 0.01)
    assert [len(g["params"]) for g in groups] == [2, 4]  # conv and linear weights; biases and the norm's scale/shift
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    scheduler = warmup_cosine(optimizer, warmup_iterations=10, total_iterations=30)
    lrs = []
    for _ in range(31):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-7)  # 1e-3 lr
    assert lrs[5] == pytest.approx(1e-7 + (1e-4 - 1e-7) * 0.5)  # linear half way
    assert lrs[10] == pytest.approx(1e-4)  # peak after one "epoch" of warm-up
    assert lrs[20] == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.5)  # cosine half way
    assert lrs[30] == pytest.approx(1e-6)  # 1e-2 lr at the end
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
