"""Real EdgeDevices take part through their own outbox and producer, contributing their
round-summary embedding by default, and read the learner's plan off the round."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from backend import keystore
from deploy.settings import SottoSettings
from edge_client.device import EdgeDevice
from edge_client.round_client import RoundParticipant, adapter_plan, summary_contribution
from edge_client.steps import AgentStep
from ingestion.round_open import RoundSpec
from ingestion.round_service import RoundService
from privacy.adapter_plan import AdapterPlan
from privacy.credential import CredentialWallet
from privacy.ledger import Budget
from privacy.quantize import clip_l2
from privacy.rand import SystemRandomness
from privacy.round_wire import RoundOpen, parse_rounds_message
from privacy.wire import EMBEDDING_DIM, ReleasedAggregate
from tests.ingestion.helpers import read_all
from tests.rounds.helpers import StepClock

pytestmark = pytest.mark.kafka

APPS = ("Spotify", "Maps", "WeChat", "Mail", "Camera")


def test_edge_devices_contribute_their_summary(settings: SottoSettings, tmp_path: Path) -> None:
    clock, n, scale, clip = StepClock(), len(APPS), 512.0, 1.0
    eu = settings.policy.region("eu")
    issuer = keystore.credential_issuer(eu.keyset_dir, "eu")  # enrollment, simulated
    trust = keystore.credential_trust(eu.keyset_dir, "eu")  # what the phones pin
    plan = AdapterPlan(cohort="ce", live_version=3, shadow_version=4)
    seen_plans: list[AdapterPlan | None] = []
    vectors: list[np.ndarray] = []
    with RoundService(
        settings.policy, "eu", settings.ingest, budget=Budget(epsilon=5, delta=1e-5), clock=clock
    ) as svc:
        devices = [
            EdgeDevice(f"phone-{i}", "eu", "ce", settings.policy, tmp_path / f"p{i}")
            for i in range(n)
        ]
        parts = []
        for dev, app in zip(devices, APPS, strict=True):
            dev.record_step(
                AgentStep(
                    action="Launch",
                    app=app,
                    outcome="accepted",
                    instruction=f"open {app}",
                    timestamp=datetime.now(UTC),
                )
            )
            base = summary_contribution(dev)

            def contrib(announce: RoundOpen, base=base) -> np.ndarray:
                seen_plans.append(adapter_plan(announce))
                vectors.append(base(announce))
                return vectors[-1]

            wallet = CredentialWallet([issuer.issue(not_after=1 << 40, rng=SystemRandomness())])
            parts.append(
                RoundParticipant(
                    "eu",
                    "ce",
                    dev.round_transport(),
                    contrib,
                    keep_inputs=True,
                    wallet=wallet,
                    trust=trust,
                )
            )
        consumer = KafkaConsumer(bootstrap_servers=eu.bootstrap_servers, group_id=None)
        tps = [TopicPartition(eu.t.rounds, p) for p in consumer.partitions_for_topic(eu.t.rounds)]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        _ = [consumer.position(tp) for tp in tps]
        try:
            for p in parts:
                p.checkin()
                p.transport.flush()
            while not (svc.app.stats.accepted >= n and svc.app.caught_up()):
                svc.step(50)
            spec = RoundSpec(
                layout="summary.v1",
                dim=EMBEDDING_DIM,
                clip=clip,
                scale=scale,
                epsilon=2.0,
                delta=1e-6,
            )
            res = svc.coordinator.open_round("ce", spec, adapter_plan=plan)
            while svc.coordinator.status(res.round_id) not in ("released", "aborted"):
                for recs in consumer.poll(timeout_ms=50).values():
                    for rec in recs:
                        msg = parse_rounds_message(rec.value)
                        for p in parts:
                            if p.handle(msg):
                                p.transport.flush()
                svc.step(50)
        finally:
            consumer.close()
            for d in devices:
                d.close()
        assert svc.coordinator.status(res.round_id) == "released"
    assert seen_plans == [plan] * n
    agg = ReleasedAggregate.model_validate_json(
        read_all(settings.kafka_bootstrap, eu.t.aggregates)[0].value
    )
    kept = [p.kept[res.round_id] for p in parts]
    assert np.array_equal(agg.vector(), sum(k.quantized + k.noise for k in kept) / scale)
    clipped = sum(clip_l2(v, clip) for v in vectors)
    assert np.max(np.abs(agg.vector() - clipped)) < 6 * agg.noise_stddev + n / scale
