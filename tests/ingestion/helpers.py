"""Test helpers: seal real envelopes, produce them to the real broker, read DLQs back, and
keep the ground truth that ingestion's aggregates must equal."""

from __future__ import annotations

import secrets
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from backend import keystore
from deploy.settings import SottoSettings
from privacy.envelope import SUITE, seal, seal_v1
from privacy.keys import KeyEntry
from privacy.wire import (
    EMBEDDING_DIM,
    BehaviorCounts,
    DeadLetter,
    Envelope,
    RoundSummary,
    utcnow,
)
from privacy.wire_v2 import (
    EnvelopeV2,
    HeaderV2,
    assemble,
    header_bytes,
    info_for,
    parse_v2,
    to_sent_at_us,
)

ACTIONS = ("Launch", "Tap", "Type", "Swipe", "Back", "Home", "Wait")


def random_summary(rng: np.random.Generator) -> RoundSummary:
    vec = rng.standard_normal(EMBEDDING_DIM).astype(np.float32)
    counts = BehaviorCounts(
        steps=int(rng.integers(0, 50)),
        accepted=int(rng.integers(0, 20)),
        overridden=int(rng.integers(0, 5)),
        failed=int(rng.integers(0, 5)),
    )
    hist = {a: int(rng.integers(1, 9)) for a in rng.choice(ACTIONS, size=3, replace=False)}
    return RoundSummary.build(vec, counts, hist)


def seal_for(
    settings: SottoSettings, region: str, summary: RoundSummary, cohort: str, rnd: int
) -> EnvelopeV2:
    """What an updated device sends: a v2 (binary) envelope."""
    keyset = keystore.load_keyset(settings.policy.region(region).keyset_dir)
    return seal(summary, key=keyset.current(), cohort=cohort, round=rnd)


def seal_v1_for(
    settings: SottoSettings, region: str, summary: RoundSummary, cohort: str, rnd: int
) -> Envelope:
    """What a device not yet updated sends: a v1 (JSON) envelope, for v1's rules."""
    keyset = keystore.load_keyset(settings.policy.region(region).keyset_dir)
    return seal_v1(summary, key=keyset.current(), cohort=cohort, round=rnd)


def _header_of(env: EnvelopeV2, **changes: object) -> HeaderV2:
    fields: dict[str, object] = {
        "msg_id": bytes.fromhex(env.msg_id),
        "region": env.region,
        "key_id": env.key_id,
        "cohort": env.cohort,
        "round": env.round,
        "payload_type": env.payload_type,
        "sent_at_us": to_sent_at_us(env.sent_at),
    }
    return HeaderV2(**{**fields, **changes})  # type: ignore[arg-type]


def v2_moved(env: EnvelopeV2, **changes: object) -> bytes:
    """``env``'s ciphertext under an edited header (another round, cohort, key id...): what a
    sender without the plaintext can do to a v2 envelope it saw."""
    return assemble(header_bytes(_header_of(env, **changes)), env.sealed())


def seal_raw_v2(
    plain: bytes, key: KeyEntry, cohort: str, rnd: int, payload_type: str = "summary"
) -> bytes:
    """Seal arbitrary payload bytes in a valid v2 frame, as any holder of the public key can."""
    head = header_bytes(
        HeaderV2(
            msg_id=secrets.token_bytes(16),
            region=key.region,
            key_id=key.key_id,
            cohort=cohort,
            round=rnd,
            payload_type=payload_type,
            sent_at_us=to_sent_at_us(utcnow()),
        )
    )
    raw = assemble(head, SUITE.encrypt(plain, key.public(), info=info_for(head)))
    parse_v2(raw)  # the frame itself is valid
    return raw


@dataclass
class Truth:
    """Expected sums per (cohort, round), built from what we sealed as valid."""

    count: Counter[tuple[str, int]] = field(default_factory=Counter)
    vec: dict[tuple[str, int], np.ndarray] = field(
        default_factory=lambda: defaultdict(lambda: np.zeros(EMBEDDING_DIM))
    )
    counts: dict[tuple[str, int], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    hist: dict[tuple[str, int], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, cohort: str, rnd: int, s: RoundSummary) -> None:
        key = (cohort, rnd)
        self.count[key] += 1
        self.vec[key] = self.vec[key] + s.vector()
        c = s.counts
        self.counts[key].update(
            steps=c.steps, accepted=c.accepted, overridden=c.overridden, failed=c.failed
        )
        self.hist[key].update(s.action_hist)

    @property
    def total(self) -> int:
        return sum(self.count.values())


def assert_matches(aggs: list, truth: Truth) -> None:
    got = {(a.cohort, a.round): a for a in aggs}
    assert set(got) == set(truth.count), (sorted(got), sorted(truth.count))
    for key, a in got.items():
        assert a.count == truth.count[key], key
        np.testing.assert_allclose(a.vector_sum, truth.vec[key], rtol=0, atol=1e-9)
        assert a.counts == {k: truth.counts[key][k] for k in a.counts}, key
        assert a.action_hist == dict(truth.hist[key]), key


def produce(
    bootstrap: str, topic: str, values: list[bytes], partition: int | None = None
) -> list[tuple[int, int]]:
    """Produce and wait for every ack; returns (partition, offset) per value."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4 * 1024 * 1024
    )
    try:
        futures = [producer.send(topic, value=v, partition=partition) for v in values]
        producer.flush(60)
        return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
    finally:
        producer.close()


def read_all(
    bootstrap: str, topic: str, timeout_s: float = 20.0, wait_topic_s: float = 3.0
) -> list:
    """Every record currently in ``topic`` (all partitions), without a consumer group;
    ``[]`` if the topic does not exist."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline - timeout_s + wait_topic_s:
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(parts or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out = []
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


def dead_letters(bootstrap: str, topic: str) -> list[DeadLetter]:
    return [DeadLetter.from_record(r.value, list(r.headers)) for r in read_all(bootstrap, topic)]


def on_postgres(settings: SottoSettings, url: str) -> SottoSettings:
    """``settings`` with region eu's ``database_url`` rewritten to ``url`` in regions.toml."""
    path = settings.policy_path
    old = f'database_url = "{settings.policy.region("eu").database_url}"'
    body = path.read_text()
    assert body.count(old) == 1, body
    path.write_text(body.replace(old, f'database_url = "{url}"'))
    moved = SottoSettings(
        home=settings.home, kafka_bootstrap=settings.kafka_bootstrap, ingest=settings.ingest
    )
    assert moved.policy.region("eu").database_url == url
    return moved
