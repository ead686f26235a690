"""``python -m pipelines``: the synth command and the help texts."""

from __future__ import annotations

import csv

import pytest

from pipelines.__main__ import build_parser, main


def test_synth_luna16_command(tmp_path, capsys):
    out = tmp_path / "LUNA16"
    assert main(["synth", "luna16", "--out", str(out), "--cases", "2", "--seed", "5", "--fov-mm", "40",
                 "--length-mm", "24"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("synth luna16: wrote 2 scans with ") and str(out) in printed
    assert len(list(out.glob("subset*/*.mhd"))) == 2 and len(list(out.glob("subset*/*.raw"))) == 2
    with (out / "annotations.csv").open() as f:
        assert len(list(csv.DictReader(f))) >= 2


@pytest.mark.parametrize("command", ["synth", "infer", "export", "verify", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    assert "--" in capsys.readouterr().out


def test_unknown_layout_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["synth", "brats9000", "--out", "x"])
    assert info.value.code == 2
    assert "invalid choice: 'brats9000'" in capsys.readouterr().err


def test_synth_ultrasound_command(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "BUSI"
    assert main(["synth", "ultrasound", "--out", str(out), "--images", "3", "--width", "96", "--height", "64"]) == 0
    assert capsys.readouterr().out.startswith(f"synth ultrasound: wrote 3 B-mode images (BUSI layout) to {out}")
    images = [p for p in out.rglob("*.png") if not p.stem.endswith("_mask")]
    assert len(images) == 3
    assert {Image.open(p).size for p in images} == {(96, 64)}
