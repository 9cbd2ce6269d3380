"""Ingestion on a real PostgreSQL server: several replicas at once, a replica killed, a fresh
database raced by migrations, the database restarted under a running replica.

SQLite serializes every writer behind one file lock, so it cannot show what replicas do to
each other: row locks on shared aggregates, the audit chain appended by three processes, the
offset fence between a zombie and the partition's new owner, advisory-locked migrations,
connections that die with the server. These tests run the real thing: ``python -m deploy
ingest`` processes against the session's broker and the session's PostgreSQL server, each
test on a database of its own, and the results must equal the ground truth exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from backend.storage import make_engine, reading
from deploy.postgres_local import LocalPostgres
from deploy.settings import SottoSettings
from ingestion.aggregates import aggregates
from ingestion.audit import verify_chain
from ingestion.db import audit_log, consumer_offsets, seen_messages
from ingestion.topics import ensure_region_topics
from privacy.wire import RejectReason
from tests.ingestion.helpers import (
    Truth,
    assert_matches,
    dead_letters,
    on_postgres,
    random_summary,
    seal_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

COHORTS = 4
ROUNDS = 2
BAD_EVERY = 101  # a garbage record after every 101st valid one: dead letters under replicas too
DEADLINE_S = 150.0  # generous: three replicas, a broker and a server share two busy cores


# -- setting up ---------------------------------------------------------------------------------


@dataclass
class Stream:
    """What was produced: the ground truth of the valid records, the record count of every
    partition (the topic is new, so that is each partition's end offset) and the garbage
    records by (partition, offset)."""

    truth: Truth
    ends: dict[int, int]
    bad: dict[tuple[int, int], bytes]

    @property
    def total(self) -> int:
        return sum(self.ends.values())


def _stream(
    settings: SottoSettings, n_valid: int, seed: int, before: Callable[[], None] | None = None
) -> Stream:
    """Produce ``n_valid`` sealed summaries, plus garbage, round-robin over every partition
    of eu's ingest topic, so every cohort and round has records on every partition (replicas
    owning different partitions add to the same aggregate rows). ``before`` runs after the
    topics exist and everything is sealed, just before the first record is produced."""
    eu = settings.policy.region("eu")
    ensure_region_topics(eu)  # the policy's partition count, before anything is produced
    rng = np.random.default_rng(seed)
    truth = Truth()
    by_partition: list[list[bytes]] = [[] for _ in range(eu.partitions)]
    bad_values: set[bytes] = set()
    for i in range(n_valid):
        s = random_summary(rng)
        cohort, rnd = f"c{i % COHORTS}", (i // COHORTS) % ROUNDS
        truth.add(cohort, rnd, s)
        by_partition[i % eu.partitions].append(seal_for(settings, "eu", s, cohort, rnd).to_bytes())
        if i % BAD_EVERY == 0:
            junk = f"garbage {i}".encode()
            bad_values.add(junk)
            by_partition[(i + 1) % eu.partitions].append(junk)
    bad: dict[tuple[int, int], bytes] = {}
    if before is not None:
        before()
    # Interleaved, so every partition gets records from the start: produced one
    # partition after another, the last partition's owner saw nothing for as long as the
    # others took on a busy machine, and idle-exited (--max-idle-s) before its records came.
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=5,
        max_request_size=1 << 22,
    )
    try:
        sent = [
            (producer.send(eu.t.ingest, value=v, partition=p), v)
            for i in range(max(len(v) for v in by_partition))
            for p, vals in enumerate(by_partition)
            if i < len(vals)
            for v in (vals[i],)
        ]
        producer.flush(120)
        for future, v in sent:
            m = future.get(timeout=60)
            if v in bad_values:
                bad[(m.partition, m.offset)] = v
    finally:
        producer.close()
    assert len(bad) == len(bad_values)
    return Stream(truth, {p: len(v) for p, v in enumerate(by_partition)}, bad)


class Replicas:
    """``python -m deploy ingest --region eu`` processes of one consumer group, each with its
    own log file, all stopped (SIGKILL) at the end of the test whatever happened."""

    def __init__(self, settings: SottoSettings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        s = self.settings
        env = {
            **os.environ,
            "SOTTO_HOME": str(s.home),
            "SOTTO_KAFKA_BOOTSTRAP": s.kafka_bootstrap or "",
            "SOTTO_INGEST__GROUP_PREFIX": s.ingest.group_prefix,
            "SOTTO_INGEST__BATCH_MAX_RECORDS": "100",
            "SOTTO_INGEST__SESSION_TIMEOUT_MS": "6000",
            "SOTTO_LOG_JSON": "true",
        }
        env.pop("SOTTO_CONFIG", None)
        log = self.log(len(self.procs))
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "deploy", "ingest", "--region", "eu", *extra],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def log(self, i: int) -> Path:
        return self.logs / f"ingest-{i}.log"

    def text(self, i: int) -> str:
        path = self.log(i)
        return path.read_text(errors="replace") if path.exists() else ""

    def tails(self) -> str:
        return "\n".join(f"--- replica {i}\n{self.text(i)[-6000:]}" for i in range(len(self.procs)))

    def assert_alive(self, *procs: subprocess.Popen[bytes]) -> None:
        for p in procs or tuple(self.procs):
            assert p.poll() is None, f"a replica exited with {p.returncode}\n{self.tails()}"

    def wait_all(self, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                for q in procs:  # where each one that still runs is stuck (sotto's SIGUSR1)
                    if q.poll() is None:
                        q.send_signal(signal.SIGUSR1)
                time.sleep(2)
                pytest.fail(f"a replica did not finish in {timeout_s}s\n{self.tails()}")
        return codes

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=30)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[[SottoSettings], Replicas]]:
    made: list[Replicas] = []

    def make(settings: SottoSettings) -> Replicas:
        made.append(Replicas(settings, tmp_path))
        return made[-1]

    yield make
    for r in made:
        r.kill_all()


def _offsets(engine: Engine) -> dict[int, int]:
    """The stored next offset of every partition; ``{}`` before the schema exists."""
    c = consumer_offsets.c
    try:
        with reading(engine) as conn:
            return {int(p): int(o) for p, o in conn.execute(select(c.partition, c.next_offset))}
    except SQLAlchemyError:  # tables not migrated yet, or the server restarting
        return {}


def _durable(engine: Engine) -> int:
    """Records made durable so far (the stored next offsets summed)."""
    return sum(_offsets(engine).values())


def _owned(log: str) -> dict[int, int]:
    """The partitions a replica owns now, per its log, with the offset it resumed each at."""
    owned: dict[int, int] = {}
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # not a structlog line, or the one being written
            continue
        if event.get("event") == "partitions_revoked":
            owned = {}
        elif event.get("event") == "partitions_assigned":
            owned = {
                int(k.rsplit("[", 1)[1].rstrip("]")): v for k, v in event["partitions"].items()
            }
    return owned


def _wait_for(
    what: str, cond: Callable[[], bool], replicas: Replicas, timeout_s: float = DEADLINE_S
) -> None:
    """Poll ``cond`` until true; fail with every replica's log tail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}\n{replicas.tails()}")
        time.sleep(0.05)


