"""Acquisition against the real viky GenTL producer (genicam package) through harvesters, and the replay source."""

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from edge.acquisition.camera_settings import FeatureSetting
from edge.acquisition.harvester_source import CameraSettings, HarvesterSource
from edge.acquisition.producers import viky_producer
from edge.acquisition.replay_source import ReplaySource
from edge.acquisition.source import Frame, SourceLost
from okcell.schema import ConfigError

VIKY = viky_producer()


def frame_id(frame: Frame) -> int:
    """The producer's frame counter (viky numbers its frames)."""
    assert frame.frame_id is not None, "viky frames carry a frame id"
    return frame.frame_id


def viky(mode="free_run", pixel_format="RGBa8", serial="1", features=(), num_buffers=4, device=None) -> HarvesterSource:
    settings = CameraSettings(
        producers=[VIKY], device=device if device is not None else {"serial_number": serial},
        features=[FeatureSetting("PixelFormat", pixel_format), *features], trigger_mode=mode,
        num_buffers=num_buffers, config_source="cell.yaml",
    )
    return HarvesterSource(settings)


@pytest.mark.parametrize("pixel_format,shape", [("RGBa8", (400, 400, 3)), ("Mono8", (400, 400))])
def test_free_run_frames_in_both_pixel_formats(pixel_format, shape):
    source = viky(pixel_format=pixel_format)
    source.open()
    try:
        frames = [source.grab("", 2.0) for _ in range(20)]
    finally:
        source.close()
    assert source.applied_features["PixelFormat"] == pixel_format
    assert all(f.image.shape == shape and f.image.dtype == np.uint8 for f in frames)
    ids = [frame_id(f) for f in frames]
    assert ids == sorted(set(ids)), "frames arrive once each, in order"
    assert len({f.image.tobytes() for f in frames}) > 1, "the virtual camera's picture moves"
    assert not frames[0].image.flags["OWNDATA"] is False  # our own copy, not a view of a producer buffer
    assert source.stats.frames == 20 and source.stats.timeouts == 0


def test_free_run_is_newest_wins_and_counts_drops():
    source = viky()
    source.open()
    try:
        first = source.grab("", 2.0)
        time.sleep(0.5)  # ~10 frames arrive meanwhile, more than the 4 buffers
        newest = source.grab("", 2.0)
    finally:
        source.close()
    assert frame_id(newest) - frame_id(first) >= 8
    assert source.stats.dropped == frame_id(newest) - frame_id(first) - 1


def test_software_trigger_without_trigger_software_takes_the_next_frame():
    source = viky(mode="software", pixel_format="Mono8")
    source.open()
    try:
        assert not source.uses_trigger_software  # viky has no TriggerSoftware: documented fallback
        before = source.grab("part-1", 2.0)
        time.sleep(0.4)
        requested = time.time()
        after = source.grab("part-2", 2.0)
    finally:
        source.close()
    assert after.part_id == "part-2" and after.trigger_time >= requested
    assert frame_id(after) >= frame_id(before) + 8, "frames queued before the request are not used"
    assert source.stats.dropped == 0, "skipping stale frames on request is not a drop"


def test_hardware_trigger_on_a_camera_without_trigger_nodes_is_a_clear_error():
    source = viky(mode="hardware")
    with pytest.raises(ConfigError, match=r"cell.yaml: trigger.mode: 'hardware' needs TriggerMode and TriggerSource.*offers: .*PixelFormat"):
        source.open()
    source.close()


def test_missing_exposure_is_an_error_unless_optional():
    source = viky(features=[FeatureSetting("ExposureTime", 5000.0)])
    with pytest.raises(ConfigError, match=r"cell.yaml: camera.features: the camera has no feature 'ExposureTime'.*offers: .*AcquisitionFrameRate.*Width"):
        source.open()
    source.close()
    source = viky(features=[FeatureSetting("ExposureTime", 5000.0, optional=True), FeatureSetting("Width", 320)])
    source.open()
    try:
        frame = source.grab("", 2.0)
    finally:
        source.close()
    assert "ExposureTime" not in source.applied_features and source.applied_features["Width"] == 320
    assert frame.image.shape[1] == 320


@pytest.mark.parametrize("feature,message", [
    (FeatureSetting("PixelFormat", "BayerRG8"), r"value 'BayerRG8' is not offered; the camera offers: RGBa8, Mono8"),
    (FeatureSetting("Width", 5000), r"camera.features.Width: value 5000 outside the camera's range 100..800"),
    (FeatureSetting("PayloadSize", 1), r"camera.features.PayloadSize: is not writable"),
])
def test_bad_feature_values_list_what_the_camera_offers(feature, message):
    source = viky(features=[feature])
    with pytest.raises(ConfigError, match=message):
        source.open()
    source.close()


def test_check_configures_the_device_without_acquiring_and_releases_it():
    source = viky(features=[FeatureSetting("Width", 256)])
    source.check()
    assert source.acquirer is None and not source.stats.connected
    assert source.applied_features["Width"] == 256 and source.stats.frames == 0
    with pytest.raises(ConfigError, match=r"camera.features.Width: value 5000 outside"):
        viky(features=[FeatureSetting("Width", 5000)]).check()
    source.open()  # the device was released
    try:
        assert source.grab("", 2.0).image.shape == (400, 256, 3)
    finally:
        source.close()


