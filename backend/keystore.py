"""A region's HPKE key set on disk: ``keyset.json`` (public, shareable) + ``private/*.key``,
and its Ed25519 adapter-signing key (``private/adapter-signing.ed25519`` + public ``.pub``).

Private key files are raw 32-byte X25519 keys with mode 0600. Nothing here logs key bytes.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privacy.credential import CredentialIssuer, IssuerVerifier
from privacy.errors import ConfigError
from privacy.keys import KeySet, PrivateKey
from privacy.wire import utcnow


def _new_key_id(region: str) -> str:
    return f"{region}-{utcnow():%Y%m%d}-{secrets.token_hex(3)}"


def _write_private(directory: Path, key: PrivateKey) -> None:
    priv_dir = directory / "private"
    priv_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(priv_dir, 0o700)
    path = priv_dir / f"{key.key_id}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.raw_bytes())


def _write_keyset(directory: Path, keyset: KeySet) -> None:
    tmp = directory / "keyset.json.tmp"
    tmp.write_text(keyset.model_dump_json(indent=2))
    tmp.replace(directory / "keyset.json")


def load_keyset(directory: str | Path) -> KeySet:
    path = Path(directory) / "keyset.json"
    if not path.is_file():
        raise ConfigError(f"no key set at {path}; run `sotto init` or `sotto keys rotate`")
    return KeySet.model_validate_json(path.read_text())


def load_private_keys(directory: str | Path) -> dict[str, PrivateKey]:
    keyset = load_keyset(directory)
    out: dict[str, PrivateKey] = {}
    for entry in keyset.keys:
        path = Path(directory) / "private" / f"{entry.key_id}.key"
        if path.is_file():
            out[entry.key_id] = PrivateKey(entry.key_id, path.read_bytes())
    return out


def rotate(directory: str | Path, region: str) -> KeySet:
    """Make a new current key; the old current one keeps decrypting (``decrypt_only``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keyset = (
        load_keyset(directory)
        if (directory / "keyset.json").is_file()
        else KeySet(region=region, keys=[])
    )
    taken = {entry.key_id for entry in keyset.keys}
    key_id = _new_key_id(region)
    while key_id in taken:  # 24 random bits a day: a repeat would overwrite a live private key
        key_id = _new_key_id(region)
    key = PrivateKey.generate(key_id)
    _write_private(directory, key)
    new = keyset.rotated(key.key_id, key.public_bytes(), utcnow())
    _write_keyset(directory, new)
    return new


def retire(directory: str | Path, key_id: str) -> KeySet:
    """Refuse envelopes under ``key_id`` from now on and delete its private key."""
    directory = Path(directory)
    new = load_keyset(directory).retired(key_id)
    _write_keyset(directory, new)
    (directory / "private" / f"{key_id}.key").unlink(missing_ok=True)
    return new


# --- adapter signing key (Ed25519) -------------------------------------------------------
# Why here: the key set directory is already the region's one place for key material with
# 0600/0700 modes. Adapters are signed by the region's learner and verified by its devices,
# which ship with the *public* key only (``adapter-signing.pub``, raw 32 bytes).

SIGNING_KEY_FILE = "adapter-signing.ed25519"
SIGNING_PUBLIC_FILE = "adapter-signing.pub"


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _publish_atomically(path: Path, data: bytes, mode: int) -> bool:
    """Write ``data`` to ``path`` only if it does not exist yet; True if this call created it.

    Written to a private temporary name first and hard-linked into place, so a concurrent
    reader never sees a half-written key and two racing creators cannot both win.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


AUDIT_SIGNING = "audit-signing"  # signs the audit chain heads ingestion publishes


def load_or_create_signing_key(
    directory: str | Path, name: str = "adapter-signing"
) -> Ed25519PrivateKey:
    """The region's signing key ``name`` (adapters by default), created (0600) on first use.

    Never log or return the key's bytes; hand the object to :func:`learner.publish.ship_lora`.
    """
    directory = Path(directory)
    priv_dir = directory / "private"
    priv_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(priv_dir, 0o700)
    path = priv_dir / f"{name}.ed25519"
    if not path.is_file():
        _publish_atomically(path, Ed25519PrivateKey.generate().private_bytes_raw(), 0o600)
    raw = path.read_bytes()
    if len(raw) != 32:
        raise ConfigError(f"{path} is not a raw 32-byte Ed25519 key")
    key = Ed25519PrivateKey.from_private_bytes(raw)
    pub = directory / f"{name}.pub"
    if not pub.is_file():
        _publish_atomically(pub, _raw_public(key), 0o644)
    elif pub.read_bytes() != _raw_public(key):
        raise ConfigError(f"{pub} does not match the private signing key in {priv_dir}")
    return key


def signing_public_key(directory: str | Path, name: str = "adapter-signing") -> Ed25519PublicKey:
    """The public half verifiers trust (``<name>.pub``; no private key needed)."""
    path = Path(directory) / f"{name}.pub"
    if not path.is_file():
        raise ConfigError(f"no {name} key at {path}; start the service that signs once")
    return Ed25519PublicKey.from_public_bytes(path.read_bytes())


# --- device-credential issuer (Ed25519) ----------------------------------------------------
# The region's credential authority vouches for the one-round keys devices sign their SecAgg+
# advertisements with (privacy.credential). The coordinator needs only the public half; the
# private half belongs to the enrollment service (behind attestation), never the coordinator.
DEVICE_CREDENTIAL = "device-credential"


def credential_trust(directory: str | Path, region: str) -> IssuerVerifier:
    """The issuers whose device credentials region ``region`` accepts (judged per round)."""
    path = Path(directory) / f"{DEVICE_CREDENTIAL}.pub"
    if not path.is_file():
        raise ConfigError(f"no device-credential issuer key at {path}; run `sotto init`")
    return IssuerVerifier(region, {DEVICE_CREDENTIAL: path.read_bytes()}, valid_at=0.0)


def credential_issuer(directory: str | Path, region: str) -> CredentialIssuer:
    """The enrollment side: the issuer's private key, created (0600) on first use."""
    key = load_or_create_signing_key(directory, DEVICE_CREDENTIAL)
    return CredentialIssuer(region, DEVICE_CREDENTIAL, key)
