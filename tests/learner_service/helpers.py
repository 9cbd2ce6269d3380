"""Test helpers: a tiny deterministic cohort learner, releases produced to the real broker,
and readers for what the learner service wrote.

``CountingLearner`` is the *learning logic* stand-in (same verbs as
``learner.cohort.CohortLearner``), not a replacement for any Kafka piece: the service under
test talks to the real broker and a real database. It is deterministic, so two runs over the
same releases must produce byte-identical state, registry rows and signed artifacts, and it
exercises every action kind on a fixed schedule:

* every release registers a new candidate ``v = n`` and ships it as a shadow;
* the previous candidate is promoted: to canary (odd n) or straight to live, retiring the
  old live; every 4th release it is rejected instead;
* every 7th release rolls the live version back to its parent.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from learner.actions import AdapterAction
from learner.adapter_topic import partition_for
from learner.model import ModelConfig
from privacy.adapter_plan import AdapterPlan, AdapterStatus
from privacy.wire import ReleasedAggregate

HIDDEN, RANK, QUERY = ModelConfig().hidden, ModelConfig().rank, ModelConfig().query_dim
DIM = 8
T0 = datetime(2025, 1, 1, tzinfo=UTC)


class CountingLearner:
    """Deterministic learning logic with the CohortLearner interface (see module docs)."""

    def __init__(self, region: str, cohort: str, delay_s: float = 0.0) -> None:
        self.region = region
        self.cohort = cohort
        self.delay_s = delay_s
        self._n = 0
        self._rounds: list[int] = []
        self._total = [0.0] * DIM
        self._live: int | None = None
        self._candidate: int | None = None
        self._canary: int | None = None
        self._parents: dict[int, int | None] = {}

    @property
    def live_version(self) -> int | None:
        return self._live

    @property
    def candidate_version(self) -> int | None:
        return self._candidate

    def _lora(self, seed: int) -> tuple[list[list[float]], list[list[float]]]:
        rng = np.random.default_rng(seed)
        a = rng.normal(0, 0.1, (HIDDEN, RANK)).astype(np.float32)
        b = rng.normal(0, 0.1, (RANK, QUERY)).astype(np.float32)
        return a.tolist(), b.tolist()

    def _act(self, kind: str, version: int, status: AdapterStatus, **kw: object) -> AdapterAction:
        return AdapterAction(
            kind=kind, region=self.region, cohort=self.cohort, version=version, status=status, **kw
        )  # type: ignore[arg-type]

    def learn_one(self, release: ReleasedAggregate) -> list[AdapterAction]:
        if self.delay_s:
            time.sleep(self.delay_s)
        self._n += 1
        n = self._n
        self._rounds.append(release.round)
        self._total = [t + float(x) for t, x in zip(self._total, release.vector(), strict=True)]
        actions: list[AdapterAction] = []
        prev = self._candidate
        if prev is not None:
            if n % 4 == 0:
                actions.append(self._act("reject", prev, AdapterStatus.REJECTED, reason="gate"))
            elif n % 2 == 1:
                actions.append(
                    self._act("promote", prev, AdapterStatus.CANARY, rollout_fraction=0.5)
                )
                self._canary = prev
            else:
                actions.append(self._act("promote", prev, AdapterStatus.LIVE, rollout_fraction=1.0))
                if self._live is not None:
                    actions.append(self._act("retire", self._live, AdapterStatus.RETIRED))
                self._live, self._canary = prev, None
        if n % 7 == 0 and self._live is not None:
            target = self._parents.get(self._live) or 0
            lora_a, lora_b = (None, None) if target == 0 else self._lora(target)
            actions.append(
                self._act(
                    "rollback",
                    target,
                    AdapterStatus.LIVE,
                    parent_version=self._live,
                    lora_a=lora_a,
                    lora_b=lora_b,
                    reason="drift",
                )
            )
            self._live = target or None
        lora_a, lora_b = self._lora(n)
        window = self._rounds[-3:]
        self._parents[n] = self._live
        common = {
            "parent_version": self._live,
            "rounds": window,
            "epsilon_spent": release.epsilon_spent,
            "lora_a": lora_a,
            "lora_b": lora_b,
        }
        actions.append(
            self._act(
                "register",
                n,
                AdapterStatus.CANDIDATE,
                metrics={"mean": sum(self._total) / DIM},
                **common,
            )
        )
        actions.append(self._act("ship", n, AdapterStatus.SHADOW, **common))
        self._candidate = n
        return actions

    def plan(self) -> AdapterPlan:
        return AdapterPlan(
            cohort=self.cohort,
            live_version=self._live,
            canary_version=self._canary,
            canary_fraction=0.5 if self._canary else 0.0,
            shadow_version=self._candidate,
        )

    def to_state(self) -> bytes:
        return json.dumps(
            {
                "region": self.region,
                "cohort": self.cohort,
                "n": self._n,
                "rounds": self._rounds,
                "total": self._total,
                "live": self._live,
                "candidate": self._candidate,
                "canary": self._canary,
                "parents": {str(k): v for k, v in self._parents.items()},
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_state(cls, state: bytes, delay_s: float = 0.0) -> CountingLearner:
        d = json.loads(state)
        obj = cls(d["region"], d["cohort"], delay_s)
        obj._n, obj._rounds, obj._total = d["n"], d["rounds"], d["total"]
        obj._live, obj._candidate, obj._canary = d["live"], d["candidate"], d["canary"]
        obj._parents = {int(k): v for k, v in d["parents"].items()}
        return obj


def counting_factory(delay_s: float | None = None):  # type: ignore[no-untyped-def]
    """A LearnerFactory of CountingLearners (``python -m learner --learner-factory``).
    ``SOTTO_TEST_LEARN_DELAY_S`` slows learning so a test can kill the process mid-stream."""
    delay = float(os.environ.get("SOTTO_TEST_LEARN_DELAY_S", "0")) if delay_s is None else delay_s

    def make(region: str, cohort: str, state: bytes | None) -> CountingLearner:
        if state is None:
            return CountingLearner(region, cohort, delay)
        return CountingLearner.from_state(state, delay)

    return make


def release(region: str, cohort: str, rnd: int, seed: int | None = None) -> ReleasedAggregate:
    rng = np.random.default_rng(seed if seed is not None else rnd * 131 + len(cohort))
    return ReleasedAggregate.build(
        rng.normal(0, 1, DIM),
        region=region,
        cohort=cohort,
        round=rnd,
        layout="test/v1",
        participants=20,
        dropped=1,
        noise_stddev=0.5,
        epsilon=0.1,
        delta=1e-6,
        epsilon_spent=round(0.1 * (rnd + 1), 6),
        released_at=T0 + timedelta(minutes=rnd),
    )


def produce_releases(
    bootstrap: str, topic: str, releases: Iterable[ReleasedAggregate | tuple[bytes | None, bytes]]
) -> int:
    """Produce to ``topic``, a cohort's releases on one partition (so its rounds stay in order,
    as the round coordinator is expected to do). Returns how many were produced."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        parts = sorted(_wait_partitions(producer, topic))
        futures = []
        for item in releases:
            if isinstance(item, ReleasedAggregate):
                p = parts[partition_for(item.cohort, len(parts))]
                futures.append(
                    producer.send(
                        topic, key=item.key(), value=item.model_dump_json().encode(), partition=p
                    )
                )
            else:
                key, value = item
                futures.append(producer.send(topic, key=key, value=value, partition=parts[0]))
        producer.flush(30)
        for f in futures:
            f.get(timeout=30)
        return len(futures)
    finally:
        producer.close()


def _wait_partitions(producer: KafkaProducer, topic: str, timeout_s: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        parts = producer.partitions_for(topic)
        if parts:
            return set(parts)
        time.sleep(0.2)
    raise AssertionError(f"topic {topic} has no partitions")


def read_topic(
    bootstrap: str, topic: str, timeout_s: float = 20.0
) -> list[tuple[int, int, bytes | None, bytes | None, dict[str, bytes]]]:
    """Every record of ``topic`` as ``(partition, offset, key, value, headers)``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in parts) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=300).items():
                out += [
                    (tp.partition, r.offset, r.key, r.value, dict(r.headers or [])) for r in records
                ]
        return sorted(out, key=lambda r: (r[0], r[1]))
    finally:
        consumer.close()
