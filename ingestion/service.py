"""``IngestionApp``: one region's ingestion service, one object wiring everything.

Like Quix Streams' ``Application``: the app owns the database engine, the DLQ producer and
the consumer, enters them in ``__enter__`` and closes them in ``__exit__``. Its loop is:

    poll a batch -> validate each record -> reject replays -> checkpoint (DLQ, DB, Kafka)

Exactly-once counting rests on the database, not on Kafka's group offsets: the rebalance
listener seeks every newly assigned partition to the next offset stored in the database (in
the same transaction as the results), and a checkpoint refuses a batch that starts before
that offset. A crash anywhere therefore re-reads at most the batch in flight, whose results
were never committed. See :mod:`ingestion.checkpoint` for the ordered steps.

Bad input never raises: it becomes a dead letter and an audit row. Infrastructure failures
(database, DLQ) fail the checkpoint; the app rewinds to the durable offsets and retries.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import structlog
from kafka import (
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
)
from kafka.errors import CorruptRecordError

from backend import gc_policy, keystore
from backend.consumer_app import DurableConsumerApp, SeekFromDatabase
from ingestion import audit
from ingestion.checkpoint import BatchCheckpoint, DeadLetterError
from ingestion.db import consumer_offsets, open_database
from ingestion.keyring import KeyWatcher
from ingestion.pool import Item, Judging, Task, ValidatorPool, WorkerSpec, judge_chunk
from ingestion.processor import build_checkpoint
from ingestion.settings import IngestSettings
from ingestion.stats import IngestStats
from ingestion.topics import ensure_region_topics
from ingestion.validator import Rejected
from privacy.errors import SottoError
from privacy.policy import RegionPolicy
from privacy.wire import RejectReason, utcnow

log = structlog.get_logger(__name__)

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "fetch_max_bytes": 64 * 1024 * 1024,
    "max_partition_fetch_bytes": 8 * 1024 * 1024,
    "fetch_max_wait_ms": 100,
}


PENDING_POLL_MS = 20  # longest poll while a judged batch waits to be checkpointed
UNDECODABLE_RUN = 1000  # most undecodable records dead-lettered by one checkpoint


def _item(rec: Any) -> Item:
    return (rec.value if rec.value is not None else b"", rec.topic, rec.partition, rec.offset)


def _undecodable_at(
    probe: KafkaConsumer, tp: TopicPartition, offset: int, deadline: float
) -> bool | None:
    """Whether the record at ``offset`` cannot be decoded (``None``: no answer by ``deadline``).
    Seeking elsewhere after a failure is what lets the probe's fetcher read on."""
    probe.seek(tp, offset)
    while time.monotonic() < deadline:
        try:
            if probe.poll(timeout_ms=200, max_records=1):
                return False
        except CorruptRecordError:
            return True
    return None


