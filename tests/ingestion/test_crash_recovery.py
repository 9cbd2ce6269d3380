"""SIGKILL the ingestion process mid-stream, restart it, and nothing is lost or counted twice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from backend.storage import reading
from deploy.settings import SottoSettings
from ingestion.aggregates import aggregates
from ingestion.audit import verify_chain
from ingestion.db import audit_log, consumer_offsets, open_database, seen_messages
from privacy.wire import RejectReason
from tests.ingestion.helpers import (
    Truth,
    assert_matches,
    dead_letters,
    produce,
    random_summary,
    seal_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_VALID = 8000
BAD_EVERY = 97


def _command() -> list[str]:
    sotto = shutil.which("sotto", path=str(Path(sys.executable).parent))
    return [sotto, "ingest"] if sotto else [sys.executable, "-m", "deploy", "ingest"]


def _start(settings: SottoSettings, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SOTTO_HOME": str(settings.home),
        "SOTTO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "SOTTO_INGEST__GROUP_PREFIX": settings.ingest.group_prefix,
        "SOTTO_INGEST__BATCH_MAX_RECORDS": "150",
        "SOTTO_INGEST__SESSION_TIMEOUT_MS": "6000",
        "SOTTO_LOG_JSON": "true",
    }
    env.pop("SOTTO_CONFIG", None)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*_command(), "--region", "eu", *extra], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _durable(engine) -> int:  # type: ignore[no-untyped-def]
    with reading(engine) as conn:
        return int(
            conn.execute(
                select(func.coalesce(func.sum(consumer_offsets.c.next_offset), 0))
            ).scalar()
        )


def test_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(
    settings: SottoSettings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    eu = settings.policy.region("eu")
    truth = Truth()
    values: list[bytes] = []
    bad: dict[int, bytes] = {}
    for i in range(N_VALID):
        s = random_summary(rng)
        cohort, rnd = f"c{i % 4}", i % 3
        truth.add(cohort, rnd, s)
        values.append(seal_for(settings, "eu", s, cohort, rnd).to_bytes())
        if i % BAD_EVERY == 0:
            bad[len(values)] = f"garbage {i}".encode()
            values.append(bad[len(values)])
    meta = produce(settings.kafka_bootstrap or "", eu.t.ingest, values)
    total = len(values)

    engine = open_database(eu.database_url)
    log = tmp_path / "ingest.log"
    kills = 0
    for fraction in (0.2, 0.55):
        proc = _start(settings, log)
        deadline = time.monotonic() + 120
        while _durable(engine) < fraction * total and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        assert _durable(engine) < total, "the process finished before it could be killed"

    proc = _start(settings, log, "--max-idle-s", "4")
    assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    assert kills == 2

    assert _durable(engine) == total
    aggs = aggregates(engine, "eu")
    assert sum(a.count for a in aggs) == N_VALID
    assert_matches(aggs, truth)
    assert verify_chain(engine, "eu") == (True, None)
    with reading(engine) as conn:
        assert conn.execute(select(func.count()).select_from(seen_messages)).scalar() == N_VALID
        events = dict(
            conn.execute(select(audit_log.c.event, func.count()).group_by(audit_log.c.event)).all()
        )
    assert events == {"accept": N_VALID, "reject": len(bad)}

    # DLQ is at-least-once: every bad record is there, verbatim; repeats name the same source
    dls = dead_letters(settings.kafka_bootstrap or "", eu.t.dead_letter)
    by_source = {(d.source_partition, d.source_offset): d for d in dls}
    want = {meta[i]: raw for i, raw in bad.items()}
    assert set(by_source) == set(want)
    for key, raw in want.items():
        assert by_source[key].original == raw
        assert by_source[key].reason is RejectReason.MALFORMED
    engine.dispose()


def test_sigterm_finishes_the_batch_and_exits_cleanly(
    settings: SottoSettings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(4)
    eu = settings.policy.region("eu")
    values = [seal_for(settings, "eu", random_summary(rng), "t", 0).to_bytes() for _ in range(3000)]
    produce(settings.kafka_bootstrap or "", eu.t.ingest, values)
    engine = open_database(eu.database_url)
    log = tmp_path / "ingest.log"
    proc = _start(settings, log)
    deadline = time.monotonic() + 120
    while _durable(engine) == 0 and time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert '"event": "stopping"' in log.read_text()
    durable = _durable(engine)
    assert 0 < durable <= len(values)
    assert sum(a.count for a in aggregates(engine, "eu")) == durable  # offsets == results
    assert verify_chain(engine, "eu") == (True, None)
    engine.dispose()
