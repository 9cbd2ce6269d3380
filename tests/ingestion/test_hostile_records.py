"""Hostile senders against a real broker: records built to stop a region, fuzzed envelopes, and
a DLQ that refuses a dead letter.

Whoever holds a region's *public* key can seal a payload, and anyone who can reach the ingest
topic can write any bytes, key and headers. Each record below once could (or plausibly could)
stop a region; now each must become exactly one dead letter with its reason while the valid
envelopes around it are counted exactly, and the service must keep going.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaTimeoutError, TopicAlreadyExistsError
from pydantic import ValidationError
from sqlalchemy import select

from backend import keystore
from backend.storage import reading
from deploy.settings import SottoSettings
from ingestion.aggregates import aggregates
from ingestion.audit import verify_chain
from ingestion.checkpoint import BatchCheckpoint, DeadLetterError
from ingestion.db import audit_log, open_database
from ingestion.service import IngestionApp
from ingestion.topics import ensure_region_topics
from ingestion.validator import Rejected
from privacy.envelope import SUITE
from privacy.keys import KeyEntry
from privacy.wire import MAX_ROUND, DeadLetter, Envelope, RejectReason, RoundSummary, b64e, utcnow
from privacy.wire_v2 import EnvelopeV2
from tests.ingestion.helpers import (
    Truth,
    assert_matches,
    dead_letters,
    random_summary,
    read_all,
    seal_for,
    seal_raw_v2,
    seal_v1_for,
    v2_moved,
)

pytestmark = pytest.mark.kafka

MiB = 1024 * 1024
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]  # value, key, headers
Coord = tuple[str, int, int]


# -- helpers -----------------------------------------------------------------------------------
def produce_records(bootstrap: str, topic: str, records: Sequence[Record]) -> list[int]:
    """Produce ``(value, key, headers)`` records to partition 0, in order; their offsets."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=8 * MiB
    )
    try:
        futures = [
            producer.send(topic, value=v, key=k, headers=h, partition=0) for v, k, h in records
        ]
        producer.flush(60)
        return [f.get(timeout=30).offset for f in futures]
    finally:
        producer.close()


def create_topics(settings: SottoSettings, *, ingest_max_bytes: int = 10 * MiB) -> None:
    """The region's topics, the ingest topic admitting records up to ``ingest_max_bytes``
    (a broker's default is 1 MiB; the test broker allows 10 MiB)."""
    cfg = settings.policy.region("eu")
    admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers)
    try:
        topic = NewTopic(
            cfg.t.ingest,
            cfg.partitions,
            replication_factor=-1,
            topic_configs={"max.message.bytes": str(ingest_max_bytes)},
        )
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([topic])
    finally:
        admin.close()
    ensure_region_topics(cfg)


def set_topic_max_bytes(settings: SottoSettings, topic: str, max_bytes: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(max_bytes)})]
        )
    finally:
        admin.close()


def eu_key(settings: SottoSettings) -> KeyEntry:
    return keystore.load_keyset(settings.policy.region("eu").keyset_dir).current()


def seal_raw(
    plain: bytes, key: KeyEntry, cohort: str, rnd: int, payload_type: str = "summary"
) -> Envelope:
    """Seal arbitrary payload bytes exactly as :func:`privacy.envelope.seal` seals a model:
    what a sender holding the region's public key can do without our payload models."""
    header = Envelope(
        msg_id=secrets.token_hex(16),
        region=key.region,
        key_id=key.key_id,
        cohort=cohort,
        round=rnd,
        payload_type=payload_type,
        sent_at=utcnow(),
        ct="",
    )
    ct = SUITE.encrypt(plain, key.public(), info=header.hpke_info())
    return header.model_copy(update={"ct": b64e(ct)})


def summary_json(rng: np.random.Generator) -> dict:
    """A valid summary payload as a JSON object, to be made invalid by hand."""
    return json.loads(random_summary(rng).model_dump_json())


def headers_of(record) -> dict[str, bytes]:
    return {k: v for k, v in record.headers}


def dlq_by_source(settings: SottoSettings) -> dict[Coord, list[DeadLetter]]:
    out: dict[Coord, list[DeadLetter]] = {}
    for d in dead_letters(settings.kafka_bootstrap, settings.policy.region("eu").t.dead_letter):
        out.setdefault((d.source_topic, d.source_partition, d.source_offset), []).append(d)
    return out