class IngestionApp(DurableConsumerApp):
    """Consume ``region``'s ingest topic (plus ``extra_topics``) into the region database.

    ``extra_topics`` exists to prove the topic check: records from any topic that is not the
    region's ingest topic are dead-lettered as ``topic_region_mismatch``.
    """

    name = "ingestion"
    _offsets_table = consumer_offsets

    def __init__(
        self,
        policy: RegionPolicy,
        region: str,
        settings: IngestSettings | None = None,
        *,
        extra_topics: Sequence[str] = (),
        group_id: str | None = None,
        consumer_config: dict[str, Any] | None = None,
        create_topics: bool = True,
    ) -> None:
        super().__init__()
        self.settings = settings = settings or IngestSettings()
        self.policy = policy
        self.region = region
        self.config = policy.region(region)
        self.group_id = group_id or f"{settings.group_prefix}-{region}"
        self.topics = [
            self.config.t.ingest,
            *[t for t in extra_topics if t != self.config.t.ingest],
        ]
        self.stats = IngestStats()
        self._consumer_config = {**CONSUMER_DEFAULTS, **(consumer_config or {})}
        self._create_topics = create_topics
        self._keys = KeyWatcher(policy, region)
        # (topic, partition, offset) of dead letters the DLQ acknowledged whose batch is not
        # durable yet: a retried batch does not dead-letter them again
        self._dead_lettered: set[tuple[str, int, int]] = set()
        try:
            self._audit_key: Any = keystore.load_or_create_signing_key(
                self.config.keyset_dir, keystore.AUDIT_SIGNING
            )
        except (OSError, SottoError) as exc:  # e.g. a read-only key mount without the key
            self._audit_key = None
            log.warning("audit_signing_key_unavailable", region=region, error=type(exc).__name__)
        self._head_at = 0.0
        self._head_seq = -1
        self._log = log.bind(region=region, group=self.group_id)
        self._pool = self._new_pool()
        self._pending: tuple[list[Any], list[TopicPartition], Judging] | None = None
        self._overlap = False  # overlap judging and checkpointing (run, process_available)

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> IngestionApp:
        self._engine = open_database(self.config.database_url)
        if self._create_topics:
            self.ensure_topics()
        self._producer = self._dlq_producer()
        self._pool.warm()
        self._open_consumer()
        gc_policy.tune(self.settings.gc_gen0_threshold)  # start-up done: see backend.gc_policy
        self._log.info("ingestion_started", topics=self.topics, workers=self._pool.state.workers)
        return self

    def _open_consumer(self) -> None:
        """Join the group; each assigned partition resumes at the database's offset."""
        ingest = self.settings
        config: dict[str, Any] = {
            "max_poll_records": ingest.batch_max_records,
            "session_timeout_ms": ingest.session_timeout_ms,
            "heartbeat_interval_ms": max(1000, ingest.session_timeout_ms // 4),
            **self._consumer_config,
        }
        self._consumer = KafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"sotto-ingest-{self.region}",
            **config,
        )
        self._await_topics(self.topics)
        self._consumer.subscribe(self.topics, listener=SeekFromDatabase(self))

    def before_close(self) -> None:
        self._maybe_publish_head(force=True)

    def _maybe_publish_head(self, force: bool = False) -> None:
        """Publish the signed durable chain head every ``audit_head_interval_s`` (and on
        close), so the audit notices a truncated tail. Best effort: a failure is logged and
        retried at the next interval; it never holds up ingestion."""
        now = time.monotonic()
        due = force or now - self._head_at >= self.settings.audit_head_interval_s
        if self._producer is None or self._audit_key is None or not due:
            return
        self._head_at = now
        try:
            seq, digest = audit.current_head(self.engine, self.region)
            if seq == self._head_seq:
                return
            head = audit.AuditHead(
                region=self.region, seq=seq, hash=digest, at=utcnow().isoformat()
            ).signed(self._audit_key)
            fut = self._producer.send(
                self.config.t.audit, key=self.region.encode(), value=head.model_dump_json().encode()
            )
            fut.get(timeout=10)
            self._head_seq = seq
        except Exception as exc:
            self._log.warning("audit_head_publish_failed", error=type(exc).__name__)

    def _dlq_producer(self) -> KafkaProducer:
        """The DLQ producer. Its request limit admits the largest dead letter a checkpoint
        produces (originals are truncated to ``dead_letter_max_bytes``, with a digest)."""
        return KafkaProducer(
            bootstrap_servers=self.config.bootstrap_servers,
            acks="all",
            linger_ms=5,
            max_request_size=self.settings.dead_letter_max_bytes + 64 * 1024,
            client_id=f"sotto-ingest-dlq-{self.region}",
        )

    def _rebuild_dlq_producer(self) -> None:
        """A producer that saw a fatal error stays broken; replace it before the retry."""
        old, self._producer = self._producer, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.close(timeout=5)
        try:
            self._producer = self._dlq_producer()
        except Exception as exc:  # broker away: the next retry builds it again
            self._log.warning("dlq_producer_rebuild_failed", error=type(exc).__name__)

    def ensure_topics(self) -> None:
        """Create the region's topics that do not exist yet (partitions from the policy)."""
        missing = ensure_region_topics(self.config)
        if missing:
            self._log.info("topics_created", topics=missing)

    # -- the loop -------------------------------------------------------------------------
    worker_task: Task = staticmethod(judge_chunk)  # what pool workers run (tests crash it)

    def _worker_spec(self) -> WorkerSpec:
        return WorkerSpec.of(
            self.region,
            self.policy,
            self._keys.keyring,
            self.settings.max_envelope_bytes,
            self.settings.gc_gen0_threshold,
        )

    def _new_pool(self) -> ValidatorPool:
        """Validation on ``settings.workers`` processes (in this process for 0 or 1)."""
        return ValidatorPool(
            self._worker_spec(),
            self.settings.worker_count(),
            chunk_records=self.settings.worker_chunk_records,
            max_crashes=self.settings.worker_max_crashes,
            timeout_s=self.settings.worker_timeout_s,
            task=self.worker_task,
        )

    @property
    def pool(self) -> ValidatorPool:
        return self._pool

    def close(self) -> None:
        super().close()
        self._pool.close()

    def health(self, *, max_lag: int = 100_000, stall_s: float = 120.0) -> dict[str, Any]:
        """The durable consumer's answer plus the validation pool's state; a pool that cannot
        be built is a problem (batches are retried until it can)."""
        answer = super().health(max_lag=max_lag, stall_s=stall_s)
        state = self._pool.state
        answer["pool"] = {
            "workers": state.workers,
            "alive": len(self._pool.pids()) if state.workers else 0,
            "restarts": state.restarts,
            "isolated_records": state.isolated,
        }
        if state.broken:
            answer["problems"] = [*answer["problems"], f"validation pool down ({state.broken})"]
            answer["ok"] = answer["ready"] = False
        return answer

    def poll_once(self, timeout_ms: int | None = None) -> int:
        """Poll one batch and checkpoint it; returns the number of records made durable.

        Inside :meth:`run` and :meth:`process_available` (``self._overlap``) the batch is
        handed to the validation workers and the *previous* batch is checkpointed while they
        judge it, so the main process's Kafka and database work overlaps the decryption. The
        next batch's replay lookup still runs after that checkpoint, and a batch in flight
        is only ever dropped (never committed) when a checkpoint fails or partitions are
        reassigned: its records are re-read from the durable offsets. A bare call (the round
        service's step) polls, judges and checkpoints one batch before it returns."""
        consumer = self._consumer
        if consumer is None:
            if self._engine is None:
                raise RuntimeError("IngestionApp is not started; use it as a context manager")
            self._reopen_consumer()  # replaced after an undecodable record; retried until it works
            return 0
        if not self.ready():
            return 0
        timeout = self.settings.poll_timeout_ms if timeout_ms is None else timeout_ms
        if self._pending is not None:
            timeout = min(timeout, PENDING_POLL_MS)  # the batch in flight waits for this poll
        try:
            batch = consumer.poll(timeout_ms=timeout)
        except CorruptRecordError as exc:
            done = self._finish_pending()
            if self._rewind is not None:
                return done
            return done + self._skip_undecodable(exc)
        done = 0
        if batch:
            if self.stats.first_record_at is None:
                self.stats.first_record_at = time.perf_counter()
            if self._keys.changed():  # the batch in flight was judged with the old keys
                done = self._finish_pending()
                self._pool.update(self._worker_spec())
            records = [
                r for tp in sorted(batch, key=lambda t: (t.topic, t.partition)) for r in batch[tp]
            ]
            try:
                judging = self._pool.submit([_item(r) for r in records])
            except Exception as exc:  # no worker can be started: retried
                self.stats.checkpoint_failures += 1
                self._finish_pending()
                self.failed(exc, consumer.assignment() or list(batch), "batch_judging_failed")
                return done
            if self._rewind is None:
                done += self._finish_pending()
            if self._rewind is None:  # else the new batch is re-read after the rewind
                self._pending = (records, list(batch), judging)
        if not self._overlap or not batch:
            done += self._finish_pending()
        return done

    def _finish_pending(self) -> int:
        """Collect the verdicts of the batch in flight and checkpoint it."""
        if self._pending is None:
            return 0
        records, partitions, judging = self._pending
        self._pending = None
        assert self._consumer is not None
        try:  # the validator never raises; what can fail is the database or the pool
            cp = build_checkpoint(
                records,
                judge=lambda _items: judging.result(),
                region=self.region,
                engine=self.engine,
                group_id=self.group_id,
                dead_letter_topic=self.config.t.dead_letter,
                now=utcnow(),
                already_dead_lettered=self._dead_lettered,
                dead_letter_max_bytes=self.settings.dead_letter_max_bytes,
            )
        except Exception as exc:
            self.stats.checkpoint_failures += 1
            self.failed(exc, self._consumer.assignment() or partitions, "batch_judging_failed")
            return 0
        finally:
            self.stats.worker_restarts = self._pool.state.restarts
            self.stats.worker_crash_isolations = self._pool.state.isolated
        self._commit(cp, partitions)
        return 0 if self._rewind is not None else len(records)

    def failed(self, exc: BaseException, partitions: Any, event: str = "batch_failed") -> None:
        self._pending = None  # its records are re-read from the durable offsets
        super().failed(exc, partitions, event)

    def on_revoked(self) -> None:
        """The batch in flight belongs to partitions that are no longer ours: drop it, never
        checkpoint it (kafka-python's ``poll`` may return before the rebalance completes, and
        the next owner re-reads it from the durable offsets). Checkpointing it anyway was
        harmless for the counts (the offset fence refuses the loser), but the loser first
        dead-lettered the winner's records as replays."""
        self._drop_pending()
        super().on_revoked()

    def on_assigned(self) -> None:
        """A (re)assignment seeks to the durable offsets, which are before the batch in
        flight: drop it (it is re-read, by us or by the partitions' new owner)."""
        self._drop_pending()
        super().on_assigned()

    def _drop_pending(self) -> None:
        """Forget the batch in flight, and rewind those of its partitions that stay ours:
        with a cooperative assignor a rebalance revokes and assigns only what moves, so no
        seek would bring a kept partition back before the dropped records (the fence only
        refuses offsets that go backwards, so the gap would be committed)."""
        if self._pending is None:
            return
        _, partitions, _ = self._pending
        self._pending = None
        assigned = self._consumer.assignment() if self._consumer is not None else set()
        kept = [tp for tp in partitions if tp in assigned]
        if kept:
            self.rewind({*(self._rewind or ()), *kept})

    def process_available(self, timeout_s: float = 60.0) -> int:
        self._overlap = True
        try:
            handled = super().process_available(timeout_s)
        finally:
            self._overlap = False
        return handled + self._finish_pending()

    def run(
        self, stop_event: threading.Event | None = None, max_idle_s: float | None = None
    ) -> Any:
        self._overlap = True
        try:
            return super().run(stop_event, max_idle_s)
        finally:  # a stop finishes the batch in flight before the service closes
            self._overlap = False
            self._finish_pending()

    def _skip_undecodable(self, exc: CorruptRecordError) -> int:
        """A record the Kafka client cannot decode (a header key that is not UTF-8, which the
        broker accepts from any client; a batch failing its CRC) made ``poll`` raise, and
        kafka-python's fetcher then spins on that partition forever. Find it, dead-letter it
        by its coordinates (its bytes cannot be read; they stay on the source topic) and move
        past it once that is durable. kafka-python decodes a record batch from its start, so
        the later records of that batch are unreadable too and are dead-lettered with it
        (one producer's batch: honest devices never share one with the sender). If that fails,
        the consumer is replaced: only a fresh one reads that partition again, and it hits
        the record again, so nothing is skipped."""
        assert self._consumer is not None
        found = self._locate_undecodable()
        if found is None:  # not reproducible by a fresh reader: a transient fault
            self.stats.checkpoint_failures += 1
            self.failed(exc, [], "undecodable_batch")
            self._replace_consumer()
            return 0
        tp, offsets = found
        cp = BatchCheckpoint(
            region=self.region,
            group_id=self.group_id,
            dead_letter_topic=self.config.t.dead_letter,
            now=utcnow(),
            dead_letter_max_bytes=self.settings.dead_letter_max_bytes,
        )
        detail = (  # the exception's message quotes the record's bytes: named by type only
            f"record cannot be decoded by the Kafka client ({type(exc).__name__}; it or an "
            "earlier record of its batch); its bytes, key and headers stay on the source topic"
        )
        for offset in offsets:
            cp.reject(
                Rejected(RejectReason.MALFORMED, detail),
                b"",
                tp.topic,
                tp.partition,
                offset,
                already_produced=(tp.topic, tp.partition, offset) in self._dead_lettered,
            )
        self._commit(cp, [tp])
        if self.consecutive_failures:
            self._replace_consumer()
            return 0
        try:  # past them: this also makes the fetcher drop the fetch it is stuck on
            self._consumer.seek(tp, offsets[-1] + 1)
        except Exception:  # no longer ours: a fresh consumer resumes at the durable offsets
            self._replace_consumer()
        return len(offsets)

    def _locate_undecodable(
        self, timeout_s: float = 10.0
    ) -> tuple[TopicPartition, list[int]] | None:
        """The assigned partition whose next records a fresh reader cannot decode, and their
        offsets (from the partition's position: every record before it was handled; at most
        ``UNDECODABLE_RUN`` of them, the rest are found by the next poll)."""
        assert self._consumer is not None
        for tp in sorted(self._consumer.assignment(), key=lambda t: (t.topic, t.partition)):
            offset = self._consumer.position(tp)
            probe = KafkaConsumer(
                bootstrap_servers=self.config.bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                client_id=f"sotto-ingest-probe-{self.region}",
                max_partition_fetch_bytes=self._consumer_config["max_partition_fetch_bytes"],
                fetch_max_bytes=self._consumer_config["fetch_max_bytes"],
            )
            try:
                probe.assign([tp])
                end = probe.end_offsets([tp])[tp]
                deadline = time.monotonic() + timeout_s
                bad: list[int] = []
                while offset < end and len(bad) < UNDECODABLE_RUN:
                    if _undecodable_at(probe, tp, offset, deadline) is not True:
                        break  # readable (or no answer in time: the next poll tells)
                    bad.append(offset)
                    offset += 1
                if bad:
                    return tp, bad
            except Exception as probe_exc:  # broker away: the caller retries
                self._log.warning("undecodable_probe_failed", error=type(probe_exc).__name__)
                return None
            finally:
                with contextlib.suppress(Exception):
                    probe.close()
        return None

    def _replace_consumer(self) -> None:
        """Leave the group and join again with a fresh consumer (assignment seeks to the
        database's offsets, so no rewind is pending for the old one's partitions)."""
        old, self._consumer = self._consumer, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.close(autocommit=False)
        self._rewind = None
        self._reopen_consumer()

    def _reopen_consumer(self) -> None:
        try:
            self._open_consumer()
        except Exception as exc:  # broker away: poll_once tries again after a backoff
            if self._consumer is not None:
                with contextlib.suppress(Exception):
                    self._consumer.close(autocommit=False)
                self._consumer = None
            self.failed(exc, [], "consumer_reopen_failed")

    def _commit(self, cp: BatchCheckpoint, partitions: list[TopicPartition]) -> None:
        assert self._consumer is not None
        if self._producer is None:
            self._rebuild_dlq_producer()
            if self._producer is None:
                self.failed(
                    ConnectionError("no DLQ producer"), self._consumer.assignment() or partitions
                )
                return
        try:
            cp.commit(
                producer=self._producer,
                engine=self.engine,
                consumer=self._consumer,
                on_dead_lettered=self._dead_lettered.update,
            )
        except Exception as exc:
            self.stats.checkpoint_failures += 1
            if isinstance(exc, DeadLetterError):
                self._rebuild_dlq_producer()
            self.failed(exc, self._consumer.assignment() or partitions, "checkpoint_failed")
            return
        self.succeeded()
        self._maybe_publish_head()
        self._dead_lettered = {  # durable now: no retry of these offsets will happen
            (t, p, o)
            for t, p, o in self._dead_lettered
            if (t, p) not in cp.spans or o >= cp.spans[(t, p)].next
        }
        self.stats.batches += 1
        self.stats.records += sum(s.next - s.first for s in cp.spans.values())
        self.stats.accepted += len(cp.accepted)
        self.stats.late += len(cp.late)
        self.stats.dead_letters += len(cp.dead_letters) + len(cp.produced)
        for dl in [*cp.dead_letters, *cp.produced]:
            self.stats.rejected[dl.reason.value] += 1
            self._log.info(
                "rejected",
                reason=dl.reason.value,
                detail=dl.detail[:200],
                topic=dl.source_topic,
                partition=dl.source_partition,
                offset=dl.source_offset,
            )
        self.stats.last_commit_at = time.perf_counter()
        self._log.debug("checkpoint", accepted=len(cp.accepted), rejected=len(cp.dead_letters))
