"""`okcell recipe push` onto a cell root in a temporary folder with a release installed: the real command in a child
process, the real model and recipe in the self-test, and a real `okcell run` that reloads on SIGHUP (--service
signal). Every refusal leaves the cell's recipes as they were; a push killed at any step leaves a whole recipe."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from bundle_support import child_env, copy_root, install, killed_at, make_bundle, make_root, okcell
from edge.deploy.recipe_push import STEPS
from edge.deploy.releases import CONFIG_FILE, PUBLIC_KEY_FILE
from edge.runtime.cell_config import load_cell_config
from edge.runtime.golden import GOLDEN_FILE
from edge.runtime.recipe_switch import LoadedRecipe, active_name, read_loaded
from fixture_bundle import Staged
from okcell.recipe import BANK_FILE, MANIFEST_FILE, Recipe, write_manifest
from okcell.sidecar import load_verified
from okcell.signing import generate_keys, key_id, load_private_key, load_public_key, sign_file
from service_support import ready_process

NAME = "part-b"


@pytest.fixture(scope="module")
def installed(staged: Staged, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cell root with release 1 installed (its trial start left a .loaded.json of a process that has exited)."""
    folder = tmp_path_factory.mktemp("recipe-push")
    root = make_root(folder / "root")
    done = install(root, make_bundle(staged, folder / "line1-1.tar", "1"))
    assert done.returncode == 0, done.stdout + done.stderr
    return root


