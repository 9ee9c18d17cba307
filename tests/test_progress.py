"""okcell.progress: plain bounded lines where stderr is not a terminal, one redrawn line on a terminal (a real pty)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

from okcell.progress import BAR_WIDTH, Progress

ROOT = Path(__file__).resolve().parent.parent


def run_child(code: str, stderr: int) -> subprocess.Popen[bytes]:
    """``code`` in a fresh Python process whose stderr is the file descriptor ``stderr``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", code], stderr=stderr, env=env)


def test_a_long_loop_writes_ten_plain_lines_into_a_pipe() -> None:
    code = ("from okcell.progress import Progress\n"
            "with Progress('features', 100_000, 'images', interval_s=3600) as progress:\n"
            "    for _ in range(100_000):\n"
            "        progress.advance()\n")
    child = run_child(code, subprocess.PIPE)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err.decode()
    text = err.decode()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split(",")[0] for line in lines[:-1]] == [f"features: {n}/100000 images" for n in range(10_000, 100_000, 10_000)]
    assert re.fullmatch(r"features: 100000/100000 images in \d+\.\d s \(\d+\.\d images/s\)", lines[-1])


def test_a_slow_loop_gets_lines_between_the_tenths_and_notes_of_its_own() -> None:
    out = io.StringIO()
    with Progress("soak", 1000, "cycles", stream=out, interval_s=0.0) as progress:
        for cycle in range(3):
            progress.advance(detail=f"RSS {300 + cycle} MiB")
        progress.note("recipe reloaded")
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines[:3]] == ["soak: 1/1000 cycles", "soak: 2/1000 cycles", "soak: 3/1000 cycles"]
    assert lines[2].endswith("RSS 302 MiB")
    assert re.fullmatch(r"soak \[ +\d+\.\d s\] recipe reloaded", lines[3])
    assert lines[4].startswith("soak: 3/1000 cycles in ") and lines[4].endswith(", RSS 302 MiB") and len(lines) == 5


def test_an_error_ends_the_run_with_how_far_it_got() -> None:
    out = io.StringIO()
    try:
        with Progress("OK features", 12, "images", stream=out) as progress:
            progress.advance(8)
            raise ValueError("unreadable image")
    except ValueError:
        pass
    assert re.fullmatch(r"OK features: stopped at 8/12 images after \d+\.\d s", out.getvalue().splitlines()[-1])


def test_steps_without_a_count_end_with_done() -> None:
    out = io.StringIO()
    with Progress("okcell export", stream=out) as log:
        log.note("tracing 224x224")
    first, last = out.getvalue().splitlines()
    assert first.endswith("] tracing 224x224") and re.fullmatch(r"okcell export: done in \d+\.\d s", last)


def test_a_terminal_gets_one_redrawn_bar_cut_to_its_width() -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 50, 0, 0))  # a 50-column terminal
    code = ("import time\n"
            "from okcell.progress import Progress, REDRAW_S\n"
            "with Progress('features', 5, 'images') as progress:\n"
            "    for i in range(5):\n"
            "        time.sleep(1.5 * REDRAW_S)  # each step is drawn\n"
            "        progress.advance()\n"
            "        if i == 2:\n"
            "            progress.note('fold 1/3 done')\n")
    child = run_child(code, slave)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child has closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert child.wait(timeout=120) == 0, output.decode()
    lines = output.decode().replace("\r\n", "\n").split("\n")  # the terminal turns \n into \r\n
    assert len(lines) == 3 and lines[-1] == ""  # the note and the summary: the bar never gets a line of its own
    draws = [draw.rstrip() for line in lines for draw in line.split("\r") if draw]
    bars = [draw for draw in draws if re.match(r"features \[[#.]{%d}\] " % BAR_WIDTH, draw)]
    assert len(bars) == 6 and all(len(bar) <= 49 for bar in bars)  # 5 steps, and the bar again below the note
    assert bars[0].startswith("features [" + "#" * 4 + "." * 20 + "] 1/5 images")
    assert bars[-1].startswith("features [" + "#" * BAR_WIDTH + "] 5/5 images")
    assert re.fullmatch(r"features \[ +\d+\.\d s\] fold 1/3 done", draws[3])
    assert re.fullmatch(r"features: 5/5 images in \d+\.\d s \(\d+\.\d images/s\)", draws[-1])
