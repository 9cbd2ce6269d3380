"""A sliding window of a cohort's decoded round statistics: the last ``size`` rounds, no older
than ``max_age``.

Why a window of *sums*: each released round is a fixed-size matrix (the cohort's summed
gradient block) and a device count, so the window's memory is ``size`` such matrices whatever
the stream's length, and the fit that reads it costs the same on round 10 and round 10,000.
Older rounds weigh ``decay**age`` so that a habit change overtakes the old habit within a few
rounds, while the window still averages the DP noise of several releases.

Decay alone is slow: a fit on the first rounds after a habit change is still mostly the old
habit (with ``decay = 0.6`` the newest of five rounds weighs 43 %), and it competes in the gates
with a live adapter that learned the old habit too. :meth:`StatsWindow.change_point` tests
whether the newest rounds differ from the older ones by more than the DP noise (known exactly:
``noise_var``) and the round-to-round sampling of the devices' steps (measured on the window)
can explain, column by column of the stats block (one column per catalogue candidate: a habit
change moves the columns of the apps it leaves and takes up). The learner then forgets the
rounds before the change *in the changed columns only* (:meth:`StatsWindow.reset` with
``columns``): the next candidate learns the new habit there, and keeps the whole window's
averaging of the DP noise everywhere else.

>>> w = StatsWindow(size=2)
>>> for r in range(3):
...     w.learn_one(RoundStats(r, 0.0, np.full((1, 1), float(r)), participants=1))
>>> [s.round for s in w], float(w.mean_stats()[0, 0])
([1, 2], 1.625)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CHANGE_ALPHA = 0.01  # family-wise false-alarm level, per round, of the change-point test


@dataclass(frozen=True)
class RoundStats:
    """One released round: the summed stats block, how many devices are in it, when."""

    round: int
    released_at: float  # POSIX seconds
    stats_sum: np.ndarray
    participants: int
    noise_var: float = 0.0  # per-coordinate variance of the DP noise in ``stats_sum``


@dataclass(frozen=True)
class Change:
    """What :meth:`StatsWindow.change_point` found: the habit changed at ``round`` (the first
    round of the new habit) in the stats ``columns``; ``p_value`` is Bonferroni-corrected
    over the columns and the splits tried."""

    round: int
    columns: tuple[int, ...]
    p_value: float


class StatsWindow:
    """Bounded, decayed window; ``learn_one`` adds a round, ``mean_stats`` reads the window."""

    def __init__(self, size: int = 6, max_age_s: float | None = None, decay: float = 0.6) -> None:
        if size < 1 or not 0 < decay <= 1:
            raise ValueError("need size >= 1 and 0 < decay <= 1")
        self.size = size
        self.max_age_s = max_age_s
        self.decay = decay
        self._rounds: deque[RoundStats] = deque(maxlen=size)
        self._since: dict[int, int] = {}  # column -> first round it reads (after a change)

    def __iter__(self) -> Iterator[RoundStats]:
        return iter(self._rounds)

    def __len__(self) -> int:
        return len(self._rounds)

    @property
    def rounds(self) -> list[int]:
        return [s.round for s in self._rounds]

    def learn_one(self, stats: RoundStats) -> None:
        """Add a round (rounds must increase) and drop what falls out by count or age."""
        if self._rounds and stats.round <= self._rounds[-1].round:
            raise ValueError(f"round {stats.round} is not after {self._rounds[-1].round}")
        self._rounds.append(stats)
        if self.max_age_s is not None:
            while self._rounds and stats.released_at - self._rounds[0].released_at > self.max_age_s:
                self._rounds.popleft()
        self._prune()

    def reset(self, keep_last: int = 0, columns: Sequence[int] | None = None) -> None:
        """Forget all but the newest ``keep_last`` rounds (after a detected change); with
        ``columns``, only in those columns of the stats block (the others keep every round)."""
        if columns is None:
            while len(self._rounds) > keep_last:
                self._rounds.popleft()
            self._prune()
            return
        if keep_last < 1:
            raise ValueError("a column reset keeps at least the newest round")
        first = self.rounds[-keep_last] if keep_last < len(self._rounds) else self.rounds[0]
        for c in columns:
            self._since[int(c)] = max(self._since.get(int(c), first), first)
        self._prune()

    @property
    def column_since(self) -> dict[int, int]:
        """Columns that read only their newest rounds: column -> first round it reads."""
        return dict(self._since)

    def _prune(self) -> None:
        """Drop column resets that no longer exclude any round (canonical state)."""
        oldest = self._rounds[0].round if self._rounds else None
        self._since = {
            c: r for c, r in sorted(self._since.items()) if oldest is not None and r > oldest
        }

    def _mask(self, width: int) -> np.ndarray:
        """``[rounds, columns]``: 1 where a round counts for a column, else 0."""
        mask = np.ones((len(self._rounds), width))
        for c, first in self._since.items():
            for i, s in enumerate(self._rounds):
                if s.round < first:
                    mask[i, c] = 0.0
        return mask

    def _weights(self) -> list[float]:
        n = len(self._rounds)
        return [self.decay ** (n - 1 - i) for i in range(n)]

    def mean_stats(self) -> np.ndarray:
        """Decay-weighted per-device mean of the stats block over the window (per column, over
        the rounds that column reads)."""
        if not self._rounds:
            raise ValueError("empty window")
        ws = np.asarray(self._weights())
        mask = self._mask(self._rounds[0].stats_sum.shape[-1]) * ws[:, None]
        num = sum(m * s.stats_sum for m, s in zip(mask, self._rounds, strict=True))
        n = np.array([max(s.participants, 1) for s in self._rounds], dtype=np.float64)
        return num / (n @ mask)

    def mean_noise_var(self) -> np.ndarray:
        """Per-coordinate variance of the DP noise left in :meth:`mean_stats`, per column."""
        ws = np.asarray(self._weights())
        mask = self._mask(self._rounds[0].stats_sum.shape[-1]) * ws[:, None]
        n = np.array([max(s.participants, 1) for s in self._rounds], dtype=np.float64)
        nv = np.array([s.noise_var for s in self._rounds], dtype=np.float64)
        return (nv @ (mask * mask)) / (n @ mask) ** 2

    def change_point(self, gram: np.ndarray, alpha: float = CHANGE_ALPHA) -> Change | None:
        """Where the cohort's habit changed inside the window, or ``None`` when the rounds each
        column reads are consistent with one habit (at family-wise level ``alpha``).

        For every split of a column's rounds into older ``R`` (``k`` rounds) and newer ``N``
        (``j``), the statistic is ``T_c = d_c^T G d_c`` with ``d = mean_N - mean_R`` (per-device
        means) and ``G`` the public trunk-feature Gram: the mean squared change, over typical
        trunk features, of the first-order logit update of candidate ``c``. With no change, ``d``
        is noise of two kinds:

        * DP, exactly known: per coordinate ``v = sum(noise_var) / sum(participants)**2`` per
          segment; it adds ``v tr(G)`` to ``E[T_c]`` and ``2 v**2 tr(G**2)`` to ``Var[T_c]``;
        * sampling (each round is other steps): ``s``, the largest over columns of the mean
          energy of round-to-round differences *within* the segments, less their DP part;
          taken as one degree of freedom (it moves a column mostly along one direction), it
          adds ``s (1/j + 1/k)`` to the mean and twice its square to the variance. The
          largest column makes the test conservative where sampling, not DP, dominates.

        ``T_c / E[T_c]`` is compared with a chi-square of Satterthwaite's degrees of freedom
        (Wilson-Hilferty tail). A split is a change when its most significant column passes
        ``alpha`` Bonferroni-corrected over columns and splits; the change is the most
        significant split, and its columns are those that pass ``alpha`` corrected over the
        columns (the split being given). Needs three rounds (one within-segment pair). A pure
        function of the window's contents, so a restored learner reaches the same decision.
        """
        rounds = list(self._rounds)
        w = len(rounds)
        if w < 3:
            return None
        g = np.asarray(gram, dtype=np.float64)
        tr_g, tr_g2 = float(np.trace(g)), float(np.sum(g * g))
        width = rounds[0].stats_sum.shape[-1]
        n = np.array([max(s.participants, 1) for s in rounds], dtype=np.float64)
        nv = np.array([s.noise_var for s in rounds], dtype=np.float64)
        means = [s.stats_sum / m for s, m in zip(rounds, n, strict=True)]
        dps = nv / n**2
        # first index each column reads; pair i = (i-1, i) is usable by a column from there on
        first = np.zeros(width, dtype=int)
        for c, r in self._since.items():
            first[c] = next(i for i, s in enumerate(rounds) if s.round >= r)
        pair = np.array(
            [
                _energy(means[i] - means[i - 1], g) - (dps[i] + dps[i - 1]) * tr_g
                for i in range(1, w)
            ]
        )  # [w-1, columns]
        splits = w - 1
        best: Change | None = None
        for k in range(1, w):  # rounds[k:] are the newer segment
            usable = np.array(
                [[i - 1 >= first[c] and i != k for c in range(width)] for i in range(1, w)]
            )
            counts = usable.sum(axis=0)
            if not counts.any():
                continue
            per_col = np.where(
                counts > 0, (pair * usable).sum(axis=0) / np.maximum(counts, 1), -np.inf
            )
            s = max(float(per_col.max()) / 2.0, 0.0)
            j = w - k
            p_cols = np.ones(width)
            for f in sorted(set(first.tolist())):
                if f >= k:
                    continue  # that column has no older rounds at this split
                cols = np.flatnonzero(first == f)
                kk = k - f
                v = nv[f:k].sum() / n[f:k].sum() ** 2 + nv[k:].sum() / n[k:].sum() ** 2
                samp = s * (1.0 / j + 1.0 / kk)
                mean_t = v * tr_g + samp
                var_t = 2.0 * v * v * tr_g2 + 2.0 * samp * samp
                if mean_t <= 0.0 or var_t <= 0.0:
                    continue  # nothing varies: no basis for a decision
                ref = sum(rounds[i].stats_sum[:, cols] for i in range(f, k)) / n[f:k].sum()
                new = sum(rounds[i].stats_sum[:, cols] for i in range(k, w)) / n[k:].sum()
                t = _energy(new - ref, g)
                dof = 2.0 * mean_t * mean_t / var_t
                p_cols[cols] = [min(_chi2_sf(x / mean_t, dof) * width, 1.0) for x in t]
            p_split = min(float(p_cols.min()) * splits, 1.0)
            if p_split < alpha and (best is None or p_split < best.p_value):
                hit = tuple(int(c) for c in np.flatnonzero(p_cols < alpha))
                best = Change(rounds[k].round, hit, p_split)
        return best

    # --- checkpoint ------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "since": {str(c): r for c, r in sorted(self._since.items())},
            "size": self.size,
            "max_age_s": self.max_age_s,
            "decay": self.decay,
            "rounds": [
                {
                    "round": s.round,
                    "released_at": s.released_at,
                    "stats_sum": s.stats_sum.astype("<f8").tobytes().hex(),
                    "shape": list(s.stats_sum.shape),
                    "participants": s.participants,
                    "noise_var": s.noise_var,
                }
                for s in self._rounds
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> StatsWindow:
        w = cls(d["size"], d["max_age_s"], d["decay"])
        for r in d["rounds"]:
            arr = np.frombuffer(bytes.fromhex(r["stats_sum"]), dtype="<f8").reshape(r["shape"])
            w._rounds.append(
                RoundStats(
                    r["round"], r["released_at"], arr.copy(), r["participants"], r["noise_var"]
                )
            )
        w._since = {int(c): int(r) for c, r in d.get("since", {}).items()}
        w._prune()
        return w


def _energy(d: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Per column ``c``: ``d_c^T G d_c``."""
    return np.einsum("hc,hk,kc->c", d, gram, d)


def _chi2_sf(ratio: float, dof: float) -> float:
    """``P(chi2_dof / dof > ratio)``, by the Wilson-Hilferty cube-root normal approximation."""
    if ratio <= 0.0:
        return 1.0
    a = 2.0 / (9.0 * dof)
    return 1.0 - NormalDist().cdf((ratio ** (1.0 / 3.0) - (1.0 - a)) / math.sqrt(a))
