"""Choosing SecAgg+'s neighbour degree ``k`` and threshold ``t`` (Bell et al., CCS 2020, §4).

Two things can go wrong for one client ``i`` with ``k`` random neighbours, when a share
``dropout`` of clients vanishes and a share ``corrupt`` of them colludes with the server:

* **abort** (correctness): fewer than ``t`` of its neighbours survive to return shares, so its
  self-mask seed (or, if it dropped, its mask key) cannot be rebuilt;
* **exposure** (security, active server): an honest neighbour hands over *one* kind of share
  per owner, but colluding neighbours hand over both. The server learns both the seed and the
  mask key of ``i`` when ``t - c`` honest holders give it one kind and ``t - c`` others the
  other kind, possible as soon as ``2(t - c) <= k - c``, i.e. ``c >= 2t - k`` colluding
  neighbours. (With the consistency round an honest holder answers one signed survivor set,
  so it never gives both kinds.)

With ``c ~ Binomial(k, corrupt)`` and survivors ``~ Binomial(k, 1 - dropout)`` the union bound
over ``n`` clients gives the round's failure probability; :func:`choose` returns the smallest
even ``k`` (and the best ``t`` for it) whose bound is at most ``risk``. The binomial model
assumes colluders sit at random places in the graph, which holds when the graph is drawn
independently of who colludes; docs/threat-model.md says what changes when it is not.

>>> choose(1000, dropout=0.1, corrupt=0.0).k
38
>>> p = choose(1000, dropout=0.1, corrupt=0.05)
>>> (p.k, p.t, p.failure <= 1e-6)
(72, 46, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_RISK = 1e-6
DEFAULT_CORRUPT = 0.05
DEFAULT_DROPOUT = 0.1  # assumed when the caller states none: real rounds always lose some


@dataclass(frozen=True, slots=True)
class Sizing:
    k: int
    t: int
    failure: float  # union bound: P(some client aborts) + P(some client exposed)
    abort: float
    exposure: float


def _pmf(k: int, p: float) -> list[float]:
    """The Binomial(k, p) probabilities, computed in log space (no overflow for large k)."""
    if p <= 0.0 or p >= 1.0:
        return [1.0 if i == (0 if p <= 0.0 else k) else 0.0 for i in range(k + 1)]
    lp, lq, lk = math.log(p), math.log1p(-p), math.lgamma(k + 1)
    return [
        math.exp(lk - math.lgamma(i + 1) - math.lgamma(k - i + 1) + i * lp + (k - i) * lq)
        for i in range(k + 1)
    ]


def _prefix(pmf: list[float]) -> list[float]:
    """``out[m] = P(X < m)``."""
    out = [0.0]
    for x in pmf:
        out.append(out[-1] + x)
    return out


def _suffix(pmf: list[float]) -> list[float]:
    """``out[m] = P(X >= m)``, summed from the tail (no cancellation)."""
    out = [0.0] * (len(pmf) + 1)
    for i in range(len(pmf) - 1, -1, -1):
        out[i] = out[i + 1] + pmf[i]
    return out


def _sizing(n: int, k: int, t: int, below: list[float], corrupt: float, cum: list[float]) -> Sizing:
    """``below[m] = P(survivors < m)``, ``cum[m] = P(colluders >= m)``."""
    abort = n * below[t]  # P(survivors < t)
    m = 2 * t - k  # colluding neighbours that expose a client
    if k >= n - 1:  # classic SecAgg: every client sees all others, colluders are a count
        exposure = 1.0 if math.floor(corrupt * n) >= m else 0.0
    else:
        exposure = n * cum[max(0, m)] if corrupt > 0 else 0.0
    return Sizing(k, t, min(1.0, abort + exposure), min(1.0, abort), min(1.0, exposure))


def failure(n: int, k: int, t: int, *, dropout: float, corrupt: float) -> Sizing:
    """The union bound for given parameters (a complete graph counts colluders exactly)."""
    below = _prefix(_pmf(k, 1 - dropout))
    return _sizing(n, k, t, below, corrupt, _suffix(_pmf(k, corrupt)))


def baseline_degree(n: int) -> int:
    """The least degree we ever use: ``n - 1`` up to 32 clients, else ``2 * ceil(1.5 log2 n)``.

    Why a floor: the masks of honest survivors must keep them connected (a split graph
    releases the sums of its parts), which O(log n) degree keeps with high probability."""
    return n - 1 if n <= 32 else min(n - 1, 2 * math.ceil(1.5 * math.log2(n)))


def choose(
    n: int,
    *,
    dropout: float = 0.0,
    corrupt: float = DEFAULT_CORRUPT,
    risk: float = DEFAULT_RISK,
) -> Sizing:
    """The smallest even ``k`` (or ``n - 1``) whose union bound meets ``risk``, with the
    smallest ``t`` that keeps exposure below ``risk`` (the most tolerant of dropout). When no graph meets it (tiny cohorts with dropout), the secure parameters that
    abort least: exposure is a privacy failure and is never traded, abort only costs a round.
    Raises ``ValueError`` when even the complete graph cannot keep exposure below ``risk``.
    """
    if not 0 <= dropout < 1 or not 0 <= corrupt < 0.5 or not 0 < risk < 1:
        raise ValueError("need 0 <= dropout < 1, 0 <= corrupt < 0.5, 0 < risk < 1")
    if n < 3:
        raise ValueError("SecAgg+ needs at least 3 clients")
    secure: Sizing | None = None
    for k in [*range(baseline_degree(n), n - 1, 2), n - 1]:
        below, cum = _prefix(_pmf(k, 1 - dropout)), _suffix(_pmf(k, corrupt))
        # Abort grows with t and exposure falls: the first t that meets ``risk`` tolerates the
        # most dropout; failing that, the smallest secure t is the fallback of this degree.
        fallback = None
        for t in range(k // 2 + 1, k + 1):
            s = _sizing(n, k, t, below, corrupt, cum)
            if s.failure <= risk:
                return s
            if fallback is None and s.exposure <= risk:
                fallback = s
        if fallback is not None and (secure is None or fallback.failure < secure.failure):
            secure = fallback
    if secure is None:
        raise ValueError(
            f"no SecAgg+ parameters for n={n} keep the exposure of a client below {risk:.1e} "
            f"with a colluding share of {corrupt:.3g}"
        )
    return secure
