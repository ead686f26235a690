"""BraTS data layer, region transforms and synthetic writer: both naming conventions, values and bad inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipelines.data.brats import CONVENTIONS, brats_case, brats_cases, brats_datalist, detect_convention, find_cases
from pipelines.synth.brats import CONTRAST, write_brats
from pipelines.transforms.brats import LabelToRegionsd, RegionsToLabelsd, labels_to_regions, regions_to_labels

SHAPE = (24, 24, 16)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    roots = {}
    for naming in ("2021", "2023"):
        root = tmp_path_factory.mktemp(f"brats{naming}")
        write_brats(root, cases=3, naming=naming, seed=int(naming), shape=SHAPE)
        roots[naming] = root
    return roots


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(root, dst)
    return dst


@pytest.mark.parametrize("naming, et", [("2021", 4), ("2023", 3)])
def test_regions_of_a_hand_made_label_and_back(naming, et):
    label = torch.tensor([0, 1, 2, et, 0, 2]).reshape(1, 2, 3, 1)
    regions = labels_to_regions(label, naming)
    assert regions.shape == (3, 2, 3, 1)
    assert regions[0].flatten().tolist() == [0, 1, 0, 1, 0, 0]  # TC = NCR + ET
    assert regions[1].flatten().tolist() == [0, 1, 1, 1, 0, 1]  # WT = NCR + ED + ET
    assert regions[2].flatten().tolist() == [0, 0, 0, 1, 0, 0]  # ET
    back = regions_to_labels(regions, naming)
    assert back.dtype == torch.uint8 and torch.equal(back, label.to(torch.uint8))


def test_dictionary_transforms_follow_each_items_convention():
    label = torch.tensor([0, 1, 2, 3]).reshape(1, 4, 1, 1)
    d = LabelToRegionsd("label")({"label": label, "convention": "2023"})
    assert d["label"][2].flatten().tolist() == [0, 0, 0, 1]
    d = RegionsToLabelsd("label")(d | {"convention": "2021"})  # written in 2021 labels: ET becomes 4
    assert d["label"].flatten().tolist() == [0, 1, 2, 4]
    with pytest.raises(ValueError, match="convention"):
        labels_to_regions(label, "2019")


def test_inverse_resolves_non_nested_regions_by_priority():
    # voxel 0: ET alone; 1: TC without WT; 2: WT alone; 3: nothing; probabilities thresholded at 0.5
    regions = torch.tensor([[0.1, 0.9, 0.2, 0.4], [0.2, 0.3, 0.8, 0.4], [0.7, 0.1, 0.1, 0.4]]).reshape(3, 4, 1, 1)
    assert regions_to_labels(regions, "2021").flatten().tolist() == [4, 1, 2, 0]


@pytest.mark.parametrize("naming", ["2021", "2023"])
def test_datalist_detects_the_convention_and_orders_channels(datasets, naming):
    conv = CONVENTIONS[naming]
    root = datasets[naming]
    datalist = brats_datalist(root, val_fraction=0.3, seed=0)
    items = datalist["training"] + datalist["validation"]
    assert len(datalist["validation"]) == 1 and len(items) == 3
    for item in items:
        assert item["convention"] == naming
        names = [Path(p).name for p in item["image"]]
        assert names == [f"{item['case']}{conv.separator}{tag}.nii.gz" for tag in conv.modalities]  # T1c,T1,T2,FLAIR
        assert Path(item["label"]).name == f"{item['case']}{conv.separator}seg.nii.gz"
        assert item["reference"] == item["image"][0]
    assert detect_convention(Path(items[0]["label"]).parent) == naming
    assert brats_datalist(root, val_fraction=0.3, seed=0) == datalist  # deterministic
    cases = brats_cases(root)
    assert [c["case"] for c in cases] == sorted(i["case"] for i in items) and all("label" not in c for c in cases)
    assert find_cases(Path(items[0]["label"]).parent) == [Path(items[0]["label"]).parent]  # one case folder


def test_missing_modality_names_case_and_file(datasets, tmp_path):
    root = _copy(datasets["2021"], tmp_path)
    case = find_cases(root)[1]
    (case / f"{case.name}_flair.nii.gz").unlink()
    with pytest.raises(ValueError, match=rf"case {case.name}: missing modality FLAIR: .*{case.name}_flair\.nii\.gz"):
        brats_datalist(root)
    with pytest.raises(ValueError, match="missing modality FLAIR"):
        brats_cases(root)


def test_grid_mismatch_names_case_and_file(datasets, tmp_path):
    root = _copy(datasets["2023"], tmp_path)
    case = find_cases(root)[0]
    path = case / f"{case.name}-t2w.nii.gz"
    image = sitk.ReadImage(str(path))
    image.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(image, str(path))
    with pytest.raises(ValueError, match=rf"case {case.name}: .*{case.name}-t2w\.nii\.gz is not on the grid.*origin"):
        brats_datalist(root)
    image = sitk.ReadImage(str(path))[:, :, :-1]  # one slice fewer
    image.SetOrigin(sitk.ReadImage(str(case / f"{case.name}-t1c.nii.gz")).GetOrigin())
    sitk.WriteImage(image, str(path))
    with pytest.raises(ValueError, match="size"):
        brats_cases(root)


def test_label_outside_the_convention_names_case_and_file(datasets, tmp_path):
    root = _copy(datasets["2021"], tmp_path)
    case = find_cases(root)[2]
    path = case / f"{case.name}_seg.nii.gz"
    label = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(label)
    array[array == 4] = 3  # a 2023 ET label in a 2021-named data set
    relabelled = sitk.GetImageFromArray(array)
    relabelled.CopyInformation(label)
    sitk.WriteImage(relabelled, str(path))
    with pytest.raises(ValueError, match=rf"case {case.name}: .*_seg\.nii\.gz holds label value\(s\) \[3\] outside the "
                                         r"BraTS 2021 convention \[0, 1, 2, 4\]"):
        brats_datalist(root)
    assert len(brats_datalist(root, check_labels=False)["training"]) >= 1  # the check can be skipped


def test_mixed_conventions_and_empty_folder(datasets, tmp_path):
    root = _copy(datasets["2021"], tmp_path)
    shutil.copytree(find_cases(datasets["2023"])[0], root / find_cases(datasets["2023"])[0].name)
    with pytest.raises(ValueError, match="mixes BraTS naming conventions"):
        brats_datalist(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no BraTS case folder"):
        brats_datalist(tmp_path / "empty")


def test_synthetic_case_geometry_labels_and_contrast(datasets):
    for naming, root in datasets.items():
        item = brats_case(find_cases(root)[0])
        conv = CONVENTIONS[naming]
        label = sitk.ReadImage(item["label"])
        assert label.GetSize() == SHAPE and label.GetSpacing() == (1.0, 1.0, 1.0)
        assert label.GetOrigin() == (0.0, -(SHAPE[1] - 1.0), 0.0) and label.GetDirection() == tuple(np.eye(3).ravel())
        values = set(np.unique(sitk.GetArrayFromImage(label)).tolist())
        assert values == set(conv.labels)
    # contrast by modality, measured on the images (channels T1c, T1, T2, FLAIR) of a bigger case
    root = Path(datasets["2021"]).parent / "contrast"
    write_brats(root, cases=1, seed=3)
    item = brats_case(find_cases(root)[0])
    images = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(p)).astype(float) for p in item["image"]])
    label = sitk.GetArrayFromImage(sitk.ReadImage(item["label"]))
    mean = {name: images[:, label == value].mean(1) for name, value in (("ncr", 1), ("ed", 2), ("et", 4))}
    t1c, t1, t2, flair = range(4)
    assert mean["et"][t1c] > 1.4 * mean["ed"][t1c] and mean["et"][t1c] > 2 * mean["ncr"][t1c]  # rim enhances
    assert mean["ed"][flair] > 1.2 * mean["et"][flair] and mean["ed"][t2] > mean["et"][t2]  # oedema bright T2/FLAIR
    assert mean["ncr"][t2] > mean["et"][t2] and mean["ncr"][t1c] < mean["ed"][t1c]  # necrosis: dark T1c, bright T2
    assert CONTRAST["csf"][3] < CONTRAST["wm"][3] < CONTRAST["oedema"][3]  # FLAIR suppresses CSF
    assert np.all(images[:, ~(images.sum(0) > 0)] == 0)  # skull-stripped: zero outside the brain
