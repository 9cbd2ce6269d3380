"""Two round coordinators of one region on one database: each stage is decided exactly once.

The lease makes one of them active; the compare-and-set on ``rounds.version`` (and the lease
epoch, checked in the same transaction) keeps a coordinator that lost the lease while it was
paused mid-decision from applying that decision. No Kafka here: each device is a real
:class:`~edge_client.round_client.RoundParticipant` that reads the rounds topic straight from
the coordinators' outbox and hands its replies to ingestion's round sink, as the ingestion
checkpoint does after decrypting them. Time is passed in; concurrency is arranged with events
and barriers, never with sleeps.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from sqlalchemy import Engine, func, select, update

from backend.storage import reading
from edge_client.round_client import RoundParticipant
from ingestion import round_open, round_sink
from ingestion.audit import verify_chain
from ingestion.coordinator import RoundCoordinator
from ingestion.db import audit_log, open_database
from ingestion.round_open import RoundSpec
from ingestion.round_sink import Routed
from ingestion.rounds_db import (
    coordinator_leases,
    privacy_ledgers,
    round_outbox,
    round_releases,
    rounds,
)
from privacy.credential import CredentialIssuer, CredentialWallet, IssuerVerifier
from privacy.ledger import Budget
from privacy.policy import RegionConfig
from privacy.rand import SystemRandomness
from privacy.round_wire import RoundClosed, RoundOpen, parse_rounds_message
from privacy.wire import Frozen

REGION, COHORT, N, DIM = "eu", "ck", 5, 4
BUDGET = Budget(epsilon=10.0, delta=1e-5)
LEASE_S = 10.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)
# deadlines far away: every stage closes because it is complete, whoever closes it
SPEC = RoundSpec(
    layout="t", dim=DIM, clip=1.0, scale=100.0, epsilon=1.0, delta=1e-6, stage_timeout_s=1e6
)
FINAL = ("released", "aborted")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class _Header:
    """The envelope header fields the round sink reads (the rest was decrypted away)."""

    cohort: str
    round: int
    msg_id: str


# The region's device-credential issuer (enrollment, simulated) and what devices pin.
ISSUER = CredentialIssuer.generate("eu", "test-issuer", SystemRandomness())


def trust(region: str) -> IssuerVerifier:
    return IssuerVerifier(region, {ISSUER.key_id: ISSUER.public_key}, valid_at=0.0)


class Devices:
    """One cohort's devices without Kafka or HPKE. Their transport queues payloads; ``pump``
    delivers the rounds-topic rows the outbox holds (published or not) since the last pump,
    then screens and stores the replies with :mod:`ingestion.round_sink` in one transaction.
    A repeated record is answered once (the SecAgg+ client refuses a repeat)."""

    def __init__(self, engine: Engine, config: RegionConfig, n: int) -> None:
        self.engine, self.config = engine, config
        self.queued: list[tuple[Frozen, _Header]] = []
        self.read_upto = 0
        self.participants = [
            RoundParticipant(
                config.name,
                COHORT,
                self,
                self._contribution,
                layout="t",
                wallet=CredentialWallet(),
                trust=trust(config.name),
            )
            for _ in range(n)
        ]

    @staticmethod
    def _contribution(announce: RoundOpen) -> np.ndarray:
        return np.full(announce.dim, 0.25)

    # -- Transport --------------------------------------------------------------------------
    def send(self, payload: Frozen, *, cohort: str, round: int, dedupe_key: str) -> None:
        self.queued.append((payload, _Header(cohort, round, uuid.uuid4().hex)))

    def flush(self) -> int:
        return 0

    # -- driving ----------------------------------------------------------------------------
    def checkin(self, now: datetime) -> None:
        for p in self.participants:
            p.wallet.add([ISSUER.issue(not_after=1 << 40, rng=SystemRandomness())])
            p.checkin()
        self._store(now)

    def pump(self, now: datetime) -> int:
        o = round_outbox.c
        with reading(self.engine) as conn:
            rows = list(
                conn.execute(
                    select(o.id, o.value)
                    .where(o.region == REGION, o.topic == self.config.t.rounds)
                    .where(o.id > self.read_upto)
                    .order_by(o.id)
                )
            )
        for row in rows:
            self.read_upto = row.id
            msg = parse_rounds_message(row.value)
            for p in self.participants:
                p.handle(msg)
        return self._store(now)

    def _store(self, now: datetime) -> int:
        items = [Routed.of(header, payload) for payload, header in self.queued]  # type: ignore[arg-type]
        self.queued = []
        if not items:
            return 0
        verdicts = round_sink.screen(self.engine, REGION, items)
        keep = [item for item, why in zip(items, verdicts, strict=True) if why is None]
        with self.engine.begin() as conn:
            round_sink.stage(conn, REGION, keep, now)
        return len(keep)


# -- fixtures and helpers -------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'eu.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'eu.db'}"


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Structured log events of loggers bound from now on (coordinators made in the test)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


@dataclass
class Region:
    engine: Engine
    config: RegionConfig
    devices: Devices

    def coordinator(self, holder: str) -> RoundCoordinator:
        return RoundCoordinator(
            self.engine,
            None,
            self.config,
            budget=BUDGET,
            lease_s=LEASE_S,
            holder=holder,
            credentials=trust(self.config.name),
        )


@pytest.fixture
def region(db_url: str, tmp_path: Path) -> Iterator[Region]:
    yield from _region(db_url, tmp_path)


@pytest.fixture
def sqlite_region(sqlite_url: str, tmp_path: Path) -> Iterator[Region]:
    yield from _region(sqlite_url, tmp_path)


@pytest.fixture
def pg_region(postgres_url: str, tmp_path: Path) -> Iterator[Region]:
    yield from _region(postgres_url, tmp_path)


def _region(url: str, tmp_path: Path) -> Iterator[Region]:
    engine = open_database(url)
    config = RegionConfig(name=REGION, database_url=url, keyset_dir=str(tmp_path / "keys"))
    try:
        yield Region(engine, config, Devices(engine, config, N))
    finally:
        engine.dispose()


def _open(region: Region, coordinator: RoundCoordinator, now: datetime) -> str:
    region.devices.checkin(now)
    res = coordinator.open_round(COHORT, SPEC, now=now)
    assert res.status == "open", res.reason
    region.devices.pump(now)  # every device advertises its keys
    return res.round_id


def _row(engine: Engine, rid: str) -> Any:
    with reading(engine) as conn:
        return conn.execute(select(rounds).where(rounds.c.round_id == rid)).one()


def _stage_audits(engine: Engine) -> list[str]:
    with reading(engine) as conn:
        details = conn.execute(
            select(audit_log.c.detail)
            .where(audit_log.c.event == "round_stage")
            .order_by(audit_log.c.seq)
        ).scalars()
        return [json.loads(d)["stage"] for d in details]


def _outbox(engine: Engine) -> list[tuple[str, bytes]]:
    o = round_outbox.c
    with reading(engine) as conn:
        return [(r.topic, r.value) for r in conn.execute(select(o.topic, o.value).order_by(o.id))]


def _drive(region: Region, tick: Callable[[datetime], object], rid: str, start: float) -> float:
    """Pump devices and tick until the round is over; returns the time it ended at."""
    t = start
    for _ in range(40):
        region.devices.pump(at(t))
        tick(at(t))
        if _row(region.engine, rid).status in FINAL:
            return t
        t += 1.0
    raise AssertionError(f"round still {_row(region.engine, rid).status}")


def assert_decided_once(region: Region, rid: str) -> None:
    """One release, one ledger charge, every stage closed once, no outbox row twice."""
    engine = region.engine
    assert _row(engine, rid).status == "released"
    with reading(engine) as conn:
        assert conn.execute(select(func.count()).select_from(round_releases)).scalar() == 1
        events = json.loads(conn.execute(select(privacy_ledgers.c.events)).scalar_one())
    assert [e["round_id"] for e in events] == [rid]
    stages = _stage_audits(engine)
    assert len(stages) == len(set(stages)) and stages[0] == "advertise", stages
    out = _outbox(engine)
    assert len({v for _, v in out}) == len(out), "an outbox record was queued twice"
    assert sum(topic == region.config.t.aggregates for topic, _ in out) == 1
    closed = [
        m
        for topic, v in out
        if topic == region.config.t.rounds and isinstance(m := parse_rounds_message(v), RoundClosed)
    ]
    assert [m.outcome for m in closed] == ["released"]
    assert verify_chain(engine, REGION) == (True, None)


class Pause:
    """Wraps a coordinator's ``_close``: it stops there (state loaded, the stage decided,
    nothing written yet) until ``resume`` is set, as a process paused by the OS would."""

    def __init__(self, coordinator: RoundCoordinator) -> None:
        self.reached, self.resume = threading.Event(), threading.Event()
        original = coordinator._close

        def paused(*args: Any, **kwargs: Any) -> None:
            self.reached.set()
            assert self.resume.wait(60), "never resumed"
            original(*args, **kwargs)

        coordinator._close = paused  # type: ignore[method-assign]

    def tick_in_thread(self, coordinator: RoundCoordinator, now: datetime) -> Callable[[], int]:
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(coordinator.tick(now)))
        thread.start()
        assert self.reached.wait(60), "the coordinator never got to close the stage"

        def join() -> int:
            self.resume.set()
            thread.join(60)
            assert not thread.is_alive() and result, "the paused tick did not finish"
            return result[0]

        return join


# -- the lease ------------------------------------------------------------------------------
def test_only_the_lease_holder_ticks_and_a_standby_takes_over_when_it_expires(
    sqlite_region: Region,
) -> None:
    region = sqlite_region
    a, b = region.coordinator("a"), region.coordinator("b")
    assert a.tick(at(0)) == 0 and a.lease.held
    rid = _open(region, a, at(0))
    assert b.tick(at(1)) == 0 and not b.lease.held  # stands by: the lease is a's
    assert b.lease.state()["role"] == "standby" and a.lease.state()["role"] == "active"

    # interleaved ticks while a renews (every tick is within a lease of the last renewal)
    t = 1.0
    while _stage_audits(region.engine) != ["advertise", "shares"]:
        assert b.tick(at(t)) == 0
        a.tick(at(t))
        region.devices.pump(at(t))
        t += 1.0
        assert t < 20
    assert not b._live, "a standby keeps no round state"

    # a stops (crashed: no step-down); b takes over once a's lease ran out by b's clock
    assert b.tick(at(t + LEASE_S / 2)) == 0
    end = _drive(region, b.tick, rid, t + LEASE_S + 1)
    assert b.lease.held and b.lease.epoch == 2
    assert a.tick(at(end + 1)) == 0 and not a.lease.held  # a came back: it stands by
    assert_decided_once(region, rid)


def test_step_down_hands_the_lease_over_at_once(sqlite_region: Region) -> None:
    a, b = sqlite_region.coordinator("a"), sqlite_region.coordinator("b")
    a.tick(at(0))
    assert b.tick(at(1)) == 0 and not b.lease.held
    a.step_down()
    assert not a.lease.held
    b.tick(at(1))
    assert b.lease.held
    with reading(sqlite_region.engine) as conn:
        row = conn.execute(select(coordinator_leases)).one()
    assert (row.holder, row.epoch) == ("b", 2)


def test_a_restarted_holder_adopts_its_own_lease(sqlite_region: Region) -> None:
    """Same holder id, new process (a container restarted in its pod): no wait for expiry,
    and the epoch still moves, so the old process (if it lived) would be fenced."""
    old = sqlite_region.coordinator("pod-0")
    old.tick(at(0))
    new = sqlite_region.coordinator("pod-0")
    new.tick(at(1))
    assert new.lease.held and new.lease.epoch == 2
    old.tick(at(LEASE_S))  # due for renewal: its epoch is gone
    assert not old.lease.held


# -- the fence ------------------------------------------------------------------------------
def test_paused_coordinator_cannot_close_a_stage_the_new_holder_closed(
    region: Region, logs: list[dict[str, Any]]
) -> None:
    """a loads the round and decides to close ``advertise``, then pauses past its lease; b
    takes over and closes it. a's close is refused by the round's version: rolled back whole,
    its cache dropped, and it stands by. Every output exists once."""
    a, b = region.coordinator("a"), region.coordinator("b")
    a.tick(at(0))
    rid = _open(region, a, at(0))
    pause = Pause(a)
    join = pause.tick_in_thread(a, at(1))  # a is now inside _close, nothing written

    assert b.tick(at(1 + LEASE_S)) == 1  # a's lease ran out: b takes it and closes the stage
    outbox_after_b = _outbox(region.engine)
    assert _row(region.engine, rid).version == 1

    assert join() == 0  # a resumed: refused
    assert _outbox(region.engine) == outbox_after_b, "a refused close queued something"
    assert _stage_audits(region.engine) == ["advertise"]
    assert _row(region.engine, rid).version == 1
    assert not a._live and not a.lease.held  # dropped its cache; the lease is b's
    assert [e["round_id"] for e in events(logs, "round_transition_fenced")] == [rid]

    _drive(region, b.tick, rid, 2 + LEASE_S)
    assert_decided_once(region, rid)
    assert not events(logs, "round_tick_failed")


def test_paused_coordinator_is_fenced_by_the_lease_epoch(sqlite_region: Region) -> None:
    """b takes the lease while a is paused but closes nothing yet: the round's version still
    matches, the lease epoch does not. a's transaction is refused all the same."""
    region = sqlite_region
    a, b = region.coordinator("a"), region.coordinator("b")
    a.tick(at(0))
    rid = _open(region, a, at(0))
    pause = Pause(a)
    join = pause.tick_in_thread(a, at(1))
    assert b.lease.hold(region.engine, at(1 + LEASE_S))  # b acquires only
    assert join() == 0
    assert _row(region.engine, rid).version == 0 and _stage_audits(region.engine) == []
    assert not a.lease.held
    _drive(region, b.tick, rid, 2 + LEASE_S)
    assert_decided_once(region, rid)


