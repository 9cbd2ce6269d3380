"""The learner's checkpoint: one consumed record's results become durable in ordered steps.

A :class:`LearnerCheckpoint` holds what one record of ``<region>.aggregates`` decided: either a
refusal, or a learned release (the learner's new state, its plan, its actions). Commit runs:

1. **One database transaction** (all or nothing):
   a. the offset fence: refuse a record before the stored next offset (a zombie or a re-read
      would otherwise learn it twice);
   b. for a learned release: refuse if ``(region, cohort, round)`` is already learned, or if
      the cohort's stored ``revision`` is not the one this learner was loaded at; then record
      the actions (registry rows, history, signed artifacts into ``adapter_outbox``,
      :mod:`learner.recorder`), queue the plan if it changed, store the learner state;
   c. for a refusal: a ``learner_refusals`` row;
   d. the next offset.
2. **Publish the outbox** (the service, :mod:`learner.adapter_topic`): produce every pending
   row with an idempotent producer (acks=all), flush, then mark them published. A crash
   between produce and mark republishes identical bytes under the same compacted keys, which
   devices apply idempotently: at-least-once delivery, exactly-once effect.
3. **Kafka group offsets**, a mirror for lag dashboards only.

The fence, the offset and the status are the backend's one checkpoint
(:class:`backend.checkpoint.Checkpoint`); this class adds what the learner writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Engine, Table, and_, select

from backend.checkpoint import Checkpoint, CheckpointStatus
from backend.errors import CheckpointError
from learner.actions import AdapterAction
from learner.artifacts import ArtifactRecord, Signer, plan_key
from learner.errors import InvalidActionsError, StaleLearnerError
from learner.intake import Refusal
from learner.recorder import ActionRecorder
from learner.registry import (
    adapter_outbox,
    learner_offsets,
    learner_refusals,
    learner_releases,
    learner_state,
)
from privacy.adapter_plan import AdapterPlan
from privacy.errors import LocalProtocolError
from privacy.wire import ReleasedAggregate


@dataclass(frozen=True, slots=True)
class Learned:
    """What learning one release produced, before it is durable."""

    release: ReleasedAggregate
    actions: list[AdapterAction]
    state: bytes
    plan: AdapterPlan
    expected_revision: int | None  # the stored revision the learner was loaded at


@dataclass(kw_only=True)
class LearnerCheckpoint(Checkpoint):
    """One record's pending result; :meth:`commit` makes it durable (see module docs)."""

    region: str
    topic: str
    partition: int
    offset: int
    now: datetime
    offsets: Table = learner_offsets
    learned: Learned | None = None
    refusal: Refusal | None = None
    outbox: list[ArtifactRecord] = field(default_factory=list)
    revision: int | None = None  # the cohort's new revision once committed

    def __post_init__(self) -> None:
        self.advance(self.topic, self.partition, self.offset)

    def _guard_one(self) -> None:
        self._guard()
        if self.learned is not None or self.refusal is not None:
            raise CheckpointError("a checkpoint holds exactly one record's result")

    def learn(self, learned: Learned) -> None:
        self._guard_one()
        self.learned = learned

    def refuse(self, refusal: Refusal) -> None:
        self._guard_one()
        self.refusal = refusal

    def commit(self, engine: Engine, signer: Signer) -> None:
        """Step 1: the one transaction. On any failure the status becomes ``failed`` and
        nothing of this record is durable."""
        if self.status is not CheckpointStatus.OPEN or (self.learned is None) == (
            self.refusal is None
        ):
            raise CheckpointError("commit needs an open checkpoint with one result")

        def write(conn: Connection) -> None:
            if self.learned is not None:
                self._store_learned(conn, signer, self.learned)
            else:
                assert self.refusal is not None
                self._store_refusal(conn, self.refusal)

        try:
            self.commit_with(engine, write)
        except Exception:
            self.outbox = []
            raise

    # -- 1b --------------------------------------------------------------------------------
    def _store_learned(self, conn: Connection, signer: Signer, learned: Learned) -> None:
        rel = learned.release
        r = learner_releases.c
        seen = conn.execute(
            select(r.round).where(
                r.region == rel.region, r.cohort == rel.cohort, r.round == rel.round
            )
        ).first()
        if seen is not None:
            raise StaleLearnerError(f"{rel.key().decode()} is already learned")
        s = learner_state.c
        where = and_(s.region == rel.region, s.cohort == rel.cohort)
        row = conn.execute(select(s.revision, s.last_round, s.plan).where(where)).first()
        stored_revision = None if row is None else int(row.revision)
        if stored_revision != learned.expected_revision:
            raise StaleLearnerError(
                f"{rel.cohort}: stored revision {stored_revision}, "
                f"learner loaded at {learned.expected_revision}"
            )
        try:
            self.outbox = ActionRecorder(conn, signer, rel, self.now).record(learned.actions)
        except (LocalProtocolError, ValueError) as exc:
            raise InvalidActionsError(str(exc)) from exc
        plan = learned.plan.model_dump(mode="json")
        if row is None or row.plan != plan:
            self.outbox.append(
                ArtifactRecord(
                    rel.cohort,
                    None,
                    "plan",
                    plan_key(rel.cohort),
                    learned.plan.model_dump_json().encode(),
                )
            )
        self.revision = (stored_revision or 0) + 1
        values = {
            "state": learned.state,
            "last_round": max(rel.round, row.last_round if row else rel.round),
            "revision": self.revision,
            "plan": plan,
            "updated_at": self.now,
        }
        if row is None:
            conn.execute(
                learner_state.insert().values(region=rel.region, cohort=rel.cohort, **values)
            )
        else:
            conn.execute(learner_state.update().where(where).values(**values))
        conn.execute(
            learner_releases.insert().values(
                region=rel.region,
                cohort=rel.cohort,
                round=rel.round,
                topic=self.topic,
                partition=self.partition,
                offset=self.offset,
                epsilon_spent=rel.epsilon_spent,
                participants=rel.participants,
                actions=len(learned.actions),
                applied_at=self.now,
            )
        )
        if self.outbox:
            conn.execute(
                adapter_outbox.insert(),
                [
                    {
                        "region": self.region,
                        "cohort": o.cohort,
                        "version": o.version,
                        "kind": o.kind,
                        "record_key": o.key,
                        "value": o.value,
                        "created_at": self.now,
                        "published_at": None,
                    }
                    for o in self.outbox
                ],
            )

    # -- 1c --------------------------------------------------------------------------------
    def _store_refusal(self, conn: Connection, refusal: Refusal) -> None:
        rel = refusal.release
        conn.execute(
            learner_refusals.insert().values(
                region=self.region,
                topic=self.topic,
                partition=self.partition,
                offset=self.offset,
                reason=refusal.reason.value,
                detail=refusal.detail[:512],
                claimed_region=rel.region if rel else None,
                cohort=rel.cohort if rel else None,
                round=rel.round if rel else None,
                at=self.now,
            )
        )
