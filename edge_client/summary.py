"""A device's round summary, built from its context window and nothing else.

What goes in: the decay-weighted context embedding (hashed features, unit norm), outcome
counts and an action histogram over the window. What never goes in: typed text, agent
messages, app names or coordinates in the clear. The histogram has one entry per known
action, zeros included, so every summary has the same shape: the learner can sum them
feature by feature, and masking under SecAgg+ needs a fixed-length vector.

The result depends only on the window, so the same steps at the same ``now`` give the same
summary, byte for byte.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from edge_client.context_store import WeightedStep
from edge_client.steps import ACTIONS
from privacy.embedding import EMBED_VERSION, combine
from privacy.wire import EMBEDDING_DIM, BehaviorCounts, RoundSummary


def summarize(window: Sequence[WeightedStep]) -> RoundSummary:
    """The :class:`RoundSummary` of a window (counts are unweighted, over the whole window)."""
    if window:
        embedding = combine((w.embedding for w in window), (w.weight for w in window))
    else:
        embedding = np.zeros(EMBEDDING_DIM, dtype=np.float32)
    # handed_over steps (Take_over: the user acted, not the agent) count as steps only: they
    # are neither an acceptance nor an override of anything the agent chose.
    outcomes = Counter(w.step.outcome for w in window)
    actions: Counter[str] = Counter(w.step.action for w in window)
    counts = BehaviorCounts(
        steps=len(window),
        accepted=outcomes["accepted"],
        overridden=outcomes["overridden"],
        failed=outcomes["failed"],
    )
    return RoundSummary.build(
        embedding,
        counts,
        action_hist={a: actions[a] for a in ACTIONS},
        embed_version=EMBED_VERSION,
    )
