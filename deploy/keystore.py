"""A region's HPKE key set on disk: ``keyset.json`` (public, shareable) + ``private/*.key``.

Private key files are raw 32-byte X25519 keys with mode 0600. Nothing here logs key bytes.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

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
    key = PrivateKey.generate(_new_key_id(region))
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
