"""``sotto bench learner``: the cost of one learner update must not grow with the stream.

Two learners see a history of ``history`` and ``10 * history`` released rounds, then each
takes ``updates`` more; we time those updates (median) and report the ratio (goal <= 1.2).
Every update does the full work: decode the release, push it into the window, run the
shadow gate (the synthetic releases make each candidate fail at once) and fit a fresh
candidate with torch from the window. The window holds ``LearnerConfig.window`` rounds
whatever the history, so memory and work are bounded by construction; this measures it.
Releases are synthetic (random stats blocks of the right layout, noise stddev as a cohort
of 200 devices at epsilon 1 per round would get): the learner's cost does not depend on
what the numbers say.
"""

from __future__ import annotations

import resource
import statistics
import time
from datetime import timedelta
from typing import Any

import numpy as np
import torch

from deploy.simulation.base_model import build_base_model
from deploy.simulation.population import EPOCH
from learner.cohort import CohortLearner, LearnerConfig
from privacy import accountant
from privacy.contribution import LAYOUT_V2
from privacy.wire import ReleasedAggregate

DEVICES = 200


def _release(round_: int, rng: np.random.Generator, z: float) -> ReleasedAggregate:
    parts = {
        "stats": rng.normal(0.0, 0.02, size=LAYOUT_V2.block("stats").shape),
        "shadow": np.array([-0.3, 0.09]),  # the candidate is clearly worse: rejected at once
        "rollout": np.array([0.0, 0.0]),
    }
    total = LAYOUT_V2.encode(parts) * DEVICES + rng.normal(0.0, z * LAYOUT_V2.clip, LAYOUT_V2.dim)
    return ReleasedAggregate.build(
        total,
        region="eu",
        cohort="eu-c0",
        round=round_,
        layout=LAYOUT_V2.name,
        participants=DEVICES,
        dropped=0,
        noise_stddev=z * LAYOUT_V2.clip,
        epsilon=1.0,
        delta=1e-5,
        epsilon_spent=0.0,
        released_at=EPOCH + timedelta(days=round_),
    )


def _prepared(net, history: int, updates: int, z: float):  # type: ignore[no-untyped-def]
    """A learner that has seen ``history`` rounds, and the releases still to come."""
    rng = np.random.default_rng(history)
    learner = CohortLearner("eu", "eu-c0", net, LearnerConfig(max_shadow_rounds=1))
    releases = [_release(r, rng, z) for r in range(history + updates)]
    for rel in releases[:history]:
        learner.learn_one(rel)
    return learner, releases[history:]


def _timed(learner: CohortLearner, rel: ReleasedAggregate) -> float:
    t0 = time.perf_counter()
    acts = learner.learn_one(rel)
    elapsed = (time.perf_counter() - t0) * 1e3
    assert any(a.kind == "ship" for a in acts), "each timed update must fit a candidate"
    return elapsed


def run_learner_bench(*, history: int = 20, updates: int = 15) -> dict[str, Any]:
    torch.set_num_threads(1)
    net = build_base_model()
    z = accountant.calibrate(1.0, 1e-5)
    short, short_rel = _prepared(net, history, updates + 2, z)
    long, long_rel = _prepared(net, 10 * history, updates + 2, z)
    one, ten = [], []
    # Interleaved, so that whatever else the machine does hits both series alike; the first
    # two updates of each warm up.
    for i, (a, b) in enumerate(zip(short_rel, long_rel, strict=True)):
        ta, tb = _timed(short, a), _timed(long, b)
        if i >= 2:
            one.append(ta)
            ten.append(tb)
    m1, m10 = statistics.median(one), statistics.median(ten)
    return {
        "update_ms_history_1x": round(m1, 2),
        "update_ms_history_10x": round(m10, 2),
        "growth_ratio": round(m10 / m1, 3),
        "goal_growth_ratio": 1.2,
        "history_rounds_1x": history,
        "history_rounds_10x": 10 * history,
        "updates_timed": updates,
        "window_rounds": LearnerConfig().window,
        "state_bytes_1x": len(short.to_state()),
        "state_bytes_10x": len(long.to_state()),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
