"""Clip, scale, stochastically round and encode vectors into Z_{2^b}; pick b so sums never wrap.

The client turns a float vector ``x`` into integers that SecAgg+ can sum modulo ``2**b``:

1. clip to L2 norm ``C`` (bounds everyone's influence: the DP sensitivity);
2. multiply by ``scale`` (integer units per input unit);
3. round each coordinate up or down at random, unbiased (``E[round(y)] = y``);
4. add the client's share of discrete Gaussian noise (:mod:`privacy.dp`);
5. encode as two's complement modulo ``2**b``.

The server decodes the modular sum as a *centred* integer in ``[-2**(b-1), 2**(b-1))``. That
is exact only if the true signed sum stays in range, so :func:`check_headroom` refuses any
configuration where it could leave it: ``n * (ceil(C * scale) + noise_bound) < 2**(b-1)``,
where ``noise_bound`` is the largest noise value a client's (truncated) sampler can emit.
Because both terms are hard bounds (a single coordinate can carry the whole clipped norm), the
check is deterministic: a round that passes can never wrap.

Stochastic rounding draws its uniforms from a 32-byte seed taken from the caller's
:class:`~privacy.rand.Randomness` and expanded with the AES-CTR PRG, never from ``random``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privacy import prg
from privacy.errors import ConfigError
from privacy.rand import DEFAULT_RANDOMNESS, Randomness

ROUND_LABEL = b"sotto-stochastic-round"
MAX_BITS = 62  # keep sums in uint64 with room; also the largest b we accept


@dataclass(frozen=True, slots=True)
class QuantConfig:
    """How one round turns floats into integers. All fields public, no secrets."""

    dim: int
    clip: float  # C: L2 norm bound, in input units
    scale: float  # integer units per input unit
    bits: int  # b: arithmetic is mod 2**b

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ConfigError("dim must be >= 1")
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ConfigError("clip (C) must be a positive finite L2 norm")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ConfigError("scale must be positive and finite")
        if not 2 <= self.bits <= MAX_BITS:
            raise ConfigError(f"bits must be in 2..{MAX_BITS}")

    @property
    def coord_bound(self) -> int:
        """Largest |value| one client's rounded coordinate can take (before noise)."""
        return math.ceil(self.clip * self.scale)

    @property
    def l2_sensitivity(self) -> float:
        """L2 sensitivity in integer units: clipping, plus at most 1 per coordinate from rounding."""
        return self.clip * self.scale + math.sqrt(self.dim)


def max_abs_sum(n: int, cfg: QuantConfig, noise_bound: int) -> int:
    """The largest |coordinate| the sum of ``n`` encoded inputs can reach."""
    return n * (cfg.coord_bound + noise_bound)


def required_bits(n: int, coord_bound: int, noise_bound: int) -> int:
    """The smallest ``b`` for which ``n`` clients' sum can never wrap."""
    bound = n * (coord_bound + noise_bound)
    return bound.bit_length() + 1  # 2**(b-1) > bound


def check_headroom(n: int, cfg: QuantConfig, noise_bound: int) -> None:
    """Refuse a configuration whose sum could wrap modulo ``2**b`` (raises :class:`ConfigError`)."""
    if n < 1:
        raise ConfigError("cohort size n must be >= 1")
    if noise_bound < 0:
        raise ConfigError("noise_bound must be >= 0")
    bound = max_abs_sum(n, cfg, noise_bound)
    if bound >= 1 << (cfg.bits - 1):
        need = required_bits(n, cfg.coord_bound, noise_bound)
        raise ConfigError(
            f"modulus 2^{cfg.bits} can wrap: {n} clients x (ceil(C*scale)={cfg.coord_bound} + "
            f"noise bound {noise_bound}) = {bound} >= 2^{cfg.bits - 1}; use bits >= {need}, "
            f"a smaller scale or clip, or a smaller cohort"
        )


def clip_l2(x: np.ndarray, clip: float) -> np.ndarray:
    """``x`` scaled down (never up) to L2 norm at most ``clip``."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("input vector has non-finite values")
    norm = float(np.linalg.norm(x))
    return x * (clip / norm) if norm > clip else x.copy()


def stochastic_round(y: np.ndarray, rng: Randomness = DEFAULT_RANDOMNESS) -> np.ndarray:
    """Round each value to floor or ceil with probability of its fractional part (unbiased)."""
    y = np.asarray(y, dtype=np.float64)
    lo = np.floor(y)
    u = prg.uniform01(rng.token_bytes(32), y.size, ROUND_LABEL).reshape(y.shape)
    return (lo + (u < (y - lo))).astype(np.int64)


def quantize(x: np.ndarray, cfg: QuantConfig, rng: Randomness = DEFAULT_RANDOMNESS) -> np.ndarray:
    """Clip, scale and stochastically round: signed ``int64`` with |v_j| <= ``cfg.coord_bound``."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size != cfg.dim:
        raise ValueError(f"expected a {cfg.dim}-dim vector, got {x.size}")
    v = stochastic_round(clip_l2(x, cfg.clip) * cfg.scale, rng)
    return np.clip(v, -cfg.coord_bound, cfg.coord_bound)  # no-op bar float edge cases


def dequantize(v: np.ndarray, cfg: QuantConfig) -> np.ndarray:
    """Integer units back to input units (for a sum: the sum of the clipped inputs, plus noise)."""
    return np.asarray(v, dtype=np.float64) / cfg.scale


def encode(v: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers to residues mod ``2**bits`` (two's complement), in the mask word type."""
    mask = np.uint64((1 << bits) - 1)
    return (np.asarray(v, dtype=np.int64).astype(np.uint64) & mask).astype(prg.mask_dtype(bits))


def decode(s: np.ndarray, bits: int) -> np.ndarray:
    """Residues mod ``2**bits`` to the centred signed integers they stand for."""
    r = np.asarray(s).astype(np.uint64) & np.uint64((1 << bits) - 1)
    signed = r.astype(np.int64)
    return np.where(signed >= (1 << (bits - 1)), signed - (1 << bits), signed)


def mod_sum(vectors: list[np.ndarray], bits: int) -> np.ndarray:
    """Sum of residue vectors mod ``2**bits`` (word arithmetic wraps mod 2**32/2**64, a multiple)."""
    dt = prg.mask_dtype(bits)
    acc = np.zeros_like(np.asarray(vectors[0], dtype=dt))
    for v in vectors:
        acc += np.asarray(v, dtype=dt)
    return acc & dt.type((1 << bits) - 1)
