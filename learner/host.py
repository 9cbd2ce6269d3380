"""Where the service keeps its cohort learners: created on first sight, restored from the DB.

The service needs only four verbs of a learner (:class:`CohortModel`), which
:class:`learner.cohort.CohortLearner` provides; tests pass any object with the same verbs. A
*factory* ``(region, cohort, state) -> learner`` makes a new learner (``state is None``) or
restores one from the bytes of its last ``to_state()``.

Why a cache with revisions: learning mutates the learner in memory *before* the transaction
that makes it durable. If that transaction fails, or another instance of the service commits
the same cohort in between, the in-memory object is wrong; the cache then drops it and the
next release reloads the durable state. The stored ``revision`` makes that detectable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Engine, select

from backend.storage import reading
from learner.actions import AdapterAction
from learner.registry import learner_state
from privacy.adapter_plan import AdapterPlan
from privacy.wire import ReleasedAggregate


class CohortModel(Protocol):
    """What the service calls on a cohort's learner (River-style ``learn_one``)."""

    def learn_one(self, release: ReleasedAggregate) -> list[AdapterAction]: ...

    def plan(self) -> AdapterPlan: ...

    def to_state(self) -> bytes: ...


LearnerFactory = Callable[[str, str, bytes | None], CohortModel]


@dataclass(slots=True)
class Hosted:
    """A learner and what the DB said about it when it was loaded (or last committed)."""

    learner: CohortModel
    revision: int | None  # None: no stored state yet
    last_round: int | None
    plan: dict[str, Any] | None  # the plan last queued for the adapters topic


class LearnerCache:
    """Cohort -> :class:`Hosted`, loading from ``learner_state`` on a miss."""

    def __init__(self, factory: LearnerFactory, region: str, engine: Engine) -> None:
        self._factory = factory
        self._region = region
        self._engine = engine
        self._hosted: dict[str, Hosted] = {}

    def get(self, cohort: str) -> Hosted:
        hosted = self._hosted.get(cohort)
        if hosted is None:
            hosted = self._load(cohort)
            self._hosted[cohort] = hosted
        return hosted

    def committed(self, cohort: str, revision: int, last_round: int, plan: dict[str, Any]) -> None:
        hosted = self._hosted[cohort]
        hosted.revision, hosted.last_round, hosted.plan = revision, last_round, plan

    def drop(self, cohort: str | None = None) -> None:
        """Forget one cohort's learner (or all): the next use reloads the durable state."""
        if cohort is None:
            self._hosted.clear()
        else:
            self._hosted.pop(cohort, None)

    def _load(self, cohort: str) -> Hosted:
        c = learner_state.c
        stmt = select(c.state, c.revision, c.last_round, c.plan).where(
            c.region == self._region, c.cohort == cohort
        )
        with reading(self._engine) as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return Hosted(self._factory(self._region, cohort, None), None, None, None)
        learner = self._factory(self._region, cohort, bytes(row.state))
        return Hosted(learner, int(row.revision), int(row.last_round), row.plan)


def cohort_learner_factory(base_net: Any, config: Any = None) -> LearnerFactory:
    """The production factory: :class:`learner.cohort.CohortLearner` on the shared base net."""
    from learner.cohort import CohortLearner  # imported late: torch-heavy, and optional in tests

    def make(region: str, cohort: str, state: bytes | None) -> CohortModel:
        if state is not None:
            return CohortLearner.from_state(state, base_net)
        if config is None:
            return CohortLearner(region, cohort, base_net)
        return CohortLearner(region, cohort, base_net, config)

    return make
