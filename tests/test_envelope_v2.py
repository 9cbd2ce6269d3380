"""Envelope v2 (binary): its framing rules, the HPKE info over the exact header bytes, v2
payload rules, and the v1/v2 dispatch behind the one ``parse`` and ``Validator.validate``.

Records are built byte by byte here (``frame``) so that every length, item and type can lie;
where a record must get past decryption to reach the rule under test, it is sealed with the
info of exactly the bytes it carries, as any holder of the region's public key can do.
"""

from __future__ import annotations

import pickle
import struct
from datetime import UTC, datetime

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

import privacy.round_wire  # noqa: F401  (registers the SecAgg+ payload types)
from ingestion.validator import Accepted, Keyring, Rejected, Validator
from privacy import prg
from privacy.envelope import SUITE, open_payload, parse, seal, seal_v1
from privacy.errors import EnvelopeRejected
from privacy.keys import KeySet, PrivateKey
from privacy.policy import RegionPolicy
from privacy.secagg.messages import MaskedInput
from privacy.wire import MAX_ROUND, BehaviorCounts, RejectReason, RoundSummary
from privacy.wire_v2 import INFO_DOMAIN, PREFIX, EnvelopeV2

NOW = datetime(2026, 11, 24, tzinfo=UTC)
KEY = PrivateKey.generate("eu-k1")
KEYSET = KeySet(region="eu", keys=[]).rotated(KEY.key_id, KEY.public_bytes(), NOW)
LIMIT = 65536


def summary(seed: int = 0) -> RoundSummary:
    vec = np.random.default_rng(seed).normal(size=128)
    return RoundSummary.build(vec, BehaviorCounts(steps=5, accepted=4, failed=1), {"Tap": 3})


def summary_map(**changes: object) -> dict:
    """A valid summary payload as the MessagePack map a sender writes, then edited."""
    return {**summary().model_dump(mode="python"), **changes}


HEADER = [bytes(range(16)), "eu", "eu-k1", "c1", 7, "summary", 1_764_547_200_000_000]


def frame(
    header: object = None,
    plain: bytes | None = None,
    *,
    head_raw: bytes | None = None,
    hlen: int | None = None,
    slen: int | None = None,
    version: int = 2,
    tail: bytes = b"",
) -> bytes:
    """A v2 record from parts: ``header`` (MessagePack-encoded, or ``head_raw`` as is) sealed
    with ``plain`` (a valid summary unless given) to the info of exactly these header bytes."""
    body = (
        head_raw
        if head_raw is not None
        else msgspec.msgpack.encode(HEADER if header is None else header)
    )
    head = PREFIX[:3] + bytes([version]) + struct.pack(">H", len(body) if hlen is None else hlen)
    head += body
    if plain is None:
        plain = msgspec.msgpack.encode(summary().model_dump(mode="python"))
    sealed = SUITE.encrypt(plain, KEY.key.public_key(), info=INFO_DOMAIN + head)
    return head + struct.pack(">I", len(sealed) if slen is None else slen) + sealed + tail


def rejected(raw: bytes) -> EnvelopeRejected:
    """Why parse-then-open refuses ``raw`` (it must refuse it)."""
    with pytest.raises(EnvelopeRejected) as exc:
        open_payload(parse(raw, max_bytes=LIMIT), KEY)
    detail = exc.value.detail
    assert detail.isascii() and detail.isprintable(), detail
    return exc.value


def test_handmade_frame_is_accepted_and_matches_the_layout() -> None:
    env = parse(frame())
    assert isinstance(env, EnvelopeV2)
    assert (env.msg_id, env.region, env.key_id, env.cohort, env.round, env.payload_type) == (
        bytes(range(16)).hex(),
        "eu",
        "eu-k1",
        "c1",
        7,
        "summary",
    )
    assert env.sent_at == datetime(2025, 12, 1, tzinfo=UTC)
    assert open_payload(env, KEY) == summary()


