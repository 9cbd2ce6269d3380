"""The service hosting the real :class:`learner.cohort.CohortLearner` (its default factory):
releases from a simulated cohort go through Kafka and the service, and everything it makes
durable and publishes matches the same learner run in memory over the same releases."""

from __future__ import annotations

from collections import defaultdict

import pytest
from sqlalchemy import select

from backend import keystore
from backend.storage import reading
from deploy.settings import SottoSettings
from deploy.simulation.base_model import deployment_base
from deploy.simulation.cohort_channel import CohortFleet, StepCache
from deploy.simulation.population import Population
from edge_client.adapter_sync import AdapterFeed, SyncStats, apply
from edge_client.contribution import Trunk
from edge_client.runtime import DeviceModel
from learner.cohort import CohortLearner
from learner.registry import learner_state, list_adapters
from learner.service import LearnerApp
from privacy import accountant
from privacy.wire import ReleasedAggregate
from tests.learner_service.helpers import produce_releases

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

COHORT = "eu-c0"
ROUNDS = 8


def _closed_loop(settings: SottoSettings) -> tuple[CohortLearner, list[ReleasedAggregate], list]:
    """Releases as the round coordinator would produce them, under the learner's own plans."""
    net = deployment_base(settings.home).net
    cache = StepCache(
        Population(seed=11, regions=("eu",), cohorts_per_region=1, devices_per_cohort=120)
    )
    fleet = CohortFleet(
        cache, COHORT, Trunk.from_net(net), noise_multiplier=accountant.calibrate(2.0, 1e-5), seed=1
    )
    local = CohortLearner("eu", COHORT, net)
    releases, actions = [], []
    for r in range(ROUNDS):
        rel = fleet.release(r, local.plan())
        acts = local.learn_one(rel)
        fleet.apply(acts)
        releases.append(rel)
        actions += acts
    return local, releases, actions


def test_service_with_cohort_learner_matches_in_memory_run(
    settings: SottoSettings, group: str
) -> None:
    local, releases, actions = _closed_loop(settings)
    assert any(a.kind == "promote" for a in actions), "the run should get past shadow"
    eu = settings.policy.region("eu")
    boot = settings.kafka_bootstrap or ""
    with LearnerApp(
        settings.policy,
        "eu",
        settings.learner,
        base=lambda: deployment_base(settings.home),
        group_id=group,
    ) as app:
        produce_releases(boot, eu.t.aggregates, releases)
        app.process_available(timeout_s=240)
        assert app.stats.learned == ROUNDS and app.stats.refused == {}
        with reading(app.engine) as conn:
            row = conn.execute(select(learner_state).where(learner_state.c.cohort == COHORT)).one()
        registry = list_adapters(app.engine, "eu", COHORT)

    assert bytes(row.state) == local.to_state()
    assert row.plan == local.plan().model_dump(mode="json")
    last_status: dict[int, str] = defaultdict(str)
    for a in actions:
        last_status[a.version] = a.status.value
    assert {r.version: r.status for r in registry} == dict(last_status)  # v0: "retired" base

    bundle = deployment_base(settings.home)
    device = DeviceModel(
        bundle.onnx_bytes, keystore.signing_public_key(eu.keyset_dir), "eu", COHORT
    )
    stats = SyncStats()
    with AdapterFeed(boot, eu.t.adapters) as feed:
        for item in feed.poll_all():
            apply(device, item, stats)
    assert not stats.rejected
    assert device.live_version == local.live_version
    assert device.candidate_version == local.plan().shadow_version
