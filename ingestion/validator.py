"""Validation of one Kafka record: pure, no I/O, no clock.

``Validator.validate(raw, topic, partition, offset)`` returns :class:`Accepted` or
:class:`Rejected`; it never raises for bad input. The checks run cheapest first and nothing
is decrypted that routing already refuses:

1. topic -> region via the policy (``topic_region_mismatch``): a record on a topic that is not
   this region's ingest topic is not ours to interpret, so it is refused before parsing;
2. size, framing (v2 binary or v1 JSON, told apart by the first byte), envelope schema and
   version (``privacy.envelope.parse``);
3. declared region (``wrong_region``), key owner (``key_region_mismatch`` when the key id is in
   another region's key set, ``unknown_key`` otherwise), key status (``retired_key``);
4. HPKE open (``decrypt_failed``: tampered header or ciphertext) and the payload schema
   (``payload_invalid``);
5. anything else that goes wrong while judging a record is ``internal_error``.

Replay needs database state and is the processor's job (in-batch set + ``seen_messages``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import privacy.round_wire  # noqa: F401  (registers the SecAgg+ payload types)
from privacy.envelope import AnyEnvelope, check_route, open_payload, parse
from privacy.errors import EnvelopeRejected
from privacy.keys import KeySet, PrivateKey
from privacy.policy import RegionPolicy
from privacy.wire import RejectReason, RoundSummary

_FIELDS: dict[type, tuple[str, ...]] = {}


def _by_position(self: Any) -> tuple[Any, ...]:
    """Pickle a verdict as its class and field values. Why: verdicts cross from the
    validation workers in bulk, and the ``__getstate__`` that dataclasses give slotted
    classes calls ``dataclasses.fields`` for every object (a visible share of the pool's
    result thread)."""
    cls = type(self)
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return cls, tuple(getattr(self, n) for n in names)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A decrypted, schema-valid round summary and its envelope header."""

    envelope: AnyEnvelope
    summary: RoundSummary

    __reduce__ = _by_position


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why the record was refused; ``envelope`` is set when the header parsed."""

    reason: RejectReason
    detail: str
    envelope: AnyEnvelope | None = None

    __reduce__ = _by_position


Verdict = Accepted | Rejected


@dataclass(frozen=True, slots=True)
class Keyring:
    """What the validator knows about keys: this region's key set and private keys, and the
    owner region of every key id it can see in other regions' (public) key sets."""

    keyset: KeySet
    private: dict[str, PrivateKey]
    owners: dict[str, str]


class Validator:
    """Validates records for one region; immutable, so a key reload builds a new one."""

    __slots__ = ("region", "ingest_topic", "_policy", "_keys", "_max_bytes")

    def __init__(self, region: str, policy: RegionPolicy, keys: Keyring, *, max_bytes: int) -> None:
        self.region = region
        self.ingest_topic = policy.region(region).t.ingest
        self._policy = policy
        self._keys = keys
        self._max_bytes = max_bytes

    def validate(self, raw: bytes, topic: str, partition: int = 0, offset: int = 0) -> Verdict:
        """Decide on one record. ``partition``/``offset`` are accepted for symmetry with the
        transport and for future per-partition rules; the decision depends on bytes and topic.

        Never raises: an exception while judging one record (a bug, or an input nobody
        foresaw) becomes ``internal_error`` naming the exception type only (never its message,
        which could quote secret material), so one record cannot stop a region."""
        try:
            return self._validate(raw, topic)
        except Exception as exc:
            return Rejected(
                RejectReason.INTERNAL_ERROR, f"{type(exc).__name__} while judging the record"
            )

    def _validate(self, raw: bytes, topic: str) -> Verdict:
        if topic != self.ingest_topic:
            owner = self._policy.region_of_topic(topic)
            return Rejected(
                RejectReason.TOPIC_REGION_MISMATCH,
                f"topic {topic!r} belongs to {owner!r}, consumer is {self.region!r}"
                if owner
                else f"topic {topic!r} is not an ingest topic of {self.region!r}",
            )
        env: AnyEnvelope | None = None
        try:
            env = parse(raw, max_bytes=self._max_bytes)
            owner = self._keys.owners.get(env.key_id)
            key_region = owner if owner is not None and owner != self.region else None
            entry = check_route(
                env, region=self.region, keyset=self._keys.keyset, key_region=key_region
            )
            private = self._keys.private.get(entry.key_id)
            if private is None:
                raise EnvelopeRejected(
                    RejectReason.UNKNOWN_KEY, f"no private key for {entry.key_id!r} on this host"
                )
            payload = open_payload(env, private)
        except EnvelopeRejected as exc:
            return Rejected(RejectReason(exc.reason), exc.detail, env)
        if not isinstance(payload, RoundSummary):
            from ingestion import round_sink  # SecAgg+ payloads go to the round coordinator

            if round_sink.routes(env.payload_type):
                return round_sink.Routed.of(env, payload)
            return Rejected(
                RejectReason.PROTOCOL,
                f"payload_type {env.payload_type!r} is not ingested here",
                env,
            )
        return Accepted(env, payload)
