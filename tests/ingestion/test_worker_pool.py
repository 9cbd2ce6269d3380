"""The validation pool: the same verdicts as in-process, and no record lost, counted twice or
wedging the service when a worker process dies (killed mid-batch, or a record that crashes
it). The pool tests need no broker; the service tests run against the real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend import keystore
from deploy.settings import SottoSettings
from ingestion.aggregates import aggregates
from ingestion.audit import verify_chain
from ingestion.keyring import load_keyring
from ingestion.pool import Item, PoolUnavailable, ValidatorPool, WorkerSpec
from ingestion.service import IngestionApp
from ingestion.validator import Accepted, Rejected
from privacy.envelope import seal
from privacy.wire import RejectReason
from tests.ingestion.helpers import dead_letters, produce, random_summary, seal_for
from tests.ingestion.pool_tasks import AlwaysDie, Hang, KillOnce, Poison

POISON = b"this record crashes the validation worker"


def _spec(settings: SottoSettings) -> WorkerSpec:
    return WorkerSpec.of(
        "eu",
        settings.policy,
        load_keyring(settings.policy, "eu"),
        settings.ingest.max_envelope_bytes,
    )


def _items(settings: SottoSettings, n: int, seed: int = 1) -> list[Item]:
    """``n`` records: mostly valid envelopes, some tampered, one on the wrong topic."""
    rng = np.random.default_rng(seed)
    topic = settings.policy.region("eu").t.ingest
    out: list[Item] = []
    for i in range(n):
        raw = seal_for(settings, "eu", random_summary(rng), f"c{i % 3}", 0).to_bytes()
        if i % 7 == 3:
            raw = raw[:-20] + b"x" * 20
        out.append((raw, topic if i != 5 else "elsewhere", 0, i))
    return out


def _pool(settings: SottoSettings, workers: int = 2, **kw) -> ValidatorPool:  # type: ignore[no-untyped-def]
    return ValidatorPool(_spec(settings), workers, chunk_records=8, **kw)


def _same(a: list, b: list) -> bool:  # type: ignore[type-arg]
    """Verdicts equal: accepted ones by message and summary, rejected ones by reason."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if type(x) is not type(y):
            return False
        if isinstance(x, Accepted) and (x.envelope != y.envelope or x.summary != y.summary):
            return False
        if isinstance(x, Rejected) and (x.reason, x.detail) != (y.reason, y.detail):
            return False
    return True


def test_workers_give_the_in_process_verdicts(settings: SottoSettings) -> None:
    items = _items(settings, 60)
    local = _pool(settings, workers=1)
    expected = local.judge(items)
    assert local.state.workers == 0 and local.pids() == []
    assert {type(v) for v in expected} == {Accepted, Rejected}
    pool = _pool(settings, workers=2)
    try:
        assert _same(pool.judge(items), expected)
        assert pool.state.workers == 2 and len(pool.pids()) == 2
        assert pool.state.restarts == 0
    finally:
        pool.close()
    assert pool.pids() == []


def test_a_worker_killed_mid_batch_is_replaced_and_its_chunk_redone(
    settings: SottoSettings, tmp_path: Path
) -> None:
    items = _items(settings, 60)
    expected = _pool(settings, workers=1).judge(items)
    flag = tmp_path / "kill"
    flag.touch()
    pool = _pool(settings, task=KillOnce(str(flag)))
    try:
        assert _same(pool.judge(items), expected)  # nothing lost, nothing judged twice over
        assert not flag.exists()  # a worker really died
        assert pool.state.restarts >= 1 and pool.state.isolated == 0
        assert _same(pool.judge(items), expected)  # and the rebuilt pool keeps working
    finally:
        pool.close()


def test_a_record_that_crashes_workers_is_isolated_alone(settings: SottoSettings) -> None:
    items = _items(settings, 40)
    expected = _pool(settings, workers=1).judge(items)
    topic = items[0][1]
    items[17] = (POISON, topic, 0, 17)
    pool = _pool(settings, task=Poison(POISON), max_crashes=2)
    try:
        got = pool.judge(items)
    finally:
        pool.close()
    bad = got[17]
    assert isinstance(bad, Rejected) and bad.reason is RejectReason.INTERNAL_ERROR
    assert "the validation worker process 2 times" in bad.detail
    assert _same(got[:17] + got[18:], expected[:17] + expected[18:])
    assert pool.state.isolated == 1


