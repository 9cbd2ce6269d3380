"""SecAgg+ rounds with DP over the real broker: eu and cn at once, each only through its own
topics, with simulated devices dropping out at the share stage and after their masked input."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import dp_accounting.rdp
import numpy as np
import pytest
from sqlalchemy import select

from backend.storage import reading
from deploy.settings import SottoSettings
from deploy.simulation.device_fleet import DeviceFleet
from ingestion.audit import verify_chain
from ingestion.coordinator import released_total
from ingestion.db import audit_log
from ingestion.round_open import RoundSpec
from ingestion.round_service import RoundService
from ingestion.rounds_db import round_releases, rounds
from privacy.ledger import Budget
from privacy.round_check import PrivacyFloor
from privacy.round_wire import RoundOpen, parse_rounds_message
from privacy.wire import ReleasedAggregate
from tests.ingestion.helpers import read_all
from tests.rounds.helpers import StepClock, contribution, drive

pytestmark = pytest.mark.kafka

N, DIM, CLIP, SCALE = 20, 16, 3.0, 256.0
BUDGET = Budget(epsilon=10.0, delta=1e-5)


def _fleet(
    settings: SottoSettings, region: str, tmp: Path, drop: dict[str, set[str]]
) -> DeviceFleet:
    devices = {f"{region}-d{i:03d}": "c1" for i in range(N)}
    return DeviceFleet(
        settings.policy, region, devices, contribution(7, DIM, 1.5), tmp / region, drop=drop
    )


def _dp_epsilon(zs: list[float], delta: float) -> float:
    """dp_accounting itself, not our wrapper."""
    acc = dp_accounting.rdp.RdpAccountant()
    for z in zs:
        acc.compose(dp_accounting.GaussianDpEvent(z))
    return float(acc.get_epsilon(delta))


def _truth(fleet: DeviceFleet, round_id: str, gone_before_masked: set[str]):
    kept = {d: k for d, k in fleet.kept(round_id).items() if d not in gone_before_masked}
    noisy = sum(k.quantized + k.noise for k in kept.values())
    clean = sum(k.quantized for k in kept.values())
    return kept, np.asarray(noisy) / SCALE, np.asarray(clean) / SCALE


def test_two_regions_release_dp_sums_with_dropouts(settings: SottoSettings, tmp_path: Path) -> None:
    clock = StepClock()
    ids = {r: [f"{r}-d{i:03d}" for i in range(N)] for r in ("eu", "cn")}
    # 30 % vanish at the share stage in both regions; 10 % vanish after sending their masked
    # input in eu (survivors' seeds are unmasked) and before it in cn (dropped clients'
    # pairwise keys are reconstructed)
    drops = {
        "eu": {"shares": set(ids["eu"][:6]), "unmask": set(ids["eu"][6:8])},
        "cn": {"shares": set(ids["cn"][:6]), "masked": set(ids["cn"][6:8])},
    }
    spec = RoundSpec(
        layout="test.v1",
        dim=DIM,
        clip=CLIP,
        scale=SCALE,
        epsilon=1.0,
        delta=1e-6,
        stage_timeout_s=30,
    )
    with (
        RoundService(settings.policy, "eu", settings.ingest, budget=BUDGET, clock=clock) as eu,
        RoundService(settings.policy, "cn", settings.ingest, budget=BUDGET, clock=clock) as cn,
        _fleet(settings, "eu", tmp_path, drops["eu"]) as feu,
        _fleet(settings, "cn", tmp_path, drops["cn"]) as fcn,
    ):
        services, fleets = {"eu": eu, "cn": cn}, {"eu": feu, "cn": fcn}
        for f in fleets.values():
            f.checkin()
        drive(
            [eu, cn],
            [feu, fcn],
            lambda: all(s.app.stats.accepted >= N and s.app.caught_up() for s in services.values()),
        )
        opened = {r: s.coordinator.open_round("c1", spec, now=clock()) for r, s in services.items()}
        assert all(o.status == "open" and o.n == N for o in opened.values()), opened
        took = drive(
            [eu, cn],
            [feu, fcn],
            clock=clock,
            done=lambda: all(
                s.coordinator.status(opened[r].round_id) in ("released", "aborted")
                for r, s in services.items()
            ),
        )
        print(f"two concurrent rounds (n={N}, d={DIM}) took {took:.2f}s")

        for region, svc in services.items():
            rid = opened[region].round_id
            assert svc.coordinator.status(rid) == "released"
            topics = settings.policy.region(region).t
            records = read_all(settings.kafka_bootstrap, topics.aggregates)
            assert len(records) == 1, "released exactly once"
            assert records[0].key == f"{region}|c1|0".encode()
            agg = ReleasedAggregate.model_validate_json(records[0].value)
            assert (agg.region, agg.cohort, agg.round, agg.layout) == (region, "c1", 0, "test.v1")
            gone = drops[region]["shares"] | drops[region].get("masked", set())
            kept, noisy, clean = _truth(fleets[region], rid, gone)
            assert agg.participants == len(kept) == N - len(gone)
            assert agg.dropped == len(gone)
            # exact: the release is the sum of the survivors' encoded inputs, nothing else
            assert np.array_equal(agg.vector(), noisy)
            # and that is the clipped, quantized sum plus noise of the announced size
            announce = next(
                m
                for m in (
                    parse_rounds_message(r.value)
                    for r in read_all(settings.kafka_bootstrap, topics.rounds)
                )
                if isinstance(m, RoundOpen)
            )
            s2 = announce.noise.client_variance
            assert agg.noise_stddev == pytest.approx(np.sqrt(len(kept) * s2) / SCALE)
            assert np.max(np.abs(agg.vector() - clean)) < 6 * agg.noise_stddev
            # epsilon of this round at its delta; spent so far at the cohort budget's delta
            z = announce.noise.noise_multiplier
            assert 0 < agg.epsilon <= 1.0 + 1e-6
            assert agg.epsilon == pytest.approx(_dp_epsilon([z], 1e-6), rel=1e-9)
            slack = announce.plan().noise.delta_slack(N)
            assert agg.epsilon_spent == pytest.approx(_dp_epsilon([z], BUDGET.delta - slack))
            # the clipped inputs: no device's vector exceeds the clip norm
            assert all(
                np.linalg.norm(k.quantized) / SCALE <= CLIP + DIM / SCALE for k in kept.values()
            )
            assert read_all(settings.kafka_bootstrap, topics.dead_letter) == []
            # each region holds only its own rounds; the audit chain verifies
            with reading(svc.app.engine) as conn:
                assert {r.region for r in conn.execute(select(rounds.c.region))} == {region}
                assert len(list(conn.execute(select(round_releases)))) == 1
                rows = list(conn.execute(select(audit_log).where(audit_log.c.event.like("round%"))))
            assert verify_chain(svc.app.engine, region) == (True, None)
            release = [json.loads(r.detail) for r in rows if r.event == "round_release"]
            assert len(release) == 1 and release[0]["participants"] == len(kept)
            assert release[0]["dropped"] == len(gone) and release[0]["epsilon"] > 0
            stages = [json.loads(r.detail)["stage"] for r in rows if r.event == "round_stage"]
            assert stages == ["advertise", "shares", "masked", "consistency", "unmask"]


def test_round_without_noise_is_exact_and_never_published(
    settings: SottoSettings, tmp_path: Path
) -> None:
    clock = StepClock()
    n = 12
    devices = {f"eu-x{i:02d}": "c2" for i in range(n)}
    drop = {"masked": {"eu-x00"}, "unmask": {"eu-x01"}}
    spec = RoundSpec(layout="t", dim=DIM, clip=CLIP, scale=SCALE, epsilon=None, delta=None)
    with (
        RoundService(
            settings.policy, "eu", settings.ingest, budget=BUDGET, clock=clock, allow_unnoised=True
        ) as svc,
        DeviceFleet(
            settings.policy,
            "eu",
            devices,
            contribution(3, DIM, 2.0),
            tmp_path,
            drop=drop,
            floor=PrivacyFloor(allow_unnoised=True),  # a test round without DP, by consent
        ) as fleet,
    ):
        fleet.checkin()
        drive([svc], [fleet], lambda: svc.app.stats.accepted >= n and svc.app.caught_up())
        res = svc.coordinator.open_round("c2", spec, now=clock())
        drive(
            [svc],
            [fleet],
            clock=clock,
            done=lambda: svc.coordinator.status(res.round_id) == "released",
        )
        kept = {d: k for d, k in fleet.kept(res.round_id).items() if d != "eu-x00"}
        assert all(not k.noise.any() for k in kept.values())
        expected = np.asarray(sum(k.quantized for k in kept.values())) / SCALE
        assert np.array_equal(released_total(svc.app.engine, "eu", "c2", res.round), expected)
        # a sum without DP noise never reaches the learner's topic
        assert read_all(settings.kafka_bootstrap, settings.policy.region("eu").t.aggregates) == []
