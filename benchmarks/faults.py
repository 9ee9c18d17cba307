"""Standing fault suite: many software triggers from OPC UA clients against a replay cell, with faults injected on a
schedule, then the ledger check (docs/cell.md, "The fault suite").

    python benchmarks/faults.py [--triggers 10000] [--quick] [--work DIR] [--model MODEL.onnx | --size 112]

``okcell run`` runs as a real child process under a stand-in for systemd (notify socket, READY, WatchdogSec,
restart on failure: ``faultsuite.systemd``); asyncua clients call ``Trigger`` and subscribe to ``ResultReady``
(``faultsuite.plc``). The faults (``faultsuite.injector``): SIGKILL; SIGSTOP past the watchdog; the replay folder
taken away (camera loss); the archive folder read-only and then a crash; the archive's disk full for 2 s, and until
systemd restarts the cell; SIGHUP and ActivateRecipe with a good and a broken recipe; clients dropped (session
closed, socket cut, all at once). ``--quick``: 500 triggers, every fault once.

Needs root: the archive gets its own small tmpfs (filled by the disk faults, bound read-only by the read-only one).
Prints the table; exits 1 if the ledger check fails."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from faultsuite import disk
from faultsuite.cell import ROOT, USER, prepare_model, prepare_recipes, write_cell
from faultsuite.injector import KINDS, Injector, schedule
from faultsuite.ledger import check, read_archive
from faultsuite.plc import Plc
from faultsuite.systemd import Lifetime, Supervisor, UnitTimes, restart_prevent_exit_status
from okcell.progress import Progress

QUICK_TRIGGERS = 500
DISK_MB = 48


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triggers", type=int, help="Trigger calls in all (default 10000; --quick: 500)")
    parser.add_argument("--quick", action="store_true", help="every fault once, 500 triggers unless --triggers")
    parser.add_argument("--fault-every", type=int, default=200, help="one fault per this many triggers (default 200)")
    parser.add_argument("--faults", default="all", help="comma-separated fault keys, 'all' (default) or 'none': "
                                                        + ", ".join(KINDS))
    parser.add_argument("--clients", type=int, default=3, help="OPC UA clients triggering at once (default 3)")
    parser.add_argument("--model", type=Path, help="exported ONNX model (default: export the embedded DINOv2 at --size)")
    parser.add_argument("--size", type=int, default=112, help="export size in px without --model (default 112)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the cell (default 2)")
    parser.add_argument("--watchdog-s", type=float, default=10.0, help="WatchdogSec (default 10; the unit has 30)")
    parser.add_argument("--work", type=Path, help="work folder, kept (model, demo parts, recipes, cell log, archive, "
                                                  "rss.csv); "
                                                  "default: a temporary one")
    args = parser.parse_args(argv)
    args.triggers = args.triggers or (QUICK_TRIGGERS if args.quick else 10_000)
    args.faults = list(KINDS) if args.faults == "all" else [] if args.faults == "none" else args.faults.split(",")
    unknown = [key for key in args.faults if key not in KINDS]
    if unknown:
        parser.error(f"--faults: unknown {', '.join(unknown)}; the faults are {', '.join(KINDS)}")
    if args.clients < 2:
        parser.error("--clients: at least 2 (the drop faults cut one client while another goes on)")
    return args


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return f"{os.cpu_count()} x {cpu}, load average {os.getloadavg()[0]:.1f} at start"


def write_rss(lifetimes: list[Lifetime], path: Path) -> None:
    """Every memory sample of the cell: process number, its results so far, RSS in MiB (one a second)."""
    with open(path, "w") as out:
        out.write("process,results,rss_mib\n")
        out.writelines(f"{life.number},{results},{mb:.1f}\n" for life in lifetimes for results, mb in life.rss)


def run(args: argparse.Namespace, work: Path) -> int:
    model = args.model.resolve() if args.model else prepare_model(work, args.size)
    demo, recipes = prepare_recipes(work, model, args.threads)
    shutil.rmtree(work / "state", ignore_errors=True)
    (work / "state").mkdir()
    disk.mount_tmpfs(work / "disk", DISK_MB)
    try:
        cell = write_cell(work, model, demo, recipes, work / "disk", free_port(), args.threads)
        times = UnitTimes(watchdog_s=args.watchdog_s)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1"}
        plan = schedule(args.triggers, args.fault_every, args.quick, args.faults)
        started = time.monotonic()
        with open(work / "cell.log", "w", buffering=1) as log:
            supervisor = Supervisor([sys.executable, "-m", "edge.cli.main", "run", "--config", str(cell.config)], env,
                                    work, times, restart_prevent_exit_status(ROOT / "systemd" / "okcell.service"), log)
            supervisor.start()
            try:
                supervisor.wait_ready(0, times.start_timeout_s)
                with Progress("faults", args.triggers, "triggers") as progress:
                    plc = Plc(cell.url, USER, cell.password, args.clients, args.triggers, progress)
                    plc.start()
                    injector = Injector(cell.rig, supervisor, plc, args.clients, progress.note)
                    injector.start(plan)
                    plc.join()
                    injector.join()
            finally:
                supervisor.stop()
        for suffix in ("", "-wal", "-shm"):  # a copy to keep (the disk goes away) and to read
            kept = cell.rig.archive / f"results.sqlite{suffix}"
            if kept.exists():
                shutil.copy(kept, work / kept.name)
        archive, pending = read_archive(work / "results.sqlite")
        write_rss(supervisor.lifetimes, work / "rss.csv")
    finally:
        disk.unmount(work / "disk")
    warmup, min_results = (50, 100) if args.quick else (200, 1000)
    report = check(plc.calls, plc.events, archive, pending, supervisor.lifetimes, injector.records, injector.skipped,
                   warmup, min_results)
    print(f"fault suite: {args.triggers} triggers from {args.clients} OPC UA clients, {len(plan)} faults planned, "
          f"{(time.monotonic() - started) / 60:.1f} min")
    print(f"machine: {machine()}")
    print(f"cell: {model.name} (ONNX Runtime, {args.threads} threads), replay of {len(list(cell.rig.images.iterdir()))} "
          f"demo parts (256 px), WatchdogSec {times.watchdog_s:g}, RestartSec {times.restart_s:g}, "
          f"TimeoutAbortSec {times.abort_timeout_s:g}; work folder {work}")
    print("\n".join(report.lines))
    if report.failures:
        print("ledger check FAILED: " + "; ".join(report.failures))
        return 1
    print("ledger check passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # the clients' side of every injected fault
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        return run(args, args.work.resolve())
    with tempfile.TemporaryDirectory(prefix="okcell-faults-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