def test_a_record_that_stalls_a_worker_is_isolated_not_waited_for(
    settings: SottoSettings,
) -> None:
    items = _items(settings, 16)
    expected = _pool(settings, workers=1).judge(items)
    items[9] = (POISON, items[0][1], 0, 9)
    pool = _pool(settings, task=Hang(POISON), max_crashes=2, timeout_s=3.0)
    try:
        got = pool.judge(items)
    finally:
        pool.close()
    assert isinstance(got[9], Rejected) and got[9].reason is RejectReason.INTERNAL_ERROR
    assert _same(got[:9] + got[10:], expected[:9] + expected[10:])
    assert pool.state.isolated == 1


def test_workers_that_cannot_run_at_all_are_a_fault_not_bad_records(
    settings: SottoSettings,
) -> None:
    pool = _pool(settings, task=AlwaysDie())
    try:
        with pytest.raises(PoolUnavailable):
            pool.judge(_items(settings, 10))
        assert pool.state.isolated == 0
        assert pool.state.broken
    finally:
        pool.close()


def test_new_keys_reach_the_workers(settings: SottoSettings) -> None:
    eu = settings.policy.region("eu")
    pool = _pool(settings)
    try:
        new_key = keystore.rotate(eu.keyset_dir, "eu").current()
        raw = seal(random_summary(np.random.default_rng(2)), key=new_key, cohort="k", round=0)
        item = (raw.to_bytes(), eu.t.ingest, 0, 0)
        assert isinstance(pool.judge([item])[0], Rejected)  # workers built on the old keyring
        pool.update(_spec(settings))
        assert isinstance(pool.judge([item])[0], Accepted)
    finally:
        pool.close()


def _app_class(task: object) -> type[IngestionApp]:
    return type("CrashingIngestionApp", (IngestionApp,), {"worker_task": task})


@pytest.mark.kafka
@pytest.mark.parametrize("fault", ["kill", "poison"])
def test_service_counts_exactly_through_worker_crashes(
    settings: SottoSettings, tmp_path: Path, fault: str
) -> None:
    """A worker SIGKILLed mid-batch, or a record that kills every worker it reaches: every
    valid record is counted once, the poison is dead-lettered with its bytes, and the service
    goes on."""
    rng = np.random.default_rng(9)
    eu = settings.policy.region("eu")
    flag = tmp_path / "kill"
    flag.touch()
    task = KillOnce(str(flag)) if fault == "kill" else Poison(POISON)
    ingest = settings.ingest.model_copy(update={"workers": 2, "worker_chunk_records": 16})
    values, truth = [], 0
    for i in range(120):
        values.append(seal_for(settings, "eu", random_summary(rng), "k", 0).to_bytes())
        truth += 1
        if fault == "poison" and i == 50:
            values.append(POISON)
    produce(settings.kafka_bootstrap or "", eu.t.ingest, values)
    with _app_class(task)(settings.policy, "eu", ingest) as app:
        app.process_available(timeout_s=120)
        assert app.stats.accepted == truth
        assert app.stats.worker_restarts >= 1
        health = app.health()
        assert health["pool"]["workers"] == 2 and health["pool"]["alive"] >= 1
        assert [a.count for a in aggregates(app.engine, "eu")] == [truth]
        assert verify_chain(app.engine, "eu") == (True, None)
        if fault == "poison":
            assert app.stats.rejected == {RejectReason.INTERNAL_ERROR.value: 1}
            assert app.stats.worker_crash_isolations == 1
        else:
            assert app.stats.rejected == {}
            assert not flag.exists()
        # the service is not wedged: a later record is still judged
        produce(settings.kafka_bootstrap or "", eu.t.ingest, [values[0]])
        app.process_available(timeout_s=60)
        assert app.stats.rejected.get(RejectReason.REPLAY.value) == 1
    dls = dead_letters(settings.kafka_bootstrap or "", eu.t.dead_letter)
    poisoned = [d for d in dls if d.reason is RejectReason.INTERNAL_ERROR]
    assert [d.original for d in poisoned] == ([POISON] if fault == "poison" else [])


