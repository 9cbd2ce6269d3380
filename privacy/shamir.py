"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2**256 + 297).

Not a cipher, just polynomial arithmetic; the security comes from the coefficients, which are
drawn from the caller's :class:`~privacy.rand.Randomness` (``secrets`` by default). The prime
is the smallest above ``2**256`` so any 32-byte string is a field element, and a share is
encoded as a fixed 33 bytes. Fewer than ``t`` shares are information-theoretically
independent of the secret.

Reconstruction interpolates at 0 with batched inversion (one modular exponentiation per
secret), which keeps the server's unmasking of a thousand clients in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
        if len(raw) != SHARE_BYTES:
            raise ValueError("share must be 33 bytes")
        y = int.from_bytes(raw, "big")
        if y >= PRIME:
            raise ValueError("share value outside the field")
        return cls(x, y)


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


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients ``l_m`` with ``f(0) = sum l_m f(x_m)``, using one modular inverse."""
    k = len(xs)
    nums, dens = [1] * k, [1] * k
    for m, xm in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != m:
                num = num * xj % PRIME
                den = den * (xj - xm) % PRIME
        nums[m], dens[m] = num, den
    # Montgomery batch inversion of all denominators.
    prefix = [1] * (k + 1)
    for i, d in enumerate(dens):
        prefix[i + 1] = prefix[i] * d % PRIME
    inv = pow(prefix[k], -1, PRIME)
    out = [0] * k
    for i in range(k - 1, -1, -1):
        out[i] = nums[i] * (inv * prefix[i] % PRIME) % PRIME
        inv = inv * dens[i] % PRIME
    return out


def combine(shares: Sequence[Share], t: int) -> bytes:
    """Interpolate the secret from the first ``t`` shares.

    With fewer than ``t`` shares this raises: an interpolation through too few points is a
    random field element, not the secret. A result that does not fit 32 bytes means the
    shares were inconsistent or corrupted.
    """
    if len(shares) < t:
        raise ValueError(f"need {t} shares, have {len(shares)}")
    use = list(shares[:t])
    xs = [s.x for s in use]
    if len(set(xs)) != t:
        raise ValueError("duplicate share points")
    value = sum(c * s.y for c, s in zip(lagrange_at_zero(xs), use, strict=True)) % PRIME
    if value >= 1 << (8 * SECRET_BYTES):
        raise ValueError("shares are inconsistent")
    return value.to_bytes(SECRET_BYTES, "big")


def interpolate_unchecked(shares: Sequence[Share]) -> int:
    """Interpolate at 0 through whatever points are given (for tests showing < t reveals nothing)."""
    xs = [s.x for s in shares]
    return sum(c * s.y for c, s in zip(lagrange_at_zero(xs), shares, strict=True)) % PRIME
