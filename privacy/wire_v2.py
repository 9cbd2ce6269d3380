"""Envelope v2: the binary wire contract (docs/wire-format.md draws the byte layout).

v1 (:class:`privacy.wire.Envelope`) is JSON with base64 inside base64, and its HPKE ``info``
is a canonical re-encoding of the parsed header: a third-party sender has to reproduce our
JSON canonicalisation byte for byte, and ingestion spends a fifth of its time on JSON,
base64 and that re-encoding. v2 carries the header as a small MessagePack array and the HPKE
``enc`` and ciphertext as raw bytes; the ``info`` is a domain-separation constant followed by
the record's bytes *exactly as received* up to the ``enc``, so nothing is re-encoded and any
MessagePack encoder that writes the documented array interoperates.

Layout (big-endian lengths)::

    magic "\\xf5SE" (3) | version 0x02 (1) | header_len u16 (2) | header (header_len)
    | sealed_len u32 (4) | enc (32) | ciphertext (sealed_len - 32)

The first byte 0xF5 can start neither JSON (v1 starts with ``{``) nor any UTF-8 text, so one
look at it tells the versions apart. Payload plaintexts are MessagePack too
(:func:`encode_payload`): the same pydantic payload models as v1, bytes fields raw.

Sans-IO: pure functions of bytes; the clock and the randomness come from the caller.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal

import msgspec

from privacy.errors import EnvelopeRejected
from privacy.wire import MAX_ROUND, Frozen, RejectReason

MAGIC: Final = b"\xf5SE"
VERSION: Final = 2
PREFIX: Final = MAGIC + bytes([VERSION])
INFO_DOMAIN: Final = b"sotto-envelope/v2\x00"
ENC_BYTES: Final = 32  # X25519 encapsulated key
TAG_BYTES: Final = 16  # AES-128-GCM tag
MAX_HEADER_BYTES: Final = 512  # a valid header is under 250 bytes
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_SENT_AT_US: Final = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z

# The v1 patterns with ``\Z``: Python's ``$`` (msgspec's regexes are Python's) also matches
# before a trailing newline, so "eu\n" would pass ``^[a-z]+$``.
_Region = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]{0,31}\Z")]
_Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,64}\Z")]
_PayloadType = Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,32}\Z")]


class HeaderV2(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """The clear header: a MessagePack array of exactly these seven items, in this order."""

    msg_id: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    region: _Region
    key_id: _Id
    cohort: _Id
    round: Annotated[int, msgspec.Meta(ge=0, le=MAX_ROUND)]
    payload_type: _PayloadType
    sent_at_us: Annotated[int, msgspec.Meta(ge=0, le=MAX_SENT_AT_US)]  # µs since 1970 UTC


_HEADER_DECODER = msgspec.msgpack.Decoder(HeaderV2)
_ENCODER = msgspec.msgpack.Encoder()
_ANY_DECODER = msgspec.msgpack.Decoder()
# No payload model has a map of more keys than this (``action_hist``: 64 kinds; a model: its
# fields). pydantic reports every unknown key of a map as its own error, kilobytes each, so a
# map of a hundred thousand one-byte keys would cost seconds and gigabytes to refuse.
MAX_MAP_KEYS: Final = 256


@dataclass(frozen=True, slots=True)
class EnvelopeV2:
    """A parsed v2 record: the header's fields as v1 names them, and the bytes it came in.

    Keeping ``raw`` (not a re-encoding) is what makes :meth:`hpke_info` exact. Plain data,
    so it pickles into and out of worker processes like v1's model."""

    msg_id: str  # 32 hex digits, as v1 spells it
    region: str
    key_id: str
    cohort: str
    round: int
    payload_type: str
    sent_at: datetime
    raw: bytes
    header_end: int  # offset of sealed_len: the info covers raw[:header_end]

    v: Literal[2] = 2

    def hpke_info(self) -> bytes:
        return info_for(self.raw[: self.header_end])

    def sealed(self) -> bytes:
        """HPKE ``enc || ciphertext``, as RFC 9180 single-shot open takes them."""
        return self.raw[self.header_end + 4 :]

    def to_bytes(self) -> bytes:
        return self.raw

    def __reduce__(self) -> tuple[type[EnvelopeV2], tuple[object, ...]]:
        """Pickled as its field values in order: ingestion's validation workers send one per
        record, and the ``__getstate__`` dataclasses give slotted classes looks the fields
        up for every object."""
        return EnvelopeV2, tuple(getattr(self, n) for n in _V2_FIELDS)


_V2_FIELDS = tuple(f.name for f in fields(EnvelopeV2))


def header_bytes(header: HeaderV2) -> bytes:
    """Prefix, length and MessagePack header: what the HPKE info is built from."""
    body = _ENCODER.encode(header)
    return PREFIX + _U16.pack(len(body)) + body


def info_for(head: bytes) -> bytes:
    """The HPKE info: the domain constant, then the record's bytes before ``sealed_len``."""
    return INFO_DOMAIN + head


