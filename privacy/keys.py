"""HPKE key sets per region, with rotation: old keys decrypt, only the current one encrypts.

A :class:`KeySet` is the public, shareable half (what devices need). Private keys are raw
X25519 bytes handed in by the caller (``backend.keystore`` reads them from disk); they are
wrapped in :class:`PrivateKey` whose ``repr`` never shows the secret.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from pydantic import BaseModel, ConfigDict, Field, model_validator

from privacy.errors import ConfigError, EnvelopeRejected
from privacy.wire import ID_PATTERN, REGION_PATTERN, RejectReason, b64d, b64e


class KeyStatus(StrEnum):
    CURRENT = "current"  # encrypts and decrypts
    DECRYPT_ONLY = "decrypt_only"  # rotated out: still decrypts in-flight envelopes
    RETIRED = "retired"  # refused


class KeyEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: Annotated[str, Field(pattern=ID_PATTERN)]
    region: Annotated[str, Field(pattern=REGION_PATTERN)]
    public_key: str  # base64 raw X25519
    status: KeyStatus
    created_at: datetime

    def public(self) -> x25519.X25519PublicKey:
        return x25519.X25519PublicKey.from_public_bytes(b64d(self.public_key))


class KeySet(BaseModel):
    """The public key set of one region."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: Annotated[str, Field(pattern=REGION_PATTERN)]
    keys: list[KeyEntry]

    @model_validator(mode="after")
    def _one_current(self) -> KeySet:
        current = [k for k in self.keys if k.status is KeyStatus.CURRENT]
        if len(current) > 1:
            raise ValueError(f"region {self.region!r} has {len(current)} current keys")
        for k in self.keys:
            if k.region != self.region:
                raise ValueError(f"key {k.key_id!r} belongs to {k.region!r}, not {self.region!r}")
        if len({k.key_id for k in self.keys}) != len(self.keys):
            raise ValueError("duplicate key ids")
        return self

    def current(self) -> KeyEntry:
        for k in self.keys:
            if k.status is KeyStatus.CURRENT:
                return k
        raise ConfigError(
            f"region {self.region!r} has no current HPKE key; run `sotto keys rotate`"
        )

    def get(self, key_id: str) -> KeyEntry | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    def check_decryptable(self, key_id: str) -> KeyEntry:
        entry = self.get(key_id)
        if entry is None:
            raise EnvelopeRejected(RejectReason.UNKNOWN_KEY, f"key id {key_id!r} unknown")
        if entry.status is KeyStatus.RETIRED:
            raise EnvelopeRejected(RejectReason.RETIRED_KEY, f"key id {key_id!r} is retired")
        return entry

    def rotated(self, new_key_id: str, public_key: bytes, now: datetime) -> KeySet:
        """A new key set where ``new_key_id`` is current and the old current decrypts only."""
        keys = [
            k.model_copy(update={"status": KeyStatus.DECRYPT_ONLY})
            if k.status is KeyStatus.CURRENT
            else k
            for k in self.keys
        ]
        keys.append(
            KeyEntry(
                key_id=new_key_id,
                region=self.region,
                public_key=b64e(public_key),
                status=KeyStatus.CURRENT,
                created_at=now,
            )
        )
        return KeySet(region=self.region, keys=keys)

    def retired(self, key_id: str) -> KeySet:
        entry = self.get(key_id)
        if entry is None:
            raise ConfigError(f"no key {key_id!r} in region {self.region!r}")
        if entry.status is KeyStatus.CURRENT:
            raise ConfigError("cannot retire the current key; rotate first")
        keys = [
            k.model_copy(update={"status": KeyStatus.RETIRED}) if k.key_id == key_id else k
            for k in self.keys
        ]
        return KeySet(region=self.region, keys=keys)


class PrivateKey:
    """An X25519 private key that refuses to print itself."""

    __slots__ = ("key_id", "_key")

    def __init__(self, key_id: str, raw: bytes) -> None:
        self.key_id = key_id
        self._key = x25519.X25519PrivateKey.from_private_bytes(raw)

    @classmethod
    def generate(cls, key_id: str) -> PrivateKey:
        raw = x25519.X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return cls(key_id, raw)

    @property
    def key(self) -> x25519.X25519PrivateKey:
        return self._key

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def raw_bytes(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"PrivateKey(key_id={self.key_id!r}, <secret>)"
