"""Signed recipes: `okcell keygen`, ed25519 signature files, and refusal of unsigned, re-signed or tampered recipes
wherever a public key is configured (Recipe.load, `okcell inspect --verify-key`, cell.yaml `recipe_public_key`)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from edge.cli.main import main
from edge.runtime.service import CellService
from okcell.recipe import MANIFEST_FILE, Recipe, compute_recipe_id
from okcell.schema import ConfigError
from okcell.sidecar import ModelSidecar
from okcell.signing import generate_keys, load_private_key, load_public_key, sign_file, signature_path, verify_file
from service_support import write_cell_config


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private, public) from `okcell keygen`."""
    directory = tmp_path_factory.mktemp("keys") / "signing"
    assert main(["keygen", "--out", str(directory)]) == 0
    return directory / "okcell.key", directory / "okcell.pub"


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keys(tmp_path_factory.mktemp("other-keys"))


def _forge_threshold(recipe: Path) -> None:
    """Move the threshold within the held-out OK range (so it passes the range checks) and recompute the id."""
    path = recipe / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["risk"]["threshold"] = sum(manifest["calibration"]["ok_score_range"]) / 2
    manifest["recipe_id"] = compute_recipe_id(manifest)
    path.write_text(json.dumps(manifest))


def test_keygen_writes_an_owner_only_private_key_and_never_overwrites(keys: tuple[Path, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = private.read_bytes()
    assert main(["keygen", "--out", str(private.parent)]) == 2
    assert f"{private}: exists; refusing to overwrite a key" in capsys.readouterr().err
    assert private.read_bytes() == before

    document = tmp_path / "bundle.json"
    document.write_text('{"files": []}')
    assert sign_file(document, load_private_key(private)) == signature_path(document) == tmp_path / "bundle.json.sig"
    assert len(verify_file(document, load_public_key(public))) == 16


def test_bad_key_files_are_named(keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = keys
    shared = tmp_path / "shared.key"
    shutil.copy(private, shared)
    os.chmod(shared, 0o644)
    with pytest.raises(ConfigError, match=rf"{shared}: private key is readable by group or others \(mode 0644\); chmod 600"):
        load_private_key(shared)
    os.chmod(shared, 0o600)
    load_private_key(shared)
    with pytest.raises(ConfigError, match=rf"{public}: not an Ed25519 private key"):
        load_private_key(public)
    with pytest.raises(ConfigError, match=rf"{private}: not an Ed25519 public key"):
        load_public_key(private)
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'none.pub'}: public key not found \(make a key pair with `okcell keygen"):
        load_public_key(tmp_path / "none.pub")


def test_signed_recipe_loads_and_unsigned_resigned_or_tampered_are_refused(
        recipe_copy: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path], sidecar: ModelSidecar) -> None:
    private, public = keys
    manifest = recipe_copy / MANIFEST_FILE
    with pytest.raises(ConfigError, match=rf"{manifest}: not signed \(no manifest.json.sig beside it\), but only files "
                                          r"signed with key [0-9a-f]{16} are accepted"):
        Recipe.load(recipe_copy, sidecar, public_key=public)
    Recipe.load(recipe_copy, sidecar)  # without a configured key, signatures are not required

    sign_file(manifest, load_private_key(private))
    recipe_id = Recipe.load(recipe_copy, sidecar, public_key=public).recipe_id

    _forge_threshold(recipe_copy)  # within range, id recomputed: only the signature can tell
    assert Recipe.load(recipe_copy, sidecar).recipe_id != recipe_id
    with pytest.raises(ConfigError, match=rf"{manifest}: does not match its signature manifest.json.sig: changed after signing"):
        Recipe.load(recipe_copy, sidecar, public_key=public)

    sign_file(manifest, load_private_key(other_keys[0]))  # the forger signs with a key of his own
    with pytest.raises(ConfigError, match=r"manifest.json.sig: signed with key '[0-9a-f]{16}', but only key [0-9a-f]{16} is accepted"):
        Recipe.load(recipe_copy, sidecar, public_key=public)

    signature_path(manifest).write_text("garbage")
    with pytest.raises(ConfigError, match=r"manifest.json.sig: not a readable signature file"):
        Recipe.load(recipe_copy, sidecar, public_key=public)


def test_calibrate_signs_and_inspect_verifies(exported_model: Path, demo_images: Path, demo_recipe: Path,
                                              keys: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    private, public = keys
    out = tmp_path / "signed"
    assert main(["calibrate", "--model", str(exported_model), "--ok", str(demo_images / "holdout" / "ok"), "--folds", "2",
                 "--out", str(out), "--sign-key", str(private)]) == 0
    assert "signed with key" in capsys.readouterr().out and signature_path(out / MANIFEST_FILE).is_file()
    image = sorted((demo_images / "holdout" / "ok").glob("*.png"))[0]

    def inspect(recipe: Path) -> tuple[int, str]:
        code = main(["inspect", str(image), "--recipe", str(recipe), "--model", str(exported_model),
                     "--verify-key", str(public)])
        printed = capsys.readouterr()
        return code, printed.out + printed.err

    code, text = inspect(out)
    assert code == 0 and f"{image}" in text
    code, text = inspect(demo_recipe)  # unsigned
    assert code == 2 and "manifest.json: not signed" in text
    assert main(["calibrate", "--model", str(exported_model), "--ok", str(demo_images / "holdout" / "ok"),
                 "--out", str(tmp_path / "never"), "--sign-key", str(public)]) == 2  # fails before any work
    assert "not an Ed25519 private key" in capsys.readouterr().err and not (tmp_path / "never").exists()


def test_cell_refuses_unsigned_and_tampered_recipes(exported_model: Path, demo_images: Path, recipe_copy: Path,
                                                    keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = keys
    replay = {"replay": {"images": str(demo_images / "holdout" / "ok"), "rate_hz": 10}}
    config = write_cell_config(tmp_path / "cell", exported_model, recipe_copy, replay, "software",
                               recipe_public_key=str(public))
    assert config.recipe_public_key == public
    service = CellService(config)
    try:
        with pytest.raises(ConfigError, match="manifest.json: not signed"):
            service.startup()
    finally:
        service.shutdown()

    sign_file(recipe_copy / MANIFEST_FILE, load_private_key(private))
    service = CellService(config)
    try:
        service.startup()
        result = service.wait_result(service.request_trigger("part-1"), timeout_s=30)
        assert result is not None and result.decision in ("OK", "NOK")
        _forge_threshold(recipe_copy)
        with pytest.raises(ConfigError, match="does not match its signature"):
            service.reload_recipe()
    finally:
        service.shutdown()


def test_cell_config_names_a_missing_public_key(exported_model: Path, demo_recipe: Path, demo_images: Path,
                                                tmp_path: Path) -> None:
    replay = {"replay": {"images": str(demo_images / "holdout" / "ok")}}
    with pytest.raises(ConfigError, match=r"cell.yaml: recipe_public_key: file .*missing.pub not found"):
        write_cell_config(tmp_path, exported_model, demo_recipe, replay, "software", recipe_public_key="missing.pub")
