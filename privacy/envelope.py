"""Seal and open envelopes with RFC 9180 HPKE (cryptography's ``hpke`` module).

Sans-IO: bytes and keys in, envelopes or typed rejections out. Opening performs the checks
in the order that is cheapest first and never decrypts what routing already refuses:
size, JSON/schema, version, region, key ownership, key status, then HPKE, then the payload
schema. Replay and topic checks need state or transport facts and belong to the caller.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from pydantic import ValidationError
from pydantic_core import from_json

from privacy.errors import EnvelopeRejected
from privacy.keys import KeyEntry, KeySet, PrivateKey
from privacy.wire import (
    ENVELOPE_VERSION,
    PAYLOAD_MODELS,
    Envelope,
    Frozen,
    RejectReason,
    b64d,
    b64e,
    utcnow,
)

SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_128_GCM)
DEFAULT_MAX_BYTES = 64 * 1024


def seal(
    payload: Frozen,
    *,
    key: KeyEntry,
    cohort: str,
    round: int,
    sent_at: datetime | None = None,
    msg_id: str | None = None,
) -> Envelope:
    """Encrypt ``payload`` to ``key`` (which must be its region's current key)."""
    payload_type = payload.type  # type: ignore[attr-defined]
    header = Envelope(
        msg_id=msg_id or secrets.token_hex(16),
        region=key.region,
        key_id=key.key_id,
        cohort=cohort,
        round=round,
        payload_type=payload_type,
        sent_at=sent_at or utcnow(),
        ct="",
    )
    ct = SUITE.encrypt(payload.model_dump_json().encode(), key.public(), info=header.hpke_info())
    return header.model_copy(update={"ct": b64e(ct)})


def parse(raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
    """Bytes to a validated envelope, or :class:`EnvelopeRejected` with the reason."""
    if len(raw) > max_bytes:
        raise EnvelopeRejected(RejectReason.OVERSIZED, f"{len(raw)} bytes > limit {max_bytes}")
    try:
        # pydantic-core's parser has limits: nesting depth (200), number length, no NaN/Inf,
        # strict UTF-8. The stdlib parser would raise RecursionError or ValueError instead.
        obj = from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise EnvelopeRejected(RejectReason.MALFORMED, f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(obj, dict):
        raise EnvelopeRejected(RejectReason.MALFORMED, "not a JSON object")
    if obj.get("v") != ENVELOPE_VERSION and "v" in obj:
        raise EnvelopeRejected(
            RejectReason.UNSUPPORTED_VERSION, f"envelope v={_shown(ascii(obj.get('v')))}"
        )
    try:
        return Envelope.model_validate(obj)
    except ValidationError as exc:
        raise EnvelopeRejected(
            RejectReason.SCHEMA, f"invalid fields: {_invalid_fields(exc)}"
        ) from None


def check_route(env: Envelope, *, region: str, keyset: KeySet, key_region: str | None) -> KeyEntry:
    """The declared region and the key's owner must both be ``region``."""
    if env.region != region:
        raise EnvelopeRejected(
            RejectReason.WRONG_REGION, f"envelope declares {env.region!r}, consumer is {region!r}"
        )
    if key_region is not None and key_region != region:
        raise EnvelopeRejected(
            RejectReason.KEY_REGION_MISMATCH, f"key {env.key_id!r} belongs to {key_region!r}"
        )
    return keyset.check_decryptable(env.key_id)


def open_payload(env: Envelope, private: PrivateKey) -> Frozen:
    """Decrypt and validate the payload. Tampering anywhere gives ``decrypt_failed``."""
    model = PAYLOAD_MODELS.get(env.payload_type)
    if model is None:
        raise EnvelopeRejected(RejectReason.SCHEMA, f"unknown payload_type {env.payload_type!r}")
    try:
        plain = SUITE.decrypt(b64d(env.ct), private.key, info=env.hpke_info())
    except (InvalidTag, ValueError) as exc:
        raise EnvelopeRejected(
            RejectReason.DECRYPT_FAILED, f"HPKE open failed ({exc.__class__.__name__})"
        ) from None
    try:  # pydantic's JSON mode parses with the same limits as parse()
        return model.model_validate_json(plain)
    except ValidationError as exc:
        raise EnvelopeRejected(
            RejectReason.PAYLOAD_INVALID, f"payload fields: {_invalid_fields(exc)}"
        ) from None


MAX_FIELDS_SHOWN = 8


def _shown(part: object, limit: int = 40) -> str:
    """One path element of an invalid field, fit for a rejection detail. Keys come from the
    sender: anything but printable ASCII is shown escaped (``ascii()``), so no NUL (which
    PostgreSQL refuses in text: one such key stopped the audit log's inserts and the region),
    newline or control character reaches the audit log, DLQ headers or logs; long keys are cut."""
    text = str(part)
    if not (text.isascii() and text.isprintable()):
        text = ascii(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _invalid_fields(exc: ValidationError) -> str:
    """The paths of the first invalid fields (the error type where there is no path)."""
    errors = exc.errors()
    shown = [
        ".".join(map(_shown, e["loc"])) or _shown(e["type"]) for e in errors[:MAX_FIELDS_SHOWN]
    ]
    more = len(errors) - MAX_FIELDS_SHOWN
    return ",".join(shown) + (f" (+{more} more)" if more > 0 else "")
