"""``verify`` says what a bundle will do before anything runs: pickles, logging INI code, config code, paths that
leave the archive, and the authenticity of a zip (its SHA-256, an Ed25519 signature of its manifest)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from pipelines.export import MANIFEST, SIGNATURE, export_bundle, file_digest, manifest_files
from pipelines.verify import run_from_args, verify_bundle

NAME = "lung_secure"


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_VERIFY",))


@pytest.fixture
def folder(trained_lung_bundle, tmp_path) -> Path:
    """A copy of the trained tiny lung bundle (no manifest: a folder as a user hands it over)."""
    dst = tmp_path / "bundle"
    shutil.copytree(trained_lung_bundle, dst, ignore=shutil.ignore_patterns("logs", "eval", "checkpoint.pt", ".*"))
    return dst


def _edit(path: Path, edit) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content, indent=4))


def _cli(path: Path, *flags: str, capsys) -> tuple[int, list[str]]:
    import argparse

    from pipelines.verify import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    code = run_from_args(parser.parse_args([str(path), *flags]))
    return code, capsys.readouterr().out.strip().splitlines()


def test_a_pickle_model_is_reported_without_running_it(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": _Evil()}, folder / "models" / "model.pt")
    code, lines = _cli(folder, "--no-network", capsys=capsys)
    assert code == 1
    assert any(line.startswith("models/model.pt: not a plain weights file") for line in lines), lines
    code, lines = _cli(folder, capsys=capsys)  # with the network check too: still never unpickled
    assert code == 1
    assert not (tmp_path / "PWNED_BY_VERIFY").exists()


def test_a_logging_conf_that_monai_refuses_is_reported(folder, capsys):
    conf = folder / "configs" / "logging.conf"
    conf.write_text(conf.read_text().replace("class=StreamHandler", "class=__import__('os').system"))
    code, lines = _cli(folder, "--no-network", capsys=capsys)
    assert code == 1 and any(line.startswith("configs/logging.conf: MONAI refuses it") for line in lines), lines


def test_config_code_is_listed_and_blocks_unless_allowed(folder, capsys):
    _edit(folder / "configs" / "inference.json", lambda c: c["initialize"].append("$__import__('os').getcwd()"))
    _edit(folder / "configs" / "inference.json",
          lambda c: c.update(hook={"_target_": "subprocess.run", "args": ["true"], "_disabled_": True}))
    code, lines = _cli(folder, "--no-network", capsys=capsys)
    code_lines = [line for line in lines if ": runs code: " in line]
    assert code == 1 and len(code_lines) == 2, lines
    assert "configs/inference.json: hook: runs code: _target_ 'subprocess.run'" in code_lines
    assert any("initialize#" in line and "__import__" in line for line in code_lines)
    allowed, lines = _cli(folder, "--no-network", "--allow-code", capsys=capsys)
    assert allowed == 0 and lines[-1].endswith("2 place(s) run code outside the trusted namespaces (--allow-code)")


def test_a_network_def_that_is_not_a_module_is_reported_not_crashed_on(folder, capsys):
    _edit(folder / "configs" / "inference.json", lambda c: c.update(network_def={"_target_": "torch.nn.ModuleDict"}))
    assert any("network_def maps input" in p or "fails on the declared input" in p for p in verify_bundle(folder))
    _edit(folder / "configs" / "inference.json", lambda c: c.update(network_def={"_target_": "torch.zeros",
                                                                                "size": [1]}))
    problems = verify_bundle(folder)
    assert "configs/inference.json: network_def builds a Tensor, not a torch.nn.Module" in problems


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder = tmp_path_factory.mktemp("keys")
    out = {}
    for who in ("alice", "mallory"):
        key = Ed25519PrivateKey.generate()
        (folder / f"{who}.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                              serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
        (folder / f"{who}.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
        out[who] = folder / who
    return out


@pytest.fixture(scope="module")
def signed(trained_lung_bundle, keys, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("signed") / f"{NAME}.zip"
    export_bundle(trained_lung_bundle, out, name=NAME, torchscript=False, sign_key=f"{keys['alice']}.pem")
    return out


def test_export_writes_the_zip_digest_and_verify_checks_it(signed, capsys):
    line = Path(f"{signed}.sha256").read_text()
    assert line == f"{file_digest(signed)}  {signed.name}\n"  # sha256sum -c format
    digest = line.split()[0]
    assert _cli(signed, "--no-network", "--sha256", digest, capsys=capsys)[0] == 0
    code, lines = _cli(signed, "--no-network", "--sha256", "0" * 64, capsys=capsys)
    assert code == 1 and lines[0].startswith(f"{signed.name}: SHA-256 {digest} differs from the expected 000")


def test_a_signed_manifest_verifies_with_its_public_key_only(signed, keys, tmp_path, capsys):
    assert _cli(signed, "--no-network", "--public-key", f"{keys['alice']}.pub", capsys=capsys)[0] == 0
    code, lines = _cli(signed, "--no-network", "--public-key", f"{keys['mallory']}.pub", capsys=capsys)
    assert code == 1 and lines[0].startswith(f"{SIGNATURE}: does not match {MANIFEST} under mallory.pub")
    # a file changed and the manifest re-hashed to hide it: the signature no longer matches
    with zipfile.ZipFile(signed) as zf:
        zf.extractall(tmp_path)
    root = tmp_path / NAME
    (root / "docs" / "README.md").write_text("changed\n")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"] = manifest_files(root)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    problems = verify_bundle(root, run_network=False, public_key=f"{keys['alice']}.pub")
    assert problems == [f"{SIGNATURE}: does not match {MANIFEST} under alice.pub: the bundle was not signed with "
                        "that key, or it was changed after signing"]
    (root / SIGNATURE).unlink()
    assert verify_bundle(root, run_network=False, public_key=f"{keys['alice']}.pub") == [
        f"{SIGNATURE}: missing: the bundle is not signed (export --sign-key)"]


@pytest.mark.parametrize("field, value", [("weights", "../../../etc/passwd"), ("weights", "/etc/passwd"),
                                          ("torchscript", {"kind": "script", "file": "../outside.ts"})])
def test_manifest_paths_outside_the_archive_are_refused(signed, tmp_path, field, value):
    with zipfile.ZipFile(signed) as zf:
        zf.extractall(tmp_path)
    root = tmp_path / NAME
    _edit(root / MANIFEST, lambda m: m.update({field: value}))
    problems = verify_bundle(root, run_network=False)
    what = "weights" if field == "weights" else "torchscript.file"
    shown = value if field == "weights" else value["file"]
    assert f"{MANIFEST}: {what} {shown!r} points outside the bundle; refusing to read it" in problems
