"""Validation of the ``opcua:`` section of cell.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.runtime.opcua_config import parse_opcua_config
from edge.opcua.security import hash_password, verify_password
from okcell.schema import ConfigError
from opcua_support import PASSWORD_HASH

USERS = [{"name": "plc", "password_hash": PASSWORD_HASH}]


def test_defaults_are_secure(tmp_path: Path) -> None:
    config = parse_opcua_config({"users": USERS}, "cell.yaml", tmp_path)
    assert config.enabled and config.endpoint == "opc.tcp://0.0.0.0:4840/okcell"
    assert config.security == ("Basic256Sha256_SignAndEncrypt", "Basic256Sha256_Sign")
    assert not config.allows_none and not config.anonymous
    assert config.trusted_dir == tmp_path / "opcua" / "pki" / "trusted"
    assert parse_opcua_config(None, "cell.yaml", tmp_path).enabled is False


def test_plc_client_section(tmp_path: Path) -> None:
    config = parse_opcua_config(
        {"users": USERS, "plc_client": {"endpoint": "opc.tcp://10.0.0.5:4840", "nodes": {"score": 'ns=3;s="DB".Score'},
                                         "username": "vision", "password_env": "PLC_PASSWORD"}},
        "cell.yaml", tmp_path,
    )
    assert config.plc_client is not None and config.plc_client.nodes == {"score": 'ns=3;s="DB".Score'}


@pytest.mark.parametrize(
    "section, message",
    [
        ({"users": USERS, "port": 4840}, "unknown key(s) port"),
        ({"users": USERS, "endpoint": "http://x:4840"}, "field 'endpoint' must look like opc.tcp://HOST:PORT"),
        ({"users": USERS, "endpoint": "opc.tcp://host:99999/x"}, "opc.tcp://HOST:PORT"),
        ({"users": USERS, "security": ["Basic128Rsa15"]}, "field 'security' holds 'Basic128Rsa15'"),
        ({"users": USERS, "security": []}, "non-empty list"),
        ({"users": USERS, "anonymous": "yes"}, "field 'anonymous' must be bool"),
        ({"users": [{"name": "plc", "password": "secret"}]}, "users[0]: missing key(s) password_hash"),
        ({"users": [{"name": "plc", "password_hash": "secret"}]}, "not a plain password"),
        ({"users": USERS + USERS}, "listed twice"),
        ({}, "nobody could connect"),
        ({"users": USERS, "result_timeout_s": 0}, "field 'result_timeout_s' must be > 0"),
        ({"users": USERS, "plc_client": {"endpoint": "opc.tcp://plc:4840", "nodes": {"colour": "ns=3;s=X"}}}, "unknown result field 'colour'"),
        ({"users": USERS, "plc_client": {"endpoint": "opc.tcp://plc:4840", "nodes": {"score": "Score"}}}, "node id string"),
        ({"users": USERS, "plc_client": {"endpoint": "opc.tcp://plc:4840", "nodes": {"score": "ns=3;s=S"}, "username": "u"}}, "go together"),
    ],
)
def test_bad_sections_name_the_field(tmp_path: Path, section: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_opcua_config(section, "cell.yaml", tmp_path)
    assert message in str(caught.value)
    assert str(caught.value).startswith("cell.yaml: opcua")


def test_password_hashes_verify() -> None:
    encoded = hash_password("s3cret", iterations=1000)
    assert verify_password("s3cret", encoded) and not verify_password("S3cret", encoded)
    assert encoded != hash_password("s3cret", iterations=1000), "salted"