@pytest.fixture(scope="module")
def golden_recipe(demo_recipe: Path, demo_images: Path, exported_model: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo recipe as part-b, with golden images picked by `okcell recipe golden`."""
    recipe = Path(shutil.copytree(demo_recipe, tmp_path_factory.mktemp("push-recipes") / NAME))
    done = subprocess.run(okcell("recipe", "golden", str(recipe), "--model", str(exported_model), "--golden",
                                 str(demo_images / "holdout" / "ok"), "--golden", str(demo_images / "holdout" / "nok"),
                                 "--golden-count", "2"), capture_output=True, text=True, env=child_env(), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 golden image(s) for recipe" in done.stdout
    return recipe


@pytest.fixture()
def root(installed: Path, tmp_path: Path) -> Path:
    return copy_root(installed, tmp_path / "root")


@pytest.fixture()
def recipe(golden_recipe: Path, tmp_path: Path) -> Path:
    """A private copy of part-b that a test may alter."""
    return Path(shutil.copytree(golden_recipe, tmp_path / "push" / NAME))


def recipes_folder(root: Path) -> Path:
    return load_cell_config(root / CONFIG_FILE).recipe.parent


def push(root: Path, recipe: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(okcell("recipe", "push", str(recipe), "--root", str(root), "--service", "signal", *extra),
                          capture_output=True, text=True, env=child_env(), timeout=300)


@pytest.fixture()
def running_cell(root: Path, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """`okcell run` on the root's cell.yaml, READY."""
    with ready_process(okcell("run", "--config", str(root / CONFIG_FILE)), tmp_path / "notify",
                       env=child_env()) as (process, _listener):
        yield process


def loaded(root: Path) -> LoadedRecipe:
    record = read_loaded(recipes_folder(root))
    assert record is not None
    return record


def assert_untouched(root: Path) -> None:
    """No recipe part-b on the cell, no partial copy left, .active unchanged (none)."""
    recipes = recipes_folder(root)
    assert not (recipes / NAME).exists()
    assert not [p.name for p in recipes.iterdir() if ".partial-" in p.name or p.name.startswith(".link-")]
    assert active_name(recipes) is None


def test_push_and_activate_on_a_running_cell(root: Path, recipe: Path, running_cell: subprocess.Popen[str],
                                              tmp_path: Path):
    before = loaded(root)
    assert before.pid == running_cell.pid and before.recipe == "demo-recipe" and before.accepted
    done = push(root, recipe, "--activate", "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("step ")] == [
        f"step {step}" for step in STEPS]
    assert f"recipe {NAME} is the cell's active recipe" in done.stdout
    recipes = recipes_folder(root)
    now = loaded(root)
    assert (now.pid, now.recipe, now.accepted) == (running_cell.pid, NAME, True) and now.sequence == before.sequence + 1
    assert active_name(recipes) == NAME
    Recipe.load(recipes / NAME, load_verified(load_cell_config(root / CONFIG_FILE).model.onnx))  # whole
    again = push(root, recipe, "--activate")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already holds this recipe: nothing to copy" in again.stdout
    assert f"recipe {NAME} is already the cell's active recipe" in again.stdout
    running_cell.terminate()
    output = running_cell.communicate(timeout=120)[0]
    assert f"recipe {now.recipe_id} loaded; self-test: 4 golden image(s) passed; active from the next cycle" in output
    with ready_process(okcell("run", "--config", str(root / CONFIG_FILE)), tmp_path / "notify-again",
                       env=child_env()) as (restarted, _listener):  # .active keeps the pushed recipe over a restart
        assert (loaded(root).pid, loaded(root).recipe) == (restarted.pid, NAME)


def test_cell_not_running_switches_back(root: Path, recipe: Path):
    stale = loaded(root).pid  # the trial start of the install, long gone
    done = push(root, recipe, "--activate")
    assert done.returncode == 1
    assert (f"okcell recipe push: failed: the cell did not switch to recipe {NAME}: the cell process {stale} that last "
            "reported a recipe load is not running; .active switched back to the recipe of cell.yaml") in done.stderr
    assert "step rollback:" in done.stdout
    recipes = recipes_folder(root)
    assert active_name(recipes) is None and (recipes / NAME).is_dir()  # pushed, not active


def test_tampered_recipe_is_refused(root: Path, recipe: Path):
    bank = recipe / BANK_FILE
    content = bank.read_bytes()
    bank.write_bytes(content[:-16] + bytes(b ^ 0xFF for b in content[-16:]))
    done = push(root, recipe)
    assert done.returncode == 2
    assert (f"okcell recipe: error: {bank}: sha256" in done.stderr
            and "does not match manifest.json field 'bank.sha256'" in done.stderr), done.stderr
    assert_untouched(root)


def test_recipe_with_a_wrong_signature_is_refused(root: Path, recipe: Path, tmp_path: Path):
    _, cell_public = generate_keys(tmp_path / "cell-keys")
    other_private, _ = generate_keys(tmp_path / "other-keys")
    shutil.copyfile(cell_public, root / PUBLIC_KEY_FILE)
    done = push(root, recipe)
    assert done.returncode == 2
    assert (f"{recipe / MANIFEST_FILE}: not signed (no manifest.json.sig beside it), but only files signed with key "
            f"{key_id(load_public_key(cell_public))} are accepted") in done.stderr, done.stderr
    sign_file(recipe / MANIFEST_FILE, load_private_key(other_private))
    done = push(root, recipe)
    assert done.returncode == 2
    assert (f"{recipe / MANIFEST_FILE}.sig: signed with key '{key_id(load_private_key(other_private).public_key())}', "
            f"but only key {key_id(load_public_key(cell_public))} is accepted") in done.stderr, done.stderr
    assert_untouched(root)


def test_recipe_for_another_model_is_refused(root: Path, recipe: Path):
    manifest = json.loads((recipe / MANIFEST_FILE).read_text())
    manifest["model"]["sha256"] = "0" * 64  # as calibrated with another model (the id is recomputed)
    write_manifest(recipe, manifest)
    done = push(root, recipe)
    assert done.returncode == 2
    assert "recipe was calibrated for model sha256 000000000000…" in done.stderr and "but the loaded model is" in done.stderr
    assert_untouched(root)


def test_recipe_without_golden_images_is_refused(root: Path, recipe: Path):
    shutil.rmtree(recipe / "selftest")
    done = push(root, recipe)
    assert done.returncode == 2
    assert f"{recipe}: carries no golden images ({GOLDEN_FILE})" in done.stderr, done.stderr
    assert_untouched(root)


def test_selftest_mismatch_is_refused(root: Path, recipe: Path):
    golden = json.loads((recipe / GOLDEN_FILE).read_text())
    first = golden["golden"][0]
    score = first["score"]
    first["score"] = score + 0.1  # what a different numeric path on the cell would look like
    (recipe / GOLDEN_FILE).write_text(json.dumps(golden))
    done = push(root, recipe, "--activate")
    assert done.returncode == 1
    assert (f"okcell recipe push: failed: recipe {NAME}: self-test failed: 1 of 4 golden image(s) differ: {first['file']}: {first['decision']} {score:.4f}, "
            f"expected {first['decision']} {score + 0.1:.4f} ± 0.01") in done.stderr, done.stderr
    assert "step switch" not in done.stdout
    assert_untouched(root)


def test_same_name_with_other_content_is_refused(root: Path, recipe: Path, golden_recipe: Path):
    assert push(root, golden_recipe).returncode == 0
    (recipe / "report.png").write_bytes(b"another report")
    done = push(root, recipe)
    assert done.returncode == 2
    assert (f"{recipes_folder(root) / NAME}: a recipe named {NAME} with other content is on the cell; a pushed recipe "
            "never replaces one") in done.stderr, done.stderr


@pytest.mark.parametrize("step", STEPS)
def test_push_killed_at_each_step_leaves_a_whole_recipe(root: Path, recipe: Path, running_cell: subprocess.Popen[str],
                                                        step: str):
    killed_at(okcell("recipe", "push", str(recipe), "--root", str(root), "--service", "signal", "--activate"), step)
    recipes = recipes_folder(root)
    if STEPS.index(step) < STEPS.index("switch"):
        assert active_name(recipes) is None and loaded(root).recipe == "demo-recipe"
    assert active_name(recipes) in (None, NAME)
    if (recipes / NAME).exists():
        Recipe.load(recipes / NAME, load_verified(load_cell_config(root / CONFIG_FILE).model.onnx))
    done = push(root, recipe, "--activate")  # the next push clears what the killed one left and completes
    assert done.returncode == 0, done.stdout + done.stderr
    if step in ("copy", "selftest"):
        assert f"removed .{NAME}.partial-" in done.stdout and "left by a push that did not finish" in done.stdout
    assert active_name(recipes) == NAME and loaded(root).recipe == NAME
    assert not [p.name for p in recipes.iterdir() if ".partial-" in p.name or p.name.startswith(".link-")]
