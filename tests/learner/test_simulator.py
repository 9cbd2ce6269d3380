"""The population simulator is reproducible, regional, and drifts when told to."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from deploy.simulation.population import Drift, Population
from privacy.catalog import INTENTS, apps_for


def _fingerprint(pop: Population, rounds: range) -> list[tuple]:
    return [
        (s.device_id, s.instruction, s.chosen_app, s.hour, s.timestamp, s.context.tobytes())
        for d in pop.devices
        for r in rounds
        for s in pop.steps_for_round(d, r) + pop.heldout(d, r)
    ]


def test_same_seed_same_population_any_call_order() -> None:
    a = Population(seed=5, cohorts_per_region=2, devices_per_cohort=3, drift_rounds=[2])
    b = Population(seed=5, cohorts_per_region=2, devices_per_cohort=3, drift_rounds=[2])
    b.steps_for_round(b.devices[-1], 4)  # order of calls must not matter
    assert a.drifts == b.drifts
    assert _fingerprint(a, range(3)) == _fingerprint(b, range(3))
    c = Population(seed=6, cohorts_per_region=2, devices_per_cohort=3, drift_rounds=[2])
    assert _fingerprint(a, range(1)) != _fingerprint(c, range(1))


def test_steps_are_valid_and_ordered(population: Population) -> None:
    device = population.devices[0]
    steps = population.steps_for_round(device, 1)
    assert len(steps) == population.steps_per_round
    assert [s.timestamp for s in steps] == sorted(s.timestamp for s in steps)
    for s in steps:
        assert s.chosen_app in apps_for(s.intent, device.region)
        assert s.outcome == ("accepted" if s.chosen_app == s.agent_app else "overridden")
        assert s.context.shape == (128,)
        assert abs(float(np.linalg.norm(s.context)) - 1.0) < 1e-5
    held = population.heldout(device, 1)
    assert len(held) == population.heldout_per_round
    # an independent draw, not a copy of the round's steps
    assert [(s.instruction, s.timestamp) for s in held] != [
        (s.instruction, s.timestamp) for s in steps[: len(held)]
    ]


def test_regions_prefer_their_own_apps(population: Population) -> None:
    for region in ("cn", "eu"):
        chosen = Counter(
            s.chosen_app
            for d in population.devices
            if d.region == region
            for s in population.steps_for_round(d, 0)
        )
        other = "eu" if region == "cn" else "cn"
        assert not set(chosen) & {a for i in INTENTS for a in apps_for(i, other)}
    zh = [d.language for d in population.devices if d.region == "cn"]
    assert zh.count("zh") > len(zh) / 2


def test_users_keep_personal_habits(population: Population) -> None:
    device = population.devices[0]
    nav = [
        s.chosen_app
        for r in range(3)
        for s in population.steps_for_round(device, r)
        if s.intent == "navigation"
    ]
    if nav:
        top, n = Counter(nav).most_common(1)[0]
        assert top == population.habit(device, "navigation", 0)
        assert n / len(nav) >= 0.6


def test_drift_changes_the_habit_at_the_chosen_round(population: Population) -> None:
    (drift,) = population.drifts
    assert (drift.round, drift.cohort, drift.new_app) == (3, "cn-c0", "百度地图")
    assert population.cohort_preference("cn-c0", "navigation", 2) != "百度地图"
    assert population.cohort_preference("cn-c0", "navigation", 3) == "百度地图"
    devices = population.devices_in("cn-c0")

    def share(round_: int) -> float:
        picks = [
            s.chosen_app == "百度地图"
            for d in devices
            for s in population.steps_for_round(d, round_) + population.heldout(d, round_)
            if s.intent == "navigation"
        ]
        return sum(picks) / len(picks)

    assert share(2) < 0.35 and share(3) > 0.65
    # other cohorts do not drift
    other = population.devices_in("cn-c1")
    assert [population.habit(d, "navigation", 2) for d in other] == [
        population.habit(d, "navigation", 3) for d in other
    ]


def test_seeded_drift_rounds_and_validation() -> None:
    pop = Population(seed=9, cohorts_per_region=2, devices_per_cohort=2, drift_rounds=[4, 6])
    assert [d.round for d in pop.drifts] == [4, 6]
    first = pop.drifts[0]
    assert first.intent == "navigation"
    assert pop.cohort_preference(first.cohort, "navigation", 3) != first.new_app
    with pytest.raises(ValueError):
        Population(seed=9, drift_rounds=[Drift(1, "cn-c0", "navigation", "Google Maps")])
