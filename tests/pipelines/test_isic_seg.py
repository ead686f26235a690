"""ISIC 2018 Task 1 data layer, presets and synthetic writer: layout, axis order, sizes and bad inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.data.isic import input_dir, isic_images, isic_seg_datalist, mask_dir
from pipelines.synth.isic import write_isic_seg
from pipelines.transforms.isic import SavePNGMaskd, isic_eval_transforms


@pytest.fixture(scope="module")
def isic(tmp_path_factory):
    root = tmp_path_factory.mktemp("isic")
    return root, write_isic_seg(root, cases=5, seed=2, height=(40, 60))


def _copy(root: Path, tmp_path: Path) -> Path:
    shutil.copytree(root, tmp_path / "data")
    return tmp_path / "data"


def test_layout_datalist_and_image_listing(isic):
    root, written = isic
    datalist = isic_seg_datalist(root, val_fraction=0.2)
    items = datalist["training"] + datalist["validation"]
    assert len(datalist["validation"]) == 1 and len(items) == 5
    for item in items:
        assert Path(item["image"]).parent.name == "ISIC2018_Task1-2_Training_Input"
        assert Path(item["label"]).name == f"{item['name']}_segmentation.png"
        assert Path(item["label"]).parent.name == "ISIC2018_Task1_Training_GroundTruth"
    assert [i["name"] for i in isic_images(root)] == [w.name for w in written]
    assert len(isic_images(input_dir(root))) == 5 and len(isic_images(written[0].image)) == 1
    sizes = {w.size for w in written}
    assert len(sizes) > 1 and all(w > h for w, h in sizes if w != h)  # varying sizes, landscape


def test_synthetic_lesion_is_darker_and_masks_are_binary(isic):
    _, written = isic
    for w in written:
        rgb = np.asarray(Image.open(w.image)).astype(float)
        mask = np.asarray(Image.open(w.mask))
        assert set(np.unique(mask).tolist()) == {0, 255} and mask.shape == (w.size[1], w.size[0])
        lesion, skin = rgb[mask > 0].mean(0), rgb[mask == 0].mean(0)
        assert lesion.sum() < 0.8 * skin.sum() and lesion[0] > lesion[2]  # darker, brownish (red > blue)


def test_image_without_mask(isic, tmp_path):
    root = _copy(isic[0], tmp_path)
    mask = sorted(mask_dir(root).glob("*.png"))[1]
    mask.unlink()
    with pytest.raises(ValueError, match=rf"ISIC_0000001\.jpg: image without a mask \(.*{mask.name} not found\)"):
        isic_seg_datalist(root)


def test_mask_without_image(isic, tmp_path):
    root = _copy(isic[0], tmp_path)
    (input_dir(root) / "ISIC_0000003.jpg").unlink()
    with pytest.raises(ValueError, match=r"ISIC_0000003_segmentation\.png: mask without an image"):
        isic_seg_datalist(root)


def test_mask_of_another_size(isic, tmp_path):
    root = _copy(isic[0], tmp_path)
    path = mask_dir(root) / "ISIC_0000002_segmentation.png"
    Image.open(path).resize((10, 7)).save(path)
    with pytest.raises(ValueError, match=r"ISIC_0000002_segmentation\.png: mask is 10x7 pixels but its image "
                                         r"ISIC_0000002\.jpg is \d+x\d+"):
        isic_seg_datalist(root)


def test_unreadable_image(isic, tmp_path):
    root = _copy(isic[0], tmp_path)
    path = input_dir(root) / "ISIC_0000004.jpg"
    path.write_bytes(path.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(ValueError, match=r"ISIC_0000004\.jpg: not a readable image"):
        isic_seg_datalist(root)
    with pytest.raises(ValueError, match="folder not found"):
        isic_seg_datalist(tmp_path / "nowhere")


def test_preprocessing_and_png_writer_keep_orientation(isic, tmp_path):
    """Load a non-square mask with the preset reader and write it back: the PNG must equal the original."""
    root, written = isic
    item = isic_seg_datalist(root, val_fraction=0.0)["training"][0]
    w, h = Image.open(item["image"]).size
    data = isic_eval_transforms([32, 48])(item)
    assert data["image"].shape == (3, 32, 48) and data["label"].shape == (1, 32, 48)
    assert 0.0 <= float(data["image"].min()) and float(data["image"].max()) <= 1.0
    assert set(data["label"].unique().tolist()) == {0.0, 1.0}
    from monai.transforms import LoadImaged

    original = LoadImaged("label", image_only=True, ensure_channel_first=True)({"label": item["label"]})["label"]
    assert original.shape == (1, w, h)  # MONAI's PIL reader indexes (x, y)
    out = SavePNGMaskd("label", str(tmp_path), threshold=127)({"label": original, "name": item["name"],
                                                               "source": item["image"]})
    assert np.array_equal(np.asarray(Image.open(out["output_path"])), np.asarray(Image.open(item["label"])))
    with pytest.raises(ValueError, match="does not match the image"):
        SavePNGMaskd("label", str(tmp_path))({"label": data["label"], "name": "x", "source": item["image"]})
