"""cell.yaml validation: bad files fail on load with the file and key named."""

from pathlib import Path

import pytest
import yaml

from edge.acquisition.producers import viky_producer
from edge.runtime.cell_config import check_device_config, load_cell_config
from okcell.schema import ConfigError

VIKY = viky_producer()


@pytest.fixture()
def cell_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.onnx").write_bytes(b"onnx bytes are checked when the cell starts, not here")
    (tmp_path / "recipe").mkdir()
    (tmp_path / "images").mkdir()
    return tmp_path


def write(cell_dir: Path, data: dict) -> Path:
    path = cell_dir / "cell.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def camera_config() -> dict:
    return {
        "model": {"onnx": "model.onnx", "backend": "onnxruntime", "threads": 2},
        "recipe": "recipe",
        "camera": {
            "producers": [str(VIKY)],
            "device": {"serial_number": "1"},
            "features": [{"PixelFormat": "Mono8"}, {"name": "ExposureTime", "value": 5000, "optional": True}],
            "num_buffers": 4,
        },
        "trigger": {"mode": "free_run", "timeout_s": 1.5},
        "archive": {"quota_mb": 100, "ok_sample_every": 10},
        "watchdog": {"budgets_s": {"inference": 20}, "reconnect_backoff_s": [0.2, 5]},
    }


def test_valid_camera_config_resolves_paths_and_defaults(cell_dir):
    config = load_cell_config(write(cell_dir, camera_config()))
    assert config.model.onnx == cell_dir / "model.onnx" and config.recipe == cell_dir / "recipe"
    assert config.camera is not None and config.camera.producers == [VIKY]
    assert [(f.name, f.value, f.optional) for f in config.camera.features] == [
        ("PixelFormat", "Mono8", False), ("ExposureTime", 5000, True)]
    assert config.camera.trigger_mode == "free_run" and config.trigger.timeout_s == 1.5
    assert config.watchdog.budgets_s == {"acquisition": 10.0, "inference": 20.0, "outputs": 10.0}
    assert config.archive.directory == cell_dir / "archive" and config.archive.ok_sample_every == 10
    assert config.archive.min_free_mb == 100.0
    assert config.opcua is not None and not config.opcua.enabled


def test_replay_config(cell_dir):
    data = camera_config()
    del data["camera"]
    data["replay"] = {"images": "images", "rate_hz": 5}
    config = load_cell_config(write(cell_dir, data))
    assert config.replay is not None and config.replay.images == [cell_dir / "images"] and config.camera is None


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["camera"].update(num_buffers="eight"), r"camera\.num_buffers must be an integer, found 'eight'"),
    (lambda d: d["trigger"].update(timeout_s=True), r"trigger\.timeout_s must be a number, found True"),
    (lambda d: d["trigger"].update(mode="sometimes"), r"trigger\.mode must be one of software, hardware, free_run"),
    (lambda d: d.update(cameras={}), r"unknown key cameras; allowed here:"),
    (lambda d: d["camera"].update(exposure=5), r"unknown key camera\.exposure"),
    (lambda d: d["watchdog"]["budgets_s"].update(decision=3), r"unknown key watchdog\.budgets_s\.decision"),
    (lambda d: d.pop("recipe"), r"missing key recipe"),
    (lambda d: d.update(recipe="no-such-recipe"), r"recipe: folder .*no-such-recipe not found"),
    (lambda d: d["model"].update(onnx="missing.onnx"), r"model\.onnx: file .*missing.onnx not found"),
    (lambda d: d["camera"].update(producers=["/opt/none/vendor.cti"]), r"camera\.producers: producer /opt/none/vendor.cti"),
    (lambda d: d["camera"].update(device={"serial": "1"}), r"unknown key camera\.device\.serial"),
    (lambda d: d["camera"].update(features=[{"name": "Gain"}]), r"camera\.features\[0\]: missing key"),
    (lambda d: d["watchdog"].update(reconnect_backoff_s=[5, 1]), r"watchdog\.reconnect_backoff_s must be"),
    (lambda d: d["archive"].update(min_free_mb=-1), r"archive\.min_free_mb must be >= 0"),
    (lambda d: d.update(replay={"images": "images"}), r"exactly one of 'camera'"),
])
def test_bad_config_names_file_and_key(cell_dir, edit, message):
    data = camera_config()
    edit(data)
    path = write(cell_dir, data)
    with pytest.raises(ConfigError, match=message) as caught:
        load_cell_config(path)
    assert str(path) in str(caught.value)


def test_missing_producer_without_environment_is_named(cell_dir, monkeypatch):
    monkeypatch.delenv("GENICAM_GENTL64_PATH", raising=False)
    data = camera_config()
    del data["camera"]["producers"]
    path = write(cell_dir, data)
    with pytest.raises(ConfigError, match=r"cell.yaml: camera.producers: no GenTL producer.*GENICAM_GENTL64_PATH"):
        load_cell_config(path)
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(VIKY.parent))
    camera = load_cell_config(path).camera
    assert camera is not None and VIKY in camera.producers


