"""`sotto bench ingest`: end-to-end ingestion throughput against the all-core HPKE ceiling.

One run produces N valid envelopes to a fresh topic set, then measures, on the same data:

(a) the ingestion pipeline end to end: consume, validate and HPKE-decrypt (on the validation
    worker processes, ``ingest.workers``), replay check, and the per-batch database checkpoint
    (SQLite, full fsync) exactly as ``sotto ingest`` runs it;
(b) the HPKE ceiling: the same HPKE opens (pre-parsed envelopes: ciphertext and info already
    decoded) in a tight loop, one process per usable core, all at once;
(c) a bare kafka-python consumer with the same fetch settings reading the same topic.

``ratio_to_ceiling = envelopes_per_s / hpke_open_ceiling_per_s`` is the yardstick: opening
is the one cost no pipeline can avoid, so the ratio says how much of the machine's crypto
capacity the pipeline turns into ingested envelopes. ``ratio`` (against the bare consumer) is
kept for comparison with older figures. The pipeline and the consumer are timed from the
first record received to the last record handled, so consumer-group joins do not count.
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
from ingestion.pool import usable_cpus

COHORTS = 8
ROUNDS = 2
CEILING_OPENS = 4000  # envelopes each ceiling process opens (the first of the produced ones)


@contextlib.contextmanager
def _broker(target: SottoSettings | str | None, tmp: Path) -> Iterator[tuple[str, int | None]]:
    """A bootstrap address: the caller's, ``SOTTO_KAFKA_BOOTSTRAP``, or a LocalKafka we start;
    with the broker's process id when we started it (its CPU time is then measured)."""
    if isinstance(target, SottoSettings) and target.kafka_bootstrap:
        yield target.kafka_bootstrap, None
        return
    if isinstance(target, str) and target:
        yield target, None
        return
    if os.environ.get("SOTTO_KAFKA_BOOTSTRAP"):
        yield os.environ["SOTTO_KAFKA_BOOTSTRAP"], None
        return
    from deploy.kafka_local import LocalKafka, free_ports

    port, controller_port = free_ports(2)
    broker = LocalKafka(data_dir=tmp / "kafka", port=port, controller_port=controller_port)
    broker.start()
    try:
        yield broker.bootstrap, int(broker.pid_file.read_text().split()[0])
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


def _produce(
    settings: SottoSettings, n: int, progress: bool, keep: int = 0
) -> tuple[list[int], list[bytes]]:
    """Seal and produce ``n`` valid envelopes; their sizes, and the first ``keep`` of them."""
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
    kept: list[bytes] = []
    console = Console(stderr=True)
    with Progress(console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("sealing + producing envelopes", total=n)
        for i in range(n):
            summary = RoundSummary.build(
                vectors[i], BehaviorCounts(steps=i % 17, accepted=i % 5), {"Tap": 1 + i % 3}
            )
            raw = seal(summary, key=key, cohort=f"c{i % COHORTS}", round=i % ROUNDS).to_bytes()
            sizes.append(len(raw))
            if len(kept) < keep:
                kept.append(raw)
            producer.send(region.t.ingest, value=raw)
            if i % 500 == 0:
                bar.update(task, completed=i)
        producer.flush(120)
        bar.update(task, completed=n)
    producer.close()
    return sizes, kept


def _cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process has used so far, from /proc (None elsewhere)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure_pipeline(
    settings: SottoSettings, n: int, profile: Path | None, broker_pid: int | None
) -> dict[str, Any]:
    """Times the pipeline, and the CPU seconds each party spent on it: this process (the
    consumer, its network thread, the checkpoint), the validation workers, the broker."""
    from ingestion.service import IngestionApp

    profiler = cProfile.Profile() if profile else None
    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        workers0 = {pid: _cpu_s(pid) or 0.0 for pid in app.pool.pids()}
        main0, broker0 = time.process_time(), _cpu_s(broker_pid)
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        app.process_available(timeout_s=600)
        if profiler:
            profiler.disable()
            profiler.dump_stats(str(profile))
        wall = time.perf_counter() - t0
        main_cpu, broker1 = time.process_time() - main0, _cpu_s(broker_pid)
        workers_cpu = sum((_cpu_s(pid) or 0.0) - workers0.get(pid, 0.0) for pid in app.pool.pids())
        stats = app.stats
    if stats.accepted != n:
        raise RuntimeError(f"pipeline accepted {stats.accepted} of {n}: {stats.as_dict()}")
    busy = (stats.last_commit_at or 0) - (stats.first_record_at or 0)
    broker_cpu = None if broker0 is None or broker1 is None else broker1 - broker0
    return {
        "busy_s": busy,
        "wall_s": wall,
        "batches": stats.batches,
        "cpu_s": {"main": main_cpu, "workers": workers_cpu, "broker": broker_cpu},
    }


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


def _hpke_inputs(raws: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(ciphertext, HPKE info) of each envelope: everything an open needs but the key."""
    from privacy.envelope import parse, sealed_bytes

    out = []
    for raw in raws:
        env = parse(raw)
        out.append((sealed_bytes(env), env.hpke_info()))
    return out


def _open_loop(private_raw: bytes, inputs: list[tuple[bytes, bytes]], start: Any, out: Any) -> None:
    """One ceiling process: wait for the common start, open every input, report the span."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from privacy.envelope import SUITE

    key = X25519PrivateKey.from_private_bytes(private_raw)
    start.wait()
    t0 = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    for ct, info in inputs:
        SUITE.decrypt(ct, key, info=info)
    out.put((len(inputs), t0, time.perf_counter()))


def _hpke_ceiling(settings: SottoSettings, raws: list[bytes], procs: int, reps: int = 3) -> float:
    """Opens per second of ``procs`` processes opening ``raws`` at once (each all of them);
    the median of ``reps`` runs, since one short run on a shared machine is noisy."""
    return statistics.median(_hpke_ceiling_once(settings, raws, procs) for _ in range(reps))


def _hpke_ceiling_once(settings: SottoSettings, raws: list[bytes], procs: int) -> float:
    import multiprocessing

    from backend import keystore

    region = settings.policy.region("eu")
    key = keystore.load_keyset(region.keyset_dir).current()
    private = keystore.load_private_keys(region.keyset_dir)[key.key_id].raw_bytes()
    inputs = _hpke_inputs(raws)
    ctx = multiprocessing.get_context("forkserver" if sys.platform.startswith("linux") else "spawn")
    start, out = ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_open_loop, args=(private, inputs, start, out)) for _ in range(procs)
    ]
    for w in workers:
        w.start()
    time.sleep(0.5)  # let every process import and load its key before the common start
    start.set()
    spans = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    total = sum(n for n, _, _ in spans)
    return total / (max(e for _, _, e in spans) - min(s for _, s, _ in spans))


