from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from privacy import accountant, dp
from privacy.errors import ConfigError
from privacy.rand import SeededRandomness

ALPHA = 1e-4  # fixed significance; seeds are fixed, so these tests are deterministic


def _chi2_pvalue(samples: np.ndarray, variance: float, bound: int) -> float:
    probs = dp.pmf(variance, bound)
    counts = np.bincount(samples + bound, minlength=2 * bound + 1).astype(float)
    expected = probs * samples.size
    # pool sparse tails so every expected count is >= 5
    keep = expected >= 5
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs, exp).pvalue)


@pytest.mark.parametrize("variance", [0.7, 4.0, 150.0])
def test_table_sampler_matches_the_discrete_gaussian(variance: float) -> None:
    table = dp.DiscreteGaussianTable(variance)
    z = table.sample(100_000, SeededRandomness.from_int(int(variance * 10)))
    assert np.all(np.abs(z) <= table.bound)
    assert _chi2_pvalue(z, variance, table.bound) > ALPHA
    assert abs(z.var() / variance - 1) < 0.03


def test_table_sampler_is_wrong_for_a_wrong_variance() -> None:
    """The chi-square check has power: it rejects a sample drawn with another variance."""
    z = dp.DiscreteGaussianTable(6.0).sample(100_000, SeededRandomness.from_int(3))
    assert _chi2_pvalue(z, 4.0, dp.support_bound(6.0)) < ALPHA


def test_exact_sampler_matches_the_discrete_gaussian() -> None:
    rng = SeededRandomness.from_int(11)
    variance = Fraction(9, 4)
    z = np.array([dp.sample_exact(variance, rng) for _ in range(6000)])
    bound = dp.support_bound(float(variance))
    assert np.all(np.abs(z) <= bound)
    assert _chi2_pvalue(z, float(variance), bound) > ALPHA


def test_plan_meets_the_target_epsilon_with_min_clients() -> None:
    plan = dp.plan(epsilon=2.0, delta=1e-6, sensitivity=1100.0, min_clients=50, dim=10_000)
    assert accountant.epsilon([plan.noise_multiplier], 1e-6) <= 2.0 + 1e-9
    # the smallest releasable sum (min_clients contributors) carries sigma >= z * Delta
    total_sd = np.sqrt(plan.client_variance * plan.min_clients)
    assert total_sd >= accountant.calibrate(2.0, 1e-6) * 1100.0 * (1 - 1e-9)
    # more survivors only add noise; fewer would not be released
    assert plan.bound >= 13 * np.sqrt(plan.client_variance)


def test_tiny_per_client_variance_pays_the_tau_term() -> None:
    z_big = dp.effective_multiplier(10.0, 50.0, 10, 1000)
    z_tiny = dp.effective_multiplier(10.0 * 0.05, 50.0 * 0.05**2, 10, 1000)
    assert z_tiny < z_big  # same ratio Delta/sigma, but s2 = 0.125 is far from Gaussian-like


def test_calibrate_refuses_nonsense() -> None:
    with pytest.raises(ConfigError):
        accountant.calibrate(0.0, 1e-6)
    with pytest.raises(ConfigError):
        dp.plan(epsilon=1.0, delta=1e-6, sensitivity=1.0, min_clients=0, dim=3)


def test_summed_client_noise_has_the_planned_variance() -> None:
    plan = dp.plan(epsilon=1.0, delta=1e-5, sensitivity=20.0, min_clients=20, dim=20_000)
    rng = SeededRandomness.from_int(9)
    total = sum(plan.sample(rng) for _ in range(20))
    assert abs(total.var() / (20 * plan.client_variance) - 1) < 0.05