# -- 1. single records that used to stop a region ----------------------------------------------
@pytest.mark.timeout(300)
def test_region_stoppers_are_dead_lettered_once_and_valid_traffic_counts(
    settings: SottoSettings,
) -> None:
    rng = np.random.default_rng(2024)
    eu = settings.policy.region("eu")
    key = eu_key(settings)
    create_topics(settings)
    truth = Truth()

    def valid() -> Record:
        s = random_summary(rng)
        rnd = int(rng.integers(1, 3))
        truth.add("c", rnd, s)
        return seal_for(settings, "eu", s, "c", rnd).to_bytes(), None, []

    template = seal_v1_for(settings, "eu", random_summary(rng), "c", 1)
    header = template.to_bytes()
    assert b'"round":1,' in header

    def with_counts(**counts: int | str) -> bytes:
        """A sealed summary whose counts are spliced in as JSON text (no model would build it)."""
        payload = summary_json(rng)
        marker = '"__COUNTS__"'
        payload["counts"] = "__COUNTS__"
        body = ",".join(f'"{k}":{v}' for k, v in counts.items())
        plain = json.dumps(payload).replace(marker, "{" + body + "}").encode()
        return seal_raw(plain, key, "c", 1).to_bytes()

    deep_payload = summary_json(rng)
    deep_payload["action_hist"] = "__DEEP__"
    depth = 20_000  # as deep as a sealed payload gets under the 64 KiB envelope limit
    deep_plain = json.dumps(deep_payload).replace('"__DEEP__"', "[" * depth + "]" * depth).encode()
    hist_payload = summary_json(rng)
    hist_payload["action_hist"] = {"\x00" * 40: 1}  # too long a name, quoted in the detail
    nul_hist = json.dumps(hist_payload).encode()
    big = b'{"pad":"' + b"x" * (5_000_000 - 10) + b'"}'
    assert len(big) == 5_000_000
    digits = "9" * 5000

    hostile: list[tuple[str, RejectReason, Record]] = [
        ("nested 30,000 deep", RejectReason.MALFORMED, (b"[" * 30_000 + b"]" * 30_000, None, [])),
        (
            "5,000-digit number in the header",
            RejectReason.MALFORMED,
            (header.replace(b'"round":1,', f'"round":{digits},'.encode()), None, []),
        ),
        (
            "5,000-digit number in a sealed payload",
            RejectReason.PAYLOAD_INVALID,
            (with_counts(steps=digits, accepted=1, overridden=0, failed=0), None, []),
        ),
        (
            "round = 10**30 in the header",
            RejectReason.SCHEMA,
            (header.replace(b'"round":1,', f'"round":{10**30},'.encode()), None, []),
        ),
        (
            "round = MAX_ROUND + 1 in the header",
            RejectReason.SCHEMA,
            (header.replace(b'"round":1,', f'"round":{MAX_ROUND + 1},'.encode()), None, []),
        ),
        (
            "counts >= 2**63 in a sealed payload",
            RejectReason.PAYLOAD_INVALID,
            (with_counts(steps=2**63, accepted=2**64, overridden=0, failed=0), None, []),
        ),
        (
            "negative counts in a sealed payload",
            RejectReason.PAYLOAD_INVALID,
            (with_counts(steps=-1, accepted=0, overridden=0, failed=-(2**63)), None, []),
        ),
        (
            "nested 20,000 deep in a sealed payload",
            RejectReason.PAYLOAD_INVALID,
            (seal_raw(deep_plain, key, "c", 1).to_bytes(), None, []),
        ),
        (
            "a NUL and a newline in an unknown field's name",
            RejectReason.SCHEMA,
            (header[:-1] + b', "a\\u0000\\nb": 1}', None, []),
        ),
        (
            "a NUL-filled action name in a sealed payload",
            RejectReason.PAYLOAD_INVALID,
            (seal_raw(nul_hist, key, "c", 1).to_bytes(), None, []),
        ),
        ("a 5 MB record", RejectReason.OVERSIZED, (big, b"big-key", [("h", b"v")])),
        *v2_stoppers(settings, rng, key),
        (
            "a tombstone with a key and headers",
            RejectReason.MALFORMED,
            (None, b"\x00device\xff", [("trace", b"t-1"), ("empty", b"")]),
        ),
        (
            "forged sotto-* headers (claim to be a replay from elsewhere)",
            RejectReason.MALFORMED,
            (
                b"garbage",
                b"k",
                [
                    ("sotto-reason", b"replay"),
                    ("sotto-source-offset", b"0"),
                    ("sotto-original-key", b"!!"),
                    ("kept", b"yes"),
                ],
            ),
        ),
    ]
    records: list[Record] = [valid()]
    kinds: list[tuple[str, RejectReason] | None] = [None]
    for name, reason, rec in hostile:
        records += [rec, valid(), valid()]
        kinds += [(name, reason), None, None]
    offsets = produce_records(settings.kafka_bootstrap, eu.t.ingest, records)

    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        handled = app.process_available(timeout_s=120)
        assert handled == len(records)
        assert app.degraded is None
        assert app.stats.checkpoint_failures == 0
        assert app.stats.accepted == truth.total
        assert app.stats.dead_letters == len(hostile)
        assert_matches(aggregates(app.engine, "eu"), truth)
        assert verify_chain(app.engine, "eu") == (True, None)
        with reading(app.engine) as conn:
            details = conn.execute(select(audit_log.c.detail)).scalars().all()
        assert len(details) == len(records)
        assert all(d.isprintable() and d.isascii() for d in details), details

        # the region is still up: a later valid record is counted by the same service
        late = [valid()]
        produce_records(settings.kafka_bootstrap, eu.t.ingest, late)
        app.process_available(timeout_s=60)
        assert_matches(aggregates(app.engine, "eu"), truth)
        assert verify_chain(app.engine, "eu") == (True, None)

    got = dlq_by_source(settings)
    want = {
        (eu.t.ingest, 0, off): (kind, rec)
        for off, kind, rec in zip(offsets, kinds, records, strict=True)
        if kind is not None
    }
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    limit = settings.ingest.dead_letter_max_bytes
    for coord, ((name, reason), (value, rkey, rheaders)) in want.items():
        assert len(got[coord]) == 1, (name, len(got[coord]))
        dl = got[coord][0]
        assert dl.reason is reason, (name, dl.reason, dl.detail)
        assert dl.region == "eu"
        # what the sender wrote is never copied raw into a detail (PostgreSQL refuses NUL in
        # text; control characters forge log lines)
        assert dl.detail.isprintable() and dl.detail.isascii(), (name, dl.detail)
        whole = value or b""
        assert dl.original_size == len(whole), name
        assert dl.original_sha256 == hashlib.sha256(whole).hexdigest(), name
        assert dl.original_key == rkey, name
        assert dl.original_headers == tuple(h for h in rheaders if not h[0].startswith("sotto-"))
        if value is None:
            assert dl.original is None, name  # a tombstone stays a tombstone
        elif len(value) > limit:
            assert dl.truncated and dl.original == value[:limit], name
        else:
            assert not dl.truncated and dl.original == value, name

    # the DLQ record of the 5 MB original is what a broker with a 1 MiB limit still takes
    raw = {
        int(dict(r.headers)["sotto-source-offset"]): r
        for r in read_all(settings.kafka_bootstrap, eu.t.dead_letter)
    }
    offset_of = {k[0]: off for off, k in zip(offsets, kinds, strict=True) if k is not None}
    big_dl = raw[offset_of["a 5 MB record"]]
    assert len(big_dl.value) == limit < MiB
    headers = dict(big_dl.headers)
    assert headers["sotto-truncated"] == b"true"
    assert headers["sotto-original-size"] == b"5000000"
    assert headers["sotto-original-sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert big_dl.key == f"{eu.t.ingest}/0/{offset_of['a 5 MB record']}".encode()
    tomb = raw[offset_of["a tombstone with a key and headers"]]
    assert tomb.value is None
    assert headers_of(tomb)["sotto-original-key"] == b64e(b"\x00device\xff").encode()


def v2_stoppers(
    settings: SottoSettings, rng: np.random.Generator, key: KeyEntry
) -> list[tuple[str, RejectReason, Record]]:
    """The binary framing's own ways to lie, and v1's stoppers carried into v2."""
    env = seal_for(settings, "eu", random_summary(rng), "c", 1)
    raw = env.to_bytes()
    hlen = int.from_bytes(raw[4:6], "big")
    body = raw[6 : 6 + hlen]
    enc = msgspec.msgpack.encode

    def reheader(new_body: bytes) -> bytes:
        return raw[:4] + len(new_body).to_bytes(2, "big") + new_body + raw[6 + hlen :]

    def payload(**changes: object) -> bytes:
        plain = enc({**random_summary(rng).model_dump(mode="python"), **changes})
        return seal_raw_v2(plain, key, "c", 1)

    deep = seal_raw_v2(b"\x91" * 60_000 + b"\x01", key, "c", 1)
    cases: list[tuple[str, RejectReason, bytes]] = [
        ("v2 truncated in the header", RejectReason.MALFORMED, raw[: 6 + hlen // 2]),
        ("v2 truncated in the ciphertext", RejectReason.MALFORMED, raw[:-7]),
        (
            "v2 header length lies",
            RejectReason.MALFORMED,
            reheader(body)[:4] + b"\x00\x09" + raw[6:],
        ),
        ("v2 header length 0xFFFF", RejectReason.MALFORMED, raw[:4] + b"\xff\xff" + raw[6:]),
        (
            "v2 sealed length 2**32-1",
            RejectReason.MALFORMED,
            raw[: 6 + hlen] + b"\xff" * 4 + raw[10 + hlen :],
        ),
        ("v2 trailing bytes", RejectReason.MALFORMED, raw + b"\x00" * 3),
        ("v2 wrong magic", RejectReason.MALFORMED, b"\xf5SX" + raw[3:]),
        ("v2 unknown version", RejectReason.UNSUPPORTED_VERSION, raw[:3] + b"\x09" + raw[4:]),
        ("v2 an unknown header item", RejectReason.SCHEMA, reheader(b"\x98" + body[1:] + b"\x01")),
        ("v2 header nested deep", RejectReason.SCHEMA, reheader(b"\x91" * 400 + b"\x01")),
        ("v2 round as text", RejectReason.SCHEMA, v2_moved(env, round="1")),
        ("v2 round 2**64-1", RejectReason.SCHEMA, v2_moved(env, round=2**64 - 1)),
        (
            "v2 a NUL and a newline in the cohort",
            RejectReason.SCHEMA,
            v2_moved(env, cohort="c\x00\n"),
        ),
        ("v2 header edited (info tampering)", RejectReason.DECRYPT_FAILED, v2_moved(env, round=2)),
        ("v2 payload nested 60,000 deep", RejectReason.PAYLOAD_INVALID, deep),
        (
            "v2 payload counts 2**64-1",
            RejectReason.PAYLOAD_INVALID,
            payload(counts={"steps": 2**64 - 1}),
        ),
        ("v2 payload unknown field", RejectReason.PAYLOAD_INVALID, payload(device_id="leak")),
        (
            "v2 payload NUL-filled action name",
            RejectReason.PAYLOAD_INVALID,
            payload(action_hist={"\x00" * 40: 1}),
        ),
        (
            "v2 payload embedding as text",
            RejectReason.PAYLOAD_INVALID,
            payload(embedding="A" * 512),
        ),
        ("v2 a 5 MB record", RejectReason.OVERSIZED, raw[:6] + b"\x00" * 5_000_000),
    ]
    return [(name, reason, (value, b"v2", [])) for name, reason, value in cases]


# -- 2. fuzzed envelopes, interleaved with valid ones ------------------------------------------
HEADER_FIELDS = ("v", "msg_id", "region", "key_id", "cohort", "round", "payload_type", "sent_at")
HOSTILE_KINDS = (
    "replay",
    "bitflip",
    "insert",
    "delete",
    "truncate",
    "swap_fields",
    "swap_ct",
    "int_field",
    "digits",
    "deep",
    "dup_key",
    "extra_field",
    "random_json",
    "random_bytes",
    "bad_payload",
)
V2_KINDS = (
    "v2_replay",
    "v2_bitflip",
    "v2_insert",
    "v2_delete",
    "v2_truncate",
    "v2_swap_sealed",
    "v2_header_item",
    "v2_random",
    "v2_bad_payload",
)
HUGE_INTS = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([-1, 2**31, 2**53, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, MAX_ROUND + 1]),
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | HUGE_INTS
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _hostile(
    data: st.DataObject, kind: str, src: Envelope, other: Envelope, key: KeyEntry, rng
) -> bytes:
    """A hostile record derived from ``src``, a valid envelope produced *earlier* in the same
    stream: a mutation that leaves it semantically intact (same msg_id, decrypts) is a replay,
    so every hostile record must be refused, whatever the mutation did."""
    raw = bytearray(src.to_bytes())
    obj = json.loads(raw)
    if kind == "replay":
        return bytes(raw)
    if kind == "bitflip":
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(raw)
    if kind == "insert":
        i = data.draw(st.integers(0, len(raw)))
        return bytes(raw[:i] + data.draw(st.binary(min_size=1, max_size=16)) + raw[i:])
    if kind == "delete":
        i = data.draw(st.integers(0, len(raw) - 1))
        return bytes(raw[:i] + raw[i + data.draw(st.integers(1, 32)) :])
    if kind == "truncate":
        return bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    if kind == "swap_fields":
        a, b = data.draw(
            st.lists(st.sampled_from((*HEADER_FIELDS, "ct")), min_size=2, max_size=2, unique=True)
        )
        obj[a], obj[b] = obj[b], obj[a]
        return json.dumps(obj).encode()
    if kind == "swap_ct":
        obj["ct"] = other.ct if other.msg_id != src.msg_id else obj["ct"][::-1]
        return json.dumps(obj).encode()
    if kind == "int_field":
        obj[data.draw(st.sampled_from((*HEADER_FIELDS, "ct")))] = data.draw(HUGE_INTS)
        return json.dumps(obj).encode()
    if kind == "digits":
        field = data.draw(st.sampled_from(("round", "v", "sent_at", "cohort")))
        n = data.draw(st.sampled_from([19, 20, 400, 4300, 4301, 5000, 20_000]))
        obj[field] = "__N__"
        sign = data.draw(st.sampled_from(["", "-"]))
        return json.dumps(obj).replace('"__N__"', sign + "9" * n).encode()
    if kind == "deep":
        field = data.draw(st.sampled_from((*HEADER_FIELDS, "ct", "extra")))
        depth = data.draw(st.integers(150, 20_000))
        opener, closer = data.draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        depth = depth if opener == "[" else depth // 3  # stay under the envelope size limit
        obj[field] = "__D__"
        return json.dumps(obj).replace('"__D__"', opener * depth + "1" + closer * depth).encode()
    if kind == "dup_key":
        field = data.draw(st.sampled_from(HEADER_FIELDS))
        text = json.dumps(obj)
        return (
            text[:-1] + f", {json.dumps(field)}: {json.dumps(data.draw(JSON_VALUES))}}}"
        ).encode()
    if kind == "extra_field":  # any name: NUL, newlines, 40 characters, one of ours
        obj[data.draw(st.one_of(st.text(max_size=40), st.sampled_from(HEADER_FIELDS)))] = 1
        return json.dumps(obj).encode()
    if kind == "random_json":
        if data.draw(st.booleans()):
            return json.dumps(data.draw(JSON_VALUES)).encode()
        return json.dumps({f: data.draw(JSON_VALUES) for f in (*HEADER_FIELDS, "ct")}).encode()
    if kind == "random_bytes":
        return data.draw(st.binary(max_size=300))
    assert kind == "bad_payload"
    payload = summary_json(rng)
    what = data.draw(
        st.sampled_from(["count", "embed_version", "embedding", "hist", "extra", "type", "nan"])
    )
    if what == "count":
        bad = data.draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=100_001)))
        payload["counts"][data.draw(st.sampled_from(sorted(payload["counts"])))] = bad
    elif what == "embed_version":
        payload["embed_version"] = data.draw(st.sampled_from([0, -1, 2**16 + 1, 2**63, 10**30]))
    elif what == "embedding":
        payload["embedding"] = b64e(
            data.draw(st.binary(max_size=600).filter(lambda b: len(b) != 512))
        )
    elif what == "hist":
        payload["action_hist"] = {f"a{i}": 1 for i in range(65)}
    elif what == "extra":
        payload["device_id"] = "leak"
    elif what == "type":
        payload["type"] = data.draw(st.sampled_from(["masked_input", "", "summary2"]))
    else:
        vec = np.full(128, np.nan, dtype="<f4")
        payload["embedding"] = b64e(vec.tobytes())
    return seal_raw(json.dumps(payload).encode(), key, src.cohort, src.round).to_bytes()


