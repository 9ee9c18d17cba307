"""The independent OPC UA client: ``tests/opcua_node/probe.js`` (node-opcua, pinned by its package-lock.json,
installed by ``make test`` with ``npm ci``), run against the server under test. It prints one JSON line per step."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from opcua_support import CLIENT_URI

NODE_DIR = Path(__file__).parent / "opcua_node"


@dataclass
class Session:
    """One connection and session of the probe: security policy and mode it asks for (whether offered or not),
    identity (``user`` None = anonymous) and actions: ``{"call": "Trigger", "args": [...]}``, ``{"write":
    "Handshake.PartId", "type": "String", "value": ...}``, ``{"read": "State.CurrentStateName"}``, ``{"result": True}``
    (wait for the ResultReady event of the last call's result id; the probe subscribes before the first action)."""

    policy: str = "Basic256Sha256"
    mode: str = "SignAndEncrypt"
    user: str | None = None
    password: str | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)


def run_probe(endpoint: str, pki: Path, cert: tuple[Path, Path], *sessions: Session) -> list[list[dict[str, Any]]]:
    """Run ``sessions`` one after the other with client certificate ``cert`` (and ``pki`` as the client's own PKI
    folder); per session the steps it printed: connect, endpoints, session, then one per action."""
    if not (NODE_DIR / "node_modules" / "node-opcua-client").is_dir():
        pytest.fail(f"node-opcua is not installed: run 'make test', or 'npm ci' in {NODE_DIR}")
    spec = {
        "endpoint": endpoint, "pki": str(pki), "application_uri": CLIENT_URI, "cert": str(cert[0]), "key": str(cert[1]),
        "sessions": [dataclasses.asdict(session) for session in sessions],
    }
    done = subprocess.run(["node", str(NODE_DIR / "probe.js"), json.dumps(spec)], capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, f"probe.js failed (exit {done.returncode}): {lines}\n{done.stderr[-2000:]}"
    return [[line for line in lines if line["session"] == index] for index in range(len(sessions))]


def step(steps: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The first step called ``name``; fails naming what the probe printed instead."""
    found = [item for item in steps if item["step"] == name]
    assert found, f"no {name!r} step in {steps}"
    return found[0]


def statuses(steps: list[dict[str, Any]]) -> list[str]:
    """The status of every action (the steps after connect, endpoints and session)."""
    return [item["status"] for item in steps[3:]]
