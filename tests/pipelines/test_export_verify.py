"""Issue 7 items 1-2: a trained bundle exported as a self-contained zip, and the offline checks of bundles and zips.

The exported tiny lung bundle is run by ``python -m monai.bundle run`` in a process where this repository cannot be
imported, loaded by ``monai.bundle.load`` without any download, and verified; purposely broken copies and unsafe zips
each give their one-line problem.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipelines.bundle import workflow_configs
from pipelines.export import MANIFEST, ExportError, bundle_config, export_bundle, manifest_files
from pipelines.verify import verify_bundle
from tests.conftest import REPO

NAME = "lung_nodule_ct_edu_segmentation"

# Runs ``python -m monai.bundle <argv>`` after making this repository unimportable (its editable-install finder and
# any sys.path entry of the repository removed, checked), then ``monai.bundle.load`` of the same bundle with
# downloads made impossible (``workflow_type="train"``: network_def is defined once, in train.json, which
# inference.json overlays); prints where ``pipelines`` and ``networks`` were imported from.
CHILD = r"""
import importlib.util, json, os, runpy, sys
repo, bundle, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != repo and "__editable__" not in p]
assert importlib.util.find_spec("pipelines") is None and importlib.util.find_spec("networks") is None, sys.path
sys.argv = ["monai.bundle", *argv]
try:
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
except SystemExit as e:
    if e.code not in (None, 0):
        raise
import monai.bundle, torch
def no_download(*args, **kwargs):
    raise RuntimeError("monai.bundle tried to download")
monai.bundle.scripts.download = no_download
name, parent = os.path.basename(bundle), os.path.dirname(bundle)
with open("load_args.json", "w") as f:
    json.dump({"bundle_root": bundle}, f)
net = monai.bundle.load(name, bundle_dir=parent, workflow_type="train", device="cpu",
                        args_file="load_args.json").eval()
record = json.load(open(os.path.join(bundle, "manifest.json")))["torchscript"]
if record["kind"] == "export":
    exported = torch.export.load(os.path.join(bundle, record["file"])).module()
else:
    exported, meta, extra = monai.bundle.load(name, bundle_dir=parent, load_ts_module=True, device="cpu")
x = torch.rand(record["input_shape"])
with torch.no_grad():
    same = bool(torch.allclose(net(x), exported(x), rtol=1e-4, atol=1e-5))
print("RESULT " + json.dumps({"pipelines": sys.modules["pipelines"].__file__,
                              "networks": sys.modules["networks"].__file__,
                              "net": type(net).__name__, "kind": record["kind"], "same": same}))
"""


@pytest.fixture(scope="module")
def exported(trained_lung_bundle, tmp_path_factory) -> Path:
    """The tiny trained lung bundle exported by ``python -m pipelines export`` (its ``main``, in process)."""
    from pipelines.__main__ import main

    out = tmp_path_factory.mktemp("export") / "out" / f"{NAME}.zip"
    assert main(["export", str(trained_lung_bundle), "--out", str(out), "--name", NAME]) == 0
    return out


@pytest.fixture
def unzipped(exported, tmp_path) -> Path:
    with zipfile.ZipFile(exported) as zf:
        zf.extractall(tmp_path / "unzipped")
    return tmp_path / "unzipped" / NAME


def _rehash(root: Path) -> None:
    """Rewrite the manifest's file table after a deliberate change, so that only the change itself is reported."""
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"] = manifest_files(root)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _edit_json(path: Path, edit) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content, indent=4))


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return env


# ---------------------------------------------------------------------------------------------------------- export


