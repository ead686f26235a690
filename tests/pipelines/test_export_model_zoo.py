"""Issue 18 item 6: bundles exported as the MONAI Model Zoo ships them.

``export`` fills ``eval_metrics`` from the bundle's last evaluation report (and keeps the shipped values, with one
warning, when there is none, it is older than the weights or a value is not finite), writes ``large_files.yml`` for
the large model files (SHA-256, a ``url`` only when one is given), exports a bundle trained with command-line overrides
when given the same overrides, and names the user's own files in its errors. The bundle is a tiny, untrained lung
copy with seeded random weights, exported without TorchScript where the test is not about it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.export import (
    EVAL_REPORT_KEY,
    LARGE_FILE_BYTES,
    ExportError,
    eval_metrics_from_report,
    export_bundle,
    export_main,
)
from tests.conftest import LUNG_BUNDLE, REPO, TINY_LUNG, TINY_LUNG_TRAIN, evaluate_bundle

BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())


def _derive(dst: Path, network_overrides: dict | None = None) -> Path:
    """The tiny lung bundle with seeded random weights of its ``network_def`` (built with ``network_overrides``
    applied, as a run with command-line overrides would have trained it)."""
    from monai.bundle import ConfigParser

    from pipelines.bundle import derive_bundle

    bundle = derive_bundle(LUNG_BUNDLE, dst, TINY_LUNG, TINY_LUNG_TRAIN)
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "inference.json")])
    parser.update(dict(network_overrides or {}))
    torch.manual_seed(0)
    (bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, luna16_tiny) -> Path:
    """The tiny lung bundle, evaluated by its own evaluate.json into ``<bundle>/eval`` (the default output_dir)."""
    bundle = _derive(tmp_path_factory.mktemp("zoo") / "lung")
    evaluate_bundle(bundle, luna16_tiny[0], bundle / "eval", eval_all=True)
    return bundle


def _member(zip_path: Path, rel: str, name: str = "lung") -> bytes:
    with zipfile.ZipFile(zip_path) as zf:
        return zf.read(f"{name}/{rel}")


# ---------------------------------------------------------------------------------------------------- eval_metrics


def test_every_bundle_says_where_each_shipped_eval_metric_comes_from():
    for name in BUNDLES:
        configs = REPO / "bundles" / name / "configs"
        shipped = json.loads((configs / "metadata.json").read_text())["eval_metrics"]
        spec = json.loads((configs / "evaluate.json").read_text()).get(EVAL_REPORT_KEY)
        assert isinstance(spec, dict) and set(shipped) <= set(spec), (name, sorted(shipped), spec)


def test_eval_metrics_are_filled_from_the_evaluation_report(evaluated, tmp_path):
    warnings: list[str] = []
    out = export_bundle(evaluated, tmp_path / "lung.zip", torchscript=False, on_warning=warnings.append)
    assert warnings == []
    rows = dict(row for row in csv.reader((evaluated / "eval" / "metrics.csv").open()) if row)
    meta = json.loads(_member(out, "configs/metadata.json"))
    assert meta["eval_metrics"] == {"mean_dice": float(rows["val_mean_dice"])}
    assert 0.0 < meta["eval_metrics"]["mean_dice"] < 1.0  # a real number, not the shipped 0 placeholder
    manifest = json.loads(_member(out, "manifest.json"))
    assert manifest["eval_metrics"]["source"] == ["eval/metrics.csv"]
    shipped = json.loads((evaluated / "configs" / "metadata.json").read_text())
    assert shipped["eval_metrics"] == {"mean_dice": 0.0}  # the user's bundle is left as it is
    from pipelines.verify import verify_bundle

    assert verify_bundle(out, run_network=False) == []  # the filled metadata still meets its schema


def test_without_a_report_the_shipped_values_stay_and_one_line_says_so(evaluated, tmp_path, capsys):
    code = export_main([str(evaluated), "--out", str(tmp_path / "lung.zip"), "--no-torchscript",
                        "--eval-dir", str(tmp_path / "no_such_eval")])
    assert code == 0  # not a failure
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("export:")]
    assert len(err) == 1 and err[0].startswith("export: warning: eval_metrics mean_dice=0.0 left as shipped"), err
    assert str(tmp_path / "no_such_eval" / "metrics.csv") in err[0] and "--eval-dir" in err[0]
    meta = json.loads(_member(tmp_path / "lung.zip", "configs/metadata.json"))
    assert meta["eval_metrics"] == {"mean_dice": 0.0}
    manifest = json.loads(_member(tmp_path / "lung.zip", "manifest.json"))
    assert manifest["eval_metrics"]["source"] is None and "not found" in manifest["eval_metrics"]["reason"]


def test_a_report_older_than_the_weights_or_not_finite_is_not_used(evaluated, tmp_path):
    report = tmp_path / "eval"
    report.mkdir()
    (report / "metrics.csv").write_text("val_mean_dice,0.75\nval_hd95,3.0\n")
    weights = evaluated / "models" / "model.pt"
    old = weights.stat().st_mtime - 60
    os.utime(report / "metrics.csv", (old, old))
    values, used, problems = eval_metrics_from_report({"mean_dice": ["metrics.csv", "val_mean_dice"]}, report, weights)
    assert values == {} and used == [] and "older than the weights" in problems[0][1]
    now = time.time() + 60
    os.utime(report / "metrics.csv", (now, now))
    values, used, problems = eval_metrics_from_report({"mean_dice": ["metrics.csv", "val_mean_dice"]}, report, weights)
    assert values == {"mean_dice": 0.75} and problems == []

    (report / "metrics.csv").write_text("val_mean_dice,nan\n")
    os.utime(report / "metrics.csv", (now, now))
    warnings: list[str] = []
    out = export_bundle(evaluated, tmp_path / "lung.zip", torchscript=False, eval_dir=report,
                        on_warning=warnings.append)
    assert json.loads(_member(out, "configs/metadata.json"))["eval_metrics"] == {"mean_dice": 0.0}
    assert len(warnings) == 1 and "val_mean_dice is nan" in warnings[0]


def test_json_reports_and_means_of_several_values(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(
        {"summary": {"dice": {"TC": {"mean": 0.5}, "WT": {"mean": 0.8}, "ET": {"mean": None}}}}))
    spec = {"mean_dice": {"mean": [["summary.json", "summary", "dice", c, "mean"] for c in ("TC", "WT")]},
            "dice_tc": ["summary.json", "summary", "dice", "TC", "mean"],
            "dice_et": ["summary.json", "summary", "dice", "ET", "mean"],
            "dice_xx": ["summary.json", "summary", "dice", "XX", "mean"]}
    values, used, problems = eval_metrics_from_report(spec, tmp_path)
    assert values == {"mean_dice": pytest.approx(0.65), "dice_tc": 0.5}
    assert used == [str(tmp_path / "summary.json")]
    assert dict(problems) == {"dice_et": f"{tmp_path / 'summary.json'}: summary/dice/ET/mean is null",
                              "dice_xx": f"{tmp_path / 'summary.json'} has no summary/dice/XX/mean"}


# ------------------------------------------------------------------------------------------------ large_files.yml


def test_large_files_yml_lists_large_weights_with_their_sha256(evaluated, tmp_path):
    assert LARGE_FILE_BYTES == 25 * 2 ** 20
    small = export_bundle(evaluated, tmp_path / "small.zip", torchscript=False)
    with zipfile.ZipFile(small) as zf:
        assert "lung/large_files.yml" not in zf.namelist()  # the tiny weights are far below 25 MiB

    url = "https://example.org/lung/model.pt"
    out = export_bundle(evaluated, tmp_path / "lung.zip", torchscript=False, large_file_bytes=1,
                        urls={"models/model.pt": url})
    weights = _member(out, "models/model.pt")
    listed = yaml.safe_load(_member(out, "large_files.yml"))
    assert listed == {"large_files": [{"path": "models/model.pt", "url": url,
                                       "hash_val": hashlib.sha256(weights).hexdigest(), "hash_type": "sha256"}]}
    from monai.bundle import ConfigParser

    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path / "unzipped")
    assert ConfigParser.load_config_file(tmp_path / "unzipped" / "lung" / "large_files.yml") == listed  # MONAI reads it
    manifest = json.loads(_member(out, "manifest.json"))
    assert "large_files.yml" in manifest["files"] and manifest["large_files"] == ["models/model.pt"]

    no_url = export_bundle(evaluated, tmp_path / "no_url.zip", torchscript=False, large_file_bytes=1)
    assert "url" not in yaml.safe_load(_member(no_url, "large_files.yml"))["large_files"][0]


def test_a_url_for_a_file_that_ships_in_the_zip_is_refused(evaluated, tmp_path, capsys):
    code = export_main([str(evaluated), "--out", str(tmp_path / "lung.zip"), "--no-torchscript",
                        "--url", "https://example.org/model.pt"])
    err = capsys.readouterr().err
    size = (evaluated / "models" / "model.pt").stat().st_size / 2 ** 20
    assert code == 2 and err.startswith(f"error: --url models/model.pt: is {size:.1f} MiB, not over 25 MiB"), err
    assert not (tmp_path / "lung.zip").exists()
    with pytest.raises(SystemExit):
        export_main([str(evaluated), "--out", str(tmp_path / "x.zip"), "--url", "not-a-url"])


# ------------------------------------------------------------------------------ overrides and the user's own files


def test_a_bundle_trained_with_overrides_exports_with_the_same_overrides(tmp_path):
    wide = [8, 8, 16, 32, 64]
    bundle = _derive(tmp_path / "lung", {"features": wide})  # trained as with --features "[8,8,16,32,64]"
    weights = bundle / "models" / "model.pt"
    with pytest.raises(ExportError) as refused:
        export_bundle(bundle, tmp_path / "refused.zip", torchscript=False)
    message = str(refused.value)
    # one line naming the user's weights and the first of its tensors whose shape differs from the configured
    # network's (both computed here from the state dicts), then how to export it
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "inference.json")])
    configured = parser.get_parsed_content("network_def").state_dict()
    trained = torch.load(weights, weights_only=True)
    key = next(k for k in trained if trained[k].shape != configured[k].shape)

    def shape(t):
        return "(" + ", ".join(map(str, t.shape)) + ")"

    assert message.startswith(f"{weights}: does not fit the network: {key!r} is {shape(trained[key])} in the file, "
                              f"{shape(configured[key])} in the network"), message
    assert "\n" not in message and ".export-" not in message
    assert "--set" in message
    assert not (tmp_path / "refused.zip").exists()

    (bundle / "configs" / "sizes.json").write_text(json.dumps({"features": TINY_LUNG["features"]}))  # no code in it
    out = export_bundle(bundle, tmp_path / "lung.zip", torchscript=False, overrides={"features": wide})
    for config in ("train.json", "sizes.json"):  # written where the setting is; inference.json overlays train.json
        assert json.loads(_member(out, f"configs/{config}"))["features"] == wide, config
    assert "features" not in json.loads(_member(out, "configs/inference.json"))
    assert json.loads(_member(out, "manifest.json"))["overrides"] == {"features": wide}
    from pipelines.verify import verify_bundle

    assert verify_bundle(out) == []  # the shipped configs build the network the weights belong to

    with pytest.raises(ExportError, match=r"^--set featurez: no config in .*configs has this id$"):
        export_bundle(bundle, tmp_path / "typo.zip", torchscript=False, overrides={"featurez": wide})


def test_errors_name_the_users_files(tmp_path):
    bundle = _derive(tmp_path / "lung")
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(1, 1)}, pickled)  # a pickle of a module: not plain tensors
    with pytest.raises(ExportError, match=rf"^{pickled}: not a plain weights file"):
        export_bundle(bundle, tmp_path / "a.zip", weights=pickled, torchscript=False)
    (bundle / "configs" / "train.json").write_text("{ not json")
    with pytest.raises(ExportError, match=rf"^{bundle / 'configs' / 'train.json'}: cannot be read as JSON"):
        export_bundle(bundle, tmp_path / "b.zip", torchscript=False)
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".export-*"))
