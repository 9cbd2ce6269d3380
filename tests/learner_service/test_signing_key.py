"""The region's adapter-signing key on disk: created once, private 0600, public half shareable."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from backend import keystore
from learner.artifacts import Signer


def _raw(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_signing_key_is_created_once_with_private_mode(tmp_path: Path) -> None:
    key = keystore.load_or_create_signing_key(tmp_path)
    again = keystore.load_or_create_signing_key(tmp_path)
    assert _raw(key.public_key()) == _raw(again.public_key())
    private = tmp_path / "private" / keystore.SIGNING_KEY_FILE
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
    assert _raw(keystore.signing_public_key(tmp_path)) == _raw(key.public_key())
    raw_private = private.read_bytes()
    assert raw_private.hex() not in repr(Signer("eu", "0" * 64, key))
