"""The population simulator is reproducible, regional, drifts when told to, and writes tasks as
Open-AutoGLM runs them: whole episodes whose labels the feature code recovers from the steps."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from deploy.simulation.population import OPTIONS, Drift, Population
from privacy import catalog


def _fingerprint(pop: Population, rounds: range) -> list[tuple]:
    return [
        (
            e.device_id,
            e.instruction,
            e.used_app,
            e.hour,
            e.timestamp,
            e.context.tobytes(),
            tuple((s.action, s.app, s.current_app, s.outcome) for s in e.steps),
        )
        for d in pop.devices
        for r in rounds
        for e in pop.episodes_for_round(d, r) + pop.heldout(d, r)
    ]


def test_same_seed_same_population_any_call_order() -> None:
    a = Population(seed=5, cohorts_per_region=2, devices_per_cohort=3, drift_rounds=[2])
    b = Population(seed=5, cohorts_per_region=2, devices_per_cohort=3, drift_rounds=[2])
    b.episodes_for_round(b.devices[-1], 4)  # order of calls must not matter
    assert a.drifts == b.drifts
    assert _fingerprint(a, range(3)) == _fingerprint(b, range(3))
    c = Population(seed=6, cohorts_per_region=2, devices_per_cohort=3, drift_rounds=[2])
    assert _fingerprint(a, range(1)) != _fingerprint(c, range(1))


def test_episodes_look_like_open_autoglm_runs(population: Population) -> None:
    episodes = [e for d in population.devices for e in population.episodes_for_round(d, 1)]
    actions = Counter(s.action for e in episodes for s in e.steps)
    launches = actions["Launch"]
    assert launches / sum(actions.values()) < 0.3  # most steps happen inside an app
    assert {"Tap", "Type", "Swipe", "finish"} <= set(actions)
    assert actions["Take_over"] > 0
    outcomes = Counter(e.outcome for e in episodes)
    assert set(outcomes) == {"accepted", "overridden", "failed", "handed_over"}
    for e in episodes:
        assert e.steps[-1].action == "finish"
        assert [s.timestamp for s in e.steps] == sorted(s.timestamp for s in e.steps)
        assert all(s.instruction == e.instruction for s in e.steps)
        for s in e.steps:  # every launch that worked used a name Open-AutoGLM knows
            if s.action == "Launch" and s.outcome != "failed":
                assert catalog.is_launchable(s.app or ""), s.app
        assert e.context.shape == (128,)
    unparsable = [e for e in episodes if e.steps[-1].message and "do(action" in e.steps[-1].message]
    assert unparsable  # the model's reply could not be parsed: the task ended early
    assert any(catalog.is_unlaunchable(s.app or "") for e in episodes for s in e.steps)
    languages = Counter(e.language for e in episodes)
    assert languages["zh"] and languages["en"]


def test_features_recover_what_the_user_used(population: Population) -> None:
    episodes = [
        e for d in population.devices for r in (0, 1) for e in population.episodes_for_round(d, r)
    ]
    agree = [
        e.features.outcome == e.outcome
        and (e.features.used_app == e.used_app or e.outcome not in ("accepted", "overridden"))
        for e in episodes
    ]
    assert np.mean(agree) >= 0.99
    for e in episodes:
        rows = e.rows
        if e.outcome == "handed_over" or e.outcome == "failed":
            assert all(r.polarity < 0 for r in rows)  # never a preference
        if e.features.is_preference:
            assert rows[0].app == e.features.used_app and rows[0].polarity == 1.0
        for r in rows:
            if r.polarity == 0:  # a task that needed no app ("你好"): no app named
                assert e.features.needs_no_app and r.app == ""
            else:
                assert r.app in e.candidates and catalog.is_launchable(r.app)


def test_regions_prefer_their_own_apps(population: Population) -> None:
    for region in ("cn", "eu"):
        used = Counter(
            e.used_app
            for d in population.devices
            if d.region == region
            for e in population.episodes_for_round(d, 0)
            if e.used_app
        )
        assert set(used) <= set(catalog.apps_for_region(region))
    zh = [d.language for d in population.devices if d.region == "cn"]
    assert zh.count("zh") > len(zh) / 2


def test_users_keep_personal_habits(population: Population) -> None:
    device = population.devices[0]
    nav = [
        e.used_app
        for r in range(3)
        for e in population.episodes_for_round(device, r)
        if e.intent == "navigation" and e.used_app
    ]
    if nav:
        top, n = Counter(nav).most_common(1)[0]
        assert top == population.habit(device, "navigation", 0)
        assert n / len(nav) >= 0.6


def test_drift_changes_the_habit_at_the_chosen_round(population: Population) -> None:
    (drift,) = population.drifts
    assert (drift.round, drift.cohort, drift.intent) == (3, "cn-c0", "navigation")
    new = drift.new_app
    assert population.cohort_preference("cn-c0", "navigation", 2) != new
    assert population.cohort_preference("cn-c0", "navigation", 3) == new
    devices = population.devices_in("cn-c0")

    def share(round_: int) -> float:
        picks = [
            e.used_app == new
            for d in devices
            for e in population.episodes_for_round(d, round_) + population.heldout(d, round_)
            if e.intent == "navigation" and e.used_app
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


def test_every_simulated_choice_is_launchable() -> None:
    for region, intents in OPTIONS.items():
        for apps in intents.values():
            for app in apps:
                assert catalog.resolve(app) == app and catalog.is_launchable(app)
                assert region in catalog.app(app).regions
