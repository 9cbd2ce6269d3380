"""SIGKILL the region's round service mid-round, restart it: the round completes from its
event-sourced state and the cohort sum is released exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer
from sqlalchemy import func, select

from backend import keystore
from backend.storage import reading
from deploy.settings import SottoSettings
from deploy.simulation.device_fleet import DeviceFleet
from ingestion.audit import verify_chain
from ingestion.coordinator import RoundCoordinator
from ingestion.db import audit_log, open_database
from ingestion.round_open import RoundSpec
from ingestion.rounds_db import privacy_ledgers, round_checkins, round_releases, rounds
from privacy.ledger import Budget
from privacy.wire import ReleasedAggregate
from tests.ingestion.helpers import read_all
from tests.rounds.helpers import contribution

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N, DIM, SCALE = 16, 32, 128.0
BUDGET = Budget(epsilon=10.0, delta=1e-5)


def _start(settings: SottoSettings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SOTTO_HOME": str(settings.home),
        "SOTTO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "SOTTO_INGEST__GROUP_PREFIX": settings.ingest.group_prefix,
        "SOTTO_INGEST__SESSION_TIMEOUT_MS": "6000",
        "SOTTO_INGEST__POLL_TIMEOUT_MS": "100",
        "SOTTO_LOG_JSON": "true",
        # one name across restarts, as a pod has: the restarted service adopts the killed
        # one's coordinator lease at once instead of waiting for it to expire
        "SOTTO_ROUNDS__COORDINATOR_ID": "eu-round-service",
    }
    env.pop("SOTTO_CONFIG", None)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploy",
                "ingest",
                "--coordinate",
                "--region",
                "eu",
                "--budget-epsilon",
                str(BUDGET.epsilon),
                "--budget-delta",
                str(BUDGET.delta),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _status(engine, rid: str) -> str | None:  # type: ignore[no-untyped-def]
    with reading(engine) as conn:
        return conn.execute(select(rounds.c.status).where(rounds.c.round_id == rid)).scalar()


def _pump_until(fleet: DeviceFleet, cond, timeout_s: float, proc=None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        assert proc is None or proc.poll() is None, "round service died"
        fleet.pump(100)


def test_sigkill_mid_round_restart_releases_exactly_once(
    settings: SottoSettings, tmp_path: Path
) -> None:
    eu = settings.policy.region("eu")
    log = tmp_path / "rounds.log"
    proc = _start(settings, log)
    devices = {f"eu-k{i:02d}": "ck" for i in range(N)}
    fleet = DeviceFleet(settings.policy, "eu", devices, contribution(11, DIM, 2.0), tmp_path)
    try:
        fleet.start(wait_s=60)  # the service created the topics (and migrated the database)
        engine = open_database(eu.database_url)
        fleet.checkin()

        def checked_in() -> bool:
            with reading(engine) as conn:
                return conn.execute(select(func.count()).select_from(round_checkins)).scalar() == N

        _pump_until(fleet, checked_in, 60, proc)
        producer = KafkaProducer(bootstrap_servers=eu.bootstrap_servers, acks="all")
        coordinator = RoundCoordinator(
            engine,
            producer,
            eu,
            budget=BUDGET,
            credentials=keystore.credential_trust(eu.keyset_dir, "eu"),
        )
        spec = RoundSpec(
            layout="t", dim=DIM, clip=2.0, scale=SCALE, epsilon=2.0, delta=1e-6, stage_timeout_s=120
        )
        res = coordinator.open_round("ck", spec)
        producer.close()
        assert res.status == "open"

        _pump_until(fleet, lambda: _status(engine, res.round_id) != "collect_keys", 60, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = _status(engine, res.round_id)
        assert killed_at in ("collect_shares", "collect_masked", "collect_unmask"), killed_at
        t_end = time.monotonic() + 2.0  # devices keep answering while the service is down
        while time.monotonic() < t_end:
            fleet.pump(100)

        proc = _start(settings, log)
        _pump_until(fleet, lambda: _status(engine, res.round_id) == "released", 120, proc)
        time.sleep(1.0)  # let the outbox publish
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        fleet.close()

    records = read_all(settings.kafka_bootstrap, eu.t.aggregates)
    assert len(records) == 1, f"killed at {killed_at}: {len(records)} releases"
    agg = ReleasedAggregate.model_validate_json(records[0].value)
    kept = fleet.kept(res.round_id)
    expected = np.asarray(sum(k.quantized + k.noise for k in kept.values())) / SCALE
    assert agg.participants == N and np.array_equal(agg.vector(), expected)
    with reading(engine) as conn:
        assert len(list(conn.execute(select(round_releases)))) == 1
        events = json.loads(conn.execute(select(privacy_ledgers.c.events)).scalar())
        stages = [
            json.loads(r.detail)["stage"]
            for r in conn.execute(
                select(audit_log.c.detail).where(audit_log.c.event == "round_stage")
            )
        ]
    assert [e["round_id"] for e in events] == [res.round_id]
    assert stages == ["advertise", "shares", "masked", "consistency", "unmask"]
    assert verify_chain(engine, "eu") == (True, None)
    print(f"killed in {killed_at}; log: {log}")
