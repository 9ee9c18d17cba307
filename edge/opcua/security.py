"""Server security: certificate on first start, trusted-client folder, users, read-only anonymous, policy choice.

Make a password hash for ``cell.yaml`` with ``python -m edge.opcua.security hash-password``.
"""

from __future__ import annotations

import datetime
import getpass
import hashlib
import hmac
import logging
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, generate_self_signed_app_certificate
from asyncua.crypto.permission_rules import USER_TYPES, PermissionRuleset, User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.uacrypto import load_certificate
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.common.utils import ServiceError
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge.opcua import endpoint_guard
from edge.runtime.opcua_config import OpcUaConfig, UserAccount

log = logging.getLogger(__name__)

PBKDF2_ITERATIONS = 200_000
CERT_DAYS = 3650  # an unattended cell must not lose its endpoint after a year
SERVER_CERT = "server_cert.der"
SERVER_KEY = "server_key.pem"
REJECTED_KEEP = 100  # certificates kept in rejected/ (the newest; anyone can add one without logging in)

_POLICY_TYPES = {
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "None": ua.SecurityPolicyType.NoSecurity,
}
_WRITE_OR_CALL = {
    ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary),
    ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary),
}


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    """``pbkdf2_sha256$ITERATIONS$SALT$HASH`` for the ``users`` list in ``cell.yaml``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    _, iterations, salt, expected = encoded.split("$")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations))
    return hmac.compare_digest(digest.hex(), expected)


class CellUserManager:
    """Configured users get ``UserRole.User`` (read, write, call); anonymous gets ``UserRole.Anonymous`` if enabled."""

    def __init__(self, users: tuple[UserAccount, ...], anonymous: bool) -> None:
        self._users = {user.name: user.password_hash for user in users}
        self._anonymous = anonymous

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None) -> User | None:
        if username is None:
            return User(role=UserRole.Anonymous) if self._anonymous else None
        stored = self._users.get(username)
        if stored is None or password is None or not verify_password(password, stored):
            log.warning("OPC UA login refused for user %r", username)
            return None
        return User(role=UserRole.User, name=username)


class CellPermissions(PermissionRuleset):
    """Users may read, subscribe, write (writable nodes only) and call methods; anonymous may not write or call."""

    def __init__(self) -> None:
        user_types = {ua.NodeId(type_id) for type_id in USER_TYPES}
        self._allowed = {
            UserRole.Admin: user_types,
            UserRole.User: user_types,
            UserRole.Anonymous: user_types - _WRITE_OR_CALL,
        }

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        return action_type_id in self._allowed[user.role]


class FolderTrustStore(TrustStore):
    """asyncua's trust store over the trusted/ folder, except that a folder without certificates trusts nobody
    (asyncua raises ``ValueError`` there, so a fresh install refused every client with BadInternalError) and a file
    that is no certificate is skipped with a warning instead of failing every connection."""

    async def load_trust(self) -> None:
        certs: list[x509.Certificate] = []
        for location in self.trust_locations:
            for path in sorted(location.iterdir()):
                if path.suffix.lower() not in (".der", ".pem"):
                    continue
                try:
                    certs.append(await load_certificate(path))
                except ValueError as exc:
                    log.warning("OPC UA: %s in the trusted folder is not a certificate (%s); ignored", path, exc)
        self._trust_store = x509.verification.Store(certs) if certs else None  # None: is_trusted() says no


class TrustedClientValidator:
    """Accept client certificates found in ``trusted/`` (re-read on every new session, so no restart is needed);
    a refused certificate is copied to ``rejected/`` so an operator can move it to ``trusted/``. ``rejected/`` keeps
    the ``keep`` newest certificates (a refused one that comes back counts as new), the oldest go."""

    def __init__(self, trusted_dir: Path, rejected_dir: Path, keep: int = REJECTED_KEEP) -> None:
        self._trusted_dir = trusted_dir
        self._rejected_dir = rejected_dir
        self._keep = keep

    async def __call__(self, certificate: x509.Certificate, app_description: ua.ApplicationDescription) -> None:
        store = FolderTrustStore([self._trusted_dir], [])
        await store.load()
        validator = CertificateValidator(
            CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT, store
        )
        try:
            await validator.validate(certificate, app_description)
        except ServiceError:
            path = self._keep_rejected(certificate, app_description.ApplicationUri)
            log.warning(
                "OPC UA client certificate of %s refused; to trust it move %s to %s",
                app_description.ApplicationUri, path, self._trusted_dir,
            )
            raise

    def _keep_rejected(self, certificate: x509.Certificate, app_uri: str) -> Path:
        """Write ``certificate`` to rejected/ as the newest file, then drop the oldest beyond ``keep``."""
        name = f"{_safe_name(app_uri)}_{certificate.fingerprint(hashes.SHA256()).hex()[:12]}.der"
        path = self._rejected_dir / name
        path.write_bytes(certificate.public_bytes(Encoding.DER))
        now = time.time_ns()  # explicit: file times may be coarser than the time between two refusals
        os.utime(path, ns=(now, now))
        kept: list[tuple[int, Path]] = []
        for candidate in self._rejected_dir.glob("*.der"):
            try:
                kept.append((candidate.stat().st_mtime_ns, candidate))
            except FileNotFoundError:  # moved to trusted/ meanwhile
                continue
        for _, old in sorted(kept, reverse=True)[self._keep:]:
            old.unlink(missing_ok=True)
        return path


def ensure_server_certificate(pki_dir: Path, app_uri: str, hostname: str | None = None) -> tuple[Path, Path]:
    """Create ``pki_dir`` with a key and a self-signed server certificate on first start (or when the certificate
    expired or names another application URI); return (certificate, key) paths. An existing key is never replaced."""
    host = hostname or socket.gethostname()
    for folder in (pki_dir, pki_dir / "trusted", pki_dir / "rejected"):
        folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = pki_dir / SERVER_CERT, pki_dir / SERVER_KEY
    if key_path.is_file():
        key = _load_key(key_path)
    else:
        key = generate_private_key()
        _write_private(key_path, dump_private_key_as_pem(key))
        cert_path.unlink(missing_ok=True)
    if cert_path.is_file() and _certificate_fits(x509.load_der_x509_certificate(cert_path.read_bytes()), app_uri):
        return cert_path, key_path
    cert = generate_self_signed_app_certificate(
        key,
        app_uri,
        {"organizationName": "okcell"},
        [x509.UniformResourceIdentifier(app_uri), x509.DNSName(host), x509.DNSName("localhost")],
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=CERT_DAYS,
    )
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    log.info("OPC UA server certificate written to %s (valid %d days)", cert_path, CERT_DAYS)
    return cert_path, key_path


async def apply_security(server: Server, config: OpcUaConfig, app_uri: str) -> None:
    """Certificate, policies, identity tokens, users, permissions and client-certificate trust for ``server``."""
    cert_path, key_path = ensure_server_certificate(config.pki_dir, app_uri)
    await server.load_certificate(str(cert_path))
    await server.load_private_key(str(key_path))
    if config.allows_none:
        log.warning(
            "OPC UA security policy None is enabled by configuration: traffic on that endpoint is neither signed nor "
            "encrypted and passwords travel in clear text; use it only on an isolated network"
        )
    server.set_security_policy([_POLICY_TYPES[name] for name in config.security], permission_ruleset=CellPermissions())
    # sessions only on the policies and modes set here (a None channel is for discovery); lost connections' sessions
    # closed after the grace
    endpoint_guard.install(config.lost_connection_grace_s)
    tokens: list[type] = [ua.UserNameIdentityToken]
    if config.anonymous:
        tokens.append(ua.AnonymousIdentityToken)
    server.set_identity_tokens(tokens)
    server.iserver.set_user_manager(CellUserManager(config.users, config.anonymous))
    server.set_certificate_validator(TrustedClientValidator(config.trusted_dir, config.rejected_dir))


def _certificate_fits(cert: x509.Certificate, app_uri: str) -> bool:
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return app_uri in san.get_values_for_type(x509.UniformResourceIdentifier)


def _load_key(path: Path) -> Any:
    return load_pem_private_key(path.read_bytes(), password=None)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60] or "client"


def main(argv: list[str] | None = None) -> int:
    """``python -m edge.opcua.security hash-password``: print a hash for the ``users`` list."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["hash-password"]:
        print("usage: python -m edge.opcua.security hash-password", file=sys.stderr)
        return 2
    password = getpass.getpass("password: ")
    if password != getpass.getpass("again: "):
        print("passwords differ", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