def assemble(head: bytes, sealed: bytes) -> bytes:
    """``head`` from :func:`header_bytes`, ``sealed`` = HPKE ``enc || ciphertext``."""
    return head + _U32.pack(len(sealed)) + sealed


def to_sent_at_us(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def parse_v2(raw: bytes) -> EnvelopeV2:
    """Bytes that start with 0xF5 to a parsed envelope, or :class:`EnvelopeRejected`.

    Every length is checked against the bytes actually there before it is used, and the
    record must end exactly where the lengths say: lying, huge or trailing lengths are
    ``malformed``; a header that decodes but breaks the contract is ``schema_violation``."""
    if raw[:3] != MAGIC:
        raise EnvelopeRejected(RejectReason.MALFORMED, "not a Sotto binary envelope (magic)")
    if len(raw) < 4:
        raise EnvelopeRejected(RejectReason.MALFORMED, "truncated before the version")
    if raw[3] != VERSION:
        raise EnvelopeRejected(RejectReason.UNSUPPORTED_VERSION, f"binary envelope v={raw[3]}")
    if len(raw) < 6:
        raise EnvelopeRejected(RejectReason.MALFORMED, "truncated before the header length")
    (hlen,) = _U16.unpack_from(raw, 4)
    if hlen > MAX_HEADER_BYTES:
        raise EnvelopeRejected(RejectReason.MALFORMED, f"header length {hlen} > {MAX_HEADER_BYTES}")
    end = 6 + hlen
    if len(raw) < end + 4:
        raise EnvelopeRejected(RejectReason.MALFORMED, "truncated in the header")
    (slen,) = _U32.unpack_from(raw, end)
    if slen < ENC_BYTES + TAG_BYTES:
        raise EnvelopeRejected(RejectReason.MALFORMED, f"sealed length {slen} too short")
    if end + 4 + slen != len(raw):
        have = len(raw) - end - 4
        what = "truncated" if have < slen else "trailing bytes"
        raise EnvelopeRejected(
            RejectReason.MALFORMED, f"{what}: sealed length {slen}, {have} there"
        )
    try:
        h = _HEADER_DECODER.decode(raw[6:end])
    except msgspec.ValidationError as exc:
        raise EnvelopeRejected(RejectReason.SCHEMA, f"header: {_shown(exc)}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise EnvelopeRejected(RejectReason.MALFORMED, f"header: {_shown(exc)}") from None
    return EnvelopeV2(
        msg_id=h.msg_id.hex(),
        region=h.region,
        key_id=h.key_id,
        cohort=h.cohort,
        round=h.round,
        payload_type=h.payload_type,
        sent_at=_EPOCH + timedelta(microseconds=h.sent_at_us),
        raw=raw,
        header_end=end,
    )


def encode_payload(payload: Frozen) -> bytes:
    """A payload model as MessagePack: its python-mode fields, so bytes stay raw bytes."""
    return _ENCODER.encode(payload.model_dump(mode="python"))


def decode_payload(model: type[Frozen], plain: bytes) -> Frozen:
    """MessagePack plaintext to ``model`` (the same pydantic contract as v1's JSON).

    Bytes that are not MessagePack, or not one map, are ``payload_invalid`` here; nesting
    deeper than the interpreter allows is refused by msgspec (RecursionError) before pydantic
    sees it; a map that breaks the model raises pydantic's ``ValidationError``."""
    try:
        obj = _ANY_DECODER.decode(plain)
    except RecursionError:
        raise EnvelopeRejected(RejectReason.PAYLOAD_INVALID, "payload nested too deep") from None
    except msgspec.DecodeError:  # its message quotes plaintext bytes: say only what failed
        raise EnvelopeRejected(RejectReason.PAYLOAD_INVALID, "payload is not MessagePack") from None
    if not isinstance(obj, dict):
        raise EnvelopeRejected(RejectReason.PAYLOAD_INVALID, "payload is not a map")
    _refuse_wide_maps(obj)
    return model.model_validate(obj)  # a ValidationError is the caller's to report, as v1's


def _refuse_wide_maps(obj: dict) -> None:
    """Refuse, in one pass and before pydantic, any map wider than :data:`MAX_MAP_KEYS`.

    >>> _refuse_wide_maps({"a": [{"b": 1}], "c": {"d": 2}})
    >>> _refuse_wide_maps({"a": [dict.fromkeys(range(MAX_MAP_KEYS + 1))]})
    Traceback (most recent call last):
    ...
    privacy.errors.EnvelopeRejected: payload_invalid: a map of 257 keys (at most 256)
    """
    stack: list[object] = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if len(item) > MAX_MAP_KEYS:
                raise EnvelopeRejected(
                    RejectReason.PAYLOAD_INVALID,
                    f"a map of {len(item)} keys (at most {MAX_MAP_KEYS})",
                )
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))


def _shown(exc: Exception) -> str:
    """msgspec's message (it names the failed rule and the path, never a value) made safe
    for a dead letter's detail: printable ASCII, bounded."""
    text = str(exc)
    if not (text.isascii() and text.isprintable()):
        text = ascii(text)
    return text[:120]
