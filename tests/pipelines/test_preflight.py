"""Bad training inputs found before the first epoch (``pipelines.data.preflight``), and bad inference inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from pipelines.data import preflight
from pipelines.data.preflight import SKIPPED_FILE, check_datalist, ensure_writable, preflight_datalist


def _volume(path: Path, array=None, *, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), dtype=np.int16) -> str:
    """A small volume; ``array`` in (z, y, x) order."""
    array = np.zeros((6, 8, 10), dtype) if array is None else array
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[: image.GetDimension()])
    image.SetOrigin(origin[: image.GetDimension()])
    sitk.WriteImage(image, str(path))
    return str(path)


def _pair(tmp_path: Path, name: str = "case", **label_kwargs) -> dict:
    image = _volume(tmp_path / f"{name}.nii.gz", np.arange(480, dtype=np.int16).reshape(6, 8, 10))
    label = np.zeros((6, 8, 10), np.uint8)
    label[2:4, 3:5, 4:6] = 1
    return {"image": image, "label": _volume(tmp_path / f"{name}_seg.nii.gz", label, dtype=np.uint8, **label_kwargs),
            "name": name}


def _problems(items, **kwargs) -> list[str]:
    return check_datalist(items, policy="skip", **kwargs)[1]


def _only_problem(items, path, *words, **kwargs) -> str:
    problems = _problems(items, **kwargs)
    assert len(problems) == 1, problems
    assert problems[0].startswith(str(path)), problems  # the line names the file first
    for word in words:
        assert word in problems[0], problems
    return problems[0]


def test_a_good_pair_passes_and_is_kept(tmp_path):
    item = _pair(tmp_path)
    kept, problems = check_datalist([item], label_values=[0, 1])
    assert kept == [item] and problems == []


def test_missing_file(tmp_path):
    item = _pair(tmp_path)
    item["label"] = str(tmp_path / "nowhere_seg.nii.gz")
    _only_problem([item], item["label"], "file not found")


def test_datalist_naming_files_that_do_not_exist_and_an_item_without_a_label(tmp_path):
    items = [{"image": str(tmp_path / "a.nii.gz"), "label": str(tmp_path / "a_seg.nii.gz")}, {"image": "x"}]
    problems = _problems(items)
    assert problems[0].startswith(str(tmp_path / "a.nii.gz")) and "file not found" in problems[0]
    assert problems[1].startswith(str(tmp_path / "a_seg.nii.gz"))
    assert any("item 1" in p and "'label'" in p for p in problems)


def test_truncated_nifti_gz(tmp_path):
    item = _pair(tmp_path)
    data = Path(item["image"]).read_bytes()
    Path(item["image"]).write_bytes(data[: len(data) // 2])
    _only_problem([item], item["image"], "truncated")


def test_truncated_uncompressed_nifti(tmp_path):
    item = _pair(tmp_path)
    item["image"] = _volume(tmp_path / "plain.nii", np.ones((6, 8, 10), np.int16))
    data = Path(item["image"]).read_bytes()
    Path(item["image"]).write_bytes(data[:-100])
    _only_problem([item], item["image"], "truncated")


def test_corrupt_nifti(tmp_path):
    item = _pair(tmp_path)
    Path(item["image"]).write_bytes(b"\x1f\x8b\x08 not a nifti at all")
    _only_problem([item], item["image"], "not a readable image")


def test_truncated_metaimage_raw(tmp_path):
    item = _pair(tmp_path)
    item["image"] = _volume(tmp_path / "scan.mhd", np.ones((6, 8, 10), np.int16))
    raw = tmp_path / "scan.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    _only_problem([item], item["image"], "truncated")


def test_4d_where_3d_is_expected(tmp_path):
    item = _pair(tmp_path)
    volume = sitk.ReadImage(item["image"])
    sitk.WriteImage(sitk.JoinSeries([volume, volume, volume]), str(tmp_path / "series.nii.gz"))
    item["image"] = str(tmp_path / "series.nii.gz")
    _only_problem([item], item["image"], "4D image, expected 3D")


def _png(path: Path, array: np.ndarray, mode: str) -> str:
    Image.fromarray(array, mode=mode).save(path)
    return str(path)


def test_wrong_channel_count_rgb_and_grey_2d(tmp_path):
    rgb = np.full((20, 30, 3), 120, np.uint8)
    grey = np.zeros((20, 30), np.uint8)
    items = [
        {"image": _png(tmp_path / "grey_image.png", grey, "L"), "label": _png(tmp_path / "m1.png", grey, "L")},
        {"image": _png(tmp_path / "rgb_image.png", rgb, "RGB"), "label": _png(tmp_path / "rgb_mask.png", rgb, "RGB")},
    ]
    problems = _problems(items, expect_dims=2, expect_channels={"image": 3, "label": 1})
    assert len(problems) == 2, problems
    assert problems[0].startswith(str(tmp_path / "grey_image.png")) and "1 channel(s) (grey), expected 3 (RGB)" in \
        problems[0]
    assert problems[1].startswith(str(tmp_path / "rgb_mask.png")) and "3 channel(s) (RGB), expected 1" in problems[1]


@pytest.mark.parametrize("change, words", [
    ({"spacing": (1.0, 1.0, 3.0)}, "spacing"),
    ({"origin": (0.0, 5.0, 0.0)}, "origin"),
])
def test_image_and_label_on_different_grids(tmp_path, change, words):
    item = _pair(tmp_path, **change)
    line = _only_problem([item], item["label"], "not on the grid of case.nii.gz", words)
    assert "size [" not in line


def test_image_and_label_of_different_sizes(tmp_path):
    item = _pair(tmp_path)
    item["label"] = _volume(tmp_path / "small_seg.nii.gz", np.zeros((6, 8, 9), np.uint8), dtype=np.uint8)
    _only_problem([item], item["label"], "size [9, 8, 6] != [10, 8, 6]")


@pytest.mark.parametrize("value, words", [(np.nan, "1 NaN and 0 Inf"), (np.inf, "0 NaN and 1 Inf")])
def test_nan_or_inf_intensities(tmp_path, value, words):
    item = _pair(tmp_path)
    array = np.ones((6, 8, 10), np.float32)
    array[1, 2, 3] = value
    item["image"] = _volume(tmp_path / "float.nii.gz", array)
    _only_problem([item], item["image"], words)
    assert check_datalist([item], check_finite=False)[1] == []  # the check can be turned off


def test_finite_check_reads_no_integer_image(tmp_path, monkeypatch):
    """LUNA16 CT (int16) and 8-bit photographs cannot hold NaN: the check costs them no array read."""
    def fail(path):
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(preflight, "read_voxels", fail)
    item = _pair(tmp_path)
    assert check_datalist([item], check_finite=True)[1] == []


def test_empty_label_map_is_a_warning_and_the_item_is_kept(tmp_path, caplog):
    item = _pair(tmp_path)
    item["label"] = _volume(tmp_path / "empty_seg.nii.gz", np.zeros((6, 8, 10), np.uint8), dtype=np.uint8)
    with caplog.at_level(logging.WARNING, logger="pipelines.data.preflight"):
        kept, problems = check_datalist([item], label_values=[0, 1])
    assert kept == [item] and problems == []
    assert "1 empty label map(s) kept as negative examples" in caplog.text and "empty_seg.nii.gz" in caplog.text


def test_label_values_outside_the_convention(tmp_path):
    item = _pair(tmp_path)
    label = np.zeros((6, 8, 10), np.uint8)
    label[1, 1, 1], label[2, 2, 2] = 1, 4
    item["label"] = _volume(tmp_path / "bad_seg.nii.gz", label, dtype=np.uint8)
    _only_problem([item], item["label"], "label value(s) [4] outside the convention [0, 1]", label_values=[0, 1])
    # a callable gives the values per item (BraTS: by the item's naming convention)
    assert check_datalist([item], label_values=lambda it: (0, 1, 2, 4))[1] == []


def test_policy_fail_raises_once_listing_every_problem(tmp_path):
    good = _pair(tmp_path, "good")
    bad1 = _pair(tmp_path, "bad1")
    bad1["image"] = str(tmp_path / "gone.nii.gz")
    bad2 = _pair(tmp_path, "bad2", spacing=(2.0, 2.0, 2.0))
    with pytest.raises(ValueError) as error:
        check_datalist([good, bad1, bad2])  # "fail" is the default
    message = str(error.value)
    assert "2 problem(s) in 2 of 3 datalist item(s)" in message
    lines = message.splitlines()[1:]
    assert len(lines) == 2
    assert lines[0].strip().startswith(str(tmp_path / "gone.nii.gz"))
    assert lines[1].strip().startswith(str(tmp_path / "bad2_seg.nii.gz"))


def test_policy_skip_drops_logs_and_writes_skipped_inputs(tmp_path, caplog):
    good = _pair(tmp_path, "good")
    bad = _pair(tmp_path, "bad")
    Path(bad["label"]).write_bytes(b"garbage")
    out = tmp_path / "eval"
    with caplog.at_level(logging.WARNING, logger="pipelines.data.preflight"):
        kept, problems = check_datalist([good, bad], policy="skip", output_dir=out)
    assert kept == [good] and len(problems) == 1 and problems[0].startswith(bad["label"])
    assert (out / SKIPPED_FILE).read_text() == problems[0] + "\n"
    assert f"skipped: {bad['label']}" in caplog.text
    assert not list(out.glob(".*partial*")), "written atomically"
    # a later clean run rewrites the file: it never describes an older run
    check_datalist([good], policy="skip", output_dir=out)
    assert (out / SKIPPED_FILE).read_text() == ""
    with pytest.raises(ValueError, match="policy"):
        check_datalist([good], policy="ignore")


def test_preflight_datalist_applies_the_policy_over_every_split(tmp_path):
    good, bad = _pair(tmp_path, "good"), _pair(tmp_path, "bad")
    bad["image"] = str(tmp_path / "gone.nii.gz")
    datalist = {"training": [good, bad], "validation": [_pair(tmp_path, "val")], "classes": ["a"]}
    with pytest.raises(ValueError, match="gone.nii.gz"):
        preflight_datalist(datalist)
    out = preflight_datalist(datalist, policy="skip", output_dir=tmp_path / "eval", label_values=[0, 1])
    assert out["training"] == [good] and len(out["validation"]) == 1 and out["classes"] == ["a"]
    assert "gone.nii.gz" in (tmp_path / "eval" / SKIPPED_FILE).read_text()
    with pytest.raises(ValueError, match="no validation item left"):
        preflight_datalist({"training": [good], "validation": [bad]}, policy="skip")


def test_brats_cases_listed_without_validation_are_checked_by_preflight(tmp_path):
    """BraTS: the builder lists (validate=False), preflight reports every bad case with the convention's labels."""
    from pipelines.data.brats import brats_datalist, label_values
    from pipelines.synth.brats import write_brats

    root = tmp_path / "brats"
    write_brats(root, cases=4, seed=1, shape=(16, 16, 12))
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    missing = next(cases[0].glob("*_t2.nii.gz"))
    missing.unlink()
    seg = next(cases[1].glob("*_seg.nii.gz"))
    image = sitk.ReadImage(str(seg))
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 3  # the 2023 ET value in a 2021 data set
    wrong = sitk.GetImageFromArray(array)
    wrong.CopyInformation(image)
    sitk.WriteImage(wrong, str(seg))
    with pytest.raises(ValueError, match=cases[0].name):
        brats_datalist(root)  # the builder alone stops at the first bad case
    datalist = brats_datalist(root, val_fraction=0.4, validate=False)
    with pytest.raises(ValueError) as error:
        preflight_datalist(datalist, expect_dims=3, expect_channels=1, label_values=label_values)
    message = str(error.value)
    assert f"{missing}: file not found" in message
    assert f"{seg}: label value(s) [3] outside the convention [0, 1, 2, 4]" in message
    out = preflight_datalist(datalist, policy="skip", label_values=label_values)
    assert len(out["training"]) + len(out["validation"]) == len(cases) - 2