def test_not_yaml_and_not_a_mapping(cell_dir):
    path = cell_dir / "cell.yaml"
    path.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_cell_config(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_cell_config(path)


def test_okcell_run_refuses_a_bad_config_before_starting(cell_dir, capsys):
    from edge.cli.main import main

    data = camera_config()
    data["archive"]["quota_mb"] = "lots"
    path = write(cell_dir, data)
    assert main(["run", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"okcell run: error: {path}: archive.quota_mb must be a number, found 'lots'" in error
    assert not (cell_dir / "archive").exists(), "nothing is created before the config is valid"


def release_setup(tmp_path: Path) -> tuple[Path, Path]:
    """An installed release (releases/1/ with its own cell.yaml, model and recipe), ``current`` naming it, and the
    device's cell.yaml in etc/ naming ``current``."""
    releases = tmp_path / "releases"
    release = releases / "1"
    (release / "model").mkdir(parents=True)
    (release / "model" / "model.onnx").write_bytes(b"onnx")
    (release / "recipes" / "r").mkdir(parents=True)
    (release / "cell.yaml").write_text(yaml.safe_dump({
        "model": {"onnx": "model/model.onnx", "backend": "onnxruntime"}, "recipe": "recipes/r",
        "replay": {"images": "/no/such/release/images"}, "trigger": {"mode": "software", "timeout_s": 3.0}}))
    (releases / "current").symlink_to("1")
    (tmp_path / "etc").mkdir()
    (tmp_path / "images").mkdir()
    device = tmp_path / "etc" / "cell.yaml"
    device.write_text(yaml.safe_dump({"release": "../releases/current", "name": "press-7",
                                      "replay": {"images": "../images"}}))
    return device, release


def test_release_gives_model_and_recipe_and_the_device_file_the_rest(tmp_path: Path):
    device, release = release_setup(tmp_path)
    config = load_cell_config(device)
    assert config.release == release.resolve()  # `current` is followed once, at load
    assert config.model.onnx == release.resolve() / "model" / "model.onnx" and config.model.backend == "onnxruntime"
    assert config.recipe == release.resolve() / "recipes" / "r"
    assert config.name == "press-7" and config.trigger.timeout_s == 3.0  # the device's name, the release's trigger
    assert config.replay is not None and config.replay.images == [device.parent / "../images"]  # the device's replay


def test_release_errors_name_the_file(tmp_path: Path):
    device, release = release_setup(tmp_path)
    (release / "cell.yaml").write_text(yaml.safe_dump({"model": {"onnx": "model/model.onnx", "threads": "two"},
                                                       "recipe": "recipes/r"}))
    with pytest.raises(ConfigError, match=rf"{release.resolve() / 'cell.yaml'}: model\.threads must be an integer"):
        load_cell_config(device)
    device.write_text(yaml.safe_dump({"release": "../releases/current", "recipe": "/elsewhere"}))
    with pytest.raises(ConfigError, match=rf"{device}: recipe come\(s\) from the release named by 'release:'"):
        load_cell_config(device)
    (tmp_path / "releases" / "current").unlink()
    device.write_text(yaml.safe_dump({"release": "../releases/current"}))
    with pytest.raises(ConfigError, match=r"release: release folder .* not found \(no release installed yet\?"):
        load_cell_config(device)


@pytest.mark.parametrize("text, message", [
    ("release: /var/lib/okcell/releases/current\nname: [unclosed\n", "not valid YAML"),
    ("release: /var/lib/okcell/releases/current\nopcau: {}\n", "unknown key opcau; allowed here: archive, camera, "),
    ("release: /var/lib/okcell/releases/current\nmodel: {onnx: m.onnx}\n", "model come(s) from the release"),
    ("release: releases/current\n", "release must be an absolute path on the device (/var/lib/okcell/releases/"
                                    "current), found 'releases/current'"),
    ("name: press-7\nreplay: {images: /srv}\n", "missing key model, recipe"),
    ("- release\n", "top level must be a mapping, found list"),
])
def test_a_device_file_for_an_image_is_checked_without_its_release(tmp_path: Path, text: str, message: str):
    path = tmp_path / "press-7.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        check_device_config(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_a_device_file_is_accepted_with_a_release_or_with_model_and_recipe(tmp_path: Path):
    path = tmp_path / "press-7.yaml"
    path.write_text("release: /var/lib/okcell/releases/current\nname: press-7\nopcua: {endpoint: x}\n")
    assert check_device_config(path)["name"] == "press-7"  # the release and the paths are on the device, not here
    path.write_text("model: {onnx: /var/lib/okcell/models/model.onnx}\nrecipe: /var/lib/okcell/recipes/a\n")
    assert set(check_device_config(path)) == {"model", "recipe"}
