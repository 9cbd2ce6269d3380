"""A sliding window of a cohort's decoded round statistics: the last ``size`` rounds, no older
than ``max_age``.

Why a window of *sums*: each released round is a fixed-size matrix (the cohort's summed
gradient block) and a device count, so the window's memory is ``size`` such matrices whatever
the stream's length, and the fit that reads it costs the same on round 10 and round 10,000.
Older rounds weigh ``decay**age`` so that a habit change overtakes the old habit within a few
rounds, while the window still averages the DP noise of several releases.

Decay alone is slow: a fit on the first rounds after a change is still mostly the old habit
(with ``decay = 0.6`` the newest round is 40 % of a full window). :meth:`StatsWindow.change_point`
therefore tests whether the newest rounds differ from the older ones by more than the DP noise
(known exactly: ``noise_var``) and the round-to-round sampling of the devices' steps (measured
on the window itself) can explain; the learner then keeps only the rounds after the change
(:meth:`StatsWindow.reset`), so the next candidate learns the new habit, not a blend.

>>> w = StatsWindow(size=2)
>>> for r in range(3):
...     w.learn_one(RoundStats(r, 0.0, np.full((1, 1), float(r)), participants=1))
>>> [s.round for s in w], float(w.mean_stats()[0, 0])
([1, 2], 1.625)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CHANGE_ALPHA = 0.01  # family-wise false-alarm rate per round of the change-point test


@dataclass(frozen=True)
class RoundStats:
    """One released round: the summed stats block, how many devices are in it, when."""

    round: int
    released_at: float  # POSIX seconds
    stats_sum: np.ndarray
    participants: int
    noise_var: float = 0.0  # per-coordinate variance of the DP noise in ``stats_sum``


class StatsWindow:
    """Bounded, decayed window; ``learn_one`` adds a round, ``mean_stats`` reads the window."""

    def __init__(self, size: int = 6, max_age_s: float | None = None, decay: float = 0.6) -> None:
        if size < 1 or not 0 < decay <= 1:
            raise ValueError("need size >= 1 and 0 < decay <= 1")
        self.size = size
        self.max_age_s = max_age_s
        self.decay = decay
        self._rounds: deque[RoundStats] = deque(maxlen=size)

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

    def reset(self, keep_last: int = 0) -> None:
        """Forget all but the newest ``keep_last`` rounds (after a detected change)."""
        while len(self._rounds) > keep_last:
            self._rounds.popleft()

    def _weights(self) -> list[float]:
        n = len(self._rounds)
        return [self.decay ** (n - 1 - i) for i in range(n)]

    def mean_stats(self) -> np.ndarray:
        """Decay-weighted per-device mean of the stats block over the window."""
        if not self._rounds:
            raise ValueError("empty window")
        ws = self._weights()
        num = sum(w * s.stats_sum for w, s in zip(ws, self._rounds, strict=True))
        den = sum(w * max(s.participants, 1) for w, s in zip(ws, self._rounds, strict=True))
        return num / den

    def mean_noise_var(self) -> float:
        """Per-coordinate variance of the DP noise left in :meth:`mean_stats`."""
        ws = self._weights()
        den = sum(w * max(s.participants, 1) for w, s in zip(ws, self._rounds, strict=True))
        return sum(w * w * s.noise_var for w, s in zip(ws, self._rounds, strict=True)) / den**2

    def change_point(self, gram: np.ndarray, alpha: float = CHANGE_ALPHA) -> int | None:
        """How many of the newest rounds come after a change in the cohort's statistics, or
        ``None`` when the window is consistent with one stationary habit (at level ``alpha``).

        For every split of the window into older rounds ``R`` (``k`` of them) and newer rounds
        ``N`` (``j``), and every candidate column ``c`` of the per-device mean stats, the
        statistic is ``T_c = d_c^T G d_c`` with ``d = mean_N - mean_R`` and ``G`` the public
        trunk-feature Gram: the mean squared change, over typical trunk features, of the
        first-order logit update for candidate ``c`` (a habit change moves the columns of the
        apps it leaves and takes up). Under no change ``d`` is DP noise plus sampling noise:

        * DP: per coordinate ``v = sum(noise_var)/sum(participants)**2`` per segment, exactly;
          it contributes ``v tr(G)`` to ``E[T_c]`` and ``2 v**2 tr(G**2)`` to ``Var[T_c]``;
        * sampling (other steps each round): ``s``, the largest per-column energy of the
          round-to-round differences *within* the segments, less their DP part; treated as
          one degree of freedom (it moves a column mostly along one direction), it adds
          ``s (1/j + 1/k)`` to the mean and twice its square to the variance. Taking the
          largest column makes the test conservative where sampling, not DP, dominates.

        ``T_c / E`` is compared with a scaled chi-square (Satterthwaite degrees of freedom,
        Wilson-Hilferty tail), Bonferroni-corrected over columns and splits. Needs at least
        three rounds (one within-segment pair). A pure function of the window's contents, so a
        restored learner reaches the same decision.
        """
        rounds = list(self._rounds)
        w = len(rounds)
        if w < 3:
            return None
        g = np.asarray(gram, dtype=np.float64)
        tr_g, tr_g2 = float(np.trace(g)), float(np.sum(g * g))
        means = [s.stats_sum / max(s.participants, 1) for s in rounds]
        dps = [s.noise_var / max(s.participants, 1) ** 2 for s in rounds]

        def energy(d: np.ndarray) -> np.ndarray:  # per column d_c^T G d_c
            return np.einsum("hc,hk,kc->c", d, g, d)

        # consecutive pairs: their sampling energy (DP part removed), per column
        pair = [energy(means[i] - means[i - 1]) - (dps[i] + dps[i - 1]) * tr_g for i in range(1, w)]
        splits = w - 1
        best: tuple[float, int] | None = None
        for k in range(1, w):
            j = w - k
            ref, new = rounds[:k], rounds[k:]
            within = [pair[i - 1] for i in range(1, w) if i != k]  # pairs not across the split
            s = max(float(np.max(np.mean(within, axis=0))) / 2.0, 0.0)
            v = sum(r.noise_var for r in ref) / max(sum(r.participants for r in ref), 1) ** 2
            v += sum(r.noise_var for r in new) / max(sum(r.participants for r in new), 1) ** 2
            samp = s * (1.0 / j + 1.0 / k)
            mean_t = v * tr_g + samp
            var_t = 2.0 * v * v * tr_g2 + 2.0 * samp * samp
            if mean_t <= 0.0 or var_t <= 0.0:
                continue  # nothing varies: no basis for a decision
            d = _segment_mean(new) - _segment_mean(ref)
            t = float(np.max(energy(d)))
            p = _chi2_sf(t / mean_t, 2.0 * mean_t * mean_t / var_t) * d.shape[1] * splits
            if p < alpha and (best is None or p < best[0]):
                best = (p, j)
        return None if best is None else best[1]

    # --- checkpoint ------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
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
        return w


def _segment_mean(rounds: list[RoundStats]) -> np.ndarray:
    """Per-device mean stats over consecutive rounds (their sums over their devices)."""
    return sum(r.stats_sum for r in rounds) / max(sum(r.participants for r in rounds), 1)


def _chi2_sf(ratio: float, dof: float) -> float:
    """``P(chi2_dof / dof > ratio)`` by the Wilson-Hilferty cube-root normal approximation."""
    if ratio <= 0.0:
        return 1.0
    a = 2.0 / (9.0 * dof)
    return 1.0 - NormalDist().cdf((ratio ** (1.0 / 3.0) - (1.0 - a)) / math.sqrt(a))
