"""The ``opcua:`` section of ``cell.yaml``: parsed into dataclasses and validated on load.

``cell_config.py`` calls :func:`parse_opcua_config` with the raw section, the file name (for messages) and the
cell's state directory (where the server certificate and the trusted-client folder live).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from okcell.schema import ConfigError, require_keys, typed

SECURITY_MODES = ("Basic256Sha256_SignAndEncrypt", "Basic256Sha256_Sign", "None")
DEFAULT_SECURITY = ("Basic256Sha256_SignAndEncrypt", "Basic256Sha256_Sign")
DEFAULT_ENDPOINT = "opc.tcp://0.0.0.0:4840/okcell"
DEFAULT_NAMESPACE = "urn:okcell:cell"
PASSWORD_HASH = re.compile(r"^pbkdf2_sha256\$\d+\$[0-9a-f]{32}\$[0-9a-f]{64}$")
USER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

# Result fields that client mode can write into the PLC's own nodes (see docs/opcua.md).
PLC_RESULT_FIELDS = (
    "result_id",
    "cycle",
    "part_id",
    "recipe_id",
    "timestamp",
    "processing_ms",
    "decision",
    "decision_text",
    "ok",
    "score",
    "threshold",
    "nearest_label",
    "heatmap_path",
    "error",
)


@dataclass(frozen=True)
class UserAccount:
    """A user who may call methods and write handshake variables (password kept only as a PBKDF2 hash)."""

    name: str
    password_hash: str


@dataclass(frozen=True)
class PlcClientConfig:
    """Client mode: write every result into nodes of the PLC's own OPC UA server."""

    endpoint: str
    nodes: dict[str, str]  # result field -> node id string, e.g. 'ns=3;s="DB_Vision"."Score"'
    security: str = "None"  # or Basic256Sha256_Sign / Basic256Sha256_SignAndEncrypt
    username: str | None = None
    password_env: str | None = None  # name of the environment variable holding the password
    reconnect_s: float = 2.0
    timeout_s: float = 4.0
    queue_size: int = 1000


@dataclass(frozen=True)
class OpcUaConfig:
    """Everything the OPC UA server needs from ``cell.yaml``."""

    enabled: bool = True
    endpoint: str = DEFAULT_ENDPOINT
    namespace: str = DEFAULT_NAMESPACE
    security: tuple[str, ...] = DEFAULT_SECURITY
    users: tuple[UserAccount, ...] = ()
    anonymous: bool = False  # True: anonymous sessions may browse, read and subscribe, never write or call
    pki_dir: Path = Path("opcua/pki")  # server cert/key, trusted/ and rejected/ client certificates
    result_timeout_s: float = 30.0  # handshake: longest wait from trigger to result
    plc_client: PlcClientConfig | None = None
    session_timeout_s: float = 60.0  # longest session timeout granted: an idle client's session is closed after it
    lost_connection_grace_s: float = 5.0  # a session whose connection broke is closed after this, unless reactivated
    trusted_dir: Path = field(init=False)
    rejected_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trusted_dir", self.pki_dir / "trusted")
        object.__setattr__(self, "rejected_dir", self.pki_dir / "rejected")

    @property
    def allows_none(self) -> bool:
        return "None" in self.security


def parse_opcua_config(section: Mapping[str, Any] | None, source: Path | str, state_dir: Path) -> OpcUaConfig:
    """Validate the ``opcua:`` section of ``source``; missing section means the server is disabled."""
    where = f"{source}: opcua"
    if section is None:
        return OpcUaConfig(enabled=False, pki_dir=Path(state_dir) / "opcua" / "pki")
    require_keys(
        section,
        set(),
        {"enabled", "endpoint", "namespace", "security", "users", "anonymous", "pki_dir", "result_timeout_s", "plc_client",
         "session_timeout_s", "lost_connection_grace_s"},
        where,
    )
    enabled = typed(section, "enabled", bool, where) if "enabled" in section else True
    endpoint = _endpoint(section, "endpoint", where) if "endpoint" in section else DEFAULT_ENDPOINT
    namespace = typed(section, "namespace", str, where) if "namespace" in section else DEFAULT_NAMESPACE
    security = _security_list(section.get("security", list(DEFAULT_SECURITY)), where)
    anonymous = typed(section, "anonymous", bool, where) if "anonymous" in section else False
    users = _users(section.get("users", []), where)
    if enabled and not users and not anonymous:
        raise ConfigError(f"{where}: no 'users' and 'anonymous' is false - nobody could connect; add a user or set anonymous: true")
    if "pki_dir" in section:  # relative to the folder of the config file
        pki_dir = Path(source).parent / Path(typed(section, "pki_dir", str, where)).expanduser()
    else:
        pki_dir = Path(state_dir) / "opcua" / "pki"
    timeout = _positive(section, "result_timeout_s", where, 30.0)
    plc = _plc_client(section["plc_client"], f"{where}.plc_client") if section.get("plc_client") is not None else None
    session_timeout = _positive(section, "session_timeout_s", where, 60.0)
    grace = _positive(section, "lost_connection_grace_s", where, 5.0)
    return OpcUaConfig(enabled, endpoint, namespace, security, users, anonymous, pki_dir, timeout, plc, session_timeout,
                       grace)