@pytest.mark.kafka
def test_service_in_process_mode_still_works(settings: SottoSettings) -> None:
    rng = np.random.default_rng(4)
    eu = settings.policy.region("eu")
    ingest = settings.ingest.model_copy(update={"workers": 0})
    values = [seal_for(settings, "eu", random_summary(rng), "k", 0).to_bytes() for _ in range(20)]
    produce(settings.kafka_bootstrap or "", eu.t.ingest, [*values, values[3], b"junk"])
    with IngestionApp(settings.policy, "eu", ingest) as app:
        app.process_available(timeout_s=60)
        assert app.pool.state.workers == 0 and app.health()["pool"]["alive"] == 0
        assert app.stats.accepted == 20
        assert sum(app.stats.rejected.values()) == 2


class _FailingThirdCheckpoint(IngestionApp):
    """Its third checkpoint fails as a database outage would (reported, rewound), while the
    next batch is already with the workers."""

    commits = 0

    def _commit(self, cp, partitions):  # type: ignore[no-untyped-def]
        self.commits += 1
        if self.commits == 3:
            self.stats.checkpoint_failures += 1
            self.failed(ConnectionError("injected"), self._consumer.assignment() or partitions)
            return
        super()._commit(cp, partitions)


@pytest.mark.kafka
def test_a_failed_checkpoint_with_a_batch_in_flight_loses_and_doubles_nothing(
    settings: SottoSettings,
) -> None:
    rng = np.random.default_rng(12)
    eu = settings.policy.region("eu")
    ingest = settings.ingest.model_copy(
        update={"workers": 2, "worker_chunk_records": 8, "batch_max_records": 25}
    )
    values = [seal_for(settings, "eu", random_summary(rng), "k", 0).to_bytes() for _ in range(200)]
    produce(settings.kafka_bootstrap or "", eu.t.ingest, values)
    with _FailingThirdCheckpoint(settings.policy, "eu", ingest) as app:
        app.process_available(timeout_s=120)
        assert app.commits > 8  # several batches, the failed one among them
        assert app.stats.checkpoint_failures == 1
        assert app.stats.accepted == 200 and app.stats.rejected == {}  # no replay of ours
        assert [a.count for a in aggregates(app.engine, "eu")] == [200]
        assert verify_chain(app.engine, "eu") == (True, None)


def test_workers_default_in_process_and_unset_means_the_usable_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ingestion.pool
    from ingestion.settings import IngestSettings

    assert IngestSettings().worker_count() == 0  # opt-in until the rebalance hang is fixed
    for cores in (1, 2, 16):
        monkeypatch.setattr(ingestion.pool, "usable_cpus", lambda c=cores: c)
        assert IngestSettings(workers=None).worker_count() == cores
    assert IngestSettings(workers=4).worker_count() == 4
    assert IngestSettings(workers=0).worker_count() == 0


@pytest.mark.kafka
@pytest.mark.parametrize("workers", [0, 2])
def test_a_revocation_drops_the_batch_in_flight(settings: SottoSettings, workers: int) -> None:
    """kafka-python's ``poll`` may return empty in the middle of a rebalance, after it revoked
    our partitions. The batch then in flight must not be checkpointed: the partitions' next
    owner re-reads it from the durable offsets, and whichever checkpoint lost the race
    (refused by the offset fence, so the counts stayed right) had first dead-lettered the
    winner's records as replays (seen with three PostgreSQL replicas on a busy machine)."""
    from backend.consumer_app import SeekFromDatabase

    rng = np.random.default_rng(21)
    eu = settings.policy.region("eu")
    ingest = settings.ingest.model_copy(update={"workers": workers, "batch_max_records": 10})
    values = [seal_for(settings, "eu", random_summary(rng), "k", 0).to_bytes() for _ in range(30)]
    produce(settings.kafka_bootstrap or "", eu.t.ingest, values, partition=0)
    with IngestionApp(settings.policy, "eu", ingest) as app:
        app._overlap = True  # as inside run(): the judged batch waits for the next poll
        while app._pending is None:
            app.poll_once(timeout_ms=500)
        in_flight = app._pending[0]
        assert app.durable_offsets() == {}
        listener, assigned = SeekFromDatabase(app), app._consumer.assignment()
        listener.on_partitions_revoked(assigned)  # what kafka-python calls inside poll
        assert app._finish_pending() == 0  # poll returned early: nothing of it is durable
        assert app.durable_offsets() == {}
        listener.on_partitions_assigned(assigned)  # ours again: re-read from the database
        app._overlap = False
        app.process_available(timeout_s=60)
        assert len(in_flight) > 0
        assert app.stats.accepted == 30 and app.stats.rejected == {}  # no replay of ours
        assert [a.count for a in aggregates(app.engine, "eu")] == [30]
    assert dead_letters(settings.kafka_bootstrap or "", eu.t.dead_letter) == []


