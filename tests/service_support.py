"""Helpers for the cell-service tests: cell.yaml writing, a notify-socket listener, a viky-calibrated mono recipe."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from edge.acquisition.producers import viky_producer
from edge.bench.cell import capture_frames
from edge.runtime.cell_config import CellConfig, load_cell_config

VIKY = viky_producer()
OKCELL = Path(sys.executable).parent / "okcell"
FRAME_SIZE = 256  # demo_recipe is calibrated on 256x256 colour images; viky is set to the same size


def viky_camera(pixel_format: str, serial: str = "1") -> dict[str, Any]:
    return {
        "producers": [str(VIKY)],
        "device": {"serial_number": serial},
        "features": [{"PixelFormat": pixel_format}, {"Width": FRAME_SIZE}, {"Height": FRAME_SIZE},
                     {"name": "ExposureTime", "value": 2000.0, "optional": True}],
        "num_buffers": 4,
    }


def write_cell_config(directory: Path, model: Path, recipe: Path, source: dict[str, Any], mode: str,
                      **extra: Any) -> CellConfig:
    directory.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "name": "test-cell",
        "model": {"onnx": str(model), "backend": "onnxruntime", "threads": 2},
        "recipe": str(recipe),
        "trigger": {"mode": mode, "timeout_s": 2.0},
        "archive": {"directory": str(directory / "archive")},
        **source,
        **extra,
    }
    path = directory / "cell.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_cell_config(path)


class NotifyListener:
    """A datagram socket bound where systemd's notify socket would be; a thread reads it like systemd does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self._messages: list[str] = []
        self._read = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._messages.append(message)

    def poll(self, wait_s: float = 0.0) -> list[str]:
        """Messages that arrived since the last poll (after waiting ``wait_s``)."""
        time.sleep(wait_s)
        time.sleep(0.1)  # let the reader thread catch up with datagrams already sent
        with self._lock:
            new = self._messages[self._read:]
            self._read = len(self._messages)
        return new

    @property
    def all(self) -> list[str]:
        with self._lock:
            return list(self._messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@contextmanager
def ready_process(command: list[str], notify_socket: Path, env: dict[str, str] | None = None,
                  umask: int = -1) -> Iterator[tuple[subprocess.Popen[str], NotifyListener]]:
    """``command`` started as systemd would (NOTIFY_SOCKET at ``notify_socket``, plus ``env``), once it sent READY=1,
    with the listener; killed afterwards if it still runs. Its output (stdout and stderr) is read from the pipe."""
    listener = NotifyListener(notify_socket)
    process = subprocess.Popen(command, env={**os.environ, "NOTIFY_SOCKET": str(listener.path), **(env or {})},
                               umask=umask, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600  # a hang guard, not a speed check
        while not any(m.startswith("READY=1") for m in listener.all):
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "no READY=1"
            time.sleep(0.1)
        yield process, listener
    finally:
        if process.poll() is None:
            process.kill()
        listener.close()


def capture_viky_frames(out: Path, pixel_format: str, count: int) -> Path:
    """Save ``count`` viky frames (every 3rd, so the ball has moved) as PNG reference images."""
    camera = {"producers": [str(VIKY)], "device": {"serial_number": "2"},
              "features": [{"PixelFormat": pixel_format}, {"Width": FRAME_SIZE}, {"Height": FRAME_SIZE}]}
    return capture_frames(camera, out, count)


class CellProcess:
    """``okcell run`` as systemd starts it (a notify socket); output collected by a thread."""

    def __init__(self, config: Path, listener: NotifyListener) -> None:
        self.listener = listener
        self.readies = sum(m.startswith("READY=1") for m in listener.all)
        env = {**os.environ, "NOTIFY_SOCKET": str(listener.path)}
        self.process = subprocess.Popen([str(OKCELL), "run", "--config", str(config)], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    @property
    def text(self) -> str:
        return "".join(self.output)

    def ready_or_exit(self, timeout_s: float = 180.0) -> bool:
        """True once this process sent READY=1, False if it exited first."""
        deadline = time.monotonic() + timeout_s
        while sum(m.startswith("READY=1") for m in self.listener.all) == self.readies:
            if self.process.poll() is not None:
                self._reader.join(timeout=10)
                return False
            assert time.monotonic() < deadline, f"neither READY=1 nor an exit: {self.text}"
            time.sleep(0.1)
        return True

    def wait(self, timeout_s: float = 120.0) -> int:
        code = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.wait()
