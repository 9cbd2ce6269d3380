"""Seal and open envelopes with RFC 9180 HPKE (cryptography's ``hpke`` module).

Sans-IO: bytes and keys in, envelopes or typed rejections out. Opening performs the checks
in the order that is cheapest first and never decrypts what routing already refuses:
size, framing/schema, version, region, key ownership, key status, then HPKE, then the payload
schema. Replay and topic checks need state or transport facts and belong to the caller.

Two versions are accepted behind the one :func:`parse`: the binary v2
(:mod:`privacy.wire_v2`, what :func:`seal` writes) and the JSON v1 (:func:`seal_v1`, what
devices not yet updated still send). The first byte tells them apart.
"""

from __future__ import annotations

import functools
import secrets
import typing
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
from privacy.wire_v2 import (
    MAGIC,
    EnvelopeV2,
    HeaderV2,
    assemble,
    decode_payload,
    encode_payload,
    header_bytes,
    info_for,
    parse_v2,
    to_sent_at_us,
)

SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_128_GCM)
DEFAULT_MAX_BYTES = 64 * 1024
AnyEnvelope = Envelope | EnvelopeV2


def seal(
    payload: Frozen,
    *,
    key: KeyEntry,
    cohort: str,
    round: int,
    sent_at: datetime | None = None,
    msg_id: str | None = None,
) -> EnvelopeV2:
    """Encrypt ``payload`` to ``key`` (which must be its region's current key) as v2.

    The result is parsed back, so a header that breaks the contract (a cohort our own
    patterns refuse) fails here, at the sender, as :class:`EnvelopeRejected`."""
    header = HeaderV2(
        msg_id=bytes.fromhex(msg_id) if msg_id else secrets.token_bytes(16),
        region=key.region,
        key_id=key.key_id,
        cohort=cohort,
        round=round,
        payload_type=payload.type,  # type: ignore[attr-defined]
        sent_at_us=to_sent_at_us(sent_at or utcnow()),
    )
    head = header_bytes(header)
    sealed = SUITE.encrypt(encode_payload(payload), key.public(), info=info_for(head))
    return parse_v2(assemble(head, sealed))


def seal_v1(
    payload: Frozen,
    *,
    key: KeyEntry,
    cohort: str,
    round: int,
    sent_at: datetime | None = None,
    msg_id: str | None = None,
) -> Envelope:
    """The JSON v1 envelope: for tests of migration and of v1's rules, not for new senders."""
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


def parse(raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> AnyEnvelope:
    """Bytes to a validated envelope header, or :class:`EnvelopeRejected` with the reason.

    One entry point for both versions: a record starting with v2's magic byte (0xF5, which
    no JSON text can start with) is binary; anything else is judged as v1 JSON, so every
    v1 rejection stays what it was."""
    if len(raw) > max_bytes:
        raise EnvelopeRejected(RejectReason.OVERSIZED, f"{len(raw)} bytes > limit {max_bytes}")
    if raw[:1] == MAGIC[:1]:
        return parse_v2(raw)
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


def check_route(
    env: AnyEnvelope, *, region: str, keyset: KeySet, key_region: str | None
) -> KeyEntry:
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


def sealed_bytes(env: AnyEnvelope) -> bytes:
    """HPKE ``enc || ciphertext`` of either version: what a single-shot open takes."""
    return env.sealed() if isinstance(env, EnvelopeV2) else b64d(env.ct)


def open_payload(env: AnyEnvelope, private: PrivateKey) -> Frozen:
    """Decrypt and validate the payload (JSON in v1, MessagePack in v2, the same models).
    Tampering anywhere, header bytes included, gives ``decrypt_failed``."""
    model = PAYLOAD_MODELS.get(env.payload_type)
    if model is None:
        raise EnvelopeRejected(RejectReason.SCHEMA, f"unknown payload_type {env.payload_type!r}")
    try:
        plain = SUITE.decrypt(sealed_bytes(env), private.key, info=env.hpke_info())
    except (InvalidTag, ValueError) as exc:
        raise EnvelopeRejected(
            RejectReason.DECRYPT_FAILED, f"HPKE open failed ({exc.__class__.__name__})"
        ) from None
    try:  # pydantic's JSON mode parses with the same limits as parse()
        if isinstance(env, EnvelopeV2):
            return decode_payload(model, plain)
        return model.model_validate_json(plain)
    except ValidationError as exc:
        raise EnvelopeRejected(
            RejectReason.PAYLOAD_INVALID,
            f"payload fields: {_invalid_fields(exc, *_field_names(model))}",
        ) from None


MAX_FIELDS_SHOWN = 8


@functools.cache
def _field_names(model: type[Frozen]) -> tuple[frozenset[str], frozenset[str]]:
    """A payload model's field names, and those of them that are mappings (keys: plaintext)."""
    fields = model.model_fields
    mappings = frozenset(n for n, f in fields.items() if typing.get_origin(f.annotation) is dict)
    return frozenset(fields), mappings


def _shown(part: object, limit: int = 40) -> str:
    """One path element of an invalid field, fit for a rejection detail. Keys come from the
    sender: anything but printable ASCII is shown escaped (``ascii()``), so no NUL (which
    PostgreSQL refuses in text: one such key stopped the audit log's inserts and the region),
    newline or control character reaches the audit log, DLQ headers or logs; long keys are cut."""
    text = str(part)
    if not (text.isascii() and text.isprintable()):
        text = ascii(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _invalid_fields(
    exc: ValidationError,
    names: frozenset[str] | None = None,
    mappings: frozenset[str] = frozenset(),
) -> str:
    """The paths of the first invalid fields (the error type where there is no path).

    With ``names`` (a payload model's fields), a path element that is neither one of them nor
    an index is shown as ``<key>``: inside a payload the keys of a mapping (``action_hist``'s
    action names) are decrypted plaintext, and plaintext never reaches a dead letter. Below a
    field in ``mappings`` every element is ``<key>``: a MessagePack map may have integer keys,
    which pydantic reports in the place of an index."""

    def path(loc: tuple[object, ...]) -> str:
        if names is None:
            return ".".join(map(_shown, loc))
        shown: list[str] = []
        keyed = False
        for element in loc:
            if not keyed and (isinstance(element, int) or element in names):
                shown.append(_shown(element))
                keyed = element in mappings
            else:
                shown.append("<key>")
        return ".".join(shown)

    errors = exc.errors()
    shown = [path(tuple(e["loc"])) or _shown(e["type"]) for e in errors[:MAX_FIELDS_SHOWN]]
    more = len(errors) - MAX_FIELDS_SHOWN
    return ",".join(shown) + (f" (+{more} more)" if more > 0 else "")
