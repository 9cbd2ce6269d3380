"""Independent cross-checks (review of issue 12): v2 header encodings, weak keys, Lagrange."""

from __future__ import annotations

import itertools
import random
import struct

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from privacy import shamir, wire_v2
from privacy.secagg.crypto import _P25519, _SMALL_ORDER_U, is_weak_key

_H = msgspec.msgpack.encode
_SEALED = b"\x00" * 48


def _record(body: bytes) -> bytes:
    return wire_v2.PREFIX + struct.pack(">H", len(body)) + body + struct.pack(">I", 48) + _SEALED


def test_non_canonical_header_encodings_parse_to_the_same_msg_id_but_different_info() -> None:
    """Two encodings of one header name the same msg_id (so replay dedup catches the pair)
    and give different HPKE info (so a re-encoded header cannot open the original ct)."""
    mid = bytes(range(16))
    canonical = _H([mid, "eu", "k1", "c1", 3, "summary", 5])
    wide = b"\xdc\x00\x07" + _H(mid) + b"\xd9\x02eu" + _H("k1") + _H("c1")
    wide += b"\xcf" + struct.pack(">Q", 3) + _H("summary") + b"\xce" + struct.pack(">I", 5)
    a, b = wire_v2.parse_v2(_record(canonical)), wire_v2.parse_v2(_record(wide))
    assert a.msg_id == b.msg_id == mid.hex()
    assert (a.round, a.sent_at, a.region) == (b.round, b.sent_at, b.region)
    assert a.hpke_info() != b.hpke_info()


@pytest.mark.parametrize("hlen", [0, 1, 0xFFFF])
def test_lying_header_lengths_are_malformed(hlen: int) -> None:
    body = _H([bytes(16), "eu", "k1", "c1", 3, "summary", 5])
    raw = wire_v2.PREFIX + struct.pack(">H", hlen) + body + struct.pack(">I", 48) + _SEALED
    with pytest.raises(wire_v2.EnvelopeRejected):
        wire_v2.parse_v2(raw)


@pytest.mark.parametrize("slen", [0, 47, 49, 0xFFFFFFFF])
def test_lying_sealed_lengths_are_malformed(slen: int) -> None:
    body = _H([bytes(16), "eu", "k1", "c1", 3, "summary", 5])
    raw = wire_v2.PREFIX + struct.pack(">H", len(body)) + body + struct.pack(">I", slen) + _SEALED
    with pytest.raises(wire_v2.EnvelopeRejected) as err:
        wire_v2.parse_v2(raw)
    assert err.value.reason == "malformed"


def _exchange_is_zero(pk: bytes) -> bool:
    sk = x25519.X25519PrivateKey.from_private_bytes(b"\x11" * 32)
    try:
        return sk.exchange(x25519.X25519PublicKey.from_public_bytes(pk)) == bytes(32)
    except ValueError:  # cryptography refuses an all-zero shared secret
        return True


def test_weak_key_table_matches_the_exchange_for_every_encoding() -> None:
    """Every u in the table, plus u + p where it fits in 255 bits, with either top bit."""
    encodings = []
    for u in _SMALL_ORDER_U:
        for v in (u, u + _P25519):
            if v < 1 << 255:
                for top in (0, 1 << 255):
                    encodings.append((v | top).to_bytes(32, "little"))
    for pk in encodings:
        assert is_weak_key(pk) and _exchange_is_zero(pk), pk.hex()
    rng = random.Random(7)
    for _ in range(200):  # and strong keys stay strong
        pk = rng.randbytes(32)
        assert is_weak_key(pk) == _exchange_is_zero(pk)


def _brute_weights(xs: list[int]) -> list[int]:
    p = shamir.PRIME
    out = []
    for m, xm in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != m:
                num = num * xj % p
                den = den * (xj - xm) % p
        out.append(num * pow(den, -1, p) % p)
    return out


def test_batched_lagrange_matches_brute_force_in_any_order() -> None:
    rng = random.Random(3)
    sets = [[1], [5], [2, 1], list(range(1, 9)), [2**31 - 1, 1, 7]]
    sets += [rng.sample(range(1, 5000), 6) for _ in range(5)]
    for xs in sets:
        for perm in itertools.islice(itertools.permutations(xs), 6):
            assert shamir.lagrange_at_zero(list(perm)) == _brute_weights(list(perm))


@pytest.mark.parametrize("xs", [[1, 1], [0, 2], [3, 2, 3]])
def test_lagrange_refuses_duplicate_or_zero_points(xs: list[int]) -> None:
    with pytest.raises(ValueError):
        shamir.lagrange_at_zero(xs)


def test_payload_rejection_never_names_a_plaintext_mapping_key() -> None:
    """A payload's mapping keys (action names) are decrypted plaintext: a rejection detail
    names the field and masks the key, in v1 and in v2."""
    from pydantic import ValidationError

    from privacy.envelope import _invalid_fields
    from privacy.wire import RoundSummary

    secret_key = "call-mum-at-0612345678"
    try:
        RoundSummary.model_validate({"action_hist": {secret_key: "not-a-count"}})
    except ValidationError as exc:
        detail = _invalid_fields(exc, names=frozenset(RoundSummary.model_fields))
    else:  # pragma: no cover - the payload above is invalid
        raise AssertionError("invalid payload accepted")
    assert secret_key not in detail
    assert "action_hist.<key>" in detail
