from __future__ import annotations

import json

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from privacy.errors import LocalProtocolError
from privacy.ledger import Budget, BudgetExceeded, ChargeEvent, Ledger
from privacy.round import plan_round


def _event(i: int, z: float, slack: float = 0.0, cohort: str = "c1") -> ChargeEvent:
    return ChargeEvent(
        round_id=f"r{i}", region="eu", cohort=cohort, noise_multiplier=z, delta_slack=slack
    )


def _reference_epsilon(zs: list[float], delta: float) -> float:
    acc = RdpAccountant()
    for z in zs:
        acc.compose(dp_accounting.GaussianDpEvent(z))
    return acc.get_epsilon(delta)


def test_ledger_epsilon_equals_dp_accounting() -> None:
    zs = [3.0, 4.5, 2.2, 8.0, 3.0]
    ledger = Ledger("eu", "c1", Budget(epsilon=100.0, delta=1e-6))
    for i, z in enumerate(zs):
        ledger = ledger.charge(_event(i, z))
        assert ledger.spent() == pytest.approx(_reference_epsilon(zs[: i + 1], 1e-6), rel=1e-9)
    assert ledger.remaining() == pytest.approx(100.0 - ledger.spent())


def test_ledger_charges_sampler_slack_against_delta() -> None:
    ledger = Ledger("eu", "c1", Budget(epsilon=100.0, delta=1e-6)).charge(
        _event(0, 3.0, slack=4e-7)
    )
    assert ledger.spent() == pytest.approx(_reference_epsilon([3.0], 6e-7), rel=1e-9)
    assert ledger.spent() > _reference_epsilon([3.0], 1e-6)


def test_refuses_a_round_that_would_overspend_before_it_runs() -> None:
    budget = Budget(epsilon=2.0, delta=1e-6)
    plan = plan_round("r-big", n=100, dim=16, clip=1.0, scale=100.0, epsilon=1.5, delta=1e-6)
    event = plan.charge_event("eu", "c1")
    ledger = Ledger("eu", "c1", budget)
    assert ledger.can_afford(event)
    ledger = ledger.charge(event)
    second = plan_round("r-2", n=100, dim=16, clip=1.0, scale=100.0, epsilon=1.5, delta=1e-6)
    assert not ledger.can_afford(second.charge_event("eu", "c1"))
    with pytest.raises(BudgetExceeded, match="budget 2"):
        ledger.charge(second.charge_event("eu", "c1"))
    assert len(ledger.events) == 1  # refused charges leave no trace


def test_events_roundtrip_through_json() -> None:
    budget = Budget(epsilon=50.0, delta=1e-6)
    ledger = Ledger("eu", "c1", budget)
    for i in range(3):
        ledger = ledger.charge(_event(i, 4.0 + i, slack=1e-12))
    text = ledger.events_json()
    again = Ledger.from_json(text, budget, region="eu", cohort="c1")
    assert again.events == ledger.events
    assert again.spent() == ledger.spent()
    from_dicts = Ledger.from_events(json.loads(text), budget)
    assert (from_dicts.region, from_dicts.cohort) == ("eu", "c1")
    assert from_dicts.spent() == ledger.spent()


def test_ledger_is_per_region_and_cohort_and_rejects_replays() -> None:
    ledger = Ledger("eu", "c1", Budget(epsilon=50.0, delta=1e-6)).charge(_event(0, 4.0))
    with pytest.raises(LocalProtocolError):
        ledger.can_afford(_event(1, 4.0, cohort="c2"))
    with pytest.raises(LocalProtocolError, match="already charged"):
        ledger.charge(_event(0, 4.0))
