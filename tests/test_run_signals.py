"""``okcell run`` and the signals systemd sends: SIGHUP (reload) and SIGTERM (stop) are sent to the process, and the
kernel hands such a signal to any one of its threads. Python runs signal handlers in the main thread only, so the
cell must act on a signal whichever thread received it. Real process, real model and recipe."""

from __future__ import annotations

import ctypes
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from service_support import CellProcess, NotifyListener, write_cell_config


def tgkill(pid: int, tid: int, signum: int) -> None:
    """Send ``signum`` to thread ``tid`` of process ``pid`` (what the kernel may do with a signal to the process)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}, {signum})")


def other_thread(pid: int) -> int:
    """A thread of ``pid`` that is not its main thread."""
    return next(int(task.name) for task in Path(f"/proc/{pid}/task").iterdir() if int(task.name) != pid)


def wait_for_line(cell: CellProcess, text: str, count: int, timeout_s: float = 60.0) -> bool:
    """True once the output holds ``count`` lines containing ``text`` (False after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while sum(text in line for line in cell.output) < count:
        if time.monotonic() > deadline or cell.process.poll() is not None:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def cell(exported_model: Path, demo_recipe: Path, demo_images: Path, tmp_path: Path) -> Iterator[CellProcess]:
    listener = NotifyListener(tmp_path / "notify.sock")
    replay = {"replay": {"images": str(demo_images / "holdout" / "ok")}}
    config = write_cell_config(tmp_path / "cell", exported_model, demo_recipe, replay, "software")
    running = CellProcess(config.path, listener)
    try:
        assert running.ready_or_exit(), running.text
        yield running
    finally:
        running.kill()
        listener.close()


def test_sighup_received_by_another_thread_reloads_the_recipe(cell: CellProcess) -> None:
    """Was: the main thread waited without a timeout and never ran the handler; the reload happened only when some
    later signal woke it."""
    pid = cell.process.pid
    tgkill(pid, other_thread(pid), signal.SIGHUP)
    assert wait_for_line(cell, "SIGHUP: recipe", 1), f"the SIGHUP was not acted on: {cell.text}"
    tgkill(pid, other_thread(pid), signal.SIGHUP)
    assert wait_for_line(cell, "SIGHUP: recipe", 2), f"the second SIGHUP was not acted on: {cell.text}"


def test_sigterm_with_a_reload_pending_still_stops_the_cell(cell: CellProcess) -> None:
    """Was: when SIGHUP and SIGTERM were handled together, the reload cleared the stop request and the cell ran on
    until systemd's SIGKILL (queued triggers lost)."""
    pid = cell.process.pid
    thread = other_thread(pid)
    tgkill(pid, thread, signal.SIGHUP)
    tgkill(pid, pid, signal.SIGTERM)  # the main thread: it runs every pending handler at once
    assert cell.wait(timeout_s=120) == 0, cell.text
    assert "SIGTERM: stopping" in cell.text