def test_a_stale_cache_is_refused_by_the_round_version(sqlite_region: Region) -> None:
    """The version check on its own: the holder's cached state is from version 0, and the
    round moved on behind its back (here: bumped directly). Its close is refused; the next
    tick reloads and closes from the database's state."""
    region = sqlite_region
    a = region.coordinator("a")
    a.tick(at(0))
    rid = _open(region, a, at(0))
    pause = Pause(a)
    join = pause.tick_in_thread(a, at(1))
    with region.engine.begin() as conn:
        conn.execute(update(rounds).values(version=rounds.c.version + 1))
    assert join() == 0 and a.lease.held  # refused, and still the holder
    assert _stage_audits(region.engine) == []
    assert a.tick(at(2)) == 1  # reloaded at version 1: closes
    assert _row(region.engine, rid).version == 2


# -- on a real server -----------------------------------------------------------------------
def test_postgres_two_coordinators_tick_concurrently_through_a_round(
    pg_region: Region, logs: list[dict[str, Any]]
) -> None:
    """Two coordinators in two threads tick at the same instants (a barrier) through a whole
    round. Every third step the holder stalls past its lease and only the other ticks, so
    the lease changes hands and the old holder comes back to a lease (and rounds) that moved
    on. Whoever decides each step: one release, one charge, nothing queued twice."""
    region = pg_region
    a, b = region.coordinator("a"), region.coordinator("b")
    rid = _open(region, a, at(0))
    together = threading.Barrier(2, timeout=60)
    holders: list[str] = []

    def tick(c: RoundCoordinator, now: datetime) -> int:
        together.wait()
        return c.tick(now)

    t = 0.0
    with ThreadPoolExecutor(2) as pool:
        for step in range(60):
            region.devices.pump(at(t))
            holder = next((c for c in (a, b) if c.lease.held), None)
            if step % 3 == 2 and holder is not None:  # the holder stalls: the other takes over
                t += LEASE_S * 1.5
                (b if holder is a else a).tick(at(t))  # (the stalled one cannot know yet)
            else:
                for f in [pool.submit(tick, c, at(t)) for c in (a, b)]:
                    f.result(timeout=120)
                held = [c.lease.holder for c in (a, b) if c.lease.held]
                assert len(held) == 1, f"lease held by {held} at step {step}"
            with reading(region.engine) as conn:
                holders.append(conn.execute(select(coordinator_leases.c.holder)).scalar_one())
            if _row(region.engine, rid).status in FINAL:
                break
            t += LEASE_S * 0.2
    assert_decided_once(region, rid)
    assert {"a", "b"} <= set(holders), holders  # the lease did change hands mid-round
    assert not events(logs, "round_tick_failed")  # no deadlock or error, only decisions
    assert len(events(logs, "round_released")) == 1