def test_device_selection_by_serial_index_and_ambiguity():
    with pytest.raises(SourceLost, match=r"no device with serial_number='9'.*serial_number='2'"):
        viky(serial="9").open()
    with pytest.raises(ConfigError, match=r"model='Viky' matches 3 devices"):
        viky(device={"model": "Viky"}).open()
    with pytest.raises(ConfigError, match=r"^cell.yaml: camera.device.index 5: only 3 cameras found; .*serial_number='2'"):
        viky(device={"index": 5}).open()
    source = viky(device={"index": 2})
    source.open()
    try:
        assert source.grab("", 2.0).image.shape == (400, 400, 3)
    finally:
        source.close()


def test_device_loss_under_the_loop_then_reconnect():
    source = viky(mode="software")
    source.open()
    try:
        source.grab("", 2.0)
        acquirer = source.acquirer
        assert acquirer is not None
        threading.Timer(0.2, acquirer.destroy).start()  # close the acquirer under the running loop
        with pytest.raises(SourceLost, match="device lost"):
            for _ in range(50):
                source.grab("", 2.0)
        assert not source.stats.connected and source.stats.losses == 1
        source.reconnect()
        frame = source.grab("", 2.0)
        assert frame.image.shape == (400, 400, 3)
        assert source.stats.reconnects == 1 and source.stats.connected
    finally:
        source.close()


def test_replay_source_software_and_paced(tmp_path: Path):
    for name, image in (("a.png", data.astronaut()), ("b.png", data.coffee()), ("c.png", data.camera())):
        cv2.imwrite(str(tmp_path / name), image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    source = ReplaySource(tmp_path, trigger_mode="software")
    source.open()
    served = [source.grab(f"p{i}", 1.0) for i in range(4)]
    assert [f.frame_id for f in served] == [0, 1, 2, 0] and served[1].part_id == "p1"
    assert np.array_equal(served[0].image, data.astronaut()) and served[2].image.ndim == 2
    paced = ReplaySource(tmp_path, trigger_mode="free_run", rate_hz=20.0)
    paced.open()
    started = time.monotonic()
    for _ in range(11):
        paced.grab("", 1.0)
    assert time.monotonic() - started >= 0.45  # 10 periods of 50 ms
    with pytest.raises(ConfigError, match="no hardware trigger"):
        ReplaySource(tmp_path, trigger_mode="hardware")
    once = ReplaySource(tmp_path, loop=False)
    once.open()
    for _ in range(3):
        once.grab("", 1.0)
    with pytest.raises(SourceLost, match="all 3 images served"):
        once.grab("", 1.0)


def test_fetch_timeouts_are_counted():
    from edge.acquisition.source import SourceTimeout

    source = viky(mode="software", features=[FeatureSetting("AcquisitionFrameRate", 2.0)])
    source.open()
    try:
        source.grab("", 2.0)
        with pytest.raises(SourceTimeout, match="no frame within 0.05 s"):
            source.grab("", 0.05)  # the next frame is ~0.5 s away
        assert source.stats.timeouts == 1
        assert source.grab("", 2.0).image.shape == (400, 400, 3)  # still connected: a timeout is not a loss
    finally:
        source.close()


def test_okcell_cameras_lists_devices_and_main_features(capsys):
    from edge.cli.main import main

    assert main(["cameras", "--producer", str(VIKY)]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("3 device(s)")
    assert "serial_number='2'" in listing and "Width: 400" in listing
    assert "PixelFormat options: ['RGBa8', 'Mono8']" in listing


def write_replay_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        cv2.imwrite(str(folder / f"part_{index}.png"), np.full((32, 48, 3), 40 * index, np.uint8))


def test_replay_folder_taken_away_is_a_lost_camera_until_it_is_back(tmp_path: Path):
    """Frames are read at each grab: a renamed (unmounted, deleted) folder is a lost camera; reconnect lists it again."""
    folder = tmp_path / "images"
    write_replay_images(folder, 2)
    source = ReplaySource(folder)
    source.open()
    assert source.grab("a", 1.0).image.shape == (32, 48, 3)
    folder.rename(tmp_path / "away")
    with pytest.raises(SourceLost, match=r"part_1\.png: no such file"):
        source.grab("b", 1.0)
    assert not source.stats.connected and source.stats.losses == 1
    with pytest.raises(SourceLost, match=f"{folder}: not a folder of images"):
        source.reconnect()
    (tmp_path / "away").rename(folder)
    write_replay_images(folder, 3)  # a third image arrived meanwhile: listed again on reconnect
    source.reconnect()
    assert source.stats.connected and source.stats.reconnects == 1
    assert [source.grab("", 1.0).frame_id for _ in range(4)] == [0, 1, 2, 0]


def test_replay_image_that_cannot_be_read_fails_at_open_naming_it(tmp_path: Path):
    folder = tmp_path / "images"
    write_replay_images(folder, 2)
    (folder / "part_1.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"part_1\.png: not a readable image"):
        ReplaySource(folder).open()
