"""The ledger check: what the clients were told and saw against what the cell archived, and the run's figures.

Must hold (each a line of the table with "must be 0"): every accepted trigger (``Trigger`` returned an id) has
exactly one result in the archive, for its own part id; no result id was handed out twice; every result a client
received as an event is archived with the same part id and decision; the archive holds nothing for a part id no
client sent; no reservation is left unanswered; no process ended without a fault causing it; every fault was met as
documented; resident memory grew less than ``RSS_LIMIT_PERCENT`` over every process lifetime long enough to judge."""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faultsuite.injector import SETTLE_S, FaultRecord
from faultsuite.plc import SeenEvent, TriggerCall
from faultsuite.systemd import Lifetime

RSS_LIMIT_PERCENT = 5.0


@dataclass(frozen=True)
class Archived:
    part_id: str
    decision: str
    error: str


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def row(self, label: str, value: object, must_be_zero: bool = False) -> None:
        self.lines.append(f"  {label:<70} {value}{'   (must be 0)' if must_be_zero else ''}")
        if must_be_zero and value != 0:
            self.failures.append(f"{label}: {value}")

    def head(self, text: str) -> None:
        self.lines.append(text)


def read_archive(db_path: Path) -> tuple[dict[int, Archived], list[int]]:
    """The archived results by id, and the ids still reserved without a result."""
    with closing(sqlite3.connect(db_path)) as db:
        rows = {int(cycle): Archived(str(part), str(decision), str(error or ""))
                for cycle, part, decision, error in db.execute("SELECT cycle, part_id, decision, error FROM results")}
        pending = [int(cycle) for cycle, in db.execute("SELECT cycle FROM pending")]
    return rows, pending


def error_reason(error: str) -> str:
    """An ERROR result's reason without its particulars (paths, ids, times)."""
    return re.sub(r" past its .*", "", error.split(":")[0]) or "(no reason given)"


def check(calls: list[TriggerCall], events: list[SeenEvent], archive: dict[int, Archived], pending: list[int],
          lifetimes: list[Lifetime], faults: list[FaultRecord], skipped: list[str], warmup: int,
          rss_min_results: int) -> Report:
    report = Report()
    _triggers(report, calls, archive)
    _results(report, archive)
    _restarts(report, lifetimes, faults, skipped)
    report.head("ledger")
    _ledger(report, calls, events, archive, pending, lifetimes)
    _latency(report, calls, faults)
    _memory(report, lifetimes, warmup, rss_min_results)
    return report


def _triggers(report: Report, calls: list[TriggerCall], archive: dict[int, Archived]) -> None:
    archived_parts = {row.part_id for row in archive.values()}
    report.head("triggers")
    report.row("sent (Trigger calls)", len(calls))
    report.row("accepted (Trigger returned a result id)", sum(c.result_id is not None for c in calls))
    for reason, count in sorted(Counter(c.refused for c in calls if c.refused).items()):
        report.row(f"refused: {reason}", count)
    for reason, count in sorted(Counter(c.no_reply for c in calls if c.no_reply).items()):
        accepted = sum(c.no_reply == reason and c.part_id in archived_parts for c in calls)
        report.row(f"no answer ({reason}); of these accepted all the same", f"{count}; {accepted}")
    seen = sum(c.answered is not None for c in calls)
    report.row("accepted and the result event seen by the caller", seen)


def _results(report: Report, archive: dict[int, Archived]) -> None:
    decisions = Counter(row.decision for row in archive.values())
    report.head("results in the archive")
    report.row("results", len(archive))
    report.row("OK / NOK / ERROR", " / ".join(str(decisions.get(d, 0)) for d in ("OK", "NOK", "ERROR")))
    for reason, count in Counter(error_reason(r.error) for r in archive.values() if r.decision == "ERROR").most_common():
        report.row(f"ERROR: {reason}", count)