def test_isic_seg_grey_image_and_01_mask(tmp_path):
    """ISIC: a grey JPEG (the network takes RGB) and a 0/1 mask (binarised at 128 it would be empty) are caught."""
    from pipelines.data.isic import isic_seg_datalist
    from pipelines.synth.isic import write_isic_seg

    written = write_isic_seg(tmp_path, cases=3, seed=1, height=(30, 40))
    Image.open(written[0].image).convert("L").save(written[0].image)
    mask = np.asarray(Image.open(written[1].mask))
    Image.fromarray((mask > 0).astype(np.uint8), mode="L").save(written[1].mask)
    written[2].mask.unlink()
    items = isic_seg_datalist(tmp_path, val_fraction=0.0, validate=False)["training"]
    problems = check_datalist(items, policy="skip", expect_dims=2, expect_channels={"image": 3, "label": 1},
                              check_grids="size", label_values=[0, 255])[1]
    assert len(problems) == 3, problems
    text = "\n".join(problems)
    assert f"{written[0].image}: 1 channel(s) (grey), expected 3 (RGB)" in text
    assert f"{written[1].mask}: label value(s) [1] outside the convention [0, 255]" in text
    assert f"{written[2].mask}: file not found" in text


def test_ensure_writable_names_the_folder(tmp_path):
    ensure_writable(tmp_path / "new" / "models")
    assert (tmp_path / "new" / "models").is_dir() and not list((tmp_path / "new" / "models").iterdir())
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=f"{blocker / 'models'}: cannot write"):
        ensure_writable(blocker / "models")


