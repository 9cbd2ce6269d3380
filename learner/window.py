"""A sliding window of a cohort's decoded round statistics: the last ``size`` rounds, no older
than ``max_age``.

Why a window of *sums*: each released round is a fixed-size matrix (the cohort's summed
gradient block) and a device count, so the window's memory is ``size`` such matrices whatever
the stream's length, and the fit that reads it costs the same on round 10 and round 10,000.
Older rounds weigh ``decay**age`` so that a habit change overtakes the old habit within a few
rounds, while the window still averages the DP noise of several releases.

>>> w = StatsWindow(size=2)
>>> for r in range(3):
...     w.learn_one(RoundStats(r, 0.0, np.full((1, 1), float(r)), participants=1))
>>> [s.round for s in w], float(w.mean_stats()[0, 0])
([1, 2], 1.625)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


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
