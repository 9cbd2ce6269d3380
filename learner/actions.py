"""The contract between a cohort's learning logic and the service that runs it.

:class:`learner.cohort.CohortLearner` (pure: no Kafka, no DB) turns each released aggregate
into a list of :class:`AdapterAction` and tells the round coordinator what devices should do
next round (:class:`privacy.adapter_plan.AdapterPlan`). The service (``learner/service.py``) persists the learner's
state, the registry rows and the consumed offsets in one transaction, then signs and
publishes the actions. Keeping the two apart is what lets the learning logic be tested
exhaustively in memory and the exactly-once machinery be tested against the real broker.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from privacy.adapter_plan import AdapterStatus
from privacy.wire import Frozen


class AdapterAction(Frozen):
    """Something the service must record and (for ``ship``/``rollback``) sign and publish."""

    kind: Literal["register", "ship", "promote", "rollback", "reject", "retire"]
    region: str
    cohort: str
    version: Annotated[int, Field(ge=0)]
    parent_version: int | None = None
    status: AdapterStatus
    rollout_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    lora_a: list[list[float]] | None = None  # hidden x rank (present for ship/rollback)
    lora_b: list[list[float]] | None = None  # rank x candidates
    rounds: list[int] = Field(default_factory=list)  # rounds in the window that fitted it
    epsilon_spent: float = 0.0
    metrics: dict[str, float] = Field(default_factory=dict)
    reason: str = ""
