"""Distributed discrete Gaussian noise (Kairouz, Liu, Steinke, ICML 2021).

Each client adds integer noise drawn from the discrete Gaussian ``N_Z(0, s2)`` to its
quantized vector before masking; the server only ever sees the sum, which then carries the
sum of the surviving clients' noise. Sizing:

* ``m`` (``min_clients``) is the fewest inputs a round may release (the SecAgg+ abort
  threshold); each client uses ``s2 = sigma**2 / m`` so that even the smallest releasable sum
  carries total variance ``>= sigma**2``. Extra survivors only add noise.
* A sum of ``m`` discrete Gaussians is not exactly a discrete Gaussian. Kairouz et al.
  (Thm. 1) show it is ``eps_cdp**2 / 2``-concentrated DP with
  ``eps_cdp**2 = Delta**2 / (m * s2) + tau * d`` and
  ``tau = 10 * sum_{k=1}^{m-1} exp(-2 pi**2 s2 k / (k+1))``. We turn that into an *effective*
  Gaussian noise multiplier ``z = 1 / eps_cdp`` (zCDP rho = 1/(2 z**2) is exactly the RDP
  curve of a Gaussian mechanism with multiplier ``z``) and hand ``z`` to ``dp_accounting``.
* ``Delta`` is the L2 sensitivity in integer units *after* rounding:
  ``C * scale + sqrt(d)`` (stochastic rounding moves each coordinate by < 1). Conservative.

Sampler (documented choice). :func:`sample_exact` is the exact Canonne-Kamath-Steinke (2020)
rejection sampler over rationals with ``secrets``-grade randomness; it is the reference. The
hot path uses :class:`DiscreteGaussianTable`, an inversion (CDT) sampler: the CDF is computed
with 60-digit decimal arithmetic, truncated at ``|z| <= L = ceil(13.5 * sqrt(s2)) + 1``
(tail mass < 2**-130), stored as 128-bit integer thresholds, and indexed by 128-bit uniforms
from the AES-CTR PRG seeded from the caller's randomness. Its output is within total
variation ``(2L+1) * 2**-127 + 2**-130`` of ``N_Z(0, s2)`` per sample; the accountant adds
``n * d`` times that to delta (``delta_slack``), which keeps the guarantee honest. Truncation
also makes the per-client noise bounded by ``L``, which :mod:`privacy.quantize` uses to prove
that the modular sum can never wrap. Tests check both samplers against the exact pmf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from functools import lru_cache

import numpy as np

from privacy import accountant, prg
from privacy.errors import ConfigError
from privacy.rand import DEFAULT_RANDOMNESS, Randomness

NOISE_LABEL = b"sotto-dgauss"
TAIL_SIGMAS = 13.5


def tau(s2: float, m: int) -> float:
    """Kairouz et al.'s closeness term for the sum of ``m`` discrete Gaussians of variance s2."""
    if s2 <= 0:
        return float("inf")
    return 10.0 * sum(math.exp(-2 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, m))


def effective_multiplier(sensitivity: float, s2: float, m: int, dim: int) -> float:
    """The Gaussian noise multiplier with the same zCDP as ``m`` clients' summed noise."""
    if s2 <= 0:
        return 0.0
    eps2 = sensitivity**2 / (m * s2) + tau(s2, m) * dim
    return 1.0 / math.sqrt(eps2)


def support_bound(s2: float) -> int:
    """Per-client truncation ``L``: the sampler never emits |z| > L."""
    return math.ceil(TAIL_SIGMAS * math.sqrt(s2)) + 1 if s2 > 0 else 0


@dataclass(frozen=True, slots=True)
class NoisePlan:
    """What every client of one round adds, and what the release costs. No secrets."""

    client_variance: float  # s2, integer units squared
    min_clients: int  # m
    sensitivity: float  # L2, integer units
    dim: int
    noise_multiplier: float  # effective z for the accountant (0 = no noise, no DP)
    bound: int  # L: per-client, per-coordinate |noise| <= bound

    @classmethod
    def none(cls, dim: int, sensitivity: float = 0.0) -> NoisePlan:
        """No DP noise (tests, or a deployment that declines DP and says so)."""
        return cls(0.0, 1, sensitivity, dim, 0.0, 0)

    def delta_slack(self, n_clients: int) -> float:
        """Total-variation slack of the table sampler over one round, added to delta."""
        if self.client_variance <= 0:
            return 0.0
        per = (2 * self.bound + 1) * 2.0**-127 + 2.0**-130
        return n_clients * self.dim * per

    def sample(self, rng: Randomness = DEFAULT_RANDOMNESS) -> np.ndarray:
        """One client's noise vector (int64, length ``dim``)."""
        if self.client_variance <= 0:
            return np.zeros(self.dim, dtype=np.int64)
        return DiscreteGaussianTable.for_variance(self.client_variance).sample(self.dim, rng)


def plan(
    *,
    epsilon: float,
    delta: float,
    sensitivity: float,
    min_clients: int,
    dim: int,
) -> NoisePlan:
    """Calibrate per-client noise so one release is (epsilon, delta)-DP with ``min_clients``."""
    if min_clients < 1:
        raise ConfigError("min_clients must be >= 1")
    if not sensitivity > 0:
        raise ConfigError("sensitivity must be positive")
    z = accountant.calibrate(epsilon, delta)
    s2 = (z * sensitivity) ** 2 / min_clients
    while effective_multiplier(sensitivity, s2, min_clients, dim) < z:
        s2 *= 1.01  # the tau term only matters for tiny per-client variance
    return NoisePlan(
        client_variance=s2,
        min_clients=min_clients,
        sensitivity=sensitivity,
        dim=dim,
        noise_multiplier=effective_multiplier(sensitivity, s2, min_clients, dim),
        bound=support_bound(s2),
    )


