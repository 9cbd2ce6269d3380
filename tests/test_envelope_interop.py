"""Envelope v2 interoperates with a third party that has only docs/wire-format.md.

The sender here uses pyhpke (an RFC 9180 implementation independent of ``cryptography``'s
``hpke`` module that Sotto uses), raw key bytes, and a hand-written MessagePack encoder of
the few types the layout needs: no Sotto code and no msgspec touches what it sends. The
reverse direction takes Sotto's record apart with ``struct`` by the documented offsets and
opens it with pyhpke.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import msgspec
import numpy as np
import pytest
from pyhpke import AEADId, CipherSuite, KDFId, KEMId

from privacy.envelope import open_payload, parse, seal
from privacy.errors import EnvelopeRejected
from privacy.keys import KeySet, PrivateKey
from privacy.wire import BehaviorCounts, RejectReason, RoundSummary

# Everything a third party needs, as docs/wire-format.md states it.
DOC_PREFIX = b"\xf5SE\x02"
DOC_INFO_DOMAIN = b"sotto-envelope/v2\x00"
SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES128_GCM)

NOW = datetime(2026, 11, 24, tzinfo=UTC)
KEY = PrivateKey.generate("eu-k1")
KEYSET = KeySet(region="eu", keys=[]).rotated(KEY.key_id, KEY.public_bytes(), NOW)


def mp(obj: object) -> bytes:
    """A minimal MessagePack encoder (the spec's widest forms where a choice exists, to show
    that the info is over the bytes as sent, not over a canonical form)."""
    if isinstance(obj, bool):
        return b"\xc3" if obj else b"\xc2"
    if isinstance(obj, int):
        return (
            b"\xcf" + obj.to_bytes(8, "big")
            if obj >= 0
            else b"\xd3" + obj.to_bytes(8, "big", signed=True)
        )
    if isinstance(obj, str):
        raw = obj.encode()
        return b"\xdb" + struct.pack(">I", len(raw)) + raw
    if isinstance(obj, bytes):
        return b"\xc6" + struct.pack(">I", len(obj)) + obj
    if isinstance(obj, list):
        return b"\xdd" + struct.pack(">I", len(obj)) + b"".join(map(mp, obj))
    if isinstance(obj, dict):
        return (
            b"\xdf" + struct.pack(">I", len(obj)) + b"".join(mp(k) + mp(v) for k, v in obj.items())
        )
    raise TypeError(type(obj))


def third_party_record(public_key: bytes, payload: dict, header: list) -> bytes:
    body = mp(header)
    head = DOC_PREFIX + struct.pack(">H", len(body)) + body
    enc, ctx = SUITE.create_sender_context(
        SUITE.kem.deserialize_public_key(public_key), info=DOC_INFO_DOMAIN + head
    )
    sealed = enc + ctx.seal(mp(payload))
    return head + struct.pack(">I", len(sealed)) + sealed


def summary_payload(vec: np.ndarray) -> dict:
    return {
        "type": "summary",
        "v": 1,
        "embed_version": 1,
        "embedding": vec.astype("<f4").tobytes(),
        "counts": {"steps": 9, "accepted": 7, "overridden": 1, "failed": 1},
        "action_hist": {"Tap": 5, "Type": 4},
    }


def header(msg_id: bytes = bytes(range(16)), round: int = 42) -> list:
    return [msg_id, "eu", "eu-k1", "cohort-x", round, "summary", 1_764_547_200_123_456]


def test_a_third_party_sender_is_accepted() -> None:
    vec = np.linspace(-1, 1, 128)
    raw = third_party_record(KEY.public_bytes(), summary_payload(vec), header())
    env = parse(raw)
    assert (env.msg_id, env.cohort, env.round) == (bytes(range(16)).hex(), "cohort-x", 42)
    assert env.sent_at == datetime(2025, 12, 1, 0, 0, 0, 123456, tzinfo=UTC)
    got = open_payload(env, KEY)
    assert isinstance(got, RoundSummary)
    np.testing.assert_array_equal(got.vector(), vec.astype("<f4"))
    assert got.counts == BehaviorCounts(steps=9, accepted=7, overridden=1, failed=1)
    assert got.action_hist == {"Tap": 5, "Type": 4}


def test_a_third_party_header_edit_fails_decryption() -> None:
    raw = third_party_record(KEY.public_bytes(), summary_payload(np.ones(128)), header())
    moved = raw.replace(mp(42), mp(43), 1)
    with pytest.raises(EnvelopeRejected) as exc:
        open_payload(parse(moved), KEY)
    assert exc.value.reason is RejectReason.DECRYPT_FAILED


def test_sotto_records_open_with_the_documented_layout() -> None:
    s = RoundSummary.build(
        np.arange(128) / 128, BehaviorCounts(steps=3, accepted=2, failed=1), {"Launch": 3}
    )
    raw = seal(s, key=KEYSET.current(), cohort="c1", round=5).to_bytes()
    assert raw[:4] == DOC_PREFIX
    (hlen,) = struct.unpack_from(">H", raw, 4)
    head = raw[: 6 + hlen]
    (slen,) = struct.unpack_from(">I", raw, 6 + hlen)
    sealed = raw[10 + hlen :]
    assert len(sealed) == slen
    items = msgspec.msgpack.decode(raw[6 : 6 + hlen])
    assert items[1:6] == ["eu", "eu-k1", "c1", 5, "summary"] and len(items[0]) == 16
    ctx = SUITE.create_recipient_context(
        sealed[:32], SUITE.kem.deserialize_private_key(KEY.raw_bytes()), info=DOC_INFO_DOMAIN + head
    )
    payload = msgspec.msgpack.decode(ctx.open(sealed[32:]))
    assert payload["type"] == "summary" and payload["counts"]["steps"] == 3
    assert payload["embedding"] == np.asarray(s.vector(), dtype="<f4").tobytes()
    assert payload["action_hist"] == {"Launch": 3}
