"""The table behind ``crypto.is_weak_key`` decides exactly as the X25519 probe it replaced.

The probe ran one exchange with a fixed key and called a public key weak when the shared
secret came out all-zero (``cryptography`` raises). The table must agree on every weak
encoding, on random keys, on keys next to the weak ones, and on every length."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from privacy.rand import SeededRandomness
from privacy.secagg import crypto

_P = 2**255 - 19
_A = 486662
_PROBE = x25519.X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def _probe_says_weak(pk: bytes) -> bool:
    try:
        _PROBE.exchange(x25519.X25519PublicKey.from_public_bytes(pk))
    except ValueError:
        return True
    return False


def _encodings(u: int) -> list[bytes]:
    """u and u + p (when below 2**255), each with and without the ignored top bit."""
    out = []
    for v in (u, u + _P):
        if v < 1 << 255:
            out += [v.to_bytes(32, "little"), (v | 1 << 255).to_bytes(32, "little")]
    return out


def _double_u(u: int) -> int | None:
    """u of 2P on the Montgomery curve (x-only); None for the point at infinity."""
    den = 4 * u * (u * u + _A * u + 1) % _P
    return None if den == 0 else (u * u - 1) ** 2 * pow(den, -1, _P) % _P


def test_the_table_is_the_small_order_subgroup() -> None:
    """Doubling takes each order-8 u to the order-4 u = 1, u = +-1 to the order-2 u = 0, and
    u = 0 to infinity: the five u are the points of order dividing 8 (curve) and 4 (twist)."""
    table = crypto._SMALL_ORDER_U
    assert len(table) == 5
    order8 = sorted(table - {0, 1, _P - 1})
    assert [_double_u(u) for u in order8] == [1, 1]
    assert _double_u(1) == _double_u(_P - 1) == 0
    assert _double_u(0) is None


def test_every_weak_encoding_is_weak_for_both() -> None:
    weak = [pk for u in sorted(crypto._SMALL_ORDER_U) for pk in _encodings(u)]
    assert len(set(weak)) == 14
    for pk in weak:
        assert _probe_says_weak(pk), pk.hex()
        assert crypto.is_weak_key(pk), pk.hex()


def test_random_and_neighbouring_keys_agree_with_the_probe() -> None:
    rng = SeededRandomness.from_int(31)
    keys = [rng.token_bytes(32) for _ in range(300)]
    keys += [crypto.new_keypair(rng)[1] for _ in range(50)]
    for u in crypto._SMALL_ORDER_U:  # off by a little from each weak u, in every encoding
        for delta in (-2, -1, 1, 2, 19):
            keys += _encodings((u + delta) % _P)
    for pk in keys:
        assert crypto.is_weak_key(pk) is _probe_says_weak(pk), pk.hex()
    assert not any(crypto.is_weak_key(pk) for pk in keys[:350])


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_wrong_lengths_are_weak(length: int) -> None:
    assert crypto.is_weak_key(bytes(length))
    assert crypto.is_weak_key(b"\x09" * length)