def test_export_writes_a_complete_zip_with_manifest(exported, trained_lung_bundle):
    assert sorted(p.name for p in exported.parent.iterdir()) == [exported.name, f"{exported.name}.sha256"], \
        "no temporary file may be left; the zip's SHA-256 is written beside it"
    with zipfile.ZipFile(exported) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        assert all(n.startswith(f"{NAME}/") for n in zf.namelist())
        files = {n[len(NAME) + 1:]: zf.read(n) for n in names}
    for required in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/logging.conf",
                     "models/model.pt", "LICENSE", "docs/README.md", "networks/__init__.py", "networks/edu.py",
                     "pipelines/transforms/ct.py", "pipelines/io/writers.py", "pipelines/verify.py",
                     "pipelines/schemas/meta_schema_20240725.json", MANIFEST):
        assert required in files, required
    assert not [n for n in files if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n
                or Path(n).name.startswith("test_")]
    assert {Path(n).suffix for n in files if n.startswith(("networks/", "pipelines/"))} <= {".py", ".json"}

    manifest = json.loads(files.pop(MANIFEST))
    assert set(manifest["files"]) == set(files)
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": hashlib.sha256(files[name]).hexdigest(), "size": len(files[name])}, name
    assert manifest["bundle"] == NAME and manifest["version"] == "0.1.0"
    assert manifest["torch_version"] == torch.__version__ and manifest["monai_version"]
    assert manifest["weights"] == "models/model.pt"
    record = manifest["torchscript"]
    assert record["kind"] in ("script", "trace", "export") and record["file"] in files
    assert record["file"] == ("models/model.pt2" if record["kind"] == "export" else "models/model.ts")
    assert record["input_shape"] == [1, 1, 32, 32, 16]  # the tiny bundle's declared patch

    trained = torch.load(trained_lung_bundle / "models" / "model.pt", weights_only=True)
    shipped = torch.load(io.BytesIO(files["models/model.pt"]), weights_only=True)
    assert trained.keys() == shipped.keys() and all(torch.equal(trained[k], shipped[k]) for k in trained)

    train, inference = (json.loads(files[f"configs/{name}.json"]) for name in ("train", "inference"))
    assert train["network_def"]["_target_"] == "networks.EDU"  # targets unchanged, the code ships beside them
    assert train["network_def"]["_requires_"] == "@bundle_code" and train["bundle_code"].startswith("$")
    assert "network_def" not in inference  # the overlay: one source per setting
    assert inference["preprocessing"]["_requires_"] == "@bundle_code"
    assert all("$from pipelines" not in files[n].decode() for n in files if n.startswith("configs/"))


def test_export_needs_trained_weights_unless_allowed(trained_lung_bundle, tmp_path):
    untrained = tmp_path / "untrained"
    shutil.copytree(trained_lung_bundle, untrained, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache"))
    with pytest.raises(FileNotFoundError, match="trained weights not found"):
        export_bundle(untrained, tmp_path / "out" / "a.zip")
    assert not (tmp_path / "out" / "a.zip").exists()
    out = export_bundle(untrained, tmp_path / "out" / "b.zip", allow_missing_weights=True)
    with zipfile.ZipFile(out) as zf:
        manifest = json.loads(zf.read(f"untrained/{MANIFEST}"))
        assert not [n for n in zf.namelist() if "/models/" in n]
    assert manifest["weights"] is None and manifest["torchscript"] is None


def test_scriptable_network_gives_torchscript_that_monai_loads(trained_lung_bundle, tmp_path, monkeypatch):
    """E-DU is exported traced (it cannot be scripted); a scriptable ``network_def``
    (MONAI's UNet, weights given as ``{"model": state}``) gives ``models/model.ts``, which ``verify_bundle`` accepts
    and ``monai.bundle.load(load_ts_module=True)`` loads without downloading."""
    import monai.bundle
    from monai.networks.nets import UNet

    bundle = tmp_path / "unet_bundle"
    shutil.copytree(trained_lung_bundle, bundle, ignore=shutil.ignore_patterns("models", "eval", "logs", "cache"))
    network = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2]}
    _edit_json(bundle / "configs" / "inference.json", lambda c: c.update(network_def={"_target_": "UNet", **network}))
    eager = UNet(**network).eval()
    torch.save({"model": eager.state_dict()}, tmp_path / "weights.pt")
    out = export_bundle(bundle, tmp_path / "zips" / "unet_bundle.zip", weights=tmp_path / "weights.pt")
    assert verify_bundle(out) == []
    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path / "unzipped")
        assert json.loads(zf.read(f"unet_bundle/{MANIFEST}"))["torchscript"]["kind"] == "script"

    def no_download(*args, **kwargs):
        raise AssertionError("monai.bundle.load tried to download")

    monkeypatch.setattr(monai.bundle.scripts, "download", no_download)
    scripted, meta, _ = monai.bundle.load("unet_bundle", bundle_dir=tmp_path / "unzipped", load_ts_module=True,
                                          device="cpu")
    assert meta["version"] == "0.1.0"
    x = torch.rand(1, 1, 32, 32, 16)
    with torch.no_grad():
        assert torch.allclose(scripted(x), eager(x), atol=1e-5)


