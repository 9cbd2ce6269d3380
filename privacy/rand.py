"""Randomness as an object the caller passes in (sans-IO: no hidden global RNG).

Every secret in :mod:`privacy` (X25519 private keys, self-mask seeds, Shamir coefficients,
AEAD nonces, noise and rounding seeds) is drawn from a :class:`Randomness`. Production code
uses :class:`SystemRandomness` (``secrets``, i.e. the OS CSPRNG). :class:`SeededRandomness`
is an AES-CTR DRBG from ``cryptography`` for reproducible tests and simulations only: anyone
who knows its seed knows every secret it produced. Neither ``random`` nor numpy's generators
are ever used for anything secret.
"""

from __future__ import annotations

import secrets
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


@runtime_checkable
class Randomness(Protocol):
    """Where secret randomness comes from."""

    def token_bytes(self, n: int) -> bytes:
        """``n`` uniformly random bytes."""
        ...

    def randbelow(self, n: int) -> int:
        """A uniform integer in ``[0, n)``."""
        ...


class SystemRandomness:
    """The OS CSPRNG through :mod:`secrets`; the default everywhere."""

    __slots__ = ()

    def token_bytes(self, n: int) -> bytes:
        return secrets.token_bytes(n)

    def randbelow(self, n: int) -> int:
        return secrets.randbelow(n)

    def __repr__(self) -> str:
        return "SystemRandomness()"


class SeededRandomness:
    """Deterministic AES-256-CTR byte stream. For tests and simulations, never production.

    The seed is never shown by ``repr``.
    """

    __slots__ = ("_enc", "_buf")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("SeededRandomness needs a 32-byte seed")
        self._enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
        self._buf = b""

    @classmethod
    def from_int(cls, value: int) -> SeededRandomness:
        """Convenience for tests: a seed from a small integer."""
        return cls(value.to_bytes(32, "little"))

    def token_bytes(self, n: int) -> bytes:
        if n > len(self._buf):
            self._buf += self._enc.update(bytes(max(n, 4096)))
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def randbelow(self, n: int) -> int:
        if n <= 0:
            raise ValueError("randbelow needs n > 0")
        nbits = n.bit_length()
        nbytes = (nbits + 7) // 8
        while True:  # rejection sampling: exact uniformity
            v = int.from_bytes(self.token_bytes(nbytes), "little") >> (8 * nbytes - nbits)
            if v < n:
                return v

    def __repr__(self) -> str:
        return "SeededRandomness(<seed>)"


DEFAULT_RANDOMNESS: Randomness = SystemRandomness()
