"""LUNA16 layout: the synthetic writer's files, nodule rasterisation through the image geometry, datalists, errors."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.data.luna16 import Nodule, find_scans, luna16_datalist, nodule_mask, read_annotations
from pipelines.synth.luna16 import write_luna16


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "LUNA16"
    shutil.copytree(root, dst)
    return dst


def test_writer_produces_the_luna16_layout(luna16_tiny):
    root, scans = luna16_tiny
    assert sorted(p.name for p in root.iterdir()) == ["annotations.csv", "seg-lungs-LUNA16", "subset0", "subset1"]
    with (root / "annotations.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert len(rows) - 1 == sum(len(s.nodules) for s in scans)
    for scan in scans:
        assert scan.path.parent.name.startswith("subset")
        assert scan.path.with_suffix(".raw").exists()
        assert (root / "seg-lungs-LUNA16" / f"{scan.seriesuid}.zraw").exists()
        header = scan.path.read_text()
        assert "ElementType = MET_SHORT" in header and f"ElementDataFile = {scan.seriesuid}.raw" in header
        image = sitk.ReadImage(str(scan.path))
        sx, sy, sz = image.GetSpacing()
        assert 0.6 <= sx <= 0.9 and sx == sy and 1.0 <= sz <= 2.5
        assert any(abs(o) > 1 for o in image.GetOrigin())
        assert 1 <= len(scan.nodules) <= 3
        assert all(4.0 <= n["diameter_mm"] <= 30.0 for n in scan.nodules)
        hu = sitk.GetArrayFromImage(image)
        lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "seg-lungs-LUNA16" / f"{scan.seriesuid}.mhd")))
        assert set(np.unique(lungs)) == {0, 3, 4}
        assert -900 < np.median(hu[lungs > 0]) < -750  # parenchyma
        assert hu.min() == -2000  # outside the reconstruction field of view, as LUNA16 stores it
        assert np.percentile(hu, 99.9) > 300  # bone
    assert {s.flip for s in scans} - {"none"}, "some scans must have a flipped direction matrix"


def test_same_seed_writes_the_same_data(tmp_path):
    a = write_luna16(tmp_path / "a", cases=1, seed=7, fov_mm=40, length_mm=24)
    b = write_luna16(tmp_path / "b", cases=1, seed=7, fov_mm=40, length_mm=24)
    assert a[0].seriesuid == b[0].seriesuid
    assert a[0].path.with_suffix(".raw").read_bytes() == b[0].path.with_suffix(".raw").read_bytes()


def test_nodule_at_known_world_coordinate_lands_on_the_right_voxels():
    # hand-worked geometry: z axis flipped, origin at the top slice
    geometry = {"size": (20, 30, 10), "spacing": (0.5, 0.5, 2.0), "origin": (-10.0, 5.0, 40.0),
                "direction": (1, 0, 0, 0, 1, 0, 0, 0, -1)}
    # voxel (x=4, y=6, z=3): world = origin + D * diag(spacing) * index = (-10 + 2, 5 + 3, 40 - 6)
    nodule = Nodule("uid", (-8.0, 8.0, 34.0), diameter_mm=1.2)
    mask = nodule_mask(geometry, [nodule])  # (z, y, x)
    assert mask.shape == (10, 30, 20)
    assert mask[3, 6, 4] == 1
    # radius 0.6 mm: the in-plane neighbours at 0.5 mm are inside, the slices at 2 mm are not
    assert mask[3, 6, 5] == mask[3, 6, 3] == mask[3, 7, 4] == 1
    assert mask[2, 6, 4] == mask[4, 6, 4] == 0 and mask[3, 6, 6] == 0
    assert mask.sum() == 5


def test_rasterised_masks_match_the_writer_also_in_flipped_scans(luna16_tiny, tmp_path):
    root, scans = luna16_tiny
    datalist = luna16_datalist(root, tmp_path / "cache", val_fraction=0.25)
    labels = {i["seriesuid"]: i["label"] for i in datalist["training"] + datalist["validation"]}
    for scan in scans:
        label = sitk.ReadImage(labels[scan.seriesuid])
        image = sitk.ReadImage(str(scan.path))
        assert label.GetSize() == image.GetSize() and label.GetDirection() == image.GetDirection()
        assert np.allclose(label.GetOrigin(), image.GetOrigin())
        mask = sitk.GetArrayFromImage(label)
        for nodule in scan.nodules:
            x, y, z = np.round(nodule["center_index"]).astype(int)
            assert mask[z, y, x] == 1, f"{scan.flip}-flipped scan: nodule centre voxel not in the mask"
        # the volume of the union of spheres: at most the sum of sphere volumes, at least the largest
        voxel = float(np.prod(image.GetSpacing()))
        volumes = [np.pi / 6 * n["diameter_mm"] ** 3 for n in scan.nodules]
        assert max(volumes) * 0.7 <= mask.sum() * voxel <= sum(volumes) * 1.3


def test_datalist_split_is_deterministic_and_complete(luna16_tiny, tmp_path):
    root, scans = luna16_tiny
    first = luna16_datalist(root, tmp_path / "cache", val_fraction=0.25, seed=0)
    again = luna16_datalist(root, tmp_path / "cache", val_fraction=0.25, seed=0)
    assert first == again
    assert len(first["validation"]) == 1 and len(first["training"]) == 3
    uids = {i["seriesuid"] for i in first["training"] + first["validation"]}
    assert uids == {s.seriesuid for s in scans}
    item = first["training"][0]
    assert set(item) == {"image", "label", "seriesuid", "nodules", "lung"}
    assert Path(item["lung"]).parent.name == "seg-lungs-LUNA16"
    splits = {tuple(i["seriesuid"] for i in luna16_datalist(root, tmp_path / "cache", val_fraction=0.25,
                                                             seed=s)["validation"]) for s in range(6)}
    assert len(splits) > 1, "the seed must change the split"


def test_masks_are_cached_and_rebuilt_when_annotations_change(luna16_tiny, tmp_path):
    root = _copy(luna16_tiny[0], tmp_path)
    cache = tmp_path / "cache"
    item = luna16_datalist(root, cache)["training"][0]
    mtime = Path(item["label"]).stat().st_mtime_ns
    luna16_datalist(root, cache)
    assert Path(item["label"]).stat().st_mtime_ns == mtime
    rows = (root / "annotations.csv").read_text().splitlines()
    kept = [rows[0]] + [r for r in rows[1:] if not r.startswith(item["seriesuid"])]
    (root / "annotations.csv").write_text("\n".join(kept) + "\n")
    relisted = {i["seriesuid"]: i for i in sum(luna16_datalist(root, cache).values(), [])}
    assert relisted[item["seriesuid"]]["nodules"] == 0
    assert sitk.GetArrayFromImage(sitk.ReadImage(item["label"])).sum() == 0


def test_annotations_for_scans_not_downloaded_are_skipped_and_logged(luna16_tiny, tmp_path, caplog):
    root = _copy(luna16_tiny[0], tmp_path)
    with (root / "annotations.csv").open("a") as f:
        f.write("1.3.6.1.4.1.14519.5.2.1.6279.6001.999,1.0,2.0,3.0,5.0\n")
    with caplog.at_level(logging.INFO, logger="pipelines.data.luna16"):
        datalist = luna16_datalist(root, tmp_path / "cache")
    assert "skipped 1 annotation row(s) of 1 seriesuid(s)" in caplog.text
    assert len(datalist["training"]) + len(datalist["validation"]) == 4


def test_nodule_outside_its_scan_is_an_error(luna16_tiny, tmp_path):
    root = _copy(luna16_tiny[0], tmp_path)
    uid = luna16_tiny[1][0].seriesuid
    with (root / "annotations.csv").open("a") as f:
        f.write(f"{uid},500.0,500.0,500.0,6.0\n")
    with pytest.raises(ValueError, match=rf"{uid}.mhd: nodule on line \d+ of annotations.csv .* lies outside the scan"):
        luna16_datalist(root, tmp_path / "cache")


@pytest.mark.parametrize(
    "content, message",
    [
        ("seriesuid,coordX,coordY,diameter_mm\n", r"missing column\(s\) coordZ"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\nabc,1,2,x,5\n", r"line 2: cannot parse"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\nabc,1,2,3,-5\n", r"line 2: .*diameter_mm > 0"),
    ],
)
def test_bad_annotations_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "annotations.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_annotations(path)
    assert str(path) in str(info.value)


def test_missing_annotations_file(luna16_tiny, tmp_path):
    root = _copy(luna16_tiny[0], tmp_path)
    (root / "annotations.csv").unlink()
    with pytest.raises(ValueError, match=r"annotations.csv: annotations file not found"):
        luna16_datalist(root, tmp_path / "cache")


def test_truncated_and_missing_raw_files_are_named(luna16_tiny, tmp_path):
    root = _copy(luna16_tiny[0], tmp_path)
    scan = sorted(find_scans(root).values())[0]
    raw = scan.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"{scan.name}: its data file {raw.name} is truncated \(1000 bytes"):
        luna16_datalist(root, tmp_path / "cache")
    raw.unlink()
    with pytest.raises(ValueError, match=rf"{scan.name}: its data file {raw.name} is missing"):
        luna16_datalist(root, tmp_path / "cache")


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="LUNA16 folder not found"):
        find_scans(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"no LUNA16 scans found \(expected subset\*/<seriesuid>.mhd\)"):
        find_scans(tmp_path)


def test_duplicate_seriesuid_across_subsets(luna16_tiny, tmp_path):
    root = _copy(luna16_tiny[0], tmp_path)
    scan = sorted((root / "subset0").glob("*.mhd"))[0]
    (root / "subset1" / scan.name).write_text(scan.read_text())
    with pytest.raises(ValueError, match="also found at"):
        find_scans(root)