class DiscreteGaussianTable:
    """Vectorized CDT sampler for ``N_Z(0, s2)`` truncated at ``L`` (see module docstring)."""

    __slots__ = ("variance", "bound", "_hi", "_lo")

    def __init__(self, variance: float) -> None:
        if not variance > 0:
            raise ValueError("variance must be positive")
        self.variance = variance
        self.bound = support_bound(variance)
        thresholds = _cdf_thresholds(variance, self.bound)
        self._hi = np.array([t >> 64 for t in thresholds], dtype=np.uint64)
        self._lo = np.array([t & ((1 << 64) - 1) for t in thresholds], dtype=np.uint64)

    @classmethod
    @lru_cache(maxsize=16)
    def for_variance(cls, variance: float) -> DiscreteGaussianTable:
        return cls(variance)

    def sample(self, n: int, rng: Randomness = DEFAULT_RANDOMNESS) -> np.ndarray:
        words = np.frombuffer(
            prg.keystream(rng.token_bytes(32), 16 * n, NOISE_LABEL), dtype="<u8"
        ).reshape(n, 2)
        hi, lo = words[:, 0], words[:, 1]
        # index = #thresholds <= u, comparing 128-bit (hi, lo) pairs.
        idx = np.searchsorted(self._hi, hi, side="left")
        ties = np.nonzero(
            (idx < self._hi.size) & (self._hi[np.minimum(idx, self._hi.size - 1)] == hi)
        )[0]
        for i in ties:  # probability ~ 2**-52 per sample: resolve exactly in Python
            j = int(idx[i])
            while j < self._hi.size and (int(self._hi[j]) << 64 | int(self._lo[j])) <= (
                int(hi[i]) << 64 | int(lo[i])
            ):
                j += 1
            idx[i] = j
        return idx.astype(np.int64) - self.bound


@lru_cache(maxsize=16)
def _cdf_thresholds(variance: float, bound: int) -> tuple[int, ...]:
    """``floor(2**128 * F(k))`` for k = -L .. L-1 of the truncated, normalized pmf."""
    with localcontext() as ctx:
        ctx.prec = 60
        two_s2 = 2 * Decimal(variance)
        weights = [(-(Decimal(k) ** 2) / two_s2).exp() for k in range(-bound, bound + 1)]
        total = sum(weights)
        scale = Decimal(2) ** 128
        out, acc = [], Decimal(0)
        for w in weights[:-1]:
            acc += w
            out.append(int(acc / total * scale))
    return tuple(out)


def pmf(variance: float, bound: int) -> np.ndarray:
    """The truncated discrete Gaussian pmf on -bound..bound (floats, for tests)."""
    k = np.arange(-bound, bound + 1, dtype=np.float64)
    w = np.exp(-(k**2) / (2 * variance))
    return w / w.sum()


# ---- exact reference sampler: Canonne, Kamath, Steinke (NeurIPS 2020), Algorithm 1-3 ----


def _bernoulli(p: Fraction, rng: Randomness) -> bool:
    return rng.randbelow(p.denominator) < p.numerator


def _bernoulli_exp1(x: Fraction, rng: Randomness) -> bool:
    """Bernoulli(exp(-x)) for x in [0, 1]."""
    k = 1
    while _bernoulli(x / k, rng):
        k += 1
    return k % 2 == 1


def _bernoulli_exp(x: Fraction, rng: Randomness) -> bool:
    """Bernoulli(exp(-x)) for x >= 0."""
    while x > 1:
        if not _bernoulli_exp1(Fraction(1), rng):
            return False
        x -= 1
    return _bernoulli_exp1(x, rng)


def _geometric_exp(x: Fraction, rng: Randomness) -> int:
    """Geometric(1 - exp(-x)) for rational x > 0."""
    s, t = x.numerator, x.denominator
    while True:
        u = rng.randbelow(t)
        if _bernoulli_exp(Fraction(u, t), rng):
            break
    v = 0
    while _bernoulli_exp1(Fraction(1), rng):
        v += 1
    return (v * t + u) // s


def _discrete_laplace(scale: int, rng: Randomness) -> int:
    while True:
        sign = rng.randbelow(2)
        magnitude = _geometric_exp(Fraction(1, scale), rng)
        if sign == 1 and magnitude == 0:
            continue
        return magnitude * (1 - 2 * sign)


def sample_exact(variance: Fraction, rng: Randomness = DEFAULT_RANDOMNESS) -> int:
    """One exact sample of ``N_Z(0, variance)`` (Canonne-Kamath-Steinke Algorithm 3)."""
    variance = Fraction(variance)
    if variance <= 0:
        raise ValueError("variance must be positive")
    t = math.isqrt(variance.numerator // variance.denominator) + 1
    while True:
        y = _discrete_laplace(t, rng)
        bias = (abs(y) - variance / t) ** 2 / (2 * variance)
        if _bernoulli_exp(bias, rng):
            return y
