"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2**256 + 297).

Not a cipher, just polynomial arithmetic; the security comes from the coefficients, which are
drawn from the caller's :class:`~privacy.rand.Randomness` (``secrets`` by default). The prime
is the smallest above ``2**256`` so any 32-byte string is a field element, and a share is
encoded as a fixed 33 bytes. Fewer than ``t`` shares are information-theoretically
independent of the secret.

Reconstruction interpolates at 0. The server rebuilds one secret per client, each from a
different set of t holders, so the Lagrange coefficients are the cost that grows with n: they
are computed in O(t) field operations after an O(t^2) product of *small* integers (share
points are client ids + 1, so the pairwise differences fit machine words and numpy multiplies
them exactly, for a whole batch of point sets in one pass), with one modular inversion per
batch; :class:`LagrangeCache` keeps them per set of points, which a complete graph (every
owner's holders are the same clients) reuses, and so does the SecAgg+ server, which rebuilds
runs of ring neighbours from one common set of holders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from privacy.rand import DEFAULT_RANDOMNESS, Randomness

PRIME = 2**256 + 297
SECRET_BYTES = 32
SHARE_BYTES = 33


@dataclass(frozen=True, slots=True)
class Share:
    """One point ``(x, y)`` of the polynomial. ``repr`` hides ``y``."""

    x: int
    y: int

    def __repr__(self) -> str:
        return f"Share(x={self.x}, y=<hidden>)"

    def y_bytes(self) -> bytes:
        return self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, raw: bytes) -> Share:
        return cls(x, parse_y(raw))


def split(
    secret: bytes, xs: Sequence[int], t: int, rng: Randomness = DEFAULT_RANDOMNESS
) -> list[Share]:
    """Shares of ``secret`` at the points ``xs`` (distinct, nonzero); any ``t`` recover it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError("secret must be 32 bytes")
    if not 1 <= t <= len(xs):
        raise ValueError("need 1 <= t <= number of shares")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and nonzero")
    coeffs = [int.from_bytes(secret, "big")] + [rng.randbelow(PRIME) for _ in range(t - 1)]
    shares = []
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        shares.append(Share(x, acc))
    return shares


# Sets of points interpolated together (one numpy pass, one modular inversion for all).
_BATCH = 256

Weights = tuple[int, list[int]]  # (scale, w): the Lagrange coefficients are scale * w_m


def _denominator_rows(sets: Sequence[Sequence[int]]) -> list[list[int]]:
    """Per set and point m, integer factors whose product is ``x_m prod_{j != m}(x_j - x_m)``.

    Why exact integers: the points are small (client ids + 1), so every factor is small and
    the O(t^2) part of an interpolation is machine-word products, several factors per int64
    (numpy, for a whole batch of equal-sized sets at once), and only O(t) operations per set
    are on 256-bit field elements."""
    k = len(sets[0]) if sets else 0
    low = min((min(xs) for xs in sets), default=0)
    high = max((max(xs) for xs in sets), default=0)
    # Points in 1..2**b - 1 keep every factor below 2**b in size: ``group`` of them fit 62 bits.
    group = 62 // high.bit_length() if k and low > 0 and high < 1 << 31 else 0
    if group >= 2 and all(len(xs) == k for xs in sets):
        x = np.asarray(sets, dtype=np.int64)  # (sets, k)
        diff = x[:, None, :] - x[:, :, None]  # diff[s, m, j] = x_j - x_m
        idx = np.arange(k)
        diff[:, idx, idx] = x
        pad = (-k) % group
        if pad:
            diff = np.concatenate([diff, np.ones((len(sets), k, pad), dtype=np.int64)], axis=2)
        rows: list[list[int]] = diff.reshape(len(sets) * k, -1, group).prod(axis=2).tolist()
        return rows
    return [
        [xm, *(xj - xm for j, xj in enumerate(xs) if j != m)]
        for xs in sets
        for m, xm in enumerate(xs)
    ]


def lagrange_weights(sets: Sequence[Sequence[int]]) -> list[Weights]:
    """For each set of points, ``(scale, w)`` with Lagrange coefficients at 0 equal to
    ``l_m = scale * w_m``: ``scale = prod_j x_j`` and ``w_m = 1 / (x_m prod_{j != m}(x_j -
    x_m))``, all denominators of all sets inverted together (Montgomery's trick: one modular
    inversion and 3 multiplications per point)."""
    out: list[Weights] = []
    for at in range(0, len(sets), _BATCH):
        chunk = sets[at : at + _BATCH]
        for xs in chunk:
            if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
                raise ValueError("share points must be distinct and nonzero")
        dens = [math.prod(r) % PRIME for r in _denominator_rows(chunk)]
        prefix = [1] * (len(dens) + 1)
        acc = 1
        for i, d in enumerate(dens):
            acc = acc * d % PRIME
            prefix[i + 1] = acc
        inv = pow(acc, -1, PRIME)
        weights = [0] * len(dens)
        for i in range(len(dens) - 1, -1, -1):
            weights[i] = inv * prefix[i] % PRIME
            inv = inv * dens[i] % PRIME
        pos = 0
        for xs in chunk:
            out.append((math.prod(xs) % PRIME, weights[pos : pos + len(xs)]))
            pos += len(xs)
    return out


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients ``l_m`` with ``f(0) = sum l_m f(x_m)`` (see :func:`lagrange_weights`)."""
    ((scale, w),) = lagrange_weights([list(xs)])
    return [scale * c % PRIME for c in w]


