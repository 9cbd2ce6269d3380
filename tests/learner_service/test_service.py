"""Releases in, signed adapters out: the learner service against the real broker."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from kafka import KafkaAdminClient
from sqlalchemy import select

from backend import keystore
from backend.storage import reading
from deploy.settings import SottoSettings
from deploy.simulation.base_model import deployment_base
from edge_client.adapter_sync import AdapterFeed, Outcome, SyncStats, apply
from edge_client.runtime import DeviceModel
from learner.adapter_topic import cleanup_policy, pending_count
from learner.registry import (
    adapter_history,
    learner_refusals,
    learner_releases,
    learner_state,
    lineage,
    list_adapters,
    live_adapter,
)
from learner.service import LearnerApp
from privacy.adapter_manifest import SignedAdapter
from privacy.adapter_plan import AdapterPlan
from tests.learner_service.helpers import counting_factory, produce_releases, read_topic, release

pytestmark = [pytest.mark.kafka]

COHORTS = ("c0", "c1")
ROUNDS = 9


def _run(settings: SottoSettings, group: str) -> LearnerApp:
    with LearnerApp(
        settings.policy,
        "eu",
        settings.learner,
        base=lambda: deployment_base(settings.home),
        learner_factory=counting_factory(0.0),
        group_id=group,
    ) as app:
        app.process_available(timeout_s=90)
        return app


def test_releases_in_signed_adapters_out(settings: SottoSettings, group: str) -> None:
    eu = settings.policy.region("eu")
    boot = settings.kafka_bootstrap or ""
    with LearnerApp(
        settings.policy,
        "eu",
        settings.learner,
        base=lambda: deployment_base(settings.home),
        learner_factory=counting_factory(0.0),
        group_id=group,
    ) as app:
        produce_releases(
            boot, eu.t.aggregates, [release("eu", c, r) for r in range(ROUNDS) for c in COHORTS]
        )
        app.process_available(timeout_s=90)
        engine = app.engine
        assert app.stats.learned == ROUNDS * len(COHORTS)
        assert pending_count(engine, "eu") == 0

        admin = KafkaAdminClient(bootstrap_servers=boot)
        try:
            assert cleanup_policy(admin, eu.t.adapters) == "compact"
        finally:
            admin.close()

        with reading(engine) as conn:
            states = conn.execute(select(learner_state)).all()
        assert {s.cohort: s.last_round for s in states} == {c: ROUNDS - 1 for c in COHORTS}

        # every record on the topic: keys as documented, types as the header says
        records = read_topic(boot, eu.t.adapters)
        kinds = Counter(h["sotto-type"].decode() for *_, h in records)
        assert set(kinds) == {"release", "rollback", "plan", "tombstone"}
        for _, _, key, value, headers in records:
            if headers["sotto-type"] == b"plan":
                assert key is not None and key.startswith(b"plan|")
                AdapterPlan.model_validate_json(value or b"")
            elif value is not None:
                signed = SignedAdapter.from_bytes(value)
                assert signed.manifest.base_model_sha256 == deployment_base(settings.home).sha256

        # a device of c0 that reads the topic from the beginning ends on the registry's live one
        bundle = deployment_base(settings.home)
        public = keystore.signing_public_key(eu.keyset_dir)
        follower = DeviceModel(bundle.onnx_bytes, public, "eu", "c0")  # no id: live only
        canary = DeviceModel(bundle.onnx_bytes, public, "eu", "c0", device_id="dev-7")
        stats = SyncStats()
        with AdapterFeed(boot, eu.t.adapters) as feed:
            items = feed.poll_all()
            assert feed.stats.malformed == 0
        for item in items:
            apply(follower, item, stats)
            apply(canary, item, SyncStats())
        assert stats.rejected == Counter()
        assert stats.outcomes[Outcome.INSTALLED] > 0 and stats.outcomes[Outcome.OTHER_COHORT] > 0
        live = live_adapter(engine, "eu", "c0")
        assert follower.live_version == (live.version if live else 0)
        last_plan = [i for i in items if isinstance(i, AdapterPlan) and i.cohort == "c0"][-1]
        assert follower.candidate_version == last_plan.shadow_version
        assert canary.live_version >= follower.live_version or canary.live_version == 0


def test_other_region_garbage_and_duplicates_are_refused(
    settings: SottoSettings, group: str
) -> None:
    eu = settings.policy.region("eu")
    boot = settings.kafka_bootstrap or ""
    foreign = release("cn", "c9", 0)
    good = release("eu", "c0", 0)
    with LearnerApp(
        settings.policy,
        "eu",
        settings.learner,
        base=lambda: deployment_base(settings.home),
        learner_factory=counting_factory(0.0),
        group_id=group,
    ) as app:
        produce_releases(
            boot,
            eu.t.aggregates,
            [
                (foreign.key(), foreign.model_dump_json().encode()),  # cn release on eu's topic
                (b"eu|c0|0", b"not json"),
                (b"eu|c0|5", good.model_dump_json().encode()),  # key lies about the round
                good,
                good,  # published twice by a coordinator that crashed between commit and send
            ],
        )
        app.process_available(timeout_s=60)
        with reading(app.engine) as conn:
            refused = Counter(r.reason for r in conn.execute(select(learner_refusals)))
            applied = conn.execute(
                select(learner_releases.c.region, learner_releases.c.cohort)
            ).all()
            wrong = conn.execute(
                select(learner_refusals).where(learner_refusals.c.reason == "wrong_region")
            ).one()
        assert refused == {"wrong_region": 1, "malformed": 1, "key_mismatch": 1, "duplicate": 1}
        assert applied == [("eu", "c0")]
        assert (wrong.claimed_region, wrong.cohort) == ("cn", "c9")
        assert list_adapters(app.engine, "cn") == [] and list_adapters(app.engine, "eu", "c9") == []
        assert app.stats.refused["wrong_region"] == 1 and app.stats.learned == 1


def test_registry_lineage_queries(settings: SottoSettings, group: str) -> None:
    eu = settings.policy.region("eu")
    produce_releases(
        settings.kafka_bootstrap or "", eu.t.aggregates, [release("eu", "c0", r) for r in range(8)]
    )
    app = _run(settings, group)
    from learner.registry import open_registry

    engine = open_registry(eu.database_url)
    rows = list_adapters(engine, "eu")
    assert [r.version for r in rows] == list(range(1, 9))
    by_version = {r.version: r for r in rows}
    # CountingLearner's schedule: live at even n, canary at odd n, reject every 4th,
    # and at n=7 roll live v5 back to its parent v1 (which had been retired at n=6)
    assert {v: r.status for v, r in by_version.items()} == {
        1: "live",
        2: "canary",
        3: "rejected",
        4: "canary",
        5: "rolled_back",
        6: "canary",
        7: "rejected",
        8: "shadow",
    }
    assert live_adapter(engine, "eu", "c0").version == 1  # type: ignore[union-attr]
    assert by_version[2].manifest["rollout_fraction"] == 0.5  # type: ignore[index]
    assert by_version[8].manifest["rollout_fraction"] == 0.0  # type: ignore[index]
    assert all(
        r.artifact_sha256 and r.signature and r.manifest for r in rows if r.status != "candidate"
    )
    assert by_version[8].rounds == [5, 6, 7] and (
        by_version[8].window_first,
        by_version[8].window_last,
    ) == (5, 7)
    assert by_version[8].epsilon_spent == pytest.approx(0.8)
    chain = lineage(engine, "eu", "c0", 8)
    assert chain[0].version == 8
    for child, parent in zip(chain, chain[1:], strict=False):
        assert child.parent_version == parent.version
    history = adapter_history(engine, "eu", "c0", 1)
    assert [(h["action"], h["status"], h["round"]) for h in history] == [
        ("register", "candidate", 0),
        ("ship", "shadow", 0),
        ("promote", "live", 1),
        ("retire", "retired", 5),
        ("rollback", "live", 6),
    ]
    assert [h["action"] for h in adapter_history(engine, "eu", "c0", 5)][-1] == "rollback"
    assert app.stats.refused == Counter()
    engine.dispose()


def test_outbox_left_by_a_crash_is_published_on_restart(
    settings: SottoSettings, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results committed, then the process dies before the adapters topic acknowledged them:
    the rows stay pending and the next start publishes them before consuming anything."""
    from learner import adapter_topic

    eu = settings.policy.region("eu")
    boot = settings.kafka_bootstrap or ""
    real_publish = adapter_topic.publish_pending

    def broker_unreachable(*args: object, **kwargs: object) -> int:
        raise RuntimeError("adapters topic unreachable")

    monkeypatch.setattr(adapter_topic, "publish_pending", broker_unreachable)
    with LearnerApp(
        settings.policy,
        "eu",
        settings.learner,
        base=lambda: deployment_base(settings.home),
        learner_factory=counting_factory(0.0),
        group_id=group,
    ) as app:
        produce_releases(boot, eu.t.aggregates, [release("eu", "c0", r) for r in range(3)])
        app.process_available(timeout_s=60)
        assert app.stats.learned == 3 and app.stats.publish_failures >= 3
        pending = pending_count(app.engine, "eu")
    assert pending > 0
    assert read_topic(boot, eu.t.adapters) == []

    monkeypatch.setattr(adapter_topic, "publish_pending", real_publish)
    with LearnerApp(
        settings.policy,
        "eu",
        settings.learner,
        base=lambda: deployment_base(settings.home),
        learner_factory=counting_factory(0.0),
        group_id=group,
    ) as app:
        assert pending_count(app.engine, "eu") == 0
        assert app.stats.published == pending
        app.process_available(timeout_s=30)
        assert app.stats.records == 0  # nothing re-learned: the offsets were durable
    assert len(read_topic(boot, eu.t.adapters)) == pending


def test_sigterm_equivalent_stop_finishes_the_record_in_hand(
    settings: SottoSettings, group: str
) -> None:
    """``stop()`` (what SIGTERM calls) lets ``run`` return after a durable record."""
    import threading

    eu = settings.policy.region("eu")
    with LearnerApp(
        settings.policy,
        "eu",
        settings.learner,
        base=lambda: deployment_base(settings.home),
        learner_factory=counting_factory(0.2),
        group_id=group,
    ) as app:
        produce_releases(
            settings.kafka_bootstrap or "",
            eu.t.aggregates,
            [release("eu", "c0", r) for r in range(30)],
        )

        def stop_after_the_first() -> None:  # a stop mid-stream, whatever the machine's speed
            deadline = time.monotonic() + 120
            while app.stats.learned < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            app.stop()

        stopper = threading.Thread(target=stop_after_the_first, daemon=True)
        stopper.start()
        stats = app.run(max_idle_s=30)
        stopper.join(timeout=5)
        with reading(app.engine) as conn:
            applied = conn.execute(select(learner_releases.c.round)).all()
    assert 0 < stats.learned == len(applied) < 30