def _assert_exact(settings: SottoSettings, engine: Engine, stream: Stream) -> None:
    """Everything counted exactly once: offsets, sums, replay ids, audit chain, DLQ."""
    n_valid = stream.truth.total
    assert _offsets(engine) == stream.ends
    aggs = aggregates(engine, "eu")
    assert sum(a.count for a in aggs) == n_valid
    assert_matches(aggs, stream.truth)
    assert verify_chain(engine, "eu") == (True, None)
    with reading(engine) as conn:
        assert conn.execute(select(func.count()).select_from(seen_messages)).scalar() == n_valid
        events = dict(
            conn.execute(select(audit_log.c.event, func.count()).group_by(audit_log.c.event)).all()
        )
    assert events == {"accept": n_valid, "reject": len(stream.bad)}
    # dead letters are at least once: every garbage record is there, under its source offset
    dls = dead_letters(settings.kafka_bootstrap or "", settings.policy.region("eu").t.dead_letter)
    by_source = {(d.source_partition, d.source_offset): d for d in dls}
    assert set(by_source) == set(stream.bad)
    for key, raw in stream.bad.items():
        assert by_source[key].original == raw
        assert by_source[key].reason is RejectReason.MALFORMED


# -- (a) a replica killed mid-stream, another joining ----------------------------------------------
def test_three_replicas_one_killed_and_one_joining_count_exactly_once(
    settings: SottoSettings, postgres_url: str, replicas: Callable[[SottoSettings], Replicas]
) -> None:
    settings = on_postgres(settings, postgres_url)
    engine = make_engine(postgres_url)
    group = replicas(settings)
    first: list[subprocess.Popen[bytes]] = []

    def three_in_the_group() -> None:
        """Records arrive once the group is stable (each replica owns a partition), so a
        replica that starts slowly on a busy machine still has work when it joins."""
        first.extend(group.start("--max-idle-s", "5") for _ in range(3))
        _wait_for(
            "the three replicas to share the partitions",
            lambda: all(_owned(group.text(i)) for i in range(3)),
            group,
        )

    stream = _stream(settings, 12000, seed=11, before=three_in_the_group)

    # Kill a replica at work, mid-stream: a quarter of the stream is durable, the three own
    # partitions, and the victim has made batches durable since its assignment with at
    # least three batches of its partition left.
    victim: list[tuple[int, int]] = []

    def working_replica() -> bool:
        offsets = _offsets(engine)
        if sum(offsets.values()) < stream.total // 4:
            return False
        owned = [_owned(group.text(i)) for i in range(3)]
        if not all(owned):
            return False
        for i, parts in enumerate(owned):
            for p, start in parts.items():
                if start < offsets.get(p, 0) < stream.ends[p] - 300:
                    victim.append((i, p))
                    return True
        return False

    def killed_at_work() -> bool:
        """Freeze the chosen replica, then look again: a stall of this test on a busy machine
        may have let it finish its partition since the choice; then it is let go on and the
        choice made again. Killed frozen, it had work left."""
        if not working_replica():
            return False
        i, partition = victim.pop()
        first[i].send_signal(signal.SIGSTOP)
        if _offsets(engine).get(partition, 0) >= stream.ends[partition]:
            first[i].send_signal(signal.SIGCONT)
            return False
        first[i].send_signal(signal.SIGKILL)
        first[i].wait(timeout=30)
        victim.append((i, partition))
        return True

    _wait_for("a replica killed at work", killed_at_work, group)
    i, partition = victim[0]
    assert _offsets(engine)[partition] < stream.ends[partition], "killed after its partition"

    joiner = group.start("--max-idle-s", "5")  # a rebalance, with the victim's session pending
    survivors = [p for p in first if p is not first[i]] + [joiner]
    codes = group.wait_all(survivors, DEADLINE_S)
    assert codes == [0, 0, 0], group.tails()
    assert '"partitions_assigned"' in group.text(3), group.tails()
    _assert_exact(settings, engine, stream)
    engine.dispose()


