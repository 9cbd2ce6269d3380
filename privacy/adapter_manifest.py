"""Signed adapter artifacts: what the learner publishes and what a device installs.

An artifact is an :class:`AdapterManifest` (which base model, region, cohort, version, rollout
fraction, release or rollback), the adapter file's bytes, and an Ed25519 signature over both::

    message = b"sotto/adapter/v1\\x00" || u64be(len(manifest)) || manifest || adapter

``manifest`` is the canonical JSON of the manifest (sorted keys, no spaces, UTF-8), rebuilt
from the model on both sides, so the wire JSON may be re-serialized freely. The manifest also
carries the adapter's SHA-256, which lets registries and logs name an adapter without its
bytes. The length prefix keeps the manifest/adapter boundary unambiguous; the domain tag keeps
these signatures from being valid for anything else.

Version rules (enforced by the device, see :mod:`edge_client.runtime`):

* ``kind="release"``: ``version`` must exceed every version the device has installed.
* ``kind="rollback"``: a *new* signed statement "devices running ``parent_version`` go back to
  ``version``" (``version < parent_version``), carrying the older adapter's bytes. It applies
  only to devices whose live version is ``parent_version``, so replaying it later does nothing.

Verification happens before any adapter byte reaches ONNX Runtime's parser. Keep this module
free of torch: the device imports it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AwareDatetime, Field, ValidationError, model_validator

from privacy.errors import RemoteProtocolError
from privacy.wire import ID_PATTERN, REGION_PATTERN, Frozen, b64d, b64e

SIGNATURE_DOMAIN = b"sotto/adapter/v1\x00"
MAX_ADAPTER_BYTES = 1 << 20  # adapters are KBs; anything near this is an attack or a bug
ALL_COHORTS = "*"
_SHA256 = r"^[0-9a-f]{64}$"
_COHORT = rf"^(\*|{ID_PATTERN[1:-1]})$"


class AdapterRejectReason(StrEnum):
    """Why a device refused an adapter. Stable strings: metrics and audits key on them."""

    MALFORMED = "malformed"  # not a valid SignedAdapter
    UNKNOWN_KEY = "unknown_key"  # signed by a key this device does not trust
    BAD_SIGNATURE = "bad_signature"  # manifest or adapter bytes altered, or forged
    HASH_MISMATCH = "adapter_hash_mismatch"  # signed, but the manifest names other bytes
    WRONG_REGION = "wrong_region"
    WRONG_COHORT = "wrong_cohort"
    WRONG_BASE = "wrong_base"  # built for another base model
    DOWNGRADE = "downgrade"  # release not newer than what the device has had
    ROLLBACK_NOT_APPLICABLE = "rollback_not_applicable"  # device is not on parent_version
    BAD_ADAPTER = "bad_adapter"  # signed and valid, but ORT cannot use it with this base


class AdapterRejected(RemoteProtocolError):
    """The publisher's artifact was refused; ``reason`` is an :class:`AdapterRejectReason`."""

    def __init__(self, reason: AdapterRejectReason, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason: AdapterRejectReason = reason


class AdapterManifest(Frozen):
    """What an adapter is for. Signed together with the adapter bytes."""

    manifest_version: Literal[1] = 1
    version: int = Field(ge=0)  # 0 is the zero ("base") adapter
    region: str = Field(pattern=REGION_PATTERN)
    cohort: str = Field(pattern=_COHORT)  # a cohort id, or "*" for every cohort of the region
    base_model_sha256: str = Field(pattern=_SHA256)
    adapter_sha256: str = Field(pattern=_SHA256)
    rollout_fraction: float = Field(ge=0.0, le=1.0)
    parent_version: int | None = Field(default=None, ge=0)
    kind: Literal["release", "rollback"] = "release"
    created_at: AwareDatetime

    @model_validator(mode="after")
    def _lineage(self) -> AdapterManifest:
        if self.kind == "rollback":
            if self.parent_version is None or self.version >= self.parent_version:
                raise ValueError("a rollback goes from parent_version down to a lower version")
        elif self.parent_version is not None and self.version <= self.parent_version:
            raise ValueError("a release must be newer than its parent_version")
        return self

    def canonical_bytes(self) -> bytes:
        """The exact bytes that are signed."""
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name of a signing key (first 16 hex digits of SHA-256 of its raw bytes)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signing_message(manifest: AdapterManifest, adapter: bytes) -> bytes:
    body = manifest.canonical_bytes()
    return SIGNATURE_DOMAIN + struct.pack(">Q", len(body)) + body + adapter


class SignedAdapter(Frozen):
    """The wire form (Kafka record value): manifest, adapter bytes and signature."""

    manifest: AdapterManifest
    adapter: str  # base64 ORT adapter file
    signature: str  # base64 Ed25519 signature of signing_message(manifest, adapter)
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")  # hint only; trust comes from the key

    @property
    def adapter_bytes(self) -> bytes:
        return b64d(self.adapter)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> SignedAdapter:
        """Parse wire bytes; anything invalid is :attr:`AdapterRejectReason.MALFORMED`."""
        if len(raw) > 2 * MAX_ADAPTER_BYTES:
            raise AdapterRejected(AdapterRejectReason.MALFORMED, "oversized")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise AdapterRejected(AdapterRejectReason.MALFORMED, str(exc.errors()[:1])) from exc


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_manifest(
    adapter: bytes,
    *,
    base_model_sha256: str,
    version: int,
    region: str,
    cohort: str = ALL_COHORTS,
    rollout_fraction: float = 1.0,
    parent_version: int | None = None,
    kind: Literal["release", "rollback"] = "release",
    created_at: datetime | None = None,
) -> AdapterManifest:
    """A manifest for ``adapter`` (its hash computed here, so it cannot disagree)."""
    return AdapterManifest(
        version=version,
        region=region,
        cohort=cohort,
        base_model_sha256=base_model_sha256,
        adapter_sha256=sha256_hex(adapter),
        rollout_fraction=rollout_fraction,
        parent_version=parent_version,
        kind=kind,
        created_at=created_at or datetime.now(UTC),
    )


def sign_artifact(
    manifest: AdapterManifest, adapter_bytes: bytes, private_key: Ed25519PrivateKey
) -> SignedAdapter:
    """Sign ``manifest`` + ``adapter_bytes``. Refuses a manifest naming other bytes."""
    if len(adapter_bytes) > MAX_ADAPTER_BYTES:
        raise ValueError(f"adapter is {len(adapter_bytes)} bytes, limit {MAX_ADAPTER_BYTES}")
    if manifest.adapter_sha256 != sha256_hex(adapter_bytes):
        raise ValueError("manifest.adapter_sha256 does not match the adapter bytes")
    signature = private_key.sign(signing_message(manifest, adapter_bytes))
    return SignedAdapter(
        manifest=manifest,
        adapter=b64e(adapter_bytes),
        signature=b64e(signature),
        key_id=key_id(private_key.public_key()),
    )


def verify(signed: SignedAdapter, public_key: Ed25519PublicKey) -> bytes:
    """Check the signature and the adapter hash; return the adapter bytes, now trusted.

    Raises :class:`AdapterRejected` (``unknown_key``, ``bad_signature``, ``malformed`` or
    ``adapter_hash_mismatch``). Says nothing about region, base or version: that is the
    device's policy (:class:`edge_client.runtime.DeviceModel`).
    """
    if signed.key_id != key_id(public_key):
        raise AdapterRejected(AdapterRejectReason.UNKNOWN_KEY, f"key_id {signed.key_id}")
    try:
        adapter = signed.adapter_bytes
        signature = b64d(signed.signature)
    except ValueError as exc:
        raise AdapterRejected(AdapterRejectReason.MALFORMED, "bad base64") from exc
    if len(adapter) > MAX_ADAPTER_BYTES:
        raise AdapterRejected(AdapterRejectReason.MALFORMED, "adapter oversized")
    try:
        public_key.verify(signature, signing_message(signed.manifest, adapter))
    except InvalidSignature as exc:
        raise AdapterRejected(AdapterRejectReason.BAD_SIGNATURE) from exc
    if sha256_hex(adapter) != signed.manifest.adapter_sha256:
        raise AdapterRejected(AdapterRejectReason.HASH_MISMATCH)
    return adapter