def test_config_export_is_json_wiring_only():
    """Components that name project code (their ``_target_`` or an argument) require ``@bundle_code``, which puts the
    bundle root on ``sys.path``; nothing else changes, and project code inside a ``$`` expression is refused."""
    config = {
        "imports": ["$import os"],
        "bundle_root": ".",
        "datalist": {"_target_": "pipelines.data.volumes.list_volumes", "root": "@dataset_dir"},
        "net": {"_target_": "networks.EDU", "spatial_dims": 3, "_requires_": "@other"},
        "saver": {"_target_": "SaveImaged", "writer": "pipelines.io.AtomicNibabelWriter"},
        "other": {"_target_": "Compose", "transforms": []},
        "expression": "$[x.pipelines for x in []] + [dict(networks=1)]",
    }
    out, changed = bundle_config(config)
    assert changed
    assert out["imports"] == ["$import os", "$import sys"]
    assert out["datalist"] == {**config["datalist"], "_requires_": "@bundle_code"}
    assert out["net"]["_requires_"] == ["@other", "@bundle_code"] and out["saver"]["_requires_"] == "@bundle_code"
    assert out["other"] == config["other"] and out["expression"] == config["expression"]
    assert {k for k in out if k not in config} == {"bundle_code"}
    assert bundle_config({"x": "$torch.zeros(1)"}) == ({"x": "$torch.zeros(1)"}, False)
    overlay, _ = bundle_config({"preprocessing": {"_target_": "pipelines.transforms.ct.ct_infer_transforms"}})
    assert overlay["+imports"] == ["$import os", "$import sys"]  # merged into the base config's imports
    for inline in ("$from pipelines.data.volumes import list_volumes", "$pipelines.data.volumes.list_volumes('.')",
                   "$import networks"):
        with pytest.raises(ExportError, match=r"^configs/x.json: datalist: \$.*: project code in a \$ expression"):
            bundle_config({"datalist": inline}, "configs/x.json")


def test_exported_bundle_runs_and_loads_without_the_repository(exported, luna16_tiny, tmp_path):
    root, scans = luna16_tiny
    with zipfile.ZipFile(exported) as zf:
        zf.extractall(tmp_path / "unzipped")
    bundle = tmp_path / "unzipped" / NAME
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "predictions"
    elsewhere.mkdir()
    configs = json.dumps([str(p) for p in workflow_configs(bundle, "inference")])  # the README's inference command
    command = [sys.executable, "-I", "-c", CHILD, str(REPO.resolve()), str(bundle),
               "run", "--config_file", configs, "--bundle_root", str(bundle),
               "--dataset_dir", str(root), "--output_dir", str(out)]
    proc = subprocess.run(command, cwd=elsewhere, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])
    assert Path(result["pipelines"]).is_relative_to(bundle), result  # the bundle's copy, not the repository's
    assert Path(result["networks"]).is_relative_to(bundle), result
    assert result["net"] == "EDU" and result["same"], result  # load(): eager network == exported model
    for scan in scans:
        image, pred = sitk.ReadImage(str(scan.path)), sitk.ReadImage(str(out / f"{scan.seriesuid}_seg.nii.gz"))
        assert pred.GetSize() == image.GetSize()
        assert np.allclose(pred.GetSpacing(), image.GetSpacing(), atol=1e-5)
        assert np.allclose(pred.GetOrigin(), image.GetOrigin(), atol=1e-4)
        assert np.allclose(pred.GetDirection(), image.GetDirection(), atol=1e-6)
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1}
    assert len(list(out.glob("*_seg.nii.gz"))) == len(scans)


# ---------------------------------------------------------------------------------------------------------- verify


