"""The private A/B gate: is adapter A worse than B by more than a margin, at a stated confidence?

Each round, every participating device reports ``(d_i, d_i**2)`` where ``d_i`` is its hit@1 of
A minus that of B on its own steps (a *paired* comparison: both adapters score the very same
steps, so the user's own variability cancels). The release gives the DP-noised sums
``S1 = sum d_i`` and ``S2 = sum d_i**2`` over ``n`` devices. Then

    d_hat = S1 / n
    SE**2 = max(S2/n - d_hat**2, 0) / n        between-device (sampling) variance of the mean
          + sigma**2 / n**2                    the DP noise in S1 (sigma = its stddev)

Rounds accumulate (sums, counts and noise variances add), so the evidence sharpens while a
candidate waits. One-sided at confidence ``1 - alpha`` (default 95 %, ``z = 1.645``):

* ``pass`` when ``d_hat - z SE >= -margin``: A is not worse than B by more than ``margin``
  (non-inferiority), with at least ``min_devices`` devices behind it;
* ``fail`` when ``d_hat + z SE < -margin``: A is worse by more than ``margin``;
* ``wait`` otherwise (the caller gives up after a bounded number of rounds).

The noise of ``S2`` enters only divided by ``n**2`` and is ignored; the count ``n`` is the
release's exact ``participants`` (times the canary fraction for a canary comparison).

>>> ev = PairedEvidence().learn_one(s1=20.0, s2=4.0, n=200, noise_var=4.0)
>>> round(ev.mean, 3), ev.decide(margin=0.02)
(0.1, 'pass')
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import Literal

Decision = Literal["pass", "fail", "wait"]


def z_one_sided(confidence: float) -> float:
    return NormalDist().inv_cdf(confidence)


@dataclass(frozen=True)
class PairedEvidence:
    """Accumulated paired differences for one comparison (immutable; ``learn_one`` returns new)."""

    s1: float = 0.0
    s2: float = 0.0
    n: float = 0.0
    noise_var: float = 0.0
    rounds: int = 0

    def learn_one(self, *, s1: float, s2: float, n: float, noise_var: float) -> PairedEvidence:
        return replace(
            self,
            s1=self.s1 + s1,
            s2=self.s2 + s2,
            n=self.n + n,
            noise_var=self.noise_var + noise_var,
            rounds=self.rounds + 1,
        )

    @property
    def mean(self) -> float:
        return self.s1 / self.n if self.n > 0 else 0.0

    @property
    def se(self) -> float:
        if self.n <= 0:
            return math.inf
        sampling = max(self.s2 / self.n - self.mean**2, 0.0) / self.n
        return math.sqrt(sampling + self.noise_var / self.n**2)

    def lower(self, confidence: float = 0.95) -> float:
        return self.mean - z_one_sided(confidence) * self.se

    def upper(self, confidence: float = 0.95) -> float:
        return self.mean + z_one_sided(confidence) * self.se

    def decide(self, margin: float, confidence: float = 0.95, min_devices: float = 1.0) -> Decision:
        if self.n <= 0:
            return "wait"
        if self.upper(confidence) < -margin:
            return "fail"
        if self.lower(confidence) >= -margin and self.n >= min_devices:
            return "pass"
        return "wait"

    def metrics(self, prefix: str, confidence: float = 0.95) -> dict[str, float]:
        return {
            f"{prefix}_diff": self.mean,
            f"{prefix}_se": self.se if self.n > 0 else -1.0,
            f"{prefix}_lower": self.lower(confidence) if self.n > 0 else -1.0,
            f"{prefix}_devices": self.n,
            f"{prefix}_rounds": float(self.rounds),
        }

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PairedEvidence:
        return cls(**d)
