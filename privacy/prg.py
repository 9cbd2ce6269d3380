"""Expand a short seed into a long mask with AES-256-CTR (``cryptography``), vectorized.

SecAgg+ masks are the PRG output of a 32-byte seed: a self-mask seed or a pairwise X25519
agreement. The seed goes through HKDF-SHA256 with a domain label first, so one seed can never
produce the same stream for two purposes; the derived key drives AES-CTR from a zero counter
(safe: each derived key encrypts exactly one stream). Keystream bytes are reinterpreted by
numpy as little-endian ``uint32``/``uint64`` words, which is uniform modulo ``2**b`` for any
``b`` up to the word size.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASK_LABEL = b"sotto-mask"
# Stateless parameter objects, made once: the server expands ~k masks per dropped client and
# building them (with their ABC type checks) cost a third of each expansion.
_SHA256 = hashes.SHA256()
_CTR_FROM_ZERO = modes.CTR(bytes(16))


def mask_dtype(bits: int) -> np.dtype:
    """The smallest unsigned word that holds values mod ``2**bits`` (arithmetic wraps in it)."""
    if not 1 <= bits <= 64:
        raise ValueError("bits must be in 1..64")
    return np.dtype("<u4") if bits <= 32 else np.dtype("<u8")


def derive_key(seed: bytes, label: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256(seed) bound to ``label``."""
    return HKDF(algorithm=_SHA256, length=length, salt=None, info=label).derive(seed)


def keystream(seed: bytes, nbytes: int, label: bytes = MASK_LABEL) -> bytes:
    """``nbytes`` of AES-256-CTR keystream under a key derived from ``seed`` and ``label``."""
    enc = Cipher(algorithms.AES(derive_key(seed, label)), _CTR_FROM_ZERO).encryptor()
    return enc.update(bytes(nbytes)) + enc.finalize()


def expand(seed: bytes, dim: int, bits: int, label: bytes = MASK_LABEL) -> np.ndarray:
    """A ``dim``-long vector of words, uniform mod ``2**bits`` (not yet reduced)."""
    dt = mask_dtype(bits)
    return np.frombuffer(keystream(seed, dim * dt.itemsize, label), dtype=dt)


class Expander:
    """:func:`expand` for one ``dim`` and ``bits``, into a buffer it reuses.

    Why: the server expands about k masks per dropped client and subtracts each from the sum
    at once; the two fresh ``dim``-word allocations per mask (the zero input and the
    keystream) cost a seventh of each expansion. The words are :func:`expand`'s exactly."""

    __slots__ = ("_zeros", "_out", "_words")

    def __init__(self, dim: int, bits: int) -> None:
        dt = mask_dtype(bits)
        self._zeros = bytes(dim * dt.itemsize)
        self._out = bytearray(dim * dt.itemsize + 15)  # update_into wants a block's slack
        self._words = np.frombuffer(self._out, dtype=dt, count=dim)
        self._words.flags.writeable = False

    def expand(self, seed: bytes, label: bytes = MASK_LABEL) -> np.ndarray:
        """``expand(seed, dim, bits, label)``, valid until the next call (a view of the buffer)."""
        enc = Cipher(algorithms.AES(derive_key(seed, label)), _CTR_FROM_ZERO).encryptor()
        enc.update_into(self._zeros, self._out)
        enc.finalize()
        return self._words


def uniform01(seed: bytes, dim: int, label: bytes) -> np.ndarray:
    """``dim`` floats uniform in [0, 1) with 53 random bits each (for stochastic rounding)."""
    words = np.frombuffer(keystream(seed, dim * 8, label), dtype="<u8")
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
