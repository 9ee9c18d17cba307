"""The server against an independent OPC UA stack (node-opcua), so that a misunderstanding shared by our server and
asyncua's client cannot hide: policy None, anonymous and user rights, wrong passwords, certificate onboarding."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from edge.opcua.server import OpcUaServer
from node_probe import Session, run_probe, statuses, step
from okcell.result import InspectionResult
from opcua_support import PASSWORD, SECURE, USER, DrivenCell, free_port, make_client_cert, make_config

TRIGGER_AND_REQUEST: list[dict[str, Any]] = [
    {"call": "Trigger", "args": ["probe-part"]},
    {"write": "Handshake.TriggerRequest", "type": "Boolean", "value": False},
]


def inspection(cycle: int, part_id: str) -> InspectionResult:
    return InspectionResult("NOK" if part_id.startswith("bad") else "OK", 0.1, 0.5)


class ProbedCell:
    """A server (secure policies only unless told; users and read-only anonymous) on a driven cell, and what the node
    client brings: a certificate (trusted if asked) and its own PKI folder."""

    def __init__(self, root: Path, security: list[str] = SECURE, trusted: bool = True) -> None:
        self.config = make_config(root / "state", free_port(), security=security, anonymous=True)
        self.cell = DrivenCell(inspection)
        self.server = OpcUaServer(self.config, self.cell)
        self.cell.sinks.append(self.server)
        self.server.start()
        self.cert = make_client_cert(root / "client", "node_client")
        if trusted:
            shutil.copy(self.cert[0], self.config.trusted_dir / "node_client.der")
        self.pki = root / "node-pki"

    def probe(self, *sessions: Session) -> list[list[dict[str, Any]]]:
        return run_probe(self.server.endpoint_url, self.pki, self.cert, *sessions)

    def close(self) -> None:
        self.server.stop()
        self.cell.close()


@pytest.fixture(autouse=True)
def quiet_asyncua(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="asyncua")


@pytest.fixture(scope="module")
def secure_cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProbedCell]:
    cell = ProbedCell(tmp_path_factory.mktemp("node"))
    yield cell
    cell.close()


def test_policy_none_is_refused_when_not_configured(secure_cell: ProbedCell) -> None:
    """The client sends a trusted client's certificate (public, so an attacker can too), anonymous and with a user."""
    for steps in secure_cell.probe(
        Session("None", "None", actions=TRIGGER_AND_REQUEST),
        Session("None", "None", USER, PASSWORD, actions=TRIGGER_AND_REQUEST),
    ):
        assert step(steps, "connect")["ok"], "a None channel is open for discovery (GetEndpoints)"
        assert sorted(map(tuple, step(steps, "endpoints")["offered"])) == [("Basic256Sha256", "Sign"), ("Basic256Sha256", "SignAndEncrypt")]
        session = step(steps, "session")
        assert not session["ok"] and session["status"] == "BadSecurityPolicyRejected", steps
    assert all(result.part_id != "probe-part" for result in secure_cell.cell.published)


def test_anonymous_on_a_secure_channel_may_read_but_not_trigger_or_write(secure_cell: ProbedCell) -> None:
    [steps] = secure_cell.probe(Session(actions=[
        {"read": "State.CurrentStateName"},
        {"call": "Trigger", "args": ["anonymous"]},
        {"call": "Stop"},
        {"write": "Handshake.PartId", "type": "String", "value": "anonymous"},
        {"write": "Handshake.TriggerRequest", "type": "Boolean", "value": True},
    ]))
    assert step(steps, "session")["ok"] and step(steps, "read")["value"] == "Operational"
    assert statuses(steps) == ["Good"] + ["BadUserAccessDenied"] * 4, steps
    assert secure_cell.cell.state == "Operational" and all(r.part_id != "anonymous" for r in secure_cell.cell.published)


def test_wrong_password_is_refused(secure_cell: ProbedCell) -> None:
    for steps in secure_cell.probe(Session(user=USER, password="not-the-password"), Session(user="intruder", password=PASSWORD)):
        session = step(steps, "session")
        assert not session["ok"] and session["status"] == "BadUserAccessDenied", steps


def test_user_triggers_and_receives_the_result_and_part_ids_are_limited(secure_cell: ProbedCell) -> None:
    actions: list[dict[str, Any]] = [
        {"call": "Trigger", "args": ["bad-part"]},
        {"result": True},
        {"write": "Handshake.PartId", "type": "String", "value": "x" * 257},
        {"write": "Handshake.PartId", "type": "String", "value": "line\nfeed"},
        {"call": "Trigger", "args": ["nul\u0000byte"]},
    ]
    for steps in secure_cell.probe(Session(user=USER, password=PASSWORD, actions=actions),
                                   Session(mode="Sign", user=USER, password=PASSWORD, actions=actions)):
        call, result = step(steps, "call"), step(steps, "result")
        assert call["status"] == "Good" and len(call["outputs"]) == 1, steps
        assert result["ok"] and result["ResultId"] == call["outputs"][0] and result["DecisionText"] == "NOK", steps
        assert statuses(steps)[2:] == ["BadOutOfRange", "BadOutOfRange", "BadInvalidArgument"], steps


def test_rules_hold_on_a_configured_none_channel(tmp_path: Path) -> None:
    """With None configured (isolated network), anonymous is still read-only there and users keep their rights."""
    cell = ProbedCell(tmp_path, security=["Basic256Sha256_SignAndEncrypt", "None"])
    try:
        anonymous, user = cell.probe(
            Session("None", "None", actions=TRIGGER_AND_REQUEST),
            Session("None", "None", USER, PASSWORD, actions=TRIGGER_AND_REQUEST),
        )
        assert step(anonymous, "session")["ok"] and statuses(anonymous) == ["BadUserAccessDenied"] * 2, anonymous
        assert statuses(user) == ["Good", "Good"], user
        assert [result.part_id for result in cell.cell.published] == ["probe-part"]
    finally:
        cell.close()


def test_onboarding_with_an_empty_trusted_folder(tmp_path: Path) -> None:
    """A fresh install: the first connection is refused and leaves the certificate in rejected/; moved to trusted/,
    the same client connects (no restart) and inspects a part."""
    cell = ProbedCell(tmp_path, trusted=False)
    try:
        assert not any(cell.config.trusted_dir.iterdir())
        plan = Session(user=USER, password=PASSWORD, actions=[{"call": "Trigger", "args": ["first-part"]}, {"result": True}])
        [refused] = cell.probe(plan)
        assert not step(refused, "session")["ok"] and step(refused, "session")["status"] == "BadCertificateUntrusted", refused
        rejected = list(cell.config.rejected_dir.iterdir())
        assert [path.read_bytes() for path in rejected] == [cell.cert[0].read_bytes()]
        shutil.move(rejected[0], cell.config.trusted_dir / rejected[0].name)
        [accepted] = cell.probe(plan)
        assert step(accepted, "result")["ok"] and step(accepted, "result")["DecisionText"] == "OK", accepted
    finally:
        cell.close()