@pytest.mark.kafka
def test_a_cooperative_revocation_of_another_partition_keeps_the_batch_of_a_kept_one(
    settings: SottoSettings,
) -> None:
    """A cooperative assignor revokes only what moves and seeks nothing it keeps: the batch
    in flight on a kept partition is dropped and must be re-read, not skipped (found by a
    review: 10 of 120 records were lost with CooperativeStickyAssignor)."""
    from kafka import TopicPartition

    from backend.consumer_app import SeekFromDatabase

    rng = np.random.default_rng(22)
    eu = settings.policy.region("eu")
    ingest = settings.ingest.model_copy(update={"workers": 0, "batch_max_records": 10})
    values = [seal_for(settings, "eu", random_summary(rng), "k", 0).to_bytes() for _ in range(30)]
    produce(settings.kafka_bootstrap or "", eu.t.ingest, values, partition=0)
    with IngestionApp(settings.policy, "eu", ingest) as app:
        app._overlap = True
        while app._pending is None:
            app.poll_once(timeout_ms=500)
        kept, moved = TopicPartition(eu.t.ingest, 0), TopicPartition(eu.t.ingest, 1)
        assert app._pending[1] == [kept]
        SeekFromDatabase(app).on_partitions_revoked({moved})  # only what moves
        app._overlap = False
        app.process_available(timeout_s=60)
        assert app.durable_offsets()[(eu.t.ingest, 0)] == 30
        assert [a.count for a in aggregates(app.engine, "eu")] == [30]
        assert app.stats.rejected == {}


@pytest.mark.kafka
def test_a_cooperative_revocation_after_the_new_assignment_ends_the_rebalance(
    settings: SottoSettings,
) -> None:
    """Eager: revoked partitions are still assigned when the listener hears of them, and an
    assignment always follows. Cooperative (kafka-python's KIP-429 path): the new assignment
    is already in place and nothing may follow; a flag left set kept ``run(max_idle_s=...)``
    from ever seeing the replica idle."""
    from kafka import TopicPartition

    from backend.consumer_app import SeekFromDatabase

    eu = settings.policy.region("eu")
    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        app.process_available(timeout_s=60)
        listener, assigned = SeekFromDatabase(app), app._consumer.assignment()
        gone = TopicPartition(eu.t.ingest, 99)  # not assigned any more: cooperative
        listener.on_partitions_revoked({gone})
        assert app.rebalancing is False
        listener.on_partitions_revoked(assigned)  # still assigned: eager, one is coming
        assert app.rebalancing is True
        listener.on_partitions_assigned(assigned)
        assert app.rebalancing is False
        assert app.run(max_idle_s=0.5).accepted == 0  # idle, so it returns


@pytest.mark.kafka
def test_a_pending_rewind_is_not_caught_up(settings: SottoSettings) -> None:
    """A batch dropped at a rebalance leaves the positions past records that are not durable
    until the rewind is applied: ``process_available`` must not stop there as caught up (a
    fresh run stopped at 91 of 100 records after a rejoin)."""
    rng = np.random.default_rng(23)
    eu = settings.policy.region("eu")
    values = [seal_for(settings, "eu", random_summary(rng), "k", 0).to_bytes() for _ in range(12)]
    produce(settings.kafka_bootstrap or "", eu.t.ingest, values, partition=0)
    ingest = settings.ingest.model_copy(update={"workers": 0})
    with IngestionApp(settings.policy, "eu", ingest) as app:
        app.process_available(timeout_s=60)
        assert app.caught_up() and app.stats.accepted == 12
        app.rewind(app._consumer.assignment())  # as a dropped batch in flight leaves it
        assert not app.caught_up()
        app.process_available(timeout_s=60)
        assert app.caught_up() and app._rewind is None
        assert [a.count for a in aggregates(app.engine, "eu")] == [12]
