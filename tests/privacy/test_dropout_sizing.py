"""Sizing the neighbour graph from the expected dropout keeps sparse rounds alive."""

from __future__ import annotations

import numpy as np
import pytest

from privacy import quantize
from privacy.rand import SeededRandomness
from privacy.secagg.messages import RoundParams, _below_threshold, degree_for_dropout
from privacy.secagg.server import RoundAborted
from privacy.secagg.simulate import run_round

from .helpers import make_inputs


def test_degree_meets_the_abort_risk_and_is_minimal() -> None:
    for n, d in ((200, 0.1), (200, 0.3), (1000, 0.2)):
        k = degree_for_dropout(n, d)
        assert k % 2 == 0 or k == n - 1
        assert n * _below_threshold(k, 1 - d) <= 1e-6
        assert k == 2 or n * _below_threshold(k - 2, 1 - d) > 1e-6  # smallest such k
    assert degree_for_dropout(1000, 0.0) == 2
    with pytest.raises(ValueError):
        degree_for_dropout(100, 0.5)


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
    sparse = RoundParams.recommended("r-sparse", n, 16, 24)
    sized = RoundParams.recommended("r-sized", n, 16, 24, dropout=0.3)
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