def test_seal_writes_v2_raw_bytes_not_base64() -> None:
    """The sizes that matter on the wire: a summary and a masked input, v1 against v2."""
    s = summary()
    v1 = seal_v1(s, key=KEYSET.current(), cohort="c1", round=7).to_bytes()
    v2 = seal(s, key=KEYSET.current(), cohort="c1", round=7).to_bytes()
    assert v2[:4] == PREFIX and v1[:1] == b"{"
    assert len(v2) < 0.6 * len(v1)
    words = np.arange(2052, dtype=prg.mask_dtype(32))
    masked = MaskedInput(round_id="eu:c1:7", sender=3, bits=32, dim=2052, data=words.tobytes())
    m1 = seal_v1(masked, key=KEYSET.current(), cohort="c1", round=7).to_bytes()
    m2 = seal(masked, key=KEYSET.current(), cohort="c1", round=7).to_bytes()
    assert len(m2) - len(masked.data) < 256  # framing + header + HPKE + field names only
    assert len(m1) > 1.7 * len(masked.data)  # base64 twice
    assert open_payload(parse(m2, max_bytes=LIMIT), KEY) == masked


def test_every_header_byte_is_bound() -> None:
    """Flip any bit of the prefix, lengths or header: never accepted (decrypt_failed where
    the edited header still parses)."""
    raw = frame()
    head_end = 6 + raw[5] + 256 * raw[4]
    reasons = set()
    for i in range(head_end + 4):
        for bit in (0, 7):
            bad = bytearray(raw)
            bad[i] ^= 1 << bit
            reasons.add(rejected(bytes(bad)).reason)
    assert RejectReason.DECRYPT_FAILED in reasons
    assert reasons <= {
        RejectReason.DECRYPT_FAILED,
        RejectReason.MALFORMED,
        RejectReason.SCHEMA,
        RejectReason.UNSUPPORTED_VERSION,
    }


def test_info_is_the_received_bytes_not_a_re_encoding() -> None:
    """The same header, encoded another valid way (cohort as str8, round as uint64): a
    sender who sealed to those bytes is accepted, with the same fields; our ciphertext moved
    under those bytes fails, though the header means the same."""
    enc = msgspec.msgpack.encode
    canonical = enc(HEADER)
    odd = b"\x97" + b"".join(map(enc, HEADER[:3])) + b"\xd9\x02c1"
    odd += b"\xcf" + (7).to_bytes(8, "big") + b"".join(map(enc, HEADER[5:]))
    assert odd != canonical and msgspec.msgpack.decode(odd) == HEADER
    theirs, ours = frame(head_raw=odd), frame(head_raw=canonical)
    env_theirs, env_ours = parse(theirs), parse(ours)
    assert open_payload(env_theirs, KEY) == summary()
    fields = ("msg_id", "region", "key_id", "cohort", "round", "payload_type", "sent_at")
    assert [getattr(env_theirs, f) for f in fields] == [getattr(env_ours, f) for f in fields]
    swapped = theirs[: 6 + len(odd)] + ours[6 + len(canonical) :]
    assert rejected(swapped).reason is RejectReason.DECRYPT_FAILED


