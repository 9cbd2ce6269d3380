"""The wire contracts of Sotto: the one definition every package imports.

An :class:`Envelope` is what a device puts on its home region's Kafka topic. Its header is
in the clear (so ingestion can route, dedupe and pick a key without decrypting) but every
header field is bound into the HPKE ``info`` string, so a header edited in transit makes
decryption fail. The body is an HPKE ciphertext of a *payload*: a versioned, typed model
(:class:`RoundSummary` today; masked SecAgg+ inputs and shadow reports later) chosen by the
header's ``payload_type``. New payload types are new models, not a new envelope format.
This :class:`Envelope` is v1 (JSON), still accepted while devices migrate; devices send v2,
the binary framing of the same header and payloads (:mod:`privacy.wire_v2`).

Dead letters keep the original bytes as the Kafka record value, untouched, and carry the
machine-readable reason in record headers (:class:`DeadLetter`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_serializer,
    field_validator,
)

ENVELOPE_VERSION: Literal[1] = 1
EMBEDDING_DIM = 128
REGION_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"


# Bounds of every wire integer: what the backend's storage holds (BIGINT), and what a device may
# claim about one round (so that no sum of accepted claims can overflow a column).
MAX_INT64 = (1 << 63) - 1
MAX_ROUND = (1 << 53) - 1  # exact in a float64 and in every JSON implementation
MAX_STEPS_PER_ROUND = 100_000  # steps one device may report for one round
MAX_ACTION_KINDS = 64

Round = Annotated[int, Field(ge=0, le=MAX_ROUND)]
StepCount = Annotated[int, Field(ge=0, le=MAX_STEPS_PER_ROUND)]


class RejectReason(StrEnum):
    """Why ingestion refused a record. Stable strings: dashboards and audits key on them."""

    MALFORMED = "malformed"  # not JSON / not an object / bad base64 / broken v2 framing
    SCHEMA = "schema_violation"  # JSON, but not a valid envelope
    UNSUPPORTED_VERSION = "unsupported_version"
    OVERSIZED = "oversized"
    WRONG_REGION = "wrong_region"  # header names another region than the consumer's
    TOPIC_REGION_MISMATCH = "topic_region_mismatch"  # arrived on a topic of another region
    KEY_REGION_MISMATCH = "key_region_mismatch"  # key id belongs to another region
    UNKNOWN_KEY = "unknown_key"
    RETIRED_KEY = "retired_key"
    DECRYPT_FAILED = "decrypt_failed"  # tampered header or ciphertext, or wrong key
    PAYLOAD_INVALID = "payload_invalid"  # decrypted, but the payload is not a valid model
    REPLAY = "replay"  # idempotency key seen before
    PROTOCOL = "protocol_violation"  # valid envelope, but out of order for its round
    INTERNAL_ERROR = "internal_error"  # judging the record raised; the detail names the type


class Frozen(BaseModel):
    """Base of wire models: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class Envelope(Frozen):
    """Versioned envelope carried on ``<region>.summaries``-style ingest topics."""

    v: Literal[1] = ENVELOPE_VERSION
    msg_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    region: Annotated[str, Field(pattern=REGION_PATTERN)]
    key_id: Annotated[str, Field(pattern=ID_PATTERN)]
    cohort: Annotated[str, Field(pattern=ID_PATTERN)]
    round: Round
    payload_type: Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]
    sent_at: datetime
    ct: str  # base64 HPKE ciphertext (enc || sealed payload)

    @field_validator("ct")
    @classmethod
    def _ct_is_base64(cls, value: str) -> str:
        b64d(value)
        return value

    def hpke_info(self) -> bytes:
        """Everything in the header except the ciphertext, canonically encoded.

        This is the HPKE ``info``: it binds region, key id, round and envelope version (and the
        rest of the header) to the ciphertext, so moving an envelope to another region, round
        or cohort, or replaying it under another id, fails decryption.
        """
        header = self.model_dump(mode="json", exclude={"ct"})
        return (
            b"sotto-envelope|" + json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        )

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        return cls.model_validate_json(raw)


class BehaviorCounts(Frozen):
    """Per-round counts a device reports about its agent's steps (all non-negative)."""

    steps: StepCount = 0
    accepted: StepCount = 0
    overridden: StepCount = 0
    failed: StepCount = 0