# --- the training bundles: preflight wired into train.json, an unwritable bundle_root refused at start ---


@pytest.fixture()
def bad_isic(tmp_path) -> tuple[Path, list]:
    from pipelines.synth.isic import write_isic_seg

    written = write_isic_seg(tmp_path / "isic", cases=5, seed=4, height=(30, 40))
    written[0].mask.unlink()
    return tmp_path / "isic", written


def _isic_workflow(bundle_root: Path, dataset_dir: Path, **overrides):
    from monai.bundle import ConfigWorkflow

    from tests.bundles.conftest import ISIC_BUNDLE, TINY_ISIC

    return ConfigWorkflow(config_file=str(ISIC_BUNDLE / "configs" / "train.json"), workflow_type="train",
                          bundle_root=str(bundle_root), dataset_dir=str(dataset_dir), **TINY_ISIC, **overrides)


def test_training_bundle_fails_before_training_or_skips(bad_isic, tmp_path):
    root, written = bad_isic
    workflow = _isic_workflow(tmp_path / "bundle", root)
    workflow.initialize()
    with pytest.raises(Exception) as error:
        workflow.parser.get_parsed_content("datalist")
    assert f"{written[0].mask}: file not found" in str(error.value.__cause__ or error.value)
    workflow = _isic_workflow(tmp_path / "bundle", root, preflight_policy="skip")
    workflow.initialize()
    datalist = workflow.parser.get_parsed_content("datalist")
    assert len(datalist["training"]) + len(datalist["validation"]) == len(written) - 1
    assert str(written[0].mask) in (tmp_path / "bundle" / "eval" / SKIPPED_FILE).read_text()


