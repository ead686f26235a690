"""``synth luna16|brats --size full``: LUNA16's and BraTS's real grids, and the small data sets left as they were.

No test writes a whole full-size scan: the LUNA16 geometry is checked over many draws of :func:`scan_geometry`, the
writer on a 512 x 512 scan with its slice count patched down, BraTS's writer with a stub phantom on its real 240 x 240
x 155 grid, its phantom on a half-size head. Headers are read as text (MetaImage) or with nibabel (NIfTI), not through
the writer's SimpleITK. The small outputs are compared with digests of what the writers wrote before the full size
existed.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

import pipelines.synth.brats as brats
import pipelines.synth.luna16 as luna16
from pipelines.__main__ import main

LUNA16_SLICE_SPACINGS = {1.0, 1.25, 1.5, 2.0, 2.5}


def _mhd_header(path: Path) -> dict[str, str]:
    """``key = value`` lines of a MetaImage header."""
    return dict(line.split(" = ", 1) for line in path.read_text().splitlines() if " = " in line)


@pytest.fixture
def full_luna16_few_slices(monkeypatch):
    """The full-size preset with its slice count patched to ``n``: a 512 x 512 x n scan writes in a fraction of a
    second."""

    def patch(n: int):
        monkeypatch.setattr(luna16, "FULL", dataclasses.replace(luna16.FULL, slices=(n, n)))

    return patch


# ---------------------------------------------------------------------------------------------- LUNA16 geometry


def test_full_luna16_geometry_is_lunas_matrix_spacing_and_slice_count():
    rng = np.random.default_rng(0)
    geometries = [luna16.scan_geometry(rng, "full") for _ in range(300)]
    slices = np.array([g.shape[2] for g in geometries])
    for g in geometries:
        sx, sy, sz = g.spacing
        assert g.shape[:2] == (512, 512)
        assert sx == sy and 0.6 <= sx <= 0.78 and sz in LUNA16_SLICE_SPACINGS
        assert 300 <= g.fov_mm <= 400 and g.fov_mm == pytest.approx(512 * sx)
        assert 120 <= g.shape[2] <= 400
        # 300-400 mm of scan, unless the slice count was clipped to LUNA16's range
        if 120 < g.shape[2] < 400:
            assert 300 - sz / 2 <= g.shape[2] * sz <= 400 + sz / 2
    # LUNA16: 95-764 slices, median about 250; thin and thick slices both drawn
    assert 180 <= np.median(slices) <= 300 and slices.min() < 160 and slices.max() > 320


def test_small_geometry_is_the_field_of_view_and_length_asked_for():
    rng = np.random.default_rng(5)
    for _ in range(50):
        g = luna16.scan_geometry(rng, "small", 40.0, 24.0)
        sx, _, sz = g.spacing
        assert g.fov_mm == 40.0 and 0.6 <= sx <= 0.9 and sz in LUNA16_SLICE_SPACINGS
        assert g.shape[0] == g.shape[1] == round(40.0 / sx) and g.shape[2] == max(round(24.0 / sz), 8)
    default = luna16.scan_geometry(np.random.default_rng(0), "small")
    assert default.fov_mm == 100.0 and default.shape[2] == max(round(80.0 / default.spacing[2]), 8)


def test_full_luna16_refuses_small_only_settings(tmp_path):
    with pytest.raises(ValueError, match="fov_mm and length_mm apply to size='small' only"):
        luna16.write_luna16(tmp_path / "a", cases=1, size="full", fov_mm=40.0)
    with pytest.raises(ValueError, match="size must be one of \\['small', 'full'\\], got 'huge'"):
        luna16.write_luna16(tmp_path / "b", cases=1, size="huge")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------------- LUNA16 writer


def test_full_luna16_scan_header_and_layout(tmp_path, full_luna16_few_slices, capsys):
    full_luna16_few_slices(8)
    out = tmp_path / "LUNA16"
    assert main(["synth", "luna16", "--size", "full", "--out", str(out), "--cases", "2", "--seed", "3"]) == 0
    assert capsys.readouterr().out.startswith("synth luna16: wrote 2 scans with ")
    headers = sorted(out.glob("subset*/*.mhd"))
    assert len(headers) == 2
    with (out / "annotations.csv").open() as f:
        rows = list(csv.DictReader(f))
    for path in headers:
        header = _mhd_header(path)
        assert header["DimSize"] == "512 512 8" and header["ElementType"] == "MET_SHORT"
        sx, sy, sz = (float(v) for v in header["ElementSpacing"].split())
        assert sx == sy and 0.6 <= sx <= 0.78 and sz in LUNA16_SLICE_SPACINGS
        assert header["ElementDataFile"] == f"{path.stem}.raw"
        assert path.with_suffix(".raw").stat().st_size == 512 * 512 * 8 * 2  # int16, uncompressed
        lungs = out / "seg-lungs-LUNA16" / path.name
        assert _mhd_header(lungs)["DimSize"] == "512 512 8" and lungs.with_suffix(".zraw").exists()
        assert 1 <= sum(r["seriesuid"] == path.stem for r in rows) <= 3
        # the anatomy scales with the field of view: the body spans 0.88 of it across the central row
        hu = np.fromfile(path.with_suffix(".raw"), dtype="<i2").reshape(8, 512, 512)
        body = np.flatnonzero(hu[4, 256] > -500)
        assert 0.84 * 512 <= body[-1] - body[0] + 1 <= 0.92 * 512
        assert hu.min() == -2000 and np.percentile(hu, 99.9) > 300
    assert all(4.0 <= float(r["diameter_mm"]) <= 30.0 for r in rows)
    # every file was renamed into place: no staging folder or partial file is left
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_full_luna16_scan_peak_memory_is_a_few_bytes_a_voxel(tmp_path, full_luna16_few_slices):
    # full meshgrids in float64 took 79 bytes a voxel; float32 structures drawn in their boxes take 9 (float64: 13).
    # Two scans in one call: the first one's arrays are gone when the second is drawn.
    full_luna16_few_slices(12)
    tracemalloc.start()
    try:
        luna16.write_luna16(tmp_path / "LUNA16", cases=2, seed=1, size="full")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / (512 * 512 * 12) < 11.0


def test_an_interrupted_scan_leaves_nothing_behind(tmp_path, monkeypatch):
    def write_then_fail(image, path, *args):
        sitk_write(image, path, *args)
        raise OSError("disk full")

    sitk_write = sitk.WriteImage
    monkeypatch.setattr(luna16.sitk, "WriteImage", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        luna16.write_luna16(tmp_path / "LUNA16", cases=1, seed=0, fov_mm=40.0, length_mm=24.0)
    assert [p for p in (tmp_path / "LUNA16").rglob("*") if p.is_file()] == []


def test_cli_full_size_errors_are_one_line(tmp_path, capsys):
    assert main(["synth", "luna16", "--size", "full", "--fov-mm", "40", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: synth luna16: --fov-mm and --length-mm apply to --size small only")
    assert "\n" not in err
    assert main(["synth", "isic-seg", "--size", "full", "--out", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.strip() == "error: synth isic-seg: --size full applies to luna16 and brats only"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------------- BraTS


def test_full_brats_case_is_240_240_155_four_modalities(tmp_path, monkeypatch, capsys):
    def stub(shape, rng, skull, *args):  # the real phantom takes seconds at this size: the writer is under test
        compartments = np.zeros(shape, dtype=np.uint8)
        compartments[100:104, 100:104, 70:74] = 2
        compartments[101:103, 101:103, 71:73] = 3
        compartments[101, 101, 71] = 1
        return np.full((4, *shape), 250.0, dtype=np.float32), compartments, compartments > 0

    monkeypatch.setattr(brats, "_phantom", stub)
    out = tmp_path / "BraTS"
    assert main(["synth", "brats", "--size", "full", "--naming", "2023", "--out", str(out), "--cases", "1"]) == 0
    assert capsys.readouterr().out.startswith("synth brats: wrote 1 cases (2023 naming)")
    case = out / "BraTS-GLI-00000-000"
    modalities = [case / f"BraTS-GLI-00000-000-{tag}.nii.gz" for tag in ("t1c", "t1n", "t2w", "t2f")]
    images = [nib.load(str(p)) for p in modalities]
    assert np.stack([np.asarray(im.dataobj) for im in images], axis=-1).shape == (240, 240, 155, 4)
    label = nib.load(str(case / "BraTS-GLI-00000-000-seg.nii.gz"))
    for image in [*images, label]:
        assert image.shape == (240, 240, 155) and image.header.get_zooms() == (1.0, 1.0, 1.0)
        # BraTS's affine: LPS-aligned, diag(-1, -1, 1) with 239 in the y translation
        np.testing.assert_allclose(image.affine, [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert sorted(np.unique(np.asarray(label.dataobj))) == [0, 1, 2, 3]  # 2023 naming: ET = 3


def test_full_brats_refuses_a_shape(tmp_path):
    with pytest.raises(ValueError, match="shape applies to size='small' only; size='full' is 240x240x155"):
        brats.write_brats(tmp_path, cases=1, size="full", shape=(64, 64, 48))
    with pytest.raises(ValueError, match="size must be one of \\['small', 'full'\\], got 'half'"):
        brats.write_brats(tmp_path, cases=1, size="half")


def test_brats_anatomy_scales_with_the_head_box():
    # the full preset at a quarter of its size (a 60 x 60 x 39 grid): the brain's extent follows the head box, not
    # the grid, and the tumour sits inside the brain with radii of the preset's fractions of the head (0.14-0.22 of
    # its smallest side, 0.18 on average; the small preset's 0.2-0.28 average 0.23)
    full = brats.SIZES["full"]
    head = tuple(h / 4 for h in full.head)
    assert full.shape == (240, 240, 155)
    radii = []
    for seed in range(8):
        _, compartments, brain = brats._phantom((60, 60, 39), np.random.default_rng(seed), False, head,
                                                full.feature_scale / 4, full.oedema_radius)
        for axis, fraction in ((0, 0.40), (1, 0.44), (2, 0.40)):
            extent = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))
            assert 0.85 <= (extent[-1] - extent[0] + 1) / (2 * fraction * head[axis]) <= 1.15
        tumour = compartments > 0
        assert not (tumour & ~brain).any() and set(np.unique(compartments)) == {0, 1, 2, 3}
        radii.append((3 * tumour.sum() / (4 * np.pi)) ** (1 / 3) / min(head))
    assert 0.6 * 0.14 <= min(radii) and max(radii) <= 1.3 * 0.22
    assert 0.15 <= np.mean(radii) <= 0.21


@pytest.mark.parametrize("shape,coarse", [((120, 96, 78), (15, 12, 10)), ((37, 20, 9), (8, 5, 4))])
def test_separable_upsampling_is_ndimage_zoom(shape, coarse):
    noise = np.random.default_rng(0).normal(size=coarse)
    expected = ndimage.zoom(noise, [n / c for n, c in zip(shape, coarse)], order=1, grid_mode=True, mode="grid-wrap")
    np.testing.assert_allclose(brats._upsample_linear(noise, shape), expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- small: unchanged

# digests of what the writers wrote before --size full existed (the same seeds, the code of commit ca072b8)
SMALL_DIGESTS = {
    "luna16 default": "6787d7d5750215d1d8c9d6d96ff21954d4ddf43f91499862f378874ba9bbecae",
    "luna16 40 mm, flips": "61f3073924abd44527a8af7aee211761516f6f3977a4c925600da48f9bb93044",
    "brats default": "1eacefb3c11e45a76348a2f3c73afb900b4e1edaddecfa7273f0317d0421f392",
    "brats 24x20x16, skull, 2023": "1a8779319b26b4c36d4f331e6534442e6cac72939db9cbc0dc45a3ab64ea4e61",
}


def _luna16_digest(root: Path) -> str:
    h = hashlib.sha256()
    for raw in sorted(root.glob("subset*/*.raw")):
        h.update(raw.relative_to(root).as_posix().encode())
        h.update(raw.read_bytes())
    for mhd in sorted((root / "seg-lungs-LUNA16").glob("*.mhd")):  # voxels: .zraw bytes depend on zlib
        h.update(mhd.name.encode())
        h.update(sitk.GetArrayFromImage(sitk.ReadImage(str(mhd))).tobytes())
    h.update((root / "annotations.csv").read_bytes())  # world coordinates: origin, spacing and flips
    return h.hexdigest()


def _brats_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.glob("*/*.nii.gz")):
        image = sitk.ReadImage(str(f))
        h.update(f.relative_to(root).as_posix().encode())
        h.update(repr(image.GetOrigin()).encode())
        h.update(sitk.GetArrayFromImage(image).tobytes())
    return h.hexdigest()


def test_small_data_sets_are_unchanged(tmp_path):
    luna16.write_luna16(tmp_path / "a", cases=1, seed=0)
    luna16.write_luna16(tmp_path / "b", cases=3, seed=11, fov_mm=40.0, length_mm=24.0, flip_fraction=0.7)
    brats.write_brats(tmp_path / "c", cases=1, seed=0)
    brats.write_brats(tmp_path / "e", cases=2, seed=4, shape=(24, 20, 16), naming="2023", skull=True, first_index=3)
    assert {
        "luna16 default": _luna16_digest(tmp_path / "a"),
        "luna16 40 mm, flips": _luna16_digest(tmp_path / "b"),
        "brats default": _brats_digest(tmp_path / "c"),
        "brats 24x20x16, skull, 2023": _brats_digest(tmp_path / "e"),
    } == SMALL_DIGESTS
