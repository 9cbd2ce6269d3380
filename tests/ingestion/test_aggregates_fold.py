"""A batch's fold adds every summary in one numpy call; the stored sums must stay what the
one-by-one loop writes, bit for bit (a replica, the audit's recount and older rows all agree)."""

from __future__ import annotations

import numpy as np

from ingestion.aggregates import Delta, fold
from tests.ingestion.helpers import random_summary


def test_fold_is_the_one_by_one_sum_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    items = [(f"c{i % 3}", i % 2, random_summary(rng)) for i in range(900)]
    loop: dict[tuple[str, int], Delta] = {}
    for cohort, rnd, s in items:
        loop.setdefault((cohort, rnd), Delta()).add(s)
    folded = fold(items)
    assert folded.keys() == loop.keys()
    for key, d in folded.items():
        assert d.count == loop[key].count
        assert d.vector_sum.tobytes() == loop[key].vector_sum.tobytes()
        assert dict(d.counts) == dict(loop[key].counts)
        assert dict(d.action_hist) == dict(loop[key].action_hist)
    # and onto an existing delta, as a second batch of the same key adds
    d = Delta()
    d.add_all([s for _, _, s in items[:400]])
    d.add_all([s for _, _, s in items[400:]])
    one = Delta()
    for _, _, s in items:
        one.add(s)
    assert d.vector_sum.tobytes() == one.vector_sum.tobytes()