class RoundSummary(Frozen):
    """A device's clear-text round summary (payload_type ``summary``).

    Only the device and, before secure aggregation exists, its home region's ingestion ever
    see this; with SecAgg+ the same information travels masked inside ``masked_input``.
    """

    type: Literal["summary"] = "summary"
    v: Literal[1] = 1
    embed_version: Annotated[int, Field(ge=1, le=1 << 16)]
    # little-endian float32[EMBEDDING_DIM]: base64 text in v1's JSON, raw bytes in v2
    embedding: Annotated[bytes, Field(strict=True)]
    counts: BehaviorCounts
    action_hist: Annotated[
        dict[Annotated[str, Field(max_length=32)], StepCount],
        # stop at the first bad entry: one pydantic error (kilobytes) per bad key of a huge map
        Field(max_length=MAX_ACTION_KINDS, fail_fast=True),
    ] = Field(default_factory=dict)

    @field_validator("embedding", mode="before")
    @classmethod
    def _embedding_from_json(cls, value: object, info: ValidationInfo) -> object:
        """v1's JSON carries the vector as base64 text (and only as text); MessagePack
        carries it as raw bytes, which the strict ``bytes`` type then demands."""
        if info.mode != "json":
            return value
        if not isinstance(value, str):
            raise ValueError("embedding must be base64 text")
        return b64d(value)

    @field_validator("embedding")
    @classmethod
    def _embedding_shape(cls, value: bytes) -> bytes:
        if len(value) != 4 * EMBEDDING_DIM:
            raise ValueError(f"embedding must be {EMBEDDING_DIM} float32 values")
        # the method, not np.all(): a third of the time, on every summary ingested
        if not np.isfinite(np.frombuffer(value, dtype="<f4")).all():
            raise ValueError("embedding has non-finite values")
        return value

    @field_serializer("embedding", when_used="json")
    def _embedding_to_json(self, value: bytes) -> str:
        return b64e(value)

    @classmethod
    def build(
        cls,
        embedding: np.ndarray,
        counts: BehaviorCounts,
        action_hist: dict[str, int] | None = None,
        embed_version: int = 1,
    ) -> RoundSummary:
        vec = np.asarray(embedding, dtype="<f4").reshape(EMBEDDING_DIM)
        return cls(
            embed_version=embed_version,
            embedding=vec.tobytes(),
            counts=counts,
            action_hist=dict(action_hist or {}),
        )

    def vector(self) -> np.ndarray:
        return np.frombuffer(self.embedding, dtype="<f4").astype(np.float64)


PAYLOAD_MODELS: dict[str, type[Frozen]] = {"summary": RoundSummary}


def register_payload(name: str, model: type[Frozen]) -> None:
    """Later protocol stages (SecAgg+ masked inputs, shadow reports) add their payload models."""
    existing = PAYLOAD_MODELS.get(name)
    if existing is not None and existing is not model:
        raise ValueError(f"payload type {name!r} already registered")
    PAYLOAD_MODELS[name] = model


