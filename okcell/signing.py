"""Ed25519 signatures over files (recipe manifests, release bundles): keys, signature files, verification.

``okcell keygen`` writes a key pair: ``okcell.key`` (private, PEM PKCS#8, mode 0600) and ``okcell.pub`` (public,
PEM). A signed file ``F`` has ``F.sig`` beside it, JSON with the algorithm, the signing key's id (first 16 hex digits
of sha256 over the raw public key) and the base64 signature over the exact bytes of ``F``. Every problem is a
ConfigError naming the file and what is expected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from okcell.schema import ConfigError

PRIVATE_KEY_FILE = "okcell.key"
PUBLIC_KEY_FILE = "okcell.pub"
SIGNATURE_SUFFIX = ".sig"
ALGORITHM = "ed25519"


def key_id(key: Ed25519PublicKey) -> str:
    """16 hex digits naming a public key (sha256 over its 32 raw bytes)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signature_path(path: Path) -> Path:
    """Where the signature of ``path`` lives: ``path`` + ``.sig``."""
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def generate_keys(directory: Path) -> tuple[Path, Path]:
    """Write a new key pair into ``directory`` (created if missing); never overwrites. Returns (private, public)."""
    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise ConfigError(f"{path}: exists; refusing to overwrite a key (move it away first)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)  # whatever the umask
        handle.write(private_pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found (make a key pair with `okcell keygen --out DIR`)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The private key in ``path`` (PEM from ``okcell keygen``); refused if group or others may read it."""
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key (PEM, unencrypted, as written by `okcell keygen`)")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path}: private key is readable by group or others (mode {mode:04o}); chmod 600 {path}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The public key in ``path`` (PEM from ``okcell keygen``)."""
    data = _read_key_file(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key (PEM, as written by `okcell keygen`)")
    return key


def sign_file(path: Path, key: Ed25519PrivateKey) -> Path:
    """Sign the bytes of ``path`` and write the signature file beside it; returns its path."""
    signature = key.sign(path.read_bytes())
    record = {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
              "signature": base64.b64encode(signature).decode("ascii")}
    target = signature_path(path)
    target.write_text(json.dumps(record, indent=2) + "\n")
    return target


def verify_file(path: Path, key: Ed25519PublicKey, content: bytes | None = None) -> str:
    """Check that ``content`` (default: the bytes of ``path``) carries a valid signature by ``key`` in the signature
    file beside ``path``; returns the key id. ConfigError if unsigned, signed by another key, or changed since."""
    expected = key_id(key)
    target = signature_path(path)
    try:
        record = json.loads(target.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not signed (no {target.name} beside it), but only files signed with key "
                          f"{expected} are accepted; sign with the matching private key (okcell.key)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{target}: not a readable signature file ({exc})") from None
    if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM or not isinstance(record.get("signature"), str):
        raise ConfigError(f"{target}: not an okcell signature file (expected JSON with algorithm '{ALGORITHM}', "
                          "key_id and signature)")
    if record.get("key_id") != expected:
        raise ConfigError(f"{target}: signed with key {record.get('key_id')!r}, but only key {expected} is accepted")
    try:
        key.verify(base64.b64decode(record["signature"], validate=True), path.read_bytes() if content is None else content)
    except (InvalidSignature, binascii.Error):
        raise ConfigError(f"{path}: does not match its signature {target.name}: changed after signing "
                          "(or the signature was altered)") from None
    return expected
