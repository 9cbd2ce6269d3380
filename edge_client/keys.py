"""Where a device gets its home region's *public* HPKE key set.

A device never touches a backend key folder: it is handed a :class:`~privacy.keys.KeySet`
(or a callable returning the current one, e.g. one that fetches the region's published key set
from the companion app's own server), or, by default, it reads the published public file
``keyset.json`` in the folder the policy names for its region. Private keys are never read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from privacy.errors import ConfigError
from privacy.keys import KeySet

SIGNING_PUBLIC_FILE = "adapter-signing.pub"  # raw 32 bytes, published next to keyset.json

KeySource = KeySet | Callable[[], KeySet]


def published_keyset(directory: str | Path) -> KeySet:
    """The public key set published at ``<directory>/keyset.json``."""
    path = Path(directory) / "keyset.json"
    if not path.is_file():
        raise ConfigError(f"no published key set at {path}")
    try:
        return KeySet.model_validate_json(path.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"{path} is not a key set: {type(exc).__name__}") from None


def published_signing_key(directory: str | Path) -> Ed25519PublicKey:
    """The region's adapter-signing public key, published at ``<directory>/adapter-signing.pub``.

    The one key a device trusts for adapters: a shipped app bundles it; here it is read from
    the folder the policy names."""
    path = Path(directory) / SIGNING_PUBLIC_FILE
    if not path.is_file():
        raise ConfigError(f"no published adapter-signing key at {path}")
    try:
        return Ed25519PublicKey.from_public_bytes(path.read_bytes())
    except ValueError:
        raise ConfigError(f"{path} is not a raw Ed25519 public key") from None


def resolve(source: KeySource | None, directory: str | Path) -> KeySet:
    """The key set ``source`` gives now (read again at every call, so rotations apply)."""
    if source is None:
        return published_keyset(directory)
    return source() if callable(source) else source