def test_postgres_concurrent_opens_of_one_cohort_end_like_sequential_ones(
    pg_region: Region, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both read the cohort's next round number before either inserts (a barrier inside the
    transaction), so both try round 0: the key lets one commit, the other is retried on a
    fresh snapshot and opens round 1 with check-ins the first did not take."""
    region = pg_region
    a, b = region.coordinator("a"), region.coordinator("b")
    for _ in range(2):
        region.devices.checkin(at(0))  # 2N check-ins: enough for two rounds
    both_read = threading.Barrier(2, timeout=60)
    first = threading.local()
    next_round = round_open.next_round

    def racing_next_round(*args: Any) -> int:
        n = next_round(*args)
        if not getattr(first, "done", False):
            first.done = True
            both_read.wait()
        return n

    monkeypatch.setattr(round_open, "next_round", racing_next_round)
    spec = dataclasses.replace(SPEC, max_clients=N)
    with ThreadPoolExecutor(2) as pool:
        opening = [pool.submit(c.open_round, COHORT, spec, now=at(1)) for c in (a, b)]
        results = [f.result(timeout=120) for f in opening]
    assert sorted(r.round for r in results) == [0, 1]
    assert all(r.status == "open" for r in results), results
    with reading(region.engine) as conn:
        announced = [
            RoundOpen.model_validate_json(j)
            for j in conn.execute(select(rounds.c.open_json).order_by(rounds.c.round)).scalars()
        ]
        opens = conn.execute(
            select(func.count()).select_from(audit_log).where(audit_log.c.event == "round_open")
        ).scalar()
    assert len(announced) == 2 and opens == 2
    assert not set(announced[0].participants) & set(announced[1].participants)
    assert verify_chain(region.engine, REGION) == (True, None)
