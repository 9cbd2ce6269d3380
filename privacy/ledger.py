"""A pure privacy-budget ledger per (region, cohort): state in, decisions out.

The ledger holds the list of charged releases (:class:`ChargeEvent`) and the cohort's
:class:`Budget`. It does no I/O: the database layer persists ``events`` as JSON and rebuilds
the ledger with :meth:`Ledger.from_events`. The round coordinator asks :meth:`can_afford`
*before* announcing a round (so no device sends anything for a round that would overspend)
and calls :meth:`charge` once the round is committed; ``charge`` returns a new ledger.

Spending is RDP composition through :mod:`privacy.accountant`, read off at
``budget.delta - sum(delta_slack)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from privacy import accountant
from privacy.errors import LocalProtocolError, SottoError
from privacy.wire import ID_PATTERN, REGION_PATTERN, Frozen


class BudgetExceeded(SottoError):
    """The release would push the cohort over its (epsilon, delta) budget."""


class Budget(Frozen):
    """A cohort's total privacy budget."""

    epsilon: Annotated[float, Field(gt=0)]
    delta: Annotated[float, Field(gt=0, lt=1)]


class ChargeEvent(Frozen):
    """One release of a DP-noised cohort sum, as the accountant sees it."""

    type: Literal["dp_charge"] = "dp_charge"
    v: Literal[1] = 1
    round_id: Annotated[str, Field(pattern=ID_PATTERN)]
    region: Annotated[str, Field(pattern=REGION_PATTERN)]
    cohort: Annotated[str, Field(pattern=ID_PATTERN)]
    noise_multiplier: Annotated[float, Field(gt=0)]
    delta_slack: Annotated[float, Field(ge=0, lt=1)] = 0.0


_EVENTS = TypeAdapter(list[ChargeEvent])


class Ledger:
    """Immutable ledger of one (region, cohort)."""

    __slots__ = ("region", "cohort", "budget", "_events")

    def __init__(
        self, region: str, cohort: str, budget: Budget, events: Iterable[ChargeEvent] = ()
    ) -> None:
        self.region = region
        self.cohort = cohort
        self.budget = budget
        self._events: tuple[ChargeEvent, ...] = ()
        for e in events:
            self._check_owner(e)
            self._events += (e,)

    @classmethod
    def from_events(
        cls,
        events: Iterable[ChargeEvent | dict],
        budget: Budget,
        *,
        region: str | None = None,
        cohort: str | None = None,
    ) -> Ledger:
        """Rebuild from persisted events (models or their JSON dicts).

        ``region``/``cohort`` default to the events' own; give them for an empty history.
        """
        parsed = [
            e if isinstance(e, ChargeEvent) else ChargeEvent.model_validate(e) for e in events
        ]
        if region is None or cohort is None:
            if not parsed:
                raise LocalProtocolError("empty event list: pass region= and cohort=")
            region = region or parsed[0].region
            cohort = cohort or parsed[0].cohort
        return cls(region, cohort, budget, parsed)

    @classmethod
    def from_json(cls, text: str | bytes, budget: Budget, *, region: str, cohort: str) -> Ledger:
        return cls(region, cohort, budget, _EVENTS.validate_json(text))

    @property
    def events(self) -> tuple[ChargeEvent, ...]:
        return self._events

    def events_json(self) -> str:
        return json.dumps([e.model_dump(mode="json") for e in self._events])

    def _check_owner(self, e: ChargeEvent) -> None:
        if (e.region, e.cohort) != (self.region, self.cohort):
            raise LocalProtocolError(
                f"event for {e.region}/{e.cohort} charged to ledger {self.region}/{self.cohort}"
            )
        if any(old.round_id == e.round_id for old in self._events):
            raise LocalProtocolError(f"round {e.round_id!r} already charged to {self.cohort}")

    @staticmethod
    def _epsilon(events: Iterable[ChargeEvent], delta: float) -> float:
        evs = list(events)
        effective_delta = delta - sum(e.delta_slack for e in evs)
        return accountant.epsilon([e.noise_multiplier for e in evs], effective_delta)

    def spent(self) -> float:
        """Epsilon spent so far, at the budget's delta."""
        return self._epsilon(self._events, self.budget.delta)

    def remaining(self) -> float:
        """Epsilon left (never negative)."""
        return max(0.0, self.budget.epsilon - self.spent())

    def epsilon_after(self, event: ChargeEvent) -> float:
        return self._epsilon((*self._events, event), self.budget.delta)

    def can_afford(self, event: ChargeEvent) -> bool:
        """Would charging ``event`` stay within budget? Ask before any device sends data."""
        self._check_owner(event)
        return self.epsilon_after(event) <= self.budget.epsilon

    def charge(self, event: ChargeEvent) -> Ledger:
        """A new ledger with ``event`` charged, or :class:`BudgetExceeded`."""
        if not self.can_afford(event):
            raise BudgetExceeded(
                f"round {event.round_id} would bring {self.region}/{self.cohort} to "
                f"epsilon {self.epsilon_after(event):.4g} > budget {self.budget.epsilon:g} "
                f"(delta {self.budget.delta:g})"
            )
        return Ledger(self.region, self.cohort, self.budget, (*self._events, event))

    def __repr__(self) -> str:
        return (
            f"Ledger(region={self.region!r}, cohort={self.cohort!r}, budget={self.budget!r}, "
            f"events={len(self._events)})"
        )