# -- (b) three replicas racing the migrations of a fresh database -----------------------------------
def test_three_replicas_on_a_fresh_database_migrate_once_and_stay_up(
    settings: SottoSettings, postgres_url: str, replicas: Callable[[SottoSettings], Replicas]
) -> None:
    # the policy names no driver, as docs/configuration.md writes it (psycopg is implied)
    settings = on_postgres(settings, postgres_url.replace("postgresql+psycopg://", "postgresql://"))
    stream = _stream(settings, 4000, seed=12)
    engine = make_engine(postgres_url)
    with engine.connect() as conn:  # fresh: nothing migrated before the replicas start
        tables = text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert conn.execute(tables).scalar() == 0
    group = replicas(settings)
    procs = [group.start("--max-idle-s", "5") for _ in range(3)]

    _wait_for(
        "all three replicas to start",
        lambda: all('"ingestion_started"' in group.text(i) for i in range(3)),
        group,
    )
    group.assert_alive()
    codes = group.wait_all(procs, DEADLINE_S)
    assert codes == [0, 0, 0], group.tails()
    with reading(engine) as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert len(versions) == 1, versions
    _assert_exact(settings, engine, stream)
    engine.dispose()


MIGRATE_WHEN_TOLD = """
import pathlib, sys, time
from ingestion.db import migrate
url, ready, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.002)
migrate(url)
"""


def test_concurrent_migrations_of_a_fresh_database_serialize(
    postgres_url: str, tmp_path: Path
) -> None:
    """The same race, made certain: four processes, imports done, released together into
    ``migrate`` on an empty database. The advisory lock lets one upgrade while the others
    wait and then find the schema current; without it (tried by hand) all but one fail
    with a unique violation creating the same tables."""
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                MIGRATE_WHEN_TOLD,
                postgres_url,
                str(tmp_path / f"r{i}"),
                str(go),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(4)
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"r{i}").exists() for i in range(4)):
            assert time.monotonic() < deadline, "the migrating processes did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.05)
        go.touch()
        outcomes = [(p.wait(timeout=120), p.communicate()[0].decode()[-1500:]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [code for code, _ in outcomes] == [0] * 4, outcomes
    engine = make_engine(postgres_url)
    with reading(engine) as conn:
        assert len(conn.execute(text("SELECT version_num FROM alembic_version")).all()) == 1
        assert conn.execute(select(func.count()).select_from(consumer_offsets)).scalar() == 0
    engine.dispose()


# -- (c) the database restarted under a running replica ---------------------------------------------
@pytest.mark.parametrize(
    "mode",
    [
        "fast",  # a restart: open transactions rolled back, clients disconnected
        "immediate",  # a crash: no shutdown checkpoint, WAL recovery at the next start
    ],
)
def test_database_restart_mid_stream_the_replica_stays_up_and_counts_exactly(
    mode: str,
    settings: SottoSettings,
    postgres_url: str,
    postgres_server: LocalPostgres,
    replicas: Callable[[SottoSettings], Replicas],
) -> None:
    settings = on_postgres(settings, postgres_url)
    stream = _stream(settings, 6000, seed=13)
    total = stream.total
    engine = make_engine(postgres_url)
    group = replicas(settings)
    proc = group.start("--max-idle-s", "4")

    _wait_for("a quarter of the stream", lambda: _durable(engine) >= total // 4, group)
    before = _durable(engine)
    postgres_server.stop(mode=mode)
    assert before < total, "the stream was done before the outage"
    # the outage outlasts --max-idle-s and several backoffs: the replica must neither exit
    # (a database it cannot reach is not "idle") nor skip anything
    failures = ("checkpoint_failed", "batch_judging_failed", "rewind_failed")

    def retried() -> bool:
        log = group.text(0)
        return sum(log.count(f'"{f}"') for f in failures) >= 3

    _wait_for("the replica to retry against the stopped database", retried, group, 60)
    outage_end = time.monotonic() + 6.0
    while time.monotonic() < outage_end:
        group.assert_alive(proc)
        time.sleep(0.2)
    postgres_server.start()

    assert group.wait_all([proc], DEADLINE_S) == [0], group.tails()
    _assert_exact(settings, engine, stream)
    engine.dispose()