def test_clean_export_verifies(exported, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    assert verify_bundle(exported, workdir=work) == []
    assert list(work.iterdir()) == [], "the extraction folder is removed"


def _bump_version(root: Path) -> None:
    _edit_json(root / "configs" / "metadata.json", lambda m: m.update(version="0.2.0"))


def _drop_task(root: Path) -> None:
    _edit_json(root / "configs" / "metadata.json", lambda m: m.pop("task"))


def _tamper(root: Path) -> None:
    with open(root / "docs" / "README.md", "a") as f:
        f.write("\none more line\n")


def _add_file(root: Path) -> None:
    (root / "models" / "extra.bin").write_bytes(b"x")


def _remove_license(root: Path) -> None:
    (root / "LICENSE").unlink()


BROKEN = {
    "version missing from changelog": (_bump_version, True,
                                       ["configs/metadata.json: version '0.2.0' is not listed in its changelog"]),
    "schema violation": (_drop_task, True, ["configs/metadata.json: schema meta_schema_20240725.json violated at "
                                            "(top level): 'task' is a required property"]),
    "tampered file": (_tamper, False,
                      ["docs/README.md: SHA-256/size differ from manifest.json (the file was changed)"]),
    "added file": (_add_file, False, ["models/extra.bin: not listed in manifest.json (a file was added)"]),
    "removed file": (_remove_license, False, ["LICENSE: listed in manifest.json but missing",
                                              "LICENSE: missing (required)"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_verify_reports_each_broken_bundle(case, unzipped):
    breaks, rehash, expected = BROKEN[case]
    breaks(unzipped)
    if rehash:
        _rehash(unzipped)
    assert verify_bundle(unzipped, run_network=False) == expected


def test_verify_reports_output_shape_mismatch(unzipped):
    def three_channels(meta):
        meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3

    _edit_json(unzipped / "configs" / "metadata.json", three_channels)
    _rehash(unzipped)
    assert verify_bundle(unzipped) == [
        "configs/train.json: network_def maps input (1, 1, 32, 32, 16) to (1, 2, 32, 32, 16), but "
        "configs/metadata.json declares output (1, 3, 32, 32, 16)"]


def test_verify_reports_torchscript_mismatch(unzipped):
    record = json.loads((unzipped / MANIFEST).read_text())["torchscript"]
    other = torch.nn.Conv3d(1, 2, 1).eval()  # same output shape, other numbers
    x = torch.rand(record["input_shape"])
    if record["kind"] == "export":
        torch.export.save(torch.export.export(other, (x,)), str(unzipped / record["file"]))
    else:
        torch.jit.save(torch.jit.trace(other, x), str(unzipped / record["file"]))
    _rehash(unzipped)
    problems = verify_bundle(unzipped)
    assert len(problems) == 1 and problems[0].startswith(
        f"{record['file']}: outputs differ from network_def with models/model.pt (max abs difference"), problems


# ----------------------------------------------------------------------------------------------------- unsafe zips


def _with_entry(exported: Path, dst: Path, info: zipfile.ZipInfo | str, data: bytes = b"evil") -> Path:
    shutil.copy(exported, dst)
    with zipfile.ZipFile(dst, "a") as zf:
        zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return dst


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _unsafe_case(case: str, tmp_path: Path, exported: Path) -> tuple:
    """(entry name or ZipInfo, its data, verify_bundle limits, the start of the expected problem after "evil.zip: ")."""
    largest = max(i.file_size for i in zipfile.ZipFile(exported).infolist())
    return {
        "dotdot": (f"{NAME}/../../evil", b"x", {}, f"entry '{NAME}/../../evil' has a '..' component"),
        "absolute": (str(tmp_path / "absolute_evil"), b"x", {},
                     f"entry '{tmp_path / 'absolute_evil'}' has an absolute path"),
        "symlink": (_symlink(f"{NAME}/docs/link"), b"/etc/passwd", {}, f"entry '{NAME}/docs/link' is a symbolic link"),
        "oversized": (f"{NAME}/models/big.bin", os.urandom(largest + 4096), {"max_member_bytes": largest + 1},
                      f"entry '{NAME}/models/big.bin' is {largest + 4096} bytes uncompressed, over the limit of "
                      f"{largest + 1}"),
        "bomb": (f"{NAME}/models/zeros.bin", bytes(8 << 20), {}, f"entry '{NAME}/models/zeros.bin' expands"),
    }[case]


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "oversized", "bomb"])
def test_verify_refuses_unsafe_zip_before_extracting(case, exported, tmp_path):
    entry, data, limits, expected = _unsafe_case(case, tmp_path, exported)
    evil = _with_entry(exported, tmp_path / "evil.zip", entry, data)
    work = tmp_path / "work" / "inner"
    work.mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    problems = verify_bundle(evil, workdir=work, **limits)
    assert len(problems) == 1 and problems[0].startswith(f"evil.zip: {expected}"), problems
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "nothing may be written"
    assert not (tmp_path / "absolute_evil").exists() and not (tmp_path / "evil").exists()


def test_verify_cli_exit_codes(exported, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "pipelines.verify", str(exported), "--no-network"], cwd=tmp_path,
                        env=_env(), capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "no problems found" in ok.stdout
    evil = _with_entry(exported, tmp_path / "evil.zip", "../evil")
    bad = subprocess.run([sys.executable, "-m", "pipelines.verify", str(evil)], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert bad.stdout.splitlines() == ["evil.zip: entry '../evil' has a '..' component (it would be written outside "
                                       "the target folder)"]


# ------------------------------------------------------------------------------------------------- every bundle

# bundle -> (session fixture of tests/conftest.py, key for the SR dict, the zip's name, the traced input and the
# output of network_def on it). The shapes are written out from each tiny bundle's metadata: the declared input patch
# (the lung and BraTS copies declare their TINY patch_size; "32*n" is 32 for HEMF) and what the network makes of it
# (2 / 3 / 1 segmentation channels, 7 class logits, x4 in-plane for ultrasound, x2 along z for CT).
EVERY_BUNDLE = {
    "lung": ("trained_lung_bundle", None, NAME, [1, 1, 32, 32, 16], (1, 2, 32, 32, 16)),
    "brats": ("trained_brats_bundle", None, "brats_mri_frcunet_segmentation", [1, 4, 32, 32, 32], (1, 3, 32, 32, 32)),
    "isic": ("trained_isic_bundle", None, "isic_skin_frcunet_segmentation", [1, 3, 256, 256], (1, 1, 256, 256)),
    "hemf": ("trained_hemf_bundle", None, "isic_skin_hemf_classification", [1, 3, 32, 32], (1, 7)),
    "us_sr": ("trained_sr_bundles", "us", "ultrasound_se_esrgan_superresolution", [1, 1, 64, 64], (1, 1, 256, 256)),
    "ct_sr": ("trained_sr_bundles", "ct", "ct_se_esrgan_superresolution", [1, 1, 64, 64, 16], (1, 1, 64, 64, 32)),
}


def _eager_network(bundle: Path) -> torch.nn.Module:
    """``network_def`` of the trained bundle's own (not exported) inference workflow with its models/model.pt, built
    by MONAI's ConfigParser here rather than by the export code."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(p) for p in workflow_configs(bundle, "inference")])
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    return net.eval()


@pytest.mark.parametrize("which", list(EVERY_BUNDLE))
def test_every_bundle_exports_verifies_and_matches_the_eager_network(which, request, tmp_path, capsys):
    """``python -m pipelines export`` then ``python -m pipelines verify`` (the CLI's ``main``, in process) on each
    tiny trained bundle: exit codes 0 and "no problems found"; then the exported TorchScript / torch.export model,
    loaded from the zip, gives the eager network's output on a fixed input to 1e-4."""
    from pipelines.__main__ import main

    fixture, key, name, input_shape, output_shape = EVERY_BUNDLE[which]
    bundle = request.getfixturevalue(fixture)
    bundle = bundle[key] if key else bundle
    if which == "lung":  # the module's zip, written by the same command: not exported twice
        out = request.getfixturevalue("exported")
    else:
        out = tmp_path / "zips" / f"{name}.zip"
        capsys.readouterr()
        assert main(["export", str(bundle), "--out", str(out), "--name", name]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.startswith(f"export: wrote {out} (")
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"verify: {out}: no problems found"]

    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path / "unzipped")
    root = tmp_path / "unzipped" / name
    record = json.loads((root / MANIFEST).read_text())["torchscript"]
    assert record["input_shape"] == input_shape
    if record["kind"] == "export":
        exported_model = torch.export.load(str(root / record["file"])).module()
    else:
        exported_model = torch.jit.load(str(root / record["file"]), map_location="cpu").eval()
    torch.manual_seed(0)
    x = torch.rand(input_shape)
    with torch.no_grad():
        expected = _eager_network(bundle)(x)
        got = exported_model(x)
    assert tuple(expected.shape) == output_shape
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), (got - expected).abs().max()
