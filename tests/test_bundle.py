"""Release bundles: `okcell bundle create` and `inspect`, and refusal of tampered, wrongly signed or too new bundles
(the real command in a child process, the real model and recipe)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import yaml

from bundle_support import active_release, bundle_command, install, make_bundle, make_root
from edge.deploy.bundle import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE
from edge.deploy.releases import PUBLIC_KEY_FILE, ReleaseStore
from edge.deploy.selftest import MARGIN
from fixture_bundle import Staged
from okcell import __version__
from okcell.signing import generate_keys, key_id, load_public_key


def rewrite(bundle: Path, out: Path, replace: dict[str, bytes] | None = None, add: dict[str, bytes] | None = None) -> Path:
    """A copy of ``bundle`` with members replaced or added (the way someone would tamper with one)."""
    replace, add = replace or {}, add or {}
    with tarfile.open(bundle) as source, tarfile.open(out, "w:") as target:
        for info in source.getmembers():
            data = replace.get(info.name)
            if data is None:
                target.addfile(info, source.extractfile(info))
            else:
                info.size = len(data)
                target.addfile(info, io.BytesIO(data))
        for name, data in add.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            target.addfile(info, io.BytesIO(data))
    return out


def member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as archive:
        handle = archive.extractfile(name)
        assert handle is not None
        return handle.read()


def test_create_signed_bundle_and_inspect_it(exported_model: Path, demo_recipe: Path, demo_images: Path, tmp_path: Path):
    keys = tmp_path / "keys"
    done = bundle_command("keygen", "--out", str(keys))
    assert done.returncode == 0, done.stderr
    holdout = demo_images / "holdout"
    out = tmp_path / "line1.tar"
    done = bundle_command("create", "--model", str(exported_model), "--recipe", str(demo_recipe),
                          "--golden", str(holdout / "ok"), "--golden", f"{demo_recipe.name}={holdout / 'nok'}",
                          "--golden-count", "2", "--name", "line1", "--version", "7", "--sign-key", str(keys / "okcell.key"),
                          "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "4 golden image(s), signed" in done.stdout
    with tarfile.open(out) as archive:
        names = archive.getnames()
    assert names[:2] == [MANIFEST_FILE, SIGNATURE_FILE] and MODEL_FILE in names
    manifest = json.loads(member(out, MANIFEST_FILE))
    assert manifest["requires_okcell"] == __version__ and manifest["active_recipe"] == demo_recipe.name
    threshold = json.loads((demo_recipe / "manifest.json").read_text())["risk"]["threshold"]
    decisions = [g["decision"] for g in manifest["golden"]]
    assert decisions == ["OK", "OK", "NOK", "NOK"]
    assert all(abs(g["score"] - threshold) >= MARGIN * manifest["tolerance"] for g in manifest["golden"])
    release_config = yaml.safe_load(member(out, "cell.yaml"))
    assert release_config["model"] == {"onnx": MODEL_FILE, "engine": "model/model.engine"}
    assert release_config["recipe"] == f"recipes/{demo_recipe.name}"

    done = bundle_command("inspect", str(out), "--verify-key", str(keys / "okcell.pub"))
    assert done.returncode == 0, done.stderr
    signer = key_id(load_public_key(keys / "okcell.pub"))
    assert f"signature: key {signer} (verified)" in done.stdout
    assert "every sha256 checked" in done.stdout and done.stdout.count(": NOK ") == 2


def test_tampered_bundle_is_refused(staged: Staged, tmp_path: Path):
    bundle = make_bundle(staged, tmp_path / "good.tar", "1")
    model = bytearray(member(bundle, MODEL_FILE))
    model[len(model) // 2] ^= 0xFF
    tampered = rewrite(bundle, tmp_path / "tampered.tar", replace={MODEL_FILE: bytes(model)})
    root = make_root(tmp_path / "root")
    for command in (["inspect", str(tampered)], ["install", str(tampered), "--root", str(root), "--service", "none"]):
        done = bundle_command(*command)
        assert done.returncode == 2
        assert (f"{tampered}: {MODEL_FILE}: sha256" in done.stderr
                and "does not match the manifest" in done.stderr and "changed after it was made" in done.stderr), done.stderr
    assert active_release(root) is None
    assert sorted(p.name for p in ReleaseStore(root).folder.iterdir()) == [".lock"]  # the partial unpack is gone

    extra = rewrite(bundle, tmp_path / "extra.tar", add={"recipes/extra.py": b"print('hello')\n"})
    done = bundle_command("inspect", str(extra))
    assert done.returncode == 2 and "member 'recipes/extra.py' is not listed in release.json" in done.stderr

    manifest = json.loads(member(bundle, MANIFEST_FILE))
    manifest["tolerance"] = 1.0
    edited = rewrite(bundle, tmp_path / "edited.tar", replace={MANIFEST_FILE: json.dumps(manifest).encode()})
    done = bundle_command("inspect", str(edited))
    assert done.returncode == 2 and "does not match the manifest's content" in done.stderr and "release.json was edited" in done.stderr


def test_installer_with_a_public_key_refuses_unsigned_and_wrongly_signed_bundles(staged: Staged, tmp_path: Path):
    ours, theirs = generate_keys(tmp_path / "ours"), generate_keys(tmp_path / "theirs")
    root = make_root(tmp_path / "root")
    shutil.copy(ours[1], root / PUBLIC_KEY_FILE)
    expected = key_id(load_public_key(ours[1]))
    unsigned = make_bundle(staged, tmp_path / "unsigned.tar", "1")
    other = make_bundle(staged, tmp_path / "other.tar", "1", sign_key=theirs[0])
    signed = make_bundle(staged, tmp_path / "signed.tar", "1", sign_key=ours[0])
    signed_v2 = make_bundle(staged, tmp_path / "signed-2.tar", "2", sign_key=ours[0])
    forged = rewrite(signed_v2, tmp_path / "forged.tar", replace={SIGNATURE_FILE: member(signed, SIGNATURE_FILE)})
    refusals = {
        unsigned: f"{unsigned}: release.json: not signed (no release.json.sig beside it), but only files signed with key {expected}",
        other: f"{other}: release.json.sig: signed with key '{key_id(load_public_key(theirs[1]))}', but only key {expected} is accepted",
        forged: f"{forged}: release.json: does not match its signature release.json.sig: changed after signing",
    }
    for bundle, message in refusals.items():
        done = install(root, bundle, service="none")
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert active_release(root) is None
    done = install(root, signed, service="none")
    assert done.returncode == 0, done.stderr
    assert f"signature by key {expected} verified" in done.stdout
    assert active_release(root) == json.loads(member(signed, MANIFEST_FILE))["release_id"]


def test_bundle_for_a_newer_okcell_is_refused(staged: Staged, tmp_path: Path):
    bundle = make_bundle(staged, tmp_path / "newer.tar", "1", edit_draft=lambda draft: draft.update(requires_okcell="99.0"))
    root = make_root(tmp_path / "root")
    done = install(root, bundle, service="none")
    assert done.returncode == 2
    assert f"needs okcell >= 99.0, this machine has okcell {__version__}; upgrade the okcell package first" in done.stderr
    assert active_release(root) is None
