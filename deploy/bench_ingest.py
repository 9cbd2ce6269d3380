"""`sotto bench ingest`: end-to-end ingestion throughput against a bare Kafka consumer.

One run produces N valid envelopes to a fresh topic set, then measures, on the same data:

(a) the ingestion pipeline end to end: consume, validate, HPKE-decrypt, replay check, and the
    per-batch database checkpoint (SQLite, full fsync) exactly as ``sotto ingest`` runs it;
(b) a bare kafka-python consumer with the same fetch settings reading the same topic.

``ratio = envelopes_per_s / raw_consume_per_s`` says how much of the broker->client path the
pipeline keeps. Both rates are timed from the first record received to the last record
handled, so consumer-group joins and topic creation do not count.
"""

from __future__ import annotations

import contextlib
import cProfile
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deploy.settings import SottoSettings

COHORTS = 8
ROUNDS = 2


@contextlib.contextmanager
def _broker(target: SottoSettings | str | None, tmp: Path) -> Iterator[str]:
    """A bootstrap address: the caller's, ``SOTTO_KAFKA_BOOTSTRAP``, or a LocalKafka we start."""
    if isinstance(target, SottoSettings) and target.kafka_bootstrap:
        yield target.kafka_bootstrap
        return
    if isinstance(target, str) and target:
        yield target
        return
    if os.environ.get("SOTTO_KAFKA_BOOTSTRAP"):
        yield os.environ["SOTTO_KAFKA_BOOTSTRAP"]
        return
    from deploy.kafka_local import LocalKafka, free_ports

    port, controller_port = free_ports(2)
    broker = LocalKafka(data_dir=tmp / "kafka", port=port, controller_port=controller_port)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def _deployment(home: Path, bootstrap: str, token: str) -> SottoSettings:
    """A one-region deployment with topic names nobody else uses."""
    from deploy.bootstrap import init_deployment

    path = init_deployment(home, ("eu",), bootstrap)
    p = f"bench{token}.eu"
    path.write_text(
        path.read_text()
        + f'\n[regions.eu.topics]\ningest = "{p}.ingest"\ndead_letter = "{p}.dlq"\n'
        f'aggregates = "{p}.aggregates"\nrounds = "{p}.rounds"\nadapters = "{p}.adapters"\n'
    )
    from deploy.settings import IngestSettings

    return SottoSettings(
        home=home, kafka_bootstrap=bootstrap, ingest=IngestSettings(group_prefix=f"bench{token}")
    )


def _produce(settings: SottoSettings, n: int, progress: bool) -> list[int]:
    """Seal and produce ``n`` valid envelopes; returns their sizes."""
    from kafka import KafkaProducer
    from rich.console import Console
    from rich.progress import Progress

    from backend import keystore
    from privacy.envelope import seal
    from privacy.wire import BehaviorCounts, RoundSummary

    region = settings.policy.region("eu")
    key = keystore.load_keyset(region.keyset_dir).current()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 128)).astype(np.float32)
    producer = KafkaProducer(
        bootstrap_servers=region.bootstrap_servers,
        acks="all",
        linger_ms=20,
        batch_size=256 * 1024,
        compression_type=None,
    )
    sizes: list[int] = []
    console = Console(stderr=True)
    with Progress(console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("sealing + producing envelopes", total=n)
        for i in range(n):
            summary = RoundSummary.build(
                vectors[i], BehaviorCounts(steps=i % 17, accepted=i % 5), {"Tap": 1 + i % 3}
            )
            raw = seal(summary, key=key, cohort=f"c{i % COHORTS}", round=i % ROUNDS).to_bytes()
            sizes.append(len(raw))
            producer.send(region.t.ingest, value=raw)
            if i % 500 == 0:
                bar.update(task, completed=i)
        producer.flush(120)
        bar.update(task, completed=n)
    producer.close()
    return sizes


def _measure_pipeline(settings: SottoSettings, n: int, profile: Path | None) -> dict[str, Any]:
    from ingestion.service import IngestionApp

    profiler = cProfile.Profile() if profile else None
    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        app.process_available(timeout_s=600)
        if profiler:
            profiler.disable()
            profiler.dump_stats(str(profile))
        wall = time.perf_counter() - t0
        stats = app.stats
    if stats.accepted != n:
        raise RuntimeError(f"pipeline accepted {stats.accepted} of {n}: {stats.as_dict()}")
    busy = (stats.last_commit_at or 0) - (stats.first_record_at or 0)
    return {"busy_s": busy, "wall_s": wall, "batches": stats.batches}


def _measure_raw(settings: SottoSettings, n: int) -> float:
    from kafka import KafkaConsumer, TopicPartition

    from ingestion.service import CONSUMER_DEFAULTS

    region = settings.policy.region("eu")
    consumer = KafkaConsumer(
        bootstrap_servers=region.bootstrap_servers,
        group_id=None,
        max_poll_records=settings.ingest.batch_max_records,
        **{k: v for k, v in CONSUMER_DEFAULTS.items() if k != "enable_auto_commit"},
    )
    try:
        parts = consumer.partitions_for_topic(region.t.ingest) or set()
        tps = [TopicPartition(region.t.ingest, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        seen, first, nbytes = 0, None, 0
        deadline = time.monotonic() + 300
        while seen < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                if first is None:
                    first = time.perf_counter()
                seen += len(records)
                nbytes += sum(len(r.value) for r in records)
        last = time.perf_counter()
    finally:
        consumer.close()
    if seen < n or first is None:
        raise RuntimeError(f"raw consumer read {seen} of {n}")
    return last - first


def run_ingest_bench(
    target: SottoSettings | str | None = None,
    n: int = 20000,
    *,
    progress: bool = True,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Produce ``n`` envelopes, time the pipeline and a bare consumer on them; one dict out."""
    if n < 1:
        raise ValueError("n must be positive")
    with (
        tempfile.TemporaryDirectory(prefix="sotto-bench-") as tmp,
        _broker(target, Path(tmp)) as boot,
    ):
        settings = _deployment(Path(tmp) / "home", boot, uuid.uuid4().hex[:8])
        from ingestion.service import IngestionApp

        with IngestionApp(settings.policy, "eu", settings.ingest, create_topics=True):
            pass  # create the topics with the policy's partition count before producing
        t0 = time.perf_counter()
        sizes = _produce(settings, n, progress)
        produce_s = time.perf_counter() - t0
        pipe = _measure_pipeline(settings, n, profile)
        raw_s = _measure_raw(settings, n)
    env_rate = n / pipe["busy_s"]
    raw_rate = n / raw_s
    return {
        "envelopes": n,
        "envelopes_per_s": round(env_rate, 1),
        "raw_consume_per_s": round(raw_rate, 1),
        "ratio": round(env_rate / raw_rate, 4),
        "envelope_bytes_median": int(statistics.median(sizes)),
        "pipeline_s": round(pipe["busy_s"], 3),
        "pipeline_wall_s_incl_group_join": round(pipe["wall_s"], 3),
        "raw_consume_s": round(raw_s, 3),
        "produce_s": round(produce_s, 3),
        "batches": pipe["batches"],
        "batch_max_records": settings.ingest.batch_max_records,
        "partitions": settings.policy.region("eu").partitions,
        "database": "sqlite (WAL, synchronous=FULL)",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
