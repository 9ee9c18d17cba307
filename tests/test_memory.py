"""okcell.memory in a fresh process: the peak grows with a large array and, where the kernel allows, resets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from okcell.memory import reset_peak_rss, rss_mb

ROOT = Path(__file__).resolve().parent.parent
BLOCK_MB = 256

CHILD = f"""
import json
import numpy as np
from okcell.memory import peak_rss_mb, reset_peak_rss, rss_mb
figures = {{"before": peak_rss_mb()}}
block = np.ones({BLOCK_MB} * 2**20, dtype=np.uint8)  # every page written, so resident
figures.update(peak=peak_rss_mb(), rss_with_block=rss_mb())
del block  # an allocation this large is returned to the kernel at once
figures.update(rss_after_free=rss_mb(), reset=reset_peak_rss(), peak_after_reset=peak_rss_mb())
print(json.dumps(figures))
"""


@pytest.fixture(scope="module")
def figures() -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, float] = json.loads(done.stdout)
    return result


def test_peak_and_current_rss_grow_with_a_large_array(figures: dict[str, float]) -> None:
    assert figures["peak"] - figures["before"] >= 0.9 * BLOCK_MB
    assert figures["rss_with_block"] - figures["rss_after_free"] >= 0.9 * BLOCK_MB
    assert figures["peak"] >= figures["rss_with_block"]


@pytest.mark.skipif(not reset_peak_rss(), reason="this kernel does not let a process reset its VmHWM (Linux < 4.0)")
def test_reset_forgets_the_freed_array(figures: dict[str, float]) -> None:
    assert figures["reset"]
    assert figures["peak_after_reset"] <= figures["peak"] - 0.9 * BLOCK_MB
    assert figures["peak_after_reset"] >= figures["rss_after_free"]


def test_rss_of_another_process_by_pid() -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys, numpy as np; b = np.ones({BLOCK_MB} * 2**20, np.uint8); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        assert rss_mb(holder.pid) >= 0.9 * BLOCK_MB
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with pytest.raises(RuntimeError, match=f"/proc/{holder.pid}/status"):
        rss_mb(holder.pid)
