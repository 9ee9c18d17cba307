"""Secure endpoints with generated certificates, trusted-client folder, users, read-only anonymous, policy None."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest
from asyncua import Client, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from asyncua.ua.uaerrors import UaStatusCodeError
from cryptography import x509

from edge.opcua.security import SERVER_CERT, SERVER_KEY, TrustedClientValidator, ensure_server_certificate
from edge.opcua.server import APPLICATION_URI, OpcUaServer
from okcell.result import InspectionResult
from opcua_support import (
    CLIENT_URI, PASSWORD, SECURE, USER, cell_node, serving, free_port, make_client_cert, make_config, var,
)


def inspection(cycle: int, part_id: str) -> InspectionResult:
    return InspectionResult("OK", 0.1, 0.5)


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpcUaServer, Path, tuple[Path, Path], tuple[Path, Path]]]:
    state = tmp_path_factory.mktemp("state")
    config = make_config(state, free_port(), security=SECURE, anonymous=True)
    trusted = make_client_cert(tmp_path_factory.mktemp("client"), "trusted_client")
    untrusted = make_client_cert(tmp_path_factory.mktemp("stranger"), "stranger")
    with serving(inspection, config) as (_, server):
        shutil.copy(trusted[0], config.trusted_dir / "trusted_client.der")  # trusted while running: no restart needed
        yield server, config.pki_dir, trusted, untrusted


async def secure_client(url: str, cert: tuple[Path, Path], mode: ua.MessageSecurityMode, user: str | None, password: str | None) -> Client:
    client = Client(url, timeout=10)
    client.application_uri = CLIENT_URI
    await client.set_security(security_policies.SecurityPolicyBasic256Sha256, str(cert[0]), str(cert[1]), mode=mode)
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    await client.connect()
    return client


def test_certificate_and_key_are_generated_once_and_kept(secure_server) -> None:
    server, pki, _, _ = secure_server
    cert, key = pki / SERVER_CERT, pki / SERVER_KEY
    assert cert.is_file() and key.is_file()
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"

    async def endpoints() -> list[ua.EndpointDescription]:
        client = Client(server.endpoint_url)
        return await client.connect_and_get_server_endpoints()

    offered = asyncio.run(endpoints())
    assert {(e.SecurityPolicyUri.rsplit("#")[-1], e.SecurityMode.name) for e in offered} == {
        ("Basic256Sha256", "SignAndEncrypt"), ("Basic256Sha256", "Sign")
    }, "policy None is not offered unless configured"
    assert offered[0].ServerCertificate == cert.read_bytes()
    before = cert.read_bytes(), key.read_bytes()
    ensure_server_certificate(pki, APPLICATION_URI)  # what the next start does
    assert (cert.read_bytes(), key.read_bytes()) == before


@pytest.mark.parametrize("mode", [ua.MessageSecurityMode.SignAndEncrypt, ua.MessageSecurityMode.Sign])
def test_trusted_client_with_user_can_trigger_on_secure_endpoint(secure_server, mode: ua.MessageSecurityMode) -> None:
    server, _, trusted, _ = secure_server

    async def scenario() -> int:
        client = await secure_client(server.endpoint_url, trusted, mode, USER, PASSWORD)
        try:
            cell, idx = await cell_node(client)
            result_id = await cell.call_method(ua.QualifiedName("Trigger", idx), ua.Variant("secure-part"))
            request = var(client, idx, "Handshake.PartId")
            await request.write_value(ua.DataValue(ua.Variant("written-by-user", ua.VariantType.String)))
            return int(result_id)
        finally:
            await client.disconnect()

    assert asyncio.run(scenario()) >= 1


def test_untrusted_client_certificate_is_refused_and_kept_for_review(secure_server, caplog: pytest.LogCaptureFixture) -> None:
    server, pki, _, untrusted = secure_server
    caplog.set_level(logging.CRITICAL, logger="asyncua")
    with pytest.raises(Exception) as caught:
        asyncio.run(secure_client(server.endpoint_url, untrusted, ua.MessageSecurityMode.SignAndEncrypt, USER, PASSWORD))
    assert "BadCertificateUntrusted" in repr(caught.value) or "Untrusted" in str(caught.value)
    rejected = list((pki / "rejected").iterdir())
    assert any(path.read_bytes() == untrusted[0].read_bytes() for path in rejected)


def test_wrong_password_gets_bad_user_access_denied(secure_server, caplog: pytest.LogCaptureFixture) -> None:
    server, _, trusted, _ = secure_server
    caplog.set_level(logging.CRITICAL, logger="asyncua")
    for user, password in [(USER, "wrong"), ("nobody", PASSWORD)]:
        with pytest.raises(UaStatusCodeError) as caught:
            asyncio.run(secure_client(server.endpoint_url, trusted, ua.MessageSecurityMode.SignAndEncrypt, user, password))
        assert caught.value.code == ua.StatusCodes.BadUserAccessDenied


def test_anonymous_is_read_only(secure_server, caplog: pytest.LogCaptureFixture) -> None:
    server, _, trusted, _ = secure_server
    caplog.set_level(logging.CRITICAL, logger="asyncua")

    async def scenario() -> None:
        client = await secure_client(server.endpoint_url, trusted, ua.MessageSecurityMode.SignAndEncrypt, None, None)
        try:
            cell, idx = await cell_node(client)
            assert await var(client, idx, "State.CurrentStateName").read_value() == "Operational"
            for method, args in [("Trigger", [ua.Variant("anon")]), ("Stop", []), ("Reset", [])]:
                with pytest.raises(UaStatusCodeError) as caught:
                    await cell.call_method(ua.QualifiedName(method, idx), *args)
                assert caught.value.code == ua.StatusCodes.BadUserAccessDenied
            with pytest.raises(UaStatusCodeError) as caught:
                await var(client, idx, "Handshake.TriggerRequest").write_value(ua.DataValue(ua.Variant(True, ua.VariantType.Boolean)))
            assert caught.value.code == ua.StatusCodes.BadUserAccessDenied
            assert await var(client, idx, "Handshake.Busy").read_value() is False
        finally:
            await client.disconnect()

    asyncio.run(scenario())


def test_users_cannot_write_result_variables(secure_server) -> None:
    server, _, trusted, _ = secure_server

    async def scenario() -> None:
        client = await secure_client(server.endpoint_url, trusted, ua.MessageSecurityMode.Sign, USER, PASSWORD)
        try:
            _, idx = await cell_node(client)
            with pytest.raises(UaStatusCodeError) as caught:
                await var(client, idx, "Results.DecisionText").write_value(ua.DataValue(ua.Variant("OK", ua.VariantType.String)))
            assert caught.value.code == ua.StatusCodes.BadUserAccessDenied
        finally:
            await client.disconnect()

    asyncio.run(scenario())


def test_policy_none_only_when_configured_and_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="okcell")
    with serving(inspection, make_config(tmp_path, free_port(), security=["Basic256Sha256_SignAndEncrypt", "None"])) as (_, server):
        assert any("security policy None is enabled" in record.getMessage() for record in caplog.records)

        async def endpoints() -> set[str]:
            return {e.SecurityMode.name for e in await Client(server.endpoint_url).connect_and_get_server_endpoints()}

        assert asyncio.run(endpoints()) == {"SignAndEncrypt", "None_"}


def present(validator: TrustedClientValidator, cert: Path) -> None:
    """Present ``cert`` to the server's validator as a connecting client's CreateSession does."""
    description = ua.ApplicationDescription(ApplicationUri=CLIENT_URI, ApplicationType=ua.ApplicationType.Client)
    asyncio.run(validator(x509.load_der_x509_certificate(cert.read_bytes()), description))


def reject(validator: TrustedClientValidator, cert: Path) -> int:
    """The status code ``cert`` is refused with."""
    with pytest.raises(ServiceError) as caught:
        present(validator, cert)
    return caught.value.code


def test_an_empty_trusted_folder_refuses_and_keeps_the_certificate(tmp_path: Path) -> None:
    """A fresh install: nothing trusted yet (or only files that are no certificates) - the client is refused as
    untrusted and its certificate lands in rejected/ for the operator to move."""
    trusted, rejected = tmp_path / "trusted", tmp_path / "rejected"
    trusted.mkdir()
    rejected.mkdir()
    cert, _ = make_client_cert(tmp_path / "client", "plc")
    validator = TrustedClientValidator(trusted, rejected)
    assert reject(validator, cert) == ua.StatusCodes.BadCertificateUntrusted
    (trusted / "notes.pem").write_text("not a certificate")
    assert reject(validator, cert) == ua.StatusCodes.BadCertificateUntrusted
    assert [path.read_bytes() for path in rejected.iterdir()] == [cert.read_bytes()]
    shutil.move(next(rejected.iterdir()), trusted)
    present(validator, cert)  # trusted now: accepted


def test_rejected_folder_keeps_only_the_newest_certificates(tmp_path: Path) -> None:
    trusted, rejected = tmp_path / "trusted", tmp_path / "rejected"
    trusted.mkdir()
    rejected.mkdir()
    validator = TrustedClientValidator(trusted, rejected, keep=3)
    certs = [make_client_cert(tmp_path / "clients", f"stranger{n}")[0] for n in range(5)]
    for cert in certs:
        assert reject(validator, cert) == ua.StatusCodes.BadCertificateUntrusted
    assert sorted(path.read_bytes() for path in rejected.iterdir()) == sorted(cert.read_bytes() for cert in certs[2:])
    reject(validator, certs[0])  # back again: stored as the newest, the oldest kept one goes
    assert sorted(path.read_bytes() for path in rejected.iterdir()) == sorted(c.read_bytes() for c in [certs[0], *certs[3:]])
