"""What devices of a cohort run next round: the learner's plan, carried in every ``RoundOpen``.

Why in ``privacy/``: the learner writes it, the coordinator forwards it inside the round
announcement and the device acts on it, so it is a device<->backend contract with one
definition (``RoundOpen.adapter_plan`` is typed with it). :class:`AdapterStatus` is the
registry lifecycle that adapter manifests and plans speak about.

>>> plan = AdapterPlan(cohort="c0", live_version=3, canary_version=4, canary_fraction=0.1)
>>> AdapterPlan.model_validate_json(plan.model_dump_json()) == plan
True
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from privacy.wire import Frozen


class AdapterStatus(StrEnum):
    """Registry lifecycle; transitions are a table in ``learner/rollout.py``."""

    CANDIDATE = "candidate"
    SHADOW = "shadow"
    CANARY = "canary"
    LIVE = "live"
    ROLLED_BACK = "rolled_back"
    RETIRED = "retired"
    REJECTED = "rejected"


class AdapterPlan(Frozen):
    """What devices of a cohort do in the next round: which adapter is live for everyone,
    which one canary devices (stable hash, ``canary_fraction``) run, and which one every
    device evaluates in shadow (never shown). ``previous_version`` is the fallback every device
    keeps for local rollback; the rollout comparison scores live against it."""

    cohort: str
    live_version: int | None = None
    canary_version: int | None = None
    canary_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    shadow_version: int | None = None
    previous_version: int | None = None