def test_training_refuses_an_unwritable_bundle_root_at_start(bad_isic, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    workflow = _isic_workflow(blocker, bad_isic[0])
    with pytest.raises(Exception) as error:
        workflow.initialize()
    message = str(error.value) + str(error.value.__cause__)
    assert f"{blocker}/eval: cannot write the training output here" in message


# --- inference: NaN / Inf, 4D, wrong channels, unwritable output folder ---


def test_inference_bad_inputs_each_fail_with_the_file_named(trained_lung_bundle, luna16_tiny, tmp_path):
    from pipelines.inference import infer_volumes

    _, scans = luna16_tiny
    good = sitk.ReadImage(str(scans[0].path))
    array = sitk.GetArrayFromImage(good).astype(np.float32)
    array[0, 0, 0] = np.nan
    nan = sitk.GetImageFromArray(array)
    nan.CopyInformation(good)
    sitk.WriteImage(nan, str(tmp_path / "nan.nii.gz"))
    series = sitk.JoinSeries([good, good])  # 4D: two volumes in one file
    sitk.WriteImage(series, str(tmp_path / "series.nii.gz"))
    rgb = sitk.Compose([good, good, good])
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nii.gz"))
    names = ["nan.nii.gz", "series.nii.gz", "rgb.nii.gz"]
    results = infer_volumes(trained_lung_bundle, [tmp_path / n for n in names] + [scans[0].path], tmp_path / "out",
                            echo=lambda _: None)
    assert [r.ok for r in results] == [False, False, False, True]
    assert results[0].error.startswith(str(tmp_path / "nan.nii.gz")) and "1 NaN and 0 Inf" in results[0].error
    assert results[1].error.startswith(str(tmp_path / "series.nii.gz")) and "4D image" in results[1].error
    assert results[2].error.startswith(str(tmp_path / "rgb.nii.gz")) and "3 channel(s) (RGB)" in results[2].error
    assert "takes 1 (grey)" in results[2].error


def test_cli_exit_codes_for_bad_input_and_unwritable_output(trained_lung_bundle, luna16_tiny, tmp_path, capsys):
    from pipelines.__main__ import main

    _, scans = luna16_tiny
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"junk")
    assert main(["infer", str(trained_lung_bundle), str(broken), "--output", str(tmp_path / "out")]) == 1
    assert str(broken) in capsys.readouterr().out
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = main(["infer", str(trained_lung_bundle), str(scans[0].path), "--output", str(blocker / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("error:") == 1 and f"{blocker / 'out'}: cannot write the predictions here" in err