def run_ingest_bench(
    target: SottoSettings | str | None = None,
    n: int = 20000,
    *,
    progress: bool = True,
    profile: Path | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Produce ``n`` envelopes, time the pipeline and a bare consumer on them; one dict out."""
    if n < 1:
        raise ValueError("n must be positive")
    with (
        tempfile.TemporaryDirectory(prefix="sotto-bench-") as tmp,
        _broker(target, Path(tmp)) as (boot, broker_pid),
    ):
        settings = _deployment(Path(tmp) / "home", boot, uuid.uuid4().hex[:8])
        if workers is None:  # the bench measures the pool: every usable core
            workers = usable_cpus()
        ingest = settings.ingest.model_copy(update={"workers": workers})
        settings = SottoSettings(home=settings.home, kafka_bootstrap=boot, ingest=ingest)
        from ingestion.service import IngestionApp

        with IngestionApp(settings.policy, "eu", settings.ingest, create_topics=True):
            pass  # create the topics with the policy's partition count before producing
        t0 = time.perf_counter()
        sizes, sample = _produce(settings, n, progress, keep=min(n, CEILING_OPENS))
        produce_s = time.perf_counter() - t0
        pipe = _measure_pipeline(settings, n, profile, broker_pid)
        cpus = usable_cpus()
        ceiling = _hpke_ceiling(settings, sample, cpus)
        raw_s = _measure_raw(settings, n)
    env_rate = n / pipe["busy_s"]
    raw_rate = n / raw_s
    # What bounds the ratio: the CPU the pipeline spends per envelope beside the open itself.
    # An open costs ``cpus / ceiling`` core-seconds; with every party's CPU per envelope
    # measured, no scheduling can beat ``cpus / total`` envelopes per second.
    cpu = pipe["cpu_s"]
    per = {k: (None if v is None else round(v / n * 1e6, 1)) for k, v in cpu.items()}
    total_us = sum(v for v in per.values() if v is not None)
    open_us = cpus / ceiling * 1e6
    return {
        "envelopes": n,
        "envelopes_per_s": round(env_rate, 1),
        "hpke_open_ceiling_per_s": round(ceiling, 1),
        "ratio_to_ceiling": round(env_rate / ceiling, 4),
        "workers": settings.ingest.worker_count(),
        "cpus": cpus,
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "cpu_us_per_envelope": {**per, "total": round(total_us, 1)},
        "hpke_open_us_per_core": round(open_us, 1),
        "ratio_to_ceiling_cpu_bound": round(open_us / total_us, 4) if total_us else None,
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
        "machine_cpus": os.cpu_count(),
    }