@pytest.mark.parametrize(
    "name,raw,reason",
    [
        ("magic only", PREFIX[:3], RejectReason.MALFORMED),
        ("wrong magic", b"\xf5XE\x02" + frame()[4:], RejectReason.MALFORMED),
        ("version 3", frame(version=3), RejectReason.UNSUPPORTED_VERSION),
        ("version 1 in binary", frame(version=1), RejectReason.UNSUPPORTED_VERSION),
        (
            "header length lies long",
            frame(hlen=len(msgspec.msgpack.encode(HEADER)) + 3),
            RejectReason.MALFORMED,
        ),
        (
            "header length lies short",
            frame(hlen=len(msgspec.msgpack.encode(HEADER)) - 3),
            RejectReason.MALFORMED,
        ),
        ("header length 0xFFFF", frame(hlen=0xFFFF), RejectReason.MALFORMED),
        ("sealed length 0xFFFFFFFF", frame(slen=0xFFFFFFFF), RejectReason.MALFORMED),
        ("sealed length shorter than enc+tag", frame(slen=40), RejectReason.MALFORMED),
        ("trailing bytes", frame(tail=b"\x00"), RejectReason.MALFORMED),
        ("header not MessagePack", frame(head_raw=b"\xc1" * 20), RejectReason.MALFORMED),
        (
            "header truncated MessagePack",
            frame(head_raw=msgspec.msgpack.encode(HEADER)[:-3]),
            RejectReason.MALFORMED,
        ),
        ("an unknown eighth item", frame([*HEADER, 1]), RejectReason.SCHEMA),
        ("six items", frame(HEADER[:6]), RejectReason.SCHEMA),
        ("header as a map", frame(dict(enumerate(HEADER))), RejectReason.SCHEMA),
        (
            "nested 200 deep",
            frame([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
            RejectReason.SCHEMA,
        ),
        ("deep header array", frame(head_raw=b"\x91" * 500 + b"\x01"), RejectReason.SCHEMA),
        ("round as text", frame([*HEADER[:4], "7", *HEADER[5:]]), RejectReason.SCHEMA),
        ("round as float", frame([*HEADER[:4], 7.0, *HEADER[5:]]), RejectReason.SCHEMA),
        (
            "round MAX_ROUND+1",
            frame([*HEADER[:4], MAX_ROUND + 1, *HEADER[5:]]),
            RejectReason.SCHEMA,
        ),
        ("round negative", frame([*HEADER[:4], -1, *HEADER[5:]]), RejectReason.SCHEMA),
        ("round 2**64-1", frame([*HEADER[:4], 2**64 - 1, *HEADER[5:]]), RejectReason.SCHEMA),
        ("msg_id 15 bytes", frame([bytes(15), *HEADER[1:]]), RejectReason.SCHEMA),
        ("msg_id as hex text", frame(["00" * 16, *HEADER[1:]]), RejectReason.SCHEMA),
        ("region with a newline", frame([HEADER[0], "eu\n", *HEADER[2:]]), RejectReason.SCHEMA),
        ("NUL in the cohort", frame([*HEADER[:3], "c\x001", *HEADER[4:]]), RejectReason.SCHEMA),
        ("sent_at negative", frame([*HEADER[:6], -1]), RejectReason.SCHEMA),
        ("sent_at past year 9999", frame([*HEADER[:6], 2**63 - 1]), RejectReason.SCHEMA),
        ("region as bin", frame([HEADER[0], b"eu", *HEADER[2:]]), RejectReason.SCHEMA),
        (
            "bad UTF-8 in a str",
            frame(head_raw=msgspec.msgpack.encode(HEADER).replace(b"\xa2eu", b"\xa2\xff\xfe", 1)),
            RejectReason.MALFORMED,
        ),
        ("oversize", frame(tail=b"\x00" * LIMIT), RejectReason.OVERSIZED),
    ],
)
def test_framing_and_header_rejections(name: str, raw: bytes, reason: RejectReason) -> None:
    assert rejected(raw).reason is reason, name


def test_every_truncation_is_malformed() -> None:
    raw = frame()
    for cut in range(1, len(raw)):
        got = rejected(raw[:cut]).reason
        assert got is RejectReason.MALFORMED, (cut, got)


def test_payload_type_in_the_header_must_be_known() -> None:
    raw = frame([*HEADER[:5], "summary_two", HEADER[6]])
    assert rejected(raw).reason is RejectReason.SCHEMA


NAN = np.full(128, np.nan, dtype="<f4").tobytes()


@pytest.mark.parametrize(
    "name,plain",
    [
        ("not MessagePack", b"\xc1\xc1"),
        ("truncated MessagePack", msgspec.msgpack.encode(summary_map())[:-5]),
        ("trailing bytes after the map", msgspec.msgpack.encode(summary_map()) + b"\x00"),
        ("an array, not a map", msgspec.msgpack.encode([1, 2, 3])),
        ("nested 60,000 deep", b"\x91" * 60_000 + b"\x01"),
        (
            "nested deep in a field",
            msgspec.msgpack.encode(summary_map(action_hist=0)).replace(
                b"\xabaction_hist\x00", b"\xabaction_hist" + b"\x91" * 5000 + b"\x01"
            ),
        ),
        ("an unknown field", msgspec.msgpack.encode(summary_map(device_id="leak"))),
        ("counts 2**64-1", msgspec.msgpack.encode(summary_map(counts={"steps": 2**64 - 1}))),
        ("counts negative", msgspec.msgpack.encode(summary_map(counts={"failed": -(2**63)}))),
        ("embedding as base64 text", msgspec.msgpack.encode(summary_map(embedding="AAAA" * 171))),
        ("embedding 511 bytes", msgspec.msgpack.encode(summary_map(embedding=bytes(511)))),
        ("embedding NaN", msgspec.msgpack.encode(summary_map(embedding=NAN))),
        ("embedding as a list", msgspec.msgpack.encode(summary_map(embedding=[0.0] * 128))),
        ("an int map key", msgspec.msgpack.encode(summary_map(action_hist={1: 1}))),
        ("an array map key", b"\x81\x91\x01\x02"),
        (
            "a NUL-filled action name",
            msgspec.msgpack.encode(summary_map(action_hist={"\x00" * 40: 1})),
        ),
        (
            "65 action kinds",
            msgspec.msgpack.encode(summary_map(action_hist={f"a{i}": 1 for i in range(65)})),
        ),
        (
            "an extension type",
            msgspec.msgpack.encode(summary_map(counts=msgspec.msgpack.Ext(5, b"x"))),
        ),
        ("a timestamp for a count", msgspec.msgpack.encode(summary_map(counts={"steps": NOW}))),
        ("type says masked_input", msgspec.msgpack.encode(summary_map(type="masked_input"))),
    ],
)
def test_payload_rejections(name: str, plain: bytes) -> None:
    exc = rejected(frame(plain=plain))
    assert exc.reason is RejectReason.PAYLOAD_INVALID, name
    # the plaintext is the device's: a detail names a rule or field paths, never its bytes
    fixed = {"payload is not MessagePack", "payload nested too deep", "payload is not a map"}
    assert exc.detail in fixed or exc.detail.startswith("payload fields: "), exc.detail


POLICY = RegionPolicy.from_toml(
    '[regions.eu]\ndatabase_url = "sqlite://"\nkeyset_dir = "k/eu"\n'
    '[regions.cn]\ndatabase_url = "sqlite://"\nkeyset_dir = "k/cn"\n'
)
VALIDATOR = Validator(
    "eu", POLICY, Keyring(KEYSET, {KEY.key_id: KEY}, {KEY.key_id: "eu"}), max_bytes=LIMIT
)
TOPIC = POLICY.region("eu").t.ingest


def test_validator_takes_both_versions_and_its_verdicts_pickle() -> None:
    """Devices migrate one by one: one topic carries v1 and v2 side by side."""
    s = summary(3)
    for sealer in (seal, seal_v1):
        raw = sealer(s, key=KEYSET.current(), cohort="c1", round=2).to_bytes()
        verdict = VALIDATOR.validate(raw, TOPIC, 0, 1)
        assert isinstance(verdict, Accepted), verdict
        assert verdict.summary == s and verdict.envelope.cohort == "c1"
        back = pickle.loads(pickle.dumps(verdict))
        assert back.summary == s and back.envelope.msg_id == verdict.envelope.msg_id
    bad = VALIDATOR.validate(frame(version=9), TOPIC, 0, 2)
    assert isinstance(bad, Rejected) and bad.reason is RejectReason.UNSUPPORTED_VERSION
    assert pickle.loads(pickle.dumps(bad)) == bad


def test_validator_routes_v2_by_the_header() -> None:
    cn_key = PrivateKey.generate("cn-k1")
    cn = KeySet(region="cn", keys=[]).rotated(cn_key.key_id, cn_key.public_bytes(), NOW)
    raw = seal(summary(), key=cn.current(), cohort="c1", round=2).to_bytes()
    verdict = VALIDATOR.validate(raw, TOPIC)
    assert isinstance(verdict, Rejected) and verdict.reason is RejectReason.WRONG_REGION
    unknown = frame([HEADER[0], "eu", "eu-nobody", *HEADER[3:]])
    verdict = VALIDATOR.validate(unknown, TOPIC)
    assert isinstance(verdict, Rejected) and verdict.reason is RejectReason.UNKNOWN_KEY
    assert verdict.envelope is not None and verdict.envelope.key_id == "eu-nobody"


VALID = frame()


@hyp_settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.sampled_from(["flip", "insert", "delete"])),
        min_size=1,
        max_size=4,
    ),
    filler=st.binary(min_size=1, max_size=8),
)
def test_any_edit_of_a_v2_record_is_a_typed_refusal(edits, filler: bytes) -> None:
    """Byte edits anywhere (lengths, header, enc, ciphertext): parse-then-open raises
    :class:`EnvelopeRejected`, nothing else, unless the edits cancelled out."""
    raw = bytearray(VALID)
    for at, how in edits:
        at = min(at, len(raw) - 1)
        if how == "flip":
            raw[at] ^= filler[0] or 1
        elif how == "insert":
            raw[at:at] = filler
        elif len(raw) > 1:
            del raw[at : at + len(filler)]
    if bytes(raw) == VALID:
        return
    rejected(bytes(raw))
