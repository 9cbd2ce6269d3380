"""Sizing k and t from n, the expected dropout and the colluding share (Bell et al.)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from privacy import quantize
from privacy.errors import ConfigError
from privacy.rand import SeededRandomness
from privacy.round import plan_round
from privacy.secagg import sizing
from privacy.secagg.messages import RoundParams
from privacy.secagg.server import RoundAborted
from privacy.secagg.simulate import run_round

from .helpers import make_inputs


def _bound(n: int, k: int, t: int, dropout: float, corrupt: float) -> tuple[float, float]:
    """The same union bound, from scipy's binomial (an independent implementation)."""
    abort = n * stats.binom.cdf(t - 1, k, 1 - dropout)
    exposure = n * stats.binom.sf(2 * t - k - 1, k, corrupt) if corrupt else 0.0
    return abort, exposure


@pytest.mark.parametrize(
    ("n", "dropout", "corrupt"),
    [(200, 0.1, 0.0), (200, 0.3, 0.0), (1000, 0.2, 0.05), (1000, 0.1, 0.1), (2000, 0.1, 1 / 3)],
)
def test_parameters_meet_the_stated_risk_and_are_minimal(
    n: int, dropout: float, corrupt: float
) -> None:
    s = sizing.choose(n, dropout=dropout, corrupt=corrupt, risk=1e-6)
    assert s.k % 2 == 0 and s.k < n - 1
    assert s.k / 2 < s.t <= s.k
    abort, exposure = _bound(n, s.k, s.t, dropout, corrupt)
    assert abort + exposure <= 1e-6 * 1.0001
    assert s.failure == pytest.approx(abort + exposure, rel=1e-6, abs=1e-15)
    if s.k - 2 >= sizing.baseline_degree(n):  # no smaller degree works with any t
        k = s.k - 2
        assert all(sum(_bound(n, k, t, dropout, corrupt)) > 1e-6 for t in range(k // 2 + 1, k + 1))


def test_colluders_need_a_larger_degree_and_threshold() -> None:
    honest = sizing.choose(1000, dropout=0.1, corrupt=0.0)
    third = sizing.choose(1000, dropout=0.1, corrupt=1 / 3)
    assert third.k > 4 * honest.k
    # The parameters of the audit (n=1000, k=30, t=16) expose clients when a third colludes.
    assert sizing.failure(1000, 30, 16, dropout=0.1, corrupt=1 / 3).exposure > 0.5


def test_plan_round_refuses_parameters_that_miss_the_risk() -> None:
    with pytest.raises(ConfigError, match="expose"):
        plan_round(
            "r",
            n=1000,
            dim=8,
            clip=1.0,
            scale=64.0,
            epsilon=None,
            delta=None,
            k=30,
            t=16,
            corrupt=1 / 3,
        )
    ok = plan_round(
        "r",
        n=1000,
        dim=8,
        clip=1.0,
        scale=64.0,
        epsilon=None,
        delta=None,
        dropout=0.1,
        corrupt=1 / 3,
    )
    assert (
        sizing.failure(1000, ok.params.k, ok.params.t, dropout=0.1, corrupt=1 / 3).failure <= 1e-6
    )
    # A complete graph counts colluders exactly: 2t - k (here 1) must exceed them (2).
    with pytest.raises(ConfigError):
        plan_round(
            "r",
            n=20,
            dim=8,
            clip=1.0,
            scale=64.0,
            epsilon=None,
            delta=None,
            k=19,
            t=10,
            corrupt=0.1,
        )
    with pytest.raises(ValueError):
        sizing.choose(100, dropout=0.1, corrupt=0.5)


def _shares_dropout(params: RoundParams, frac: float, seed: int) -> tuple[set[int], object]:
    raw, enc = make_inputs(params, seed=5)
    pick = np.random.default_rng(seed).choice(params.n, int(frac * params.n), replace=False)
    gone = set(pick.tolist())
    try:
        result = run_round(params, enc, drop={"shares": gone}, rng=SeededRandomness.from_int(3))
    except RoundAborted:
        return gone, None
    return gone, (raw, result)


def test_thirty_percent_dropout_sparse_graph() -> None:
    """n = 60, 30 % vanish after advertising, over several dropout draws: the O(log n)
    default graph aborts on some of them, the graph sized for 30 % releases the exact sum of
    the survivors on every one."""
    n = 60
    k = sizing.baseline_degree(n)
    sparse = RoundParams.recommended("r-sparse", n, 16, 24, k=k, dropout=0.0, corrupt=0.0)
    sized = RoundParams.recommended("r-sized", n, 16, 24, dropout=0.3, corrupt=0.0)
    assert sparse.k < sized.k
    aborted = sum(_shares_dropout(sparse, 0.3, seed)[1] is None for seed in range(12))
    assert aborted >= 1
    for seed in range(12):
        gone, outcome = _shares_dropout(sized, 0.3, seed)
        assert outcome is not None
        raw, result = outcome
        alive = sorted(set(range(n)) - gone)
        assert sorted(result.survivors) == alive
        expected = np.sum([raw[c] for c in alive], axis=0)
        assert np.array_equal(quantize.decode(result.total, sized.bits), expected)