def _endpoint(data: Mapping[str, Any], key: str, where: str) -> str:
    url = typed(data, key, str, where)
    parsed = urlparse(url)
    try:
        valid_port = parsed.port is None or 0 <= parsed.port <= 65535
    except ValueError:
        valid_port = False
    if parsed.scheme != "opc.tcp" or not parsed.hostname or not valid_port:
        raise ConfigError(f"{where}: field '{key}' must look like opc.tcp://HOST:PORT/path, found {url!r}")
    return url


def _security_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: field 'security' must be a non-empty list of {', '.join(SECURITY_MODES)}, found {value!r}")
    for item in value:
        if item not in SECURITY_MODES:
            raise ConfigError(f"{where}: field 'security' holds {item!r}; expected one of {', '.join(SECURITY_MODES)}")
    return tuple(dict.fromkeys(value))


def _users(value: Any, where: str) -> tuple[UserAccount, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: field 'users' must be a list of {{name, password_hash}}, found {value!r}")
    users: list[UserAccount] = []
    for index, item in enumerate(value):
        item_where = f"{where}.users[{index}]"
        require_keys(item, {"name", "password_hash"}, set(), item_where)
        name = typed(item, "name", str, item_where)
        if not USER_NAME.match(name):
            raise ConfigError(f"{item_where}: field 'name' must be 1-64 letters, digits or _.@-, found {name!r}")
        digest = typed(item, "password_hash", str, item_where)
        if not PASSWORD_HASH.match(digest):
            raise ConfigError(
                f"{item_where}: field 'password_hash' must be a pbkdf2_sha256$... hash made with "
                "'python -m edge.opcua.security hash-password', not a plain password"
            )
        if any(user.name == name for user in users):
            raise ConfigError(f"{item_where}: user {name!r} is listed twice")
        users.append(UserAccount(name, digest))
    return tuple(users)


def _positive(data: Mapping[str, Any], key: str, where: str, default: float) -> float:
    if key not in data:
        return default
    value = float(typed(data, key, (int, float), where))
    if value <= 0:
        raise ConfigError(f"{where}: field '{key}' must be > 0, found {value!r}")
    return value


def _plc_client(data: Any, where: str) -> PlcClientConfig:
    require_keys(data, {"endpoint", "nodes"}, {"security", "username", "password_env", "reconnect_s", "timeout_s", "queue_size"}, where)
    endpoint = _endpoint(data, "endpoint", where)
    nodes = data["nodes"]
    if not isinstance(nodes, Mapping) or not nodes:
        raise ConfigError(f"{where}: field 'nodes' must map result fields to node ids, found {nodes!r}")
    for name, node_id in nodes.items():
        if name not in PLC_RESULT_FIELDS:
            raise ConfigError(f"{where}.nodes: unknown result field {name!r}; allowed: {', '.join(PLC_RESULT_FIELDS)}")
        if not isinstance(node_id, str) or not re.match(r"^(ns=\d+;)?[isgb]=.+", node_id):
            raise ConfigError(f"{where}.nodes.{name}: expected a node id string like 'ns=3;s=Vision.Score', found {node_id!r}")
    security = data.get("security", "None")
    if security not in SECURITY_MODES:
        raise ConfigError(f"{where}: field 'security' must be one of {', '.join(SECURITY_MODES)}, found {security!r}")
    username = typed(data, "username", str, where) if "username" in data else None
    password_env = typed(data, "password_env", str, where) if "password_env" in data else None
    if (username is None) != (password_env is None):
        raise ConfigError(f"{where}: 'username' and 'password_env' go together")
    queue_size = typed(data, "queue_size", int, where) if "queue_size" in data else 1000
    if queue_size < 1:
        raise ConfigError(f"{where}: field 'queue_size' must be >= 1, found {queue_size}")
    return PlcClientConfig(
        endpoint=endpoint,
        nodes={str(k): str(v) for k, v in nodes.items()},
        security=security,
        username=username,
        password_env=password_env,
        reconnect_s=_positive(data, "reconnect_s", where, 2.0),
        timeout_s=_positive(data, "timeout_s", where, 4.0),
        queue_size=queue_size,
    )