V2_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from([-1, 2**53, MAX_ROUND + 1, 2**64 - 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
V2_HEADER_FIELDS = ("msg_id", "region", "key_id", "cohort", "round", "payload_type", "sent_at_us")


def _hostile_v2(
    data: st.DataObject, kind: str, src: EnvelopeV2, other: EnvelopeV2, key: KeyEntry, rng
) -> bytes:
    """A hostile v2 record derived from ``src`` (sent earlier in the stream): the info covers
    every header byte, so no edit leaves it valid, and an unedited copy is a replay."""
    raw = bytearray(src.to_bytes())
    if kind == "v2_replay":
        return bytes(raw)
    if kind == "v2_bitflip":
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(raw)
    if kind == "v2_insert":
        i = data.draw(st.integers(1, len(raw)))
        return bytes(raw[:i] + data.draw(st.binary(min_size=1, max_size=16)) + raw[i:])
    if kind == "v2_delete":
        i = data.draw(st.integers(1, len(raw) - 1))
        return bytes(raw[:i] + raw[i + data.draw(st.integers(1, 32)) :])
    if kind == "v2_truncate":
        return bytes(raw[: data.draw(st.integers(1, len(raw) - 1))])
    if kind == "v2_swap_sealed":
        sealed = other.sealed() if other.msg_id != src.msg_id else src.sealed()[::-1]
        return bytes(raw[: src.header_end]) + len(sealed).to_bytes(4, "big") + sealed
    if kind == "v2_header_item":
        field = data.draw(st.sampled_from(V2_HEADER_FIELDS))
        return v2_moved(src, **{field: data.draw(V2_VALUES)})
    if kind == "v2_random":
        return b"\xf5SE\x02" + data.draw(st.binary(max_size=300))
    assert kind == "v2_bad_payload"
    payload = random_summary(rng).model_dump(mode="python")
    what = data.draw(st.sampled_from(["count", "embedding", "hist", "extra", "type", "value"]))
    if what == "count":
        bad = data.draw(st.one_of(st.integers(-(2**63), -1), st.integers(100_001, 2**64 - 1)))
        payload["counts"][data.draw(st.sampled_from(sorted(payload["counts"])))] = bad
    elif what == "embedding":
        payload["embedding"] = data.draw(st.binary(max_size=600).filter(lambda b: len(b) != 512))
    elif what == "hist":
        payload["action_hist"] = {f"a{i}": 1 for i in range(65)}
    elif what == "extra":
        payload["device_id"] = "leak"
    elif what == "type":
        payload["type"] = data.draw(st.sampled_from(["masked_input", "", "summary2"]))
    else:
        payload[data.draw(st.sampled_from(sorted(payload)))] = data.draw(V2_VALUES)
        with contextlib.suppress(ValidationError):  # the draw may have left it valid
            RoundSummary.model_validate(payload)
            payload["device_id"] = "leak"
    return seal_raw_v2(msgspec.msgpack.encode(payload), key, src.cohort, src.round)


@pytest.mark.timeout(420)
def test_fuzzed_envelopes_are_each_dead_lettered_once(settings: SottoSettings) -> None:
    eu = settings.policy.region("eu")
    key = eu_key(settings)
    create_topics(settings)
    ingest = settings.ingest.model_copy(update={"batch_max_records": 16})  # several batches
    truth = Truth()
    rng = np.random.default_rng(7)
    runs: list[int] = []

    @hyp_settings(
        max_examples=6,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # state accumulates: no shrinking replays
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(st.data())
    def one_run(data: st.DataObject) -> None:
        records: list[bytes] = []
        hostile: list[bool] = []
        sent: list[Envelope] = []  # v1, for the JSON mutations
        sent2: list[EnvelopeV2] = []  # v2, for the binary ones
        for i in range(50):
            kind = (
                ("valid", "valid_v2")[i]
                if i < 2
                else data.draw(st.sampled_from(("valid", "valid_v2", *HOSTILE_KINDS, *V2_KINDS)))
            )
            if kind in ("valid", "valid_v2"):
                s = random_summary(rng)
                cohort, rnd = data.draw(st.sampled_from(["h0", "h1"])), data.draw(st.integers(1, 2))
                truth.add(cohort, rnd, s)
                if kind == "valid":
                    env1 = seal_v1_for(settings, "eu", s, cohort, rnd)
                    sent.append(env1)
                    records.append(env1.to_bytes())
                else:
                    env2 = seal_for(settings, "eu", s, cohort, rnd)
                    sent2.append(env2)
                    records.append(env2.to_bytes())
                hostile.append(False)
                continue
            if kind.startswith("v2_"):
                src2, other2 = data.draw(st.sampled_from(sent2)), data.draw(st.sampled_from(sent2))
                records.append(_hostile_v2(data, kind, src2, other2, key, rng))
            else:
                src, other = data.draw(st.sampled_from(sent)), data.draw(st.sampled_from(sent))
                records.append(_hostile(data, kind, src, other, key, rng))
            hostile.append(True)
        offsets = produce_records(
            settings.kafka_bootstrap, eu.t.ingest, [(r, None, []) for r in records]
        )
        with IngestionApp(settings.policy, "eu", ingest) as app:
            assert app.process_available(timeout_s=120) == len(records)
            assert app.degraded is None
            assert app.stats.accepted == hostile.count(False)
            assert_matches(aggregates(app.engine, "eu"), truth)
            assert verify_chain(app.engine, "eu") == (True, None)
        got = dlq_by_source(settings)
        for off, bad, raw in zip(offsets, hostile, records, strict=True):
            dls = got.get((eu.t.ingest, 0, off), [])
            if not bad:
                assert dls == [], (off, [d.reason for d in dls])
                continue
            assert len(dls) == 1, (off, raw[:200], len(dls))
            # a hostile record is a refusal with a reason, never a crash while judging it
            assert dls[0].reason is not RejectReason.INTERNAL_ERROR, (raw[:300], dls[0].detail)
            assert dls[0].original == raw
            assert dls[0].detail.isprintable() and dls[0].detail.isascii(), dls[0].detail
        runs.append(len(records))

    one_run()
    assert sum(runs) >= 200


# -- 3. the DLQ refuses a dead letter ----------------------------------------------------------
def poll_until(app: IngestionApp, done, timeout_s: float, what: str) -> None:
    """``app.poll_once()`` until ``done()``: the service's own loop, bounded, no sleeps."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        app.poll_once(timeout_ms=200)


@pytest.mark.timeout(300)
def test_dlq_refusing_a_dead_letter_holds_the_batch_and_recovers(settings: SottoSettings) -> None:
    rng = np.random.default_rng(5)
    eu = settings.policy.region("eu")
    create_topics(settings)
    set_topic_max_bytes(settings, eu.t.dead_letter, 2000)
    truth = Truth()

    def valid() -> Record:
        s = random_summary(rng)
        truth.add("c", 1, s)
        return seal_for(settings, "eu", s, "c", 1).to_bytes(), None, []

    small_bad = (b"not json", None, [])  # its dead letter fits in 2000 bytes
    big_bad = (b"\x00" * 5000, b"k", [("h", b"v")])  # its dead letter does not
    records = [valid(), valid(), small_bad, valid(), big_bad, valid(), valid()]
    offsets = produce_records(settings.kafka_bootstrap, eu.t.ingest, records)
    bad = {(eu.t.ingest, 0, offsets[2]), (eu.t.ingest, 0, offsets[4])}
    good = {(eu.t.ingest, 0, o) for o in offsets} - bad

    def dlq_counts() -> Counter[Coord]:
        return Counter({k: len(v) for k, v in dlq_by_source(settings).items()})

    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        poll_until(
            app,
            lambda: app.stats.checkpoint_failures >= 3,
            90,
            "the DLQ's refusal to fail checkpoints",
        )
        # reported, not crashed, not skipped: nothing of the batch is durable yet
        assert app.degraded is not None and "DeadLetterError" in app.degraded
        assert app.health()["ready"] is False
        assert aggregates(app.engine, "eu") == []
        assert app.stats.accepted == 0
        counts = dlq_counts()
        assert not set(counts) & good  # no valid record was dead-lettered
        assert counts[(eu.t.ingest, 0, offsets[4])] == 0  # refused by the broker
        assert counts[(eu.t.ingest, 0, offsets[2])] <= 1  # acked once, not re-produced

        set_topic_max_bytes(settings, eu.t.dead_letter, MiB)
        poll_until(
            app,
            lambda: app.degraded is None and app.stats.accepted == truth.total,
            90,
            "recovery once the DLQ takes the dead letter",
        )
        assert_matches(aggregates(app.engine, "eu"), truth)
        assert app.stats.dead_letters == 2
        assert verify_chain(app.engine, "eu") == (True, None)
        app.process_available(timeout_s=30)  # nothing left, nothing redone
        assert_matches(aggregates(app.engine, "eu"), truth)

    counts = dlq_counts()
    assert counts == Counter({c: 1 for c in bad}), counts
    big = dlq_by_source(settings)[(eu.t.ingest, 0, offsets[4])][0]
    assert big.reason is RejectReason.MALFORMED
    assert big.original == b"\x00" * 5000 and big.original_key == b"k"


# -- 4. a record the Kafka client cannot decode ------------------------------------------------
class _RawHeaderKey(str):
    """A header key whose wire bytes are not UTF-8. Kafka's protocol says header keys are
    strings, but the broker does not check; any client can write these bytes."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe-not-utf8"


def produce_batches(
    bootstrap: str, topic: str, batches: Sequence[Sequence[Record]]
) -> list[list[int]]:
    """Produce each group of records as one record batch (a flush after each group) to
    partition 0; their offsets, group by group."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1000)
    try:
        out = []
        for batch in batches:
            futures = [
                producer.send(topic, value=v, key=k, headers=h, partition=0) for v, k, h in batch
            ]
            producer.flush(30)
            out.append([f.get(timeout=30).offset for f in futures])
        return out
    finally:
        producer.close()


@pytest.mark.timeout(240)
def test_undecodable_header_key_is_dead_lettered_and_ingestion_moves_on(
    settings: SottoSettings,
) -> None:
    """kafka-python raises on such a record, then its fetcher spins on that partition forever:
    one record used to stop the region (and every restart stopped at it again). kafka-python
    decodes a batch from its start, so what the sender put after it in the same batch cannot
    be read either: dead-lettered with it; other producers' batches are untouched."""
    rng = np.random.default_rng(9)
    eu = settings.policy.region("eu")
    create_topics(settings)
    truth = Truth()

    def valid() -> Record:
        s = random_summary(rng)
        truth.add("c", 2, s)
        return seal_for(settings, "eu", s, "c", 2).to_bytes(), None, []

    def poison() -> Record:
        return b"{}", b"poison-key", [(_RawHeaderKey("x"), b"v")]

    stolen = seal_for(settings, "eu", random_summary(rng), "c", 2).to_bytes()  # after a poison
    batches = [
        [valid()],
        [poison()],
        [valid()],
        [valid(), valid()],
        [valid(), poison(), (b"junk", None, []), (stolen, None, [])],  # one sender's batch
        [poison()],
        [valid()],
        [(b"junk", None, [])],
    ]
    offsets = produce_batches(settings.kafka_bootstrap, eu.t.ingest, batches)
    undecodable = {*offsets[1], *offsets[4][1:], *offsets[5]}
    junk = offsets[7][0]

    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        assert app.process_available(timeout_s=120) == sum(map(len, batches))
        assert app.degraded is None
        assert_matches(aggregates(app.engine, "eu"), truth)
        assert verify_chain(app.engine, "eu") == (True, None)
        late = [valid()]
        produce_records(settings.kafka_bootstrap, eu.t.ingest, late)
        app.process_available(timeout_s=60)
        assert_matches(aggregates(app.engine, "eu"), truth)

    # a restart reads on from the database's offsets: nothing is redone or dead-lettered again
    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        app.process_available(timeout_s=30)
        assert app.stats.records == 0
        assert_matches(aggregates(app.engine, "eu"), truth)

    got = dlq_by_source(settings)
    assert set(got) == {(eu.t.ingest, 0, o) for o in (*undecodable, junk)}
    for off in undecodable:
        (dl,) = got[(eu.t.ingest, 0, off)]
        assert dl.reason is RejectReason.MALFORMED
        assert "cannot be decoded" in dl.detail
        assert dl.original == b""  # unreadable: its bytes stay on the source topic
    (dl,) = got[(eu.t.ingest, 0, junk)]
    assert dl.reason is RejectReason.MALFORMED and dl.original == b"junk"


@pytest.mark.timeout(240)
def test_undecodable_record_while_the_dlq_refuses_is_retried_not_skipped(
    settings: SottoSettings,
) -> None:
    """The undecodable record's dead letter is refused: the consumer is replaced (the stuck
    one cannot read on), nothing is skipped, and it is dead-lettered once the DLQ takes it."""
    rng = np.random.default_rng(10)
    eu = settings.policy.region("eu")
    create_topics(settings)
    set_topic_max_bytes(settings, eu.t.dead_letter, 64)  # no dead letter fits
    truth = Truth()

    def valid() -> Record:
        s = random_summary(rng)
        truth.add("c", 3, s)
        return seal_for(settings, "eu", s, "c", 3).to_bytes(), None, []

    first = valid()
    batches = [[first], [(b"{}", None, [(_RawHeaderKey("x"), b"v")])], [valid()], [valid()]]
    offsets = produce_batches(settings.kafka_bootstrap, eu.t.ingest, batches)
    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        poll_until(app, lambda: app.stats.checkpoint_failures >= 2, 90, "refused dead letters")
        assert app.degraded is not None
        assert [a.count for a in aggregates(app.engine, "eu")] == [1]  # only what came before
        assert dlq_by_source(settings) == {}
        set_topic_max_bytes(settings, eu.t.dead_letter, MiB)
        poll_until(
            app,
            lambda: app.degraded is None and app.stats.accepted == truth.total,
            90,
            "recovery",
        )
        assert_matches(aggregates(app.engine, "eu"), truth)
        assert verify_chain(app.engine, "eu") == (True, None)
    got = dlq_by_source(settings)
    assert list(got) == [(eu.t.ingest, 0, offsets[1][0])]
    assert len(got[(eu.t.ingest, 0, offsets[1][0])]) == 1


class _Sent:
    def __init__(self, ok: bool | None) -> None:
        self.is_done = ok is not None
        self.exception = None if ok else RuntimeError("refused")

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def get(self, timeout: float | None = None) -> None:
        raise KafkaTimeoutError("still not done")


class _FlushRaises:
    """kafka-python's flush raises (``UnknownError('Future not done')`` after the sender
    aborts batches on a fatal MESSAGE_TOO_LARGE; a timeout) instead of returning."""

    def __init__(self) -> None:
        self.outcomes = iter([True, None])

    def send(self, *args: object, **kwargs: object) -> _Sent:
        return _Sent(next(self.outcomes))

    def flush(self, timeout: float | None = None) -> None:
        raise KafkaTimeoutError("flush")


def test_a_raising_flush_is_a_dead_letter_failure_that_keeps_the_acknowledged(
    tmp_path: Path,
) -> None:
    cp = BatchCheckpoint(region="eu", group_id="g", dead_letter_topic="dlq", now=utcnow())
    for offset in (3, 4):
        cp.reject(Rejected(RejectReason.MALFORMED, "x"), b"x", "ingest", 0, offset)
    heard: set[Coord] = set()
    engine = open_database(f"sqlite:///{tmp_path / 'eu.db'}")  # the fence is read first
    with pytest.raises(DeadLetterError, match=r"1 dead letter\(s\) not acknowledged"):
        cp.commit(producer=_FlushRaises(), engine=engine, on_dead_lettered=heard.update)  # type: ignore[arg-type]
    engine.dispose()
    assert heard == {("ingest", 0, 3)}  # the retry does not produce it again