class DeadLetter(Frozen):
    """A rejected record: the original value as the DLQ record's value, the why in headers.

    The DLQ record's key names the source record (``topic/partition/offset``, so repeats are
    recognisable); the original key travels base64 in ``sotto-original-key`` and the original
    headers are kept after the ``sotto-*`` ones, so the record can be replayed as it was. A tombstone (``original`` is
    ``None``) stays a tombstone. Originals longer than the DLQ's limit are cut to it, with
    ``truncated`` set and the SHA-256 and length of the whole kept, so the DLQ can never refuse
    a dead letter for its size. Another region's record is withheld (empty, ``withheld``).
    """

    reason: RejectReason
    detail: str
    region: str
    source_topic: str
    source_partition: int
    source_offset: int
    rejected_at: datetime
    original: bytes | None
    original_key: bytes | None = None
    original_headers: tuple[tuple[str, bytes], ...] = ()
    original_size: int = 0
    original_sha256: str = ""
    truncated: bool = False

    @classmethod
    def of(
        cls,
        *,
        value: bytes | None,
        max_bytes: int,
        withhold: bool = False,
        **fields: object,
    ) -> DeadLetter:
        """Build one from the source record's value, applying the size limit."""
        whole = value or b""
        kept: bytes | None = None if value is None else (b"" if withhold else whole[:max_bytes])
        return cls(
            original=kept,
            original_size=len(whole),
            original_sha256=hashlib.sha256(whole).hexdigest(),
            truncated=kept is not None and len(kept) < len(whole) and not withhold,
            **fields,  # type: ignore[arg-type]
        )

    def headers(self) -> list[tuple[str, bytes]]:
        p = "sotto-"
        return [
            (p + "reason", self.reason.value.encode()),
            (p + "detail", self.detail[:512].encode()),
            (p + "region", self.region.encode()),
            (p + "source-topic", self.source_topic.encode()),
            (p + "source-partition", str(self.source_partition).encode()),
            (p + "source-offset", str(self.source_offset).encode()),
            (p + "rejected-at", self.rejected_at.isoformat().encode()),
            (p + "original-size", str(self.original_size).encode()),
            (p + "original-sha256", self.original_sha256.encode()),
            (p + "truncated", b"true" if self.truncated else b"false"),
            *(
                []
                if self.original_key is None
                else [(p + "original-key", b64e(self.original_key).encode())]
            ),
            *[(k, v) for k, v in self.original_headers if not k.startswith(p)],
        ]

    @classmethod
    def from_record(cls, value: bytes | None, headers: list[tuple[str, bytes]]) -> DeadLetter:
        h = {k.removeprefix("sotto-"): v.decode() for k, v in headers if k.startswith("sotto-")}
        return cls(
            reason=RejectReason(h["reason"]),
            detail=h.get("detail", ""),
            region=h["region"],
            source_topic=h["source-topic"],
            source_partition=int(h["source-partition"]),
            source_offset=int(h["source-offset"]),
            rejected_at=datetime.fromisoformat(h["rejected-at"]),
            original=value,
            original_key=b64d(h["original-key"]) if "original-key" in h else None,
            original_headers=tuple((k, v) for k, v in headers if not k.startswith("sotto-")),
            original_size=int(h.get("original-size", len(value or b""))),
            original_sha256=h.get("original-sha256", ""),
            truncated=h.get("truncated") == "true",
        )


def utcnow() -> datetime:
    return datetime.now(UTC)


def cohort_partition(cohort: str, partitions: int) -> int:
    """The partition of every per-cohort record (releases, adapters): one cohort, one
    partition, so a consumer sees a cohort's rounds in order. crc32, not Python's salted hash,
    so every process agrees."""
    return zlib.crc32(cohort.encode()) % partitions


class ReleasedAggregate(Frozen):
    """What a round releases to ``<region>.aggregates``: a cohort's DP-noised sum, nothing else.

    The learner sees only these. ``layout`` names how the flat vector is to be read (the
    learner's contribution layout and its version); ingestion never interprets it.
    Keyed on the topic by ``region|cohort|round`` so that a release published twice (a
    coordinator crash between DB commit and produce) is recognised and applied once.
    """

    type: Literal["released_aggregate"] = "released_aggregate"
    v: Literal[1] = 1
    region: Annotated[str, Field(pattern=REGION_PATTERN)]
    cohort: Annotated[str, Field(pattern=ID_PATTERN)]
    round: Round
    layout: Annotated[str, Field(max_length=64)]
    dim: Annotated[int, Field(ge=1, le=1 << 26)]
    participants: Annotated[int, Field(ge=0, le=MAX_INT64)]
    dropped: Annotated[int, Field(ge=0, le=MAX_INT64)]
    noise_stddev: Annotated[float, Field(ge=0)]  # stddev of the Gaussian noise in ``total``
    epsilon: Annotated[float, Field(ge=0)]  # this round's epsilon
    delta: Annotated[float, Field(ge=0, le=1)]
    epsilon_spent: Annotated[float, Field(ge=0)]  # cohort total after this round
    total: str  # base64 little-endian float64[dim]: dequantized noisy sum
    released_at: datetime

    def key(self) -> bytes:
        return f"{self.region}|{self.cohort}|{self.round}".encode()

    def vector(self) -> np.ndarray:
        vec = np.frombuffer(b64d(self.total), dtype="<f8")
        if vec.shape != (self.dim,):
            raise ValueError(f"total has {vec.shape[0]} values, dim says {self.dim}")
        return vec.copy()

    @classmethod
    def build(cls, total: np.ndarray, **fields: object) -> ReleasedAggregate:
        vec = np.asarray(total, dtype="<f8").ravel()
        return cls(total=b64e(vec.tobytes()), dim=int(vec.shape[0]), **fields)  # type: ignore[arg-type]
