"""The per-region round coordinator: drives SecAgg+ rounds over the region's Kafka topics.

It is the ``simulate.run_round`` loop with topics and a database in between::

    open_round ──► RoundOpen on <R>.rounds
    devices ──► <R>.ingest ──► ingestion (validate, decrypt, dedupe) ──► round_messages
    tick(now): feed new stored messages to the SecAggServer; when a stage is complete (every
               expected client answered), or its goal count answered a grace ago, or its
               deadline passed: close it, in ONE transaction with its outputs queued for
               <R>.rounds; after the unmask stage, release
    release:   round status + ledger charge + round_releases row + ReleasedAggregate queued for
               <R>.aggregates + audit row, in ONE transaction; published from the outbox after

Time is passed in (``tick(now)``), so tests control deadlines. ``allow_deadline=False`` holds
deadline closes back while ingestion still has a backlog (after a restart, messages that
arrived while the coordinator was down are stored before anyone is counted as dropped).

Crash safety: every decision is a database transaction, every publish comes from the outbox,
and the in-memory :class:`~ingestion.round_state.LiveRound` is only a cache: after a restart
(or a failed commit) it is rebuilt by replaying the stored messages of the closed stages.
What the coordinator can see: public keys, sealed shares it cannot open, masked vectors, the
shares it asks for, and the unmasked cohort sum, which it releases only with DP noise.
It never logs message bodies.

One coordinator per region at a time: every replica of the round service has one, and only
the holder of the region's lease (:mod:`ingestion.coordinator_lease`) ticks; the others stand
by and take over when it stops renewing. A lease can run out under a paused holder, so each
stage transition is also fenced in its own transaction: it bumps the round's ``version`` only
from the version its cached state was loaded at, and checks the lease epoch. Either refusal
rolls the whole transaction back (no outbox row, audit row, ledger charge or release) and
drops the cache, which the next tick rebuilds from the database.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import structlog
from kafka import KafkaProducer
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from backend.storage import reading
from ingestion import audit, ledger_store, round_outbox
from ingestion.audit import AuditEvent
from ingestion.coordinator_lease import CoordinatorFenced, CoordinatorLease, default_holder
from ingestion.round_open import OpenResult, RoundSpec, event, open_round
from ingestion.round_state import LiveRound
from ingestion.rounds_db import ACTIVE, round_messages, round_releases, rounds
from privacy import accountant
from privacy.adapter_plan import AdapterPlan
from privacy.credential import IssuerVerifier
from privacy.ledger import Budget, BudgetExceeded
from privacy.policy import RegionConfig
from privacy.rand import DEFAULT_RANDOMNESS, Randomness
from privacy.round import release
from privacy.round_wire import RoundClosed, RoundOpen, rounds_message_bytes
from privacy.secagg import RoundAborted
from privacy.wire import ReleasedAggregate, utcnow

log = structlog.get_logger(__name__)

OPEN_ATTEMPTS = 3  # an open that lost a race on a key is retried on a fresh snapshot


class RoundCoordinator:
    """Rounds of one region. Parameters are stored under their own names.

    Parameters
    ----------
    engine
        The region database (the one ingestion writes ``round_messages`` to).
    producer
        A ``KafkaProducer`` on the region's brokers (``acks="all"``) for the outbox.
    config
        The region's :class:`~privacy.policy.RegionConfig` (topics).
    budget
        The (epsilon, delta) budget of a cohort that has no ledger row yet.
    allow_unnoised
        Accept rounds without DP noise (``RoundSpec.epsilon=None``); their sum is stored, never
        published. Tests only.
    max_envelope_bytes
        Ingestion's envelope limit: rounds whose masked input would not fit are refused.
    randomness
        Participant sampling and graph seeds (OS CSPRNG by default).
    credentials
        The device-credential issuers this region trusts (:class:`~privacy.credential.IssuerVerifier`);
        each round judges credentials at its opening time, so a replay decides the same.
    lease_s
        Seconds the region's coordinator lease lasts unless renewed (``rounds.lease_s``): how
        long a standby waits after the active coordinator stopped.
    holder
        This coordinator's name in the lease (``rounds.coordinator_id``); unique per replica.
        Default ``<hostname>:<pid>``.
    """

    def __init__(
        self,
        engine: Engine,
        producer: KafkaProducer | None,
        config: RegionConfig,
        *,
        budget: Budget,
        allow_unnoised: bool = False,
        max_envelope_bytes: int = 64 * 1024,
        randomness: Randomness = DEFAULT_RANDOMNESS,
        credentials: IssuerVerifier,
        lease_s: float = 20.0,
        holder: str | None = None,
    ) -> None:
        self.engine = engine
        self.producer = producer
        self.config = config
        self.region = config.name
        self._outbox = round_outbox.outbox(self.region)
        self.budget = budget
        self.allow_unnoised = allow_unnoised
        self.max_envelope_bytes = max_envelope_bytes
        self.randomness = randomness
        self.credentials = credentials
        self.lease = CoordinatorLease(self.region, holder or default_holder(), lease_s)
        self._live: dict[str, LiveRound] = {}
        self._versions: dict[str, int] = {}  # round_id -> rounds.version its cache is at
        self._log = log.bind(region=self.region)

    def __repr__(self) -> str:
        return f"RoundCoordinator(region={self.region!r}, live={len(self._live)})"

    # -- announcing -----------------------------------------------------------------------
    def open_round(
        self,
        cohort: str,
        spec: RoundSpec,
        *,
        participants: Sequence[str] | None = None,
        adapter_plan: AdapterPlan | None = None,
        now: datetime | None = None,
    ) -> OpenResult:
        """Plan, budget-check and announce a round (see :mod:`ingestion.round_open`).

        Any coordinator may open rounds, lease or not. Two opening the same cohort's next
        round at once race on the ``(region, cohort, round)`` key: one commits, the other's
        whole transaction fails (on SQLite they simply queue) and is retried on a fresh
        snapshot, so it is numbered after the winner's and its budget check and sampling see
        the winner's round. Concurrent opens thus end like sequential ones."""
        now = now or utcnow()
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            try:
                with self.engine.begin() as conn:
                    result = open_round(
                        conn,
                        region=self.region,
                        cohort=cohort,
                        spec=spec,
                        rounds_topic=self.config.t.rounds,
                        budget=self.budget,
                        now=now,
                        rng=self.randomness,
                        allow_unnoised=self.allow_unnoised,
                        max_envelope_bytes=self.max_envelope_bytes,
                        participants=participants,
                        adapter_plan=adapter_plan,
                    )
                break
            except IntegrityError:  # the round key, or the audit chain head another writer took
                if attempt == OPEN_ATTEMPTS:
                    raise
                self._log.info("round_open_raced", cohort=cohort, attempt=attempt)
        self._log.info(
            "round_" + result.status,
            round_id=result.round_id,
            n=result.n,
            reason=result.reason[:200],
        )
        self.publish()
        return result

    # -- driving --------------------------------------------------------------------------
    def tick(self, now: datetime | None = None, *, allow_deadline: bool = True) -> int:
        """Advance every live round of the region; returns how many stages closed.

        Only while this coordinator holds the region's lease (acquired or renewed here, at
        ``now``); a standby returns 0 and keeps no round state, which would be stale by the
        time it takes over."""
        now = now or utcnow()
        tenure = self.lease.epoch
        if not self.lease.hold(self.engine, now) or self.lease.epoch != tenure:
            self._live, self._versions = {}, {}  # others may have decided since: reload
            if not self.lease.held:
                return 0
        c = rounds.c
        with reading(self.engine) as conn:
            active = list(
                conn.execute(
                    select(c.round_id, c.stage_deadline, c.version)
                    .where(c.region == self.region, c.status.in_(ACTIVE))
                    .order_by(c.opened_at)
                )
            )
        closed = 0
        for row in active:
            if self._versions.get(row.round_id) != row.version:  # moved on without this cache
                self._live.pop(row.round_id, None)
            # read before the state is (re)loaded, so never newer than it: a transition after
            # this read makes the claim in _close fail, it cannot be overwritten
            self._versions[row.round_id] = row.version
            try:
                closed += self._advance(row.round_id, row.stage_deadline, now, allow_deadline)
            except CoordinatorFenced as exc:  # another coordinator decided first: not an error
                self._forget(row.round_id)
                self._log.info("round_transition_fenced", round_id=row.round_id, why=str(exc))
                if not self.lease.held:
                    break
            except Exception as exc:  # infrastructure (DB, broker): retried on the next tick
                self._forget(row.round_id)  # rebuilt from the database next tick
                self._log.warning(
                    "round_tick_failed",
                    round_id=row.round_id,
                    error=exc.__class__.__name__,
                    detail=str(exc)[:200],
                )
        ids = {r.round_id for r in active}
        self._live = {k: v for k, v in self._live.items() if k in ids}
        self._versions = {k: v for k, v in self._versions.items() if k in ids}
        if self.lease.held:
            self.publish()  # what this tick decided, and rows an earlier failed publish left
        return closed

    def step_down(self) -> None:
        """Give the region's lease up (on shutdown): a standby takes over at its next tick."""
        self.lease.step_down(self.engine)
        self._live, self._versions = {}, {}

    def _forget(self, round_id: str) -> None:
        self._live.pop(round_id, None)
        self._versions.pop(round_id, None)

    def publish(self) -> int:
        """Publish queued records (also what a restart calls first)."""
        if self.producer is None:
            return 0
        try:
            return self._outbox.publish_pending(self.engine, self.producer)
        except Exception as exc:  # broker away: the rows stay queued for the next publish
            self._log.warning("round_publish_failed", error=exc.__class__.__name__)
            return 0

    def status(self, round_id: str) -> str | None:
        with reading(self.engine) as conn:
            return conn.execute(
                select(rounds.c.status).where(
                    rounds.c.region == self.region, rounds.c.round_id == round_id
                )
            ).scalar()

    def _load(self, round_id: str) -> LiveRound:
        live = self._live.get(round_id)
        if live is not None:
            return live
        c, m = rounds.c, round_messages.c
        with reading(self.engine) as conn:
            row = conn.execute(
                select(c.open_json, c.graph_seed, c.stage_log, c.opened_at).where(
                    c.region == self.region, c.round_id == round_id
                )
            ).one()
            log_ = dict(row.stage_log or {})
            bodies = {
                (r.type, int(r.sender)): r.body
                for r in conn.execute(
                    select(m.type, m.sender, m.body).where(
                        m.region == self.region, m.round_id == round_id
                    )
                )
            }
        live = LiveRound.rebuild(
            RoundOpen.model_validate_json(row.open_json),
            row.graph_seed,
            log_,
            bodies,
            verifier=self.credentials.at(float(row.opened_at)),
        )
        self._live[round_id] = live
        return live

    def _advance(
        self, round_id: str, deadline: float | None, now: datetime, allow_deadline: bool
    ) -> int:
        """Close the round's stage when it is due (:meth:`LiveRound.due`): every expected
        client answered, or the stage's goal count answered ``grace_s`` ago, or its
        deadline passed. The goal and deadline closes count the silent clients as dropped,
        so they wait while ingestion has a backlog (``allow_deadline=False``)."""
        live = self._load(round_id)
        self._feed_new(live)
        why = live.due(now.timestamp(), deadline, settled=allow_deadline)
        if why is None:
            return 0
        self._close(live, now, why)
        return 1

    def _feed_new(self, live: LiveRound) -> None:
        """Read only the new senders' bodies of the current stage (masked inputs are big)."""
        mtype, m = live.message_type, round_messages.c
        where = (
            (m.region == self.region) & (m.round_id == live.announce.round_id) & (m.type == mtype)
        )
        with reading(self.engine) as conn:
            senders = set(conn.execute(select(m.sender).where(where)).scalars())
            new = sorted(senders - live.answered)
            for i in range(0, len(new), 500):
                chunk = new[i : i + 500]
                for r in conn.execute(select(m.sender, m.body).where(where, m.sender.in_(chunk))):
                    live.feed(int(r.sender), r.body)

    # -- closing --------------------------------------------------------------------------
    def _close(self, live: LiveRound, now: datetime, why: str) -> None:
        a = live.announce
        stage, ts = live.stage, now.timestamp()
        got, expected, rejected = len(live.accepted), len(live.expected), dict(live.rejected)
        events: list[AuditEvent] = [
            event(
                self.region,
                "round_reject",
                a.cohort,
                a.round,
                now,
                reason,
                {"round_id": a.round_id, "stage": stage, "client": cid},
            )
            for cid, reason in sorted(rejected.items())
        ]
        c = rounds.c
        key = (c.region == self.region) & (c.round_id == a.round_id)
        with self.engine.begin() as conn:
            version = self._claim(conn, a.round_id)
            try:
                out = live.close()
            except RoundAborted as exc:
                events.append(
                    event(
                        self.region,
                        "round_abort",
                        a.cohort,
                        a.round,
                        now,
                        "too_few_clients",
                        {
                            "round_id": a.round_id,
                            "stage": stage,
                            "n": a.params.n,
                            "answered": got,
                            "why": exc.detail[:200],
                        },
                    )
                )
                self._finish(conn, a, "aborted", exc.detail, ts)
                audit.append(conn, self.region, events)
                self._log.info("round_aborted", round_id=a.round_id, stage=stage, answered=got)
                return
            for msg in out:
                round_outbox.put(
                    conn,
                    self.region,
                    self.config.t.rounds,
                    a.round_id.encode(),
                    rounds_message_bytes(msg),
                    ts,
                )
            events.append(
                event(
                    self.region,
                    "round_stage",
                    a.cohort,
                    a.round,
                    now,
                    why,
                    {
                        "round_id": a.round_id,
                        "stage": stage,
                        "expected": expected,
                        "answered": got,
                        "rejected": len(rejected),
                        "dropped": expected - got,
                    },
                )
            )
            status = live.server.state
            if live.stage is None:
                events.append(self._release(conn, live, now))
            else:
                conn.execute(
                    rounds.update()
                    .where(key)
                    .values(
                        status=status,
                        stage_log=live.stage_log,
                        stage_deadline=ts + a.stage_timeout_s,
                    )
                )
            audit.append(conn, self.region, events)
        self._versions[a.round_id] = version
        self._log.info(
            "round_stage_closed",
            round_id=a.round_id,
            stage=stage,
            why=why,
            answered=got,
            expected=expected,
        )

    def _claim(self, conn: Any, round_id: str) -> int:
        """Open a stage transition in ``conn`` (first, so on a server it takes the round's row
        lock before anything is written): bump the round's version from the one its cached
        state was loaded at, and check the lease. Either refusal raises
        :class:`CoordinatorFenced` and rolls back all the caller did; returns the new version.
        """
        c, seen = rounds.c, self._versions.get(round_id)
        moved = (
            seen is None
            or conn.execute(
                rounds.update()
                .where(c.region == self.region, c.round_id == round_id, c.version == seen)
                .values(version=c.version + 1)
            ).rowcount
            != 1
        )
        self.lease.fence(conn)  # also when moved: a coordinator that lost the lease stands by
        if moved:
            raise CoordinatorFenced(f"round {round_id} moved on from version {seen}")
        return int(seen) + 1  # type: ignore[arg-type]

    def _finish(self, conn: Any, a: RoundOpen, outcome: str, reason: str, ts: float) -> None:
        c = rounds.c
        conn.execute(
            rounds.update()
            .where((c.region == self.region) & (c.round_id == a.round_id))
            .values(status=outcome, closed_at=ts, stage_deadline=None, detail=reason[:1000])
        )
        notice = RoundClosed(round_id=a.round_id, outcome=outcome, reason=reason[:256])  # type: ignore[arg-type]
        round_outbox.put(
            conn,
            self.region,
            self.config.t.rounds,
            a.round_id.encode(),
            rounds_message_bytes(notice),
            ts,
        )

    def _release(self, conn: Any, live: LiveRound, now: datetime) -> AuditEvent:
        """The one place a cohort sum leaves the coordinator: DP-noised, charged, once."""
        a, ts = live.announce, now.timestamp()
        result = live.server.result()
        plan = a.plan()
        total = release(result, plan)
        survivors = len(result.survivors)
        dropped = a.params.n - survivors
        noised = a.epsilon > 0
        eps_round = eps_spent = 0.0
        outbox_id = None
        if noised:
            ledger = ledger_store.load(conn, self.region, a.cohort, self.budget)
            try:
                ledger = ledger.charge(plan.charge_event(self.region, a.cohort))
            except BudgetExceeded as exc:  # only if the budget was lowered mid-round
                self._finish(conn, a, "aborted", f"budget: {exc}", ts)
                return event(
                    self.region,
                    "round_abort",
                    a.cohort,
                    a.round,
                    now,
                    "budget_exceeded",
                    {"round_id": a.round_id},
                )
            ledger_store.save(conn, ledger, ts)
            eps_round = accountant.epsilon([plan.noise.noise_multiplier], a.delta)
            eps_spent = ledger.spent()
            agg = ReleasedAggregate.build(
                total,
                region=self.region,
                cohort=a.cohort,
                round=a.round,
                layout=a.layout,
                participants=survivors,
                dropped=dropped,
                noise_stddev=math.sqrt(survivors * plan.noise.client_variance) / a.scale,
                epsilon=eps_round,
                delta=a.delta,
                epsilon_spent=eps_spent,
                released_at=now,
            )
            outbox_id = round_outbox.put(
                conn,
                self.region,
                self.config.t.aggregates,
                agg.key(),
                agg.model_dump_json().encode(),
                ts,
            )
        conn.execute(
            round_releases.insert().values(
                region=self.region,
                cohort=a.cohort,
                round=a.round,
                round_id=a.round_id,
                epsilon=eps_round,
                epsilon_spent=eps_spent,
                participants=survivors,
                dropped=dropped,
                noised=int(noised),
                outbox_id=outbox_id,
                released_at=ts,
                total=total.astype("<f8").tobytes(),
            )
        )
        conn.execute(
            rounds.update()
            .where((rounds.c.region == self.region) & (rounds.c.round_id == a.round_id))
            .values(stage_log=live.stage_log)
        )
        self._finish(conn, a, "released", "", ts)
        self._log.info(
            "round_released",
            round_id=a.round_id,
            participants=survivors,
            dropped=dropped,
            epsilon=eps_round,
            epsilon_spent=eps_spent,
        )
        return event(
            self.region,
            "round_release",
            a.cohort,
            a.round,
            now,
            None,
            {
                "round_id": a.round_id,
                "participants": survivors,
                "dropped": dropped,
                "n": a.params.n,
                "k": a.params.k,
                "t": a.params.t,
                "bits": a.params.bits,
                "dim": a.dim,
                "layout": a.layout,
                "epsilon": round(eps_round, 6),
                "delta": a.delta,
                "epsilon_spent": round(eps_spent, 6),
                "noised": noised,
            },
        )


def released_total(engine: Engine, region: str, cohort: str, rnd: int) -> Any:
    """The released (or, for test rounds, held) total of one round, for tests and tools."""
    import numpy as np

    c = round_releases.c
    with reading(engine) as conn:
        row = conn.execute(
            select(c.total).where(c.region == region, c.cohort == cohort, c.round == rnd)
        ).first()
    return None if row is None else np.frombuffer(row.total, dtype="<f8").copy()


Clock = Callable[[], datetime]