def _restarts(report: Report, lifetimes: list[Lifetime], faults: list[FaultRecord], skipped: list[str]) -> None:
    report.head(f"cell processes: {len(lifetimes)} (restarts {len(lifetimes) - 1})")
    ended = [life for life in lifetimes[:-1]]
    for cause, count in sorted(Counter(f"{life.end}, during '{life.fault or 'no fault'}'" for life in ended).items()):
        report.row(f"ended by {cause}", count)
    report.head(f"faults injected: {len(faults)}")
    for kind, records in _by_kind(faults).items():
        documented = sum(r.as_documented for r in records)
        report.row(kind, f"{len(records)}, as documented {documented}/{len(records)}")
    report.row("faults not met as documented", sum(not r.as_documented for r in faults), must_be_zero=True)
    report.row("faults planned but not injected (the triggers ran out first)", len(skipped), must_be_zero=True)


def _by_kind(faults: list[FaultRecord]) -> dict[str, list[FaultRecord]]:
    kinds: dict[str, list[FaultRecord]] = {}
    for record in faults:
        kinds.setdefault(record.kind, []).append(record)
    return kinds


def _ledger(report: Report, calls: list[TriggerCall], events: list[SeenEvent], archive: dict[int, Archived],
            pending: list[int], lifetimes: list[Lifetime]) -> None:
    accepted = [c for c in calls if c.result_id is not None]
    parts_archived = Counter(row.part_id for row in archive.values())
    sent_parts = {c.part_id for c in calls}
    owner: dict[int, str] = {}
    reused: set[int] = set()
    for call in accepted:
        assert call.result_id is not None
        if owner.setdefault(call.result_id, call.part_id) != call.part_id:
            reused.add(call.result_id)
    without = sum(call.result_id not in archive or parts_archived[call.part_id] != 1 for call in accepted)
    foreign = {i for i, row in archive.items() if i in owner and row.part_id != owner[i]}
    differing = sum(e.result_id not in archive or archive[e.result_id].part_id != e.part_id
                    or archive[e.result_id].decision != e.decision for e in events)
    report.row("accepted triggers without exactly one archived result", without, must_be_zero=True)
    report.row("result ids handed out twice (to calls, or archived for another part)", len(reused | foreign),
               must_be_zero=True)
    report.row(f"published results not archived as received ({len(events)} events)", differing, must_be_zero=True)
    report.row("archived results for a part id no client sent", sum(row.part_id not in sent_parts
                                                                    for row in archive.values()), must_be_zero=True)
    report.row("reserved ids still without a result", len(pending), must_be_zero=True)
    report.row("processes that ended with no fault injected", sum(not life.fault for life in lifetimes[:-1]),
               must_be_zero=True)
    final = lifetimes[-1].end if lifetimes else "none"
    report.row("last process stopped cleanly (exit 0)", "yes" if final == "exit 0" else f"no: {final}")
    if final != "exit 0":
        report.failures.append(f"the last process ended with {final}")


def _latency(report: Report, calls: list[TriggerCall], faults: list[FaultRecord]) -> None:
    windows = [(f.started, f.ended + SETTLE_S) for f in faults]
    quiet = [c for c in calls if c.answered is not None and not any(a <= c.sent <= b for a, b in windows)]
    report.head("trigger -> result event, outside fault windows (the window and 5 s after it)")
    if quiet:
        ms = np.array([((c.answered or 0.0) - c.sent) * 1000.0 for c in quiet])
        report.row(f"p50 / p99 over {len(quiet)} results", f"{np.percentile(ms, 50):.0f} / {np.percentile(ms, 99):.0f} ms")


def _memory(report: Report, lifetimes: list[Lifetime], warmup: int, min_results: int) -> None:
    report.head(f"resident memory per process lifetime: after {warmup} results (warm-up) -> at its end; judged "
                f"where at least {min_results} results came after the warm-up (limit {RSS_LIMIT_PERCENT:g} %)")
    judged_any = False
    for life in lifetimes:
        after = [(n, mb) for n, mb in life.rss if n >= warmup]
        if not after:
            continue
        (n0, base), (n1, end) = after[0], after[-1]
        growth = 100.0 * (end - base) / base
        judged = n1 - n0 >= min_results
        judged_any |= judged
        report.row(f"process {life.number}: results {n0} -> {n1}",
                   f"{base:.1f} -> {end:.1f} MiB, {growth:+.2f} %{'' if judged else ' (too short to judge)'}")
        if judged and growth >= RSS_LIMIT_PERCENT:
            report.failures.append(f"process {life.number}: RSS grew {growth:+.2f} %")
    if not judged_any:
        report.failures.append("no process lived long enough to judge its memory")
