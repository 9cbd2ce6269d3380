"""``LearnerApp``: one region's learner service, one object wiring everything.

Like ingestion's app (and Quix Streams' ``Application``), it owns the database engine, the
adapters producer and the aggregates consumer, enters them in ``__enter__`` and closes them
in ``__exit__``. Its loop, per record of ``<region>.aggregates``:

    check (region, key, duplicate) -> cohort learner.learn_one -> checkpoint (one DB
    transaction: state, registry, signed outbox, next offset) -> publish outbox -> mirror offsets

Exactly-once learning rests on the database: on assignment every partition is sought to the
next offset stored with the results, a checkpoint refuses offsets that go backwards, and a
release already learned (same ``region|cohort|round``, e.g. published twice by a crashed
coordinator) is refused as a duplicate. On startup, outbox rows a crash left unpublished are
published first. Bad input never raises: it becomes a ``learner_refusals`` row and a log line.
Infrastructure failures fail the checkpoint; the app drops its in-memory learners, rewinds to
the durable offsets and retries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from sqlalchemy import select

from backend import keystore
from backend.consumer_app import DurableConsumerApp, SeekFromDatabase
from backend.storage import reading
from learner import adapter_topic
from learner.artifacts import Signer
from learner.base_bundle import BaseBundle
from learner.checkpoint import Learned, LearnerCheckpoint
from learner.errors import InvalidActionsError
from learner.host import LearnerCache, LearnerFactory, cohort_learner_factory
from learner.intake import Refusal, RefuseReason, check_release
from learner.registry import learner_offsets, learner_releases, open_registry
from learner.settings import LearnerSettings
from privacy.policy import RegionPolicy
from privacy.wire import ReleasedAggregate, utcnow

log = structlog.get_logger(__name__)

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "max_poll_records": 50,  # each record is its own transaction; keep polls short
    "fetch_max_wait_ms": 100,
    "session_timeout_ms": 10000,
    "heartbeat_interval_ms": 2500,
}


@dataclass
class LearnerStats:
    """Counters updated only after a checkpoint is durable."""

    records: int = 0
    learned: int = 0
    actions: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    published: int = 0
    checkpoint_failures: int = 0
    publish_failures: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "records": self.records,
            "learned": self.learned,
            "actions": self.actions,
            "refused": dict(sorted(self.refused.items())),
            "published": self.published,
            "checkpoint_failures": self.checkpoint_failures,
            "publish_failures": self.publish_failures,
        }


class LearnerApp(DurableConsumerApp):
    """Learn from ``region``'s released aggregates; publish signed adapters and plans."""

    name = "learner"
    _offsets_table = learner_offsets

    def __init__(
        self,
        policy: RegionPolicy,
        region: str,
        settings: LearnerSettings | None = None,
        *,
        base: BaseBundle | Callable[[], BaseBundle],
        learner_factory: LearnerFactory | None = None,
        group_id: str | None = None,
        consumer_config: dict[str, Any] | None = None,
        create_topics: bool = True,
    ) -> None:
        super().__init__()
        self.settings = settings = settings or LearnerSettings()
        self.region = region
        self.config = policy.region(region)
        self.group_id = group_id or f"{settings.group_prefix}-{region}"
        self._base = base
        self.topic = self.config.t.aggregates
        self.adapters_topic = self.config.t.adapters
        self.stats = LearnerStats()
        self._factory = learner_factory
        self._consumer_config = {
            **CONSUMER_DEFAULTS,
            **settings.consumer_config(),
            **(consumer_config or {}),
        }
        self._create_topics = create_topics
        self._signer: Signer | None = None
        self._cache: LearnerCache | None = None
        self._log = log.bind(region=region, group=self.group_id)

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> LearnerApp:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self._engine = open_registry(self.config.database_url)
        bundle = self._base() if callable(self._base) else self._base
        self._signer = Signer(
            self.region, bundle.sha256, keystore.load_or_create_signing_key(self.config.keyset_dir)
        )
        factory = self._factory or cohort_learner_factory(bundle.net, self.settings.policy())
        self._cache = LearnerCache(factory, self.region, self._engine)
        if self._create_topics:
            adapter_topic.ensure_topics(self.config)
        self._producer = adapter_topic.make_producer(self.config, self.region)
        recovered = self.publish_outbox()  # what a crash left behind goes out first
        self._consumer = KafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"sotto-learn-{self.region}",
            **self._consumer_config,
        )
        self._await_topics([self.topic])
        self._consumer.subscribe([self.topic], listener=SeekFromDatabase(self))
        self._log.info(
            "learner_started",
            topic=self.topic,
            adapters=self.adapters_topic,
            base_model=bundle.sha256[:12],
            outbox_recovered=recovered,
        )

    @property
    def cache(self) -> LearnerCache:
        if self._cache is None:
            raise RuntimeError("LearnerApp is not started; use it as a context manager")
        return self._cache

    # -- the loop -------------------------------------------------------------------------
    def poll_once(self, timeout_ms: int = 500) -> int:
        """Poll once and checkpoint each record; returns the number of records handled."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("LearnerApp is not started; use it as a context manager")
        if not self.ready():
            return 0
        batch = consumer.poll(timeout_ms=timeout_ms)
        handled = 0
        for tp in sorted(batch, key=lambda t: (t.topic, t.partition)):
            for record in batch[tp]:
                if not self.handle(
                    record.topic, record.partition, record.offset, record.key, record.value
                ):
                    return handled  # rewound: the rest of this poll is read again
                handled += 1
                if self._stop.is_set():
                    # a signal mid-poll: stop after a durable record; the rest is re-read
                    self.seek_to_durable(consumer.assignment())
                    return handled
        return handled

    def handle(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> bool:
        """Learn from (or refuse) one record and make the result durable. False if the
        checkpoint failed and the consumer was rewound to the durable offsets."""
        cp = LearnerCheckpoint(
            region=self.region,
            group_id=self.group_id,
            topic=topic,
            partition=partition,
            offset=offset,
            now=utcnow(),
        )
        checked = check_release(key, value, self.region)
        if isinstance(checked, ReleasedAggregate):
            self._learn(cp, checked)
        else:
            cp.refuse(checked)
        try:
            try:
                cp.commit(self.engine, self._signer_or_fail())
            except InvalidActionsError as exc:
                # a learner bug, not infrastructure: refuse the release durably rather than
                # retry it forever, and reload the cohort's learner from its durable state
                assert cp.learned is not None
                release = cp.learned.release
                self.cache.drop(release.cohort)
                self._log.error(
                    "learner_actions_invalid",
                    cohort=release.cohort,
                    round=release.round,
                    detail=str(exc)[:300],
                )
                cp = LearnerCheckpoint(
                    region=self.region,
                    group_id=self.group_id,
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    now=utcnow(),
                )
                cp.refuse(
                    Refusal(RefuseReason.LEARNER_ERROR, f"invalid actions: {exc}"[:300], release)
                )
                cp.commit(self.engine, self._signer_or_fail())
        except Exception as exc:
            self._on_checkpoint_failure(cp, exc)
            return False
        self._after_commit(cp)
        return True

    def _learn(self, cp: LearnerCheckpoint, release: ReleasedAggregate) -> None:
        if self._already_learned(release):
            cp.refuse(
                Refusal(
                    RefuseReason.DUPLICATE, f"{release.key().decode()} already learned", release
                )
            )
            return
        hosted = self.cache.get(release.cohort)
        try:
            actions = hosted.learner.learn_one(release)
            learned = Learned(
                release,
                list(actions),
                hosted.learner.to_state(),
                hosted.learner.plan(),
                hosted.revision,
            )
        except Exception as exc:  # a learner bug must not stop the region; record it
            self.cache.drop(release.cohort)
            self._log.error(
                "learner_error",
                cohort=release.cohort,
                round=release.round,
                error=exc.__class__.__name__,
                detail=str(exc)[:300],
            )
            cp.refuse(
                Refusal(
                    RefuseReason.LEARNER_ERROR, f"{exc.__class__.__name__}: {exc}"[:300], release
                )
            )
            return
        cp.learn(learned)

    def _already_learned(self, release: ReleasedAggregate) -> bool:
        c = learner_releases.c
        stmt = select(c.round).where(
            c.region == release.region, c.cohort == release.cohort, c.round == release.round
        )
        with reading(self.engine) as conn:
            return conn.execute(stmt).first() is not None

    def _signer_or_fail(self) -> Signer:
        if self._signer is None:
            raise RuntimeError("LearnerApp is not started; use it as a context manager")
        return self._signer

    def _on_checkpoint_failure(self, cp: LearnerCheckpoint, exc: Exception) -> None:
        self.stats.checkpoint_failures += 1
        if cp.learned is not None:
            self.cache.drop(cp.learned.release.cohort)
        consumer = self._consumer
        assigned = consumer.assignment() if consumer is not None else set()
        # report, rewind to the durable offsets before the next poll, back off (backend retry)
        self.failed(exc, assigned or [TopicPartition(cp.topic, cp.partition)], "checkpoint_failed")

    def _after_commit(self, cp: LearnerCheckpoint) -> None:
        self.succeeded()
        self.stats.records += 1
        if cp.learned is not None:
            rel = cp.learned.release
            assert cp.revision is not None
            self.cache.committed(
                rel.cohort, cp.revision, rel.round, cp.learned.plan.model_dump(mode="json")
            )
            self.stats.learned += 1
            self.stats.actions += len(cp.learned.actions)
            self._log.info(
                "learned",
                cohort=rel.cohort,
                round=rel.round,
                actions=[f"{a.kind}:v{a.version}:{a.status.value}" for a in cp.learned.actions],
                outbox=len(cp.outbox),
            )
        elif cp.refusal is not None:
            self.stats.refused[cp.refusal.reason.value] += 1
            self._log.warning(
                "refused",
                reason=cp.refusal.reason.value,
                detail=cp.refusal.detail[:200],
                topic=cp.topic,
                partition=cp.partition,
                offset=cp.offset,
            )
        if cp.outbox:
            self.publish_outbox()
        self._mirror_offset(cp)

    def publish_outbox(self) -> int:
        """Publish pending outbox rows; on failure they stay pending for the next attempt."""
        if self._producer is None:
            return 0
        try:
            n = adapter_topic.publish_pending(
                self.engine, self._producer, self.region, self.adapters_topic
            )
        except Exception as exc:
            self.stats.publish_failures += 1
            self._log.warning("publish_failed", error=exc.__class__.__name__, detail=str(exc)[:300])
            return 0
        self.stats.published += n
        return n

    def _mirror_offset(self, cp: LearnerCheckpoint) -> None:
        if self._consumer is None:
            return
        try:
            self._consumer.commit(
                {TopicPartition(cp.topic, cp.partition): OffsetAndMetadata(cp.offset + 1, "", -1)}
            )
        except Exception as exc:  # lag mirror only; the database already has the truth
            self._log.debug("kafka_offset_commit_failed", error=exc.__class__.__name__)

    def on_assigned(self) -> None:
        # another instance may have advanced these cohorts while we did not own the partitions
        self.cache.drop()

    def on_idle(self) -> None:
        if adapter_topic.pending_count(self.engine, self.region):
            self.publish_outbox()  # a publish that failed earlier
