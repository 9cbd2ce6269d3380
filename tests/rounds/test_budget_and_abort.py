"""A round the budget cannot afford is never announced; a round below threshold releases
nothing; ``sotto privacy report --json`` shows what dp_accounting says was spent."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import dp_accounting
import dp_accounting.rdp
import pytest
from sqlalchemy import select

from backend.storage import reading
from deploy.settings import SottoSettings
from deploy.simulation.device_fleet import DeviceFleet
from ingestion.db import audit_log
from ingestion.round_open import RoundSpec
from ingestion.round_service import RoundService
from ingestion.rounds_db import round_releases
from privacy.ledger import Budget
from privacy.round_wire import RoundOpen, parse_rounds_message
from tests.ingestion.helpers import read_all
from tests.rounds.helpers import StepClock, contribution, drive

pytestmark = pytest.mark.kafka

DIM = 8


def _report(settings: SottoSettings, *args: str) -> dict:
    sotto = shutil.which("sotto", path=str(Path(sys.executable).parent))
    cmd = [sotto] if sotto else [sys.executable, "-m", "deploy"]
    env = {
        **os.environ,
        "SOTTO_HOME": str(settings.home),
        "SOTTO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
    }
    env.pop("SOTTO_CONFIG", None)
    out = subprocess.run(
        [*cmd, "privacy", "report", "--json", *args],
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)


def _announced(settings: SottoSettings, region: str) -> list[str]:
    topic = settings.policy.region(region).t.rounds
    msgs = [parse_rounds_message(r.value) for r in read_all(settings.kafka_bootstrap, topic)]
    return [m.round_id for m in msgs if isinstance(m, RoundOpen)]


def test_budget_refuses_before_announcing_and_report_matches_dp_accounting(
    settings: SottoSettings, tmp_path: Path
) -> None:
    clock = StepClock()
    budget = Budget(epsilon=1.1, delta=1e-5)
    spec = RoundSpec(layout="t", dim=DIM, clip=1.0, scale=100.0, epsilon=1.0, delta=1e-6)
    devices = {f"eu-b{i:02d}": "cb" for i in range(16)}
    with (
        RoundService(settings.policy, "eu", settings.ingest, budget=budget, clock=clock) as svc,
        DeviceFleet(settings.policy, "eu", devices, contribution(5, DIM), tmp_path) as fleet,
    ):
        fleet.checkin()
        drive([svc], [fleet], lambda: svc.app.stats.accepted >= 16 and svc.app.caught_up())
        first = svc.coordinator.open_round("cb", spec, participants=None, now=clock())
        assert first.status == "open"
        # a second round while the first is in flight: its charge is reserved, so refused
        tokens = [secrets.token_hex(16) for _ in range(16)]  # an explicit participant list
        second = svc.coordinator.open_round("cb", spec, participants=tokens, now=clock())
        assert second.status == "refused" and second.reason.startswith("budget_exceeded")
        drive(
            [svc],
            [fleet],
            clock=clock,
            done=lambda: svc.coordinator.status(first.round_id) == "released",
        )
        fleet.checkin()
        drive([svc], [fleet], lambda: svc.app.stats.accepted >= 16 * 5 + 16 and svc.app.caught_up())
        third = svc.coordinator.open_round("cb", spec, now=clock())
        assert third.status == "refused" and third.reason.startswith("budget_exceeded")
        assert svc.coordinator.status(third.round_id) == "refused"
        # refused rounds were never announced: no device was contacted
        assert _announced(settings, "eu") == [first.round_id]
        with reading(svc.app.engine) as conn:
            refused = list(
                conn.execute(
                    select(audit_log.c.round, audit_log.c.reason).where(
                        audit_log.c.event == "round_refused"
                    )
                )
            )
        assert [(r.round, r.reason) for r in refused] == [
            (second.round, "budget_exceeded"),
            (third.round, "budget_exceeded"),
        ]
        announce = next(
            m
            for m in (
                parse_rounds_message(r.value)
                for r in read_all(settings.kafka_bootstrap, settings.policy.region("eu").t.rounds)
            )
            if isinstance(m, RoundOpen)
        )

    report = _report(settings)
    assert [(c["region"], c["cohort"], c["rounds"]) for c in report["cohorts"]] == [("eu", "cb", 1)]
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(announce.noise.noise_multiplier))
    slack = announce.plan().noise.delta_slack(16)
    expected = acc.get_epsilon(budget.delta - slack)
    row = report["cohorts"][0]
    assert row["epsilon_spent"] == pytest.approx(expected, rel=1e-12)
    assert row["epsilon_left"] == pytest.approx(budget.epsilon - expected, rel=1e-12)
    assert _report(settings, "--region", "cn") == {"cohorts": []}


def test_round_below_threshold_aborts_and_releases_nothing(
    settings: SottoSettings, tmp_path: Path
) -> None:
    clock = StepClock()
    n = 12
    ids = [f"cn-a{i:02d}" for i in range(n)]
    spec = RoundSpec(layout="t", dim=DIM, clip=1.0, scale=100.0, epsilon=1.0, delta=1e-6)
    drop = {"shares": set(ids[:7])}  # 5 of 12 share keys: below min_clients = 6
    with (
        RoundService(
            settings.policy,
            "cn",
            settings.ingest,
            budget=Budget(epsilon=5, delta=1e-5),
            clock=clock,
        ) as svc,
        DeviceFleet(
            settings.policy,
            "cn",
            dict.fromkeys(ids, "ca"),
            contribution(2, DIM),
            tmp_path,
            drop=drop,
        ) as fleet,
    ):
        fleet.checkin()
        drive([svc], [fleet], lambda: svc.app.stats.accepted >= n and svc.app.caught_up())
        res = svc.coordinator.open_round("ca", spec, now=clock())
        drive(
            [svc],
            [fleet],
            clock=clock,
            done=lambda: svc.coordinator.status(res.round_id) in ("released", "aborted"),
        )
        assert svc.coordinator.status(res.round_id) == "aborted"
        with reading(svc.app.engine) as conn:
            assert list(conn.execute(select(round_releases))) == []
            aborts = list(conn.execute(select(audit_log).where(audit_log.c.event == "round_abort")))
        assert len(aborts) == 1 and json.loads(aborts[0].detail)["stage"] == "shares"
        # devices were told; nothing reached the aggregates topic; nothing was charged
        closed = [
            parse_rounds_message(r.value)
            for r in read_all(settings.kafka_bootstrap, settings.policy.region("cn").t.rounds)
        ]
        assert [m.outcome for m in closed if m.type == "round_closed"] == ["aborted"]
    assert read_all(settings.kafka_bootstrap, settings.policy.region("cn").t.aggregates) == []
    assert _report(settings) == {"cohorts": []}