class LagrangeCache:
    """Lagrange weights per tuple of share points (bounded; cleared when full).

    Why: with a complete graph, or any graph where owners share their holders, many secrets
    are rebuilt from the same points; and :meth:`prefetch` computes the sets a server is
    about to use in batches, which is cheaper than one set at a time."""

    __slots__ = ("_weights", "_limit", "hits", "misses")

    def __init__(self, limit: int = 4096) -> None:
        self._weights: dict[tuple[int, ...], Weights] = {}
        self._limit = limit
        self.hits = 0
        self.misses = 0

    def weights(self, xs: tuple[int, ...]) -> Weights:
        got = self._weights.get(xs)
        if got is not None:
            self.hits += 1
            return got
        self.misses += 1
        self.prefetch([xs])
        return self._weights[xs]

    def prefetch(self, sets: Sequence[tuple[int, ...]]) -> None:
        """Compute the weights of every valid set not cached yet (invalid ones are left for
        :meth:`weights` to refuse when they are used)."""
        todo = list(
            dict.fromkeys(
                xs
                for xs in sets
                if xs not in self._weights
                and len(set(xs)) == len(xs)
                and all(0 < x < PRIME for x in xs)
            )
        )
        if len(self._weights) + len(todo) > self._limit:
            self._weights.clear()
        for xs, w in zip(todo, lagrange_weights(todo), strict=True):
            self._weights[xs] = w


def parse_y(raw: bytes) -> int:
    """A share value from its fixed 33-byte encoding (``ValueError`` outside the field)."""
    if len(raw) != SHARE_BYTES:
        raise ValueError("share must be 33 bytes")
    y = int.from_bytes(raw, "big")
    if y >= PRIME:
        raise ValueError("share value outside the field")
    return y


def combine_points(
    points: Sequence[tuple[int, int]], t: int, cache: LagrangeCache | None = None
) -> bytes:
    """:func:`combine` on ``(x, y)`` pairs, with optional cached coefficients (the server's
    path: no :class:`Share` objects for the ~k shares it stores per client)."""
    if len(points) < t:
        raise ValueError(f"need {t} shares, have {len(points)}")
    use = points[:t]
    xs = tuple(x for x, _ in use)
    if len(set(xs)) != t:
        raise ValueError("duplicate share points")
    scale, w = cache.weights(xs) if cache is not None else lagrange_weights([xs])[0]
    value = scale * (sum(c * y for c, (_, y) in zip(w, use, strict=True)) % PRIME) % PRIME
    if value >= 1 << (8 * SECRET_BYTES):
        raise ValueError("shares are inconsistent")
    return value.to_bytes(SECRET_BYTES, "big")


def combine(shares: Sequence[Share], t: int) -> bytes:
    """Interpolate the secret from the first ``t`` shares.

    With fewer than ``t`` shares this raises: an interpolation through too few points is a
    random field element, not the secret. A result that does not fit 32 bytes means the
    shares were inconsistent or corrupted.
    """
    return combine_points([(s.x, s.y) for s in shares[:t]], t)


def interpolate_unchecked(shares: Sequence[Share]) -> int:
    """Interpolate at 0 through whatever points are given (for tests showing < t reveals nothing)."""
    xs = [s.x for s in shares]
    return sum(c * s.y for c, s in zip(lagrange_at_zero(xs), shares, strict=True)) % PRIME
