"""``sotto bench quality`` at a small size: the shape of its report and its privacy figures.

Quality figures at this size are noise; what must hold at any size is that every budget is
reported, each run spends its budget and not more (user-level, δ = 1e-6), and that a smaller
budget means more noise.
"""

from __future__ import annotations

import pytest

from deploy.bench_quality import DELTA, run_quality_bench


@pytest.fixture(scope="module")
def report() -> dict:
    return run_quality_bench(
        devices_per_cohort=24,
        rounds=4,
        epsilons=(1.0, 8.0),
        drift_round=2,
        cohorts=("eu-c0",),
        eval_devices=12,
        progress=False,
    )


def test_every_budget_is_reported_side_by_side(report: dict) -> None:
    assert set(report["by_epsilon"]) == {"1", "8"}
    assert report["delta"] == DELTA == 1e-6
    for row in report["by_epsilon"].values():
        assert 0.0 <= row["personalized_hit1"] <= 1.0
        assert set(row["per_cohort"]) == {"eu-c0"}


@pytest.mark.parametrize("eps", ["1", "8"])
def test_each_run_spends_its_budget_and_no_more(report: dict, eps: str) -> None:
    row = report["by_epsilon"][eps]
    assert row["within_budget"]
    assert 0.99 * row["epsilon_budget"] <= row["epsilon_spent"] <= row["epsilon_budget"]


def test_smaller_budget_means_more_noise(report: dict) -> None:
    rows = report["by_epsilon"]
    assert rows["1"]["noise_multiplier"] > 4 * rows["8"]["noise_multiplier"]


def test_cohorts_are_capped_at_the_goals_size() -> None:
    with pytest.raises(ValueError, match="1,000"):
        run_quality_bench(devices_per_cohort=1001, progress=False)
