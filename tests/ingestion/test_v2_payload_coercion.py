"""Payloads that decrypt fine but bend the contract: lax coercion, edge values, huge containers.

Anyone holding the region's public key can seal any plaintext (HPKE authenticates nobody), so
every case here is an attacker-built payload inside an envelope that opens. v2 payloads are
MessagePack validated in pydantic's Python (lax) mode, v1 payloads JSON validated in JSON
(lax) mode; the two must agree wherever a value exists in both encodings, and whatever is
accepted must be inside the contract the aggregates, the round sink and the database rely on.

* equivalent values (``True``/``1.0``/``"1"`` for 1) may be accepted, alike in v1 and v2, and
  then count as the plain integer they equal;
* values outside the contract are ``payload_invalid`` in both, never ``internal_error``;
* MessagePack-only shapes (ext types, bin keys, unhashable keys, broken timestamps) are typed
  refusals too;
* a container of bad items is refused at a cost that does not grow with the number of items
  (pydantic collects one error per bad item: ~3 KB and ~10 µs each, so a 1 MiB list of them
  held 3.5 GB and 11 s of one validation worker);
* a string that PostgreSQL cannot store (NUL) is refused at the validator, not by the
  database inside the checkpoint's transaction, which would refuse the batch for ever.
"""

from __future__ import annotations

import json
import secrets
import struct
import time
from datetime import UTC, datetime

import msgspec
import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import select

import privacy.round_wire  # noqa: F401  (registers the SecAgg+ payload types)
from backend import keystore
from backend.storage import reading
from deploy.settings import SottoSettings
from ingestion.aggregates import aggregates
from ingestion.rounds_db import round_checkins
from ingestion.service import IngestionApp
from ingestion.topics import ensure_region_topics
from ingestion.validator import Accepted, Keyring, Rejected, Validator, Verdict
from privacy import quantize
from privacy.envelope import SUITE
from privacy.keys import KeyEntry, KeySet, PrivateKey
from privacy.policy import RegionPolicy
from privacy.rand import SeededRandomness
from privacy.round_wire import Checkin
from privacy.secagg import server as secagg_server
from privacy.secagg.messages import (
    EncryptedShares,
    MaskedInput,
    RoundParams,
    UnmaskResponse,
)
from privacy.secagg.simulate import run_round
from privacy.wire import (
    MAX_ACTION_KINDS,
    MAX_STEPS_PER_ROUND,
    BehaviorCounts,
    Envelope,
    RejectReason,
    RoundSummary,
    b64e,
)
from privacy.wire_v2 import INFO_DOMAIN, MAX_MAP_KEYS, PREFIX, decode_payload, encode_payload
from tests.ingestion.helpers import (
    Truth,
    assert_matches,
    dead_letters,
    on_postgres,
    produce,
    random_summary,
    seal_for,
    seal_raw_v2,
)
from tests.privacy.helpers import make_inputs

NOW = datetime(2026, 11, 24, tzinfo=UTC)
KEY = PrivateKey.generate("eu-k1")
KEYSET = KeySet(region="eu", keys=[]).rotated(KEY.key_id, KEY.public_bytes(), NOW)
POLICY = RegionPolicy.from_toml('[regions.eu]\ndatabase_url = "sqlite://"\nkeyset_dir = "k/eu"\n')
LIMIT = 64 * 1024
VALIDATOR = Validator(
    "eu", POLICY, Keyring(KEYSET, {KEY.key_id: KEY}, {KEY.key_id: "eu"}), max_bytes=LIMIT
)
TOPIC = POLICY.region("eu").t.ingest
ENC = msgspec.msgpack.encode


# -- sealing attacker-built plaintexts ----------------------------------------------------------
def sealed_v2(plain: bytes, payload_type: str = "summary") -> bytes:
    header = [secrets.token_bytes(16), "eu", "eu-k1", "c1", 7, payload_type, 1_764_547_200_000_000]
    body = ENC(header)
    head = PREFIX + struct.pack(">H", len(body)) + body
    sealed = SUITE.encrypt(plain, KEY.key.public_key(), info=INFO_DOMAIN + head)
    return head + struct.pack(">I", len(sealed)) + sealed


def sealed_v1(plain: bytes, payload_type: str = "summary") -> bytes:
    header = Envelope(
        msg_id=secrets.token_hex(16),
        region="eu",
        key_id="eu-k1",
        cohort="c1",
        round=7,
        payload_type=payload_type,
        sent_at=NOW,
        ct="",
    )
    ct = SUITE.encrypt(plain, KEY.key.public_key(), info=header.hpke_info())
    return header.model_copy(update={"ct": b64e(ct)}).to_bytes()


def judge(raw: bytes) -> Verdict:
    return VALIDATOR.validate(raw, TOPIC, 0, 0)


def summary_python(**changes: object) -> dict:
    """A valid summary as the MessagePack map a v2 sender writes, then edited."""
    vec = np.random.default_rng(0).normal(size=128)
    s = RoundSummary.build(vec, BehaviorCounts(steps=5, accepted=4, failed=1), {"Tap": 3})
    return {**s.model_dump(mode="python"), **changes}


def summary_json(**changes: object) -> dict:
    """The same summary as v1's JSON object (embedding base64), then edited."""
    return {
        **json.loads(RoundSummary.model_validate(summary_python()).model_dump_json()),
        **changes,
    }


def both(**changes: object) -> tuple[Verdict, Verdict]:
    """The v2 and the v1 verdict on the same edit of a valid summary."""
    v2 = judge(sealed_v2(ENC(summary_python(**changes))))
    v1 = judge(sealed_v1(json.dumps(summary_json(**changes)).encode()))
    return v2, v1


def reason(v: Verdict) -> RejectReason | None:
    return v.reason if isinstance(v, Rejected) else None


# -- 1. lax coercion of equivalent values: v1 and v2 alike, counted as the integer -------------
@pytest.mark.parametrize(
    "field,value,equals",
    [
        ("counts", {"steps": True}, {"steps": 1}),
        ("counts", {"steps": 7.0}, {"steps": 7}),
        ("counts", {"steps": "7"}, {"steps": 7}),
        ("counts", {"steps": " 7 "}, {"steps": 7}),
        ("counts", {"steps": "1_000"}, {"steps": 1000}),
        ("counts", {"steps": -0.0}, {"steps": 0}),
        ("action_hist", {"Tap": True}, {"Tap": 1}),
        ("action_hist", {"Tap": 2.0}, {"Tap": 2}),
        ("action_hist", {"Tap": "2"}, {"Tap": 2}),
        ("embed_version", True, 1),
        ("v", True, 1),
        ("v", 1.0, 1),
    ],
)
def test_equivalent_values_are_judged_alike_and_count_as_plain_ints(
    field: str, value: object, equals: object
) -> None:
    """Lower importance: lax mode takes ``True``, ``7.0`` and ``"7"`` for integers. Whatever
    the verdict, v1 and v2 give the same one, and an accepted value is the ``int`` it equals
    (never a ``bool`` or ``float``: the aggregates add them up and store them as BIGINT)."""
    v2, v1 = both(**{field: value})
    assert type(v2) is type(v1) and reason(v2) == reason(v1), (v2, v1)
    if isinstance(v2, Rejected):
        assert v2.reason is RejectReason.PAYLOAD_INVALID
        return
    assert isinstance(v1, Accepted)
    assert v2.summary == v1.summary
    got = getattr(v2.summary, field)
    if field == "counts":
        got = {k: v for k, v in got.model_dump().items() if k in equals}  # type: ignore[union-attr]
    assert got == equals
    values = [*v2.summary.counts.model_dump().values(), *v2.summary.action_hist.values()]
    assert all(type(x) is int for x in values), values
    assert type(v2.summary.embed_version) is int and type(v2.summary.v) is int


# -- 2. out-of-contract values: payload_invalid in both ----------------------------------------
@pytest.mark.parametrize(
    "field,value",
    [
        ("counts", {"steps": 1.5}),
        ("counts", {"steps": 1e300}),
        ("counts", {"steps": float("nan")}),
        ("counts", {"steps": float("inf")}),
        ("counts", {"steps": -1}),
        ("counts", {"steps": MAX_STEPS_PER_ROUND + 1}),
        ("counts", {"steps": 2**64 - 1}),
        ("counts", {"steps": -(2**63)}),
        ("counts", {"steps": "0x10"}),
        ("counts", {"steps": "9" * 5000}),
        ("counts", {"steps": None}),
        ("counts", [5, 4, 0, 1]),
        ("action_hist", {"Tap": -1}),
        ("action_hist", {"Tap": MAX_STEPS_PER_ROUND + 1}),
        ("action_hist", {"x" * 33: 1}),
        ("action_hist", {f"a{i}": 1 for i in range(MAX_ACTION_KINDS + 1)}),
        ("action_hist", [["Tap", 3]]),
        ("embed_version", 0),
        ("embed_version", 1.5),
        ("v", "1"),
        ("v", 2),
        ("type", "masked_input"),
    ],
)
def test_out_of_contract_values_are_payload_invalid_in_both(field: str, value: object) -> None:
    for version, v in zip(("v2", "v1"), both(**{field: value}), strict=True):
        assert isinstance(v, Rejected), (version, field, value, v)
        assert v.reason is RejectReason.PAYLOAD_INVALID, (version, v.reason, v.detail)


# -- 3. MessagePack-only shapes ------------------------------------------------------------------
BASE = ENC(summary_python())
HIST = ENC({"Tap": 3})
COUNTS = ENC({"steps": 5, "accepted": 4, "overridden": 0, "failed": 1})
assert HIST in BASE and COUNTS in BASE


def ts96(seconds: int, nanos: int) -> bytes:
    return b"\xc7\x0c\xff" + struct.pack(">Iq", nanos, seconds)


@pytest.mark.parametrize(
    "name,old,new",
    [
        ("bin for a count", COUNTS, ENC({"steps": b"x"})),
        ("ext type for a count", COUNTS, ENC({"steps": msgspec.msgpack.Ext(5, b"x")})),
        ("timestamp for a count", COUNTS, ENC({"steps": NOW})),
        ("timestamp with 2e9 ns", COUNTS, b"\x81\xa5steps" + ts96(0, 2_000_000_000)),
        ("timestamp in year 10**11", COUNTS, b"\x81\xa5steps" + ts96(1 << 62, 0)),
        ("timestamp of 5 bytes", COUNTS, b"\x81\xa5steps\xc7\x05\xff" + bytes(5)),
        ("float32 NaN count", COUNTS, b"\x81\xa5steps\xca\x7f\xc0\x00\x00"),
        ("str key, invalid UTF-8", HIST, b"\x81\xa1\xff\x03"),
        ("str key, UTF-8 surrogate", HIST, b"\x81\xa3\xed\xa0\x80\x03"),
        ("bin key, invalid UTF-8", HIST, b"\x81\xc4\x01\xff\x03"),
        ("bin key, UTF-8 surrogate", HIST, b"\x81\xc4\x03\xed\xa0\x80\x03"),
        ("map as a key", HIST, b"\x81\x80\x03"),
        ("array as a key", HIST, b"\x81\x91\x01\x03"),
        ("ext as a key", HIST, b"\x81\xd4\x05\x00\x03"),
        ("timestamp as a key", HIST, b"\x81\xd6\xff\x00\x00\x00\x01\x03"),
        ("NaN as a key", HIST, b"\x81\xcb\x7f\xf8" + bytes(6) + b"\x03"),
        ("nil as a key", HIST, b"\x81\xc0\x03"),
        ("true as a key", HIST, b"\x81\xc3\x03"),
        ("int as a key", HIST, b"\x81\x01\x03"),
        ("array32 header, no items", HIST, b"\xdd\xff\xff\xff\xff"),
        ("map32 header, no items", HIST, b"\xdf\xff\xff\xff\xff"),
        ("str32 header, no bytes", HIST, b"\xdb\xff\xff\xff\xff"),
        ("ext32 header, no bytes", HIST, b"\xc9\xff\xff\xff\xff\x05"),
        (
            "duplicate key, out of range last",
            COUNTS,
            b"\x82\xa5steps\x05\xa5steps\xce\x00\x03\x0d\x41",
        ),
    ],
)
def test_messagepack_only_shapes_are_typed_refusals(name: str, old: bytes, new: bytes) -> None:
    v = judge(sealed_v2(BASE.replace(old, new)))
    assert isinstance(v, Rejected), name
    assert v.reason is RejectReason.PAYLOAD_INVALID, (name, v.reason, v.detail)
    assert v.detail.isascii() and v.detail.isprintable(), v.detail


@pytest.mark.parametrize(
    "name,hist",
    [
        ("bin key", {b"Tap": 3}),
        ("str and bin spellings of one key", {"Tap": 3, b"Tap": 5}),
        (
            "64 str keys and their 64 bin twins",
            {**{f"a{i}": 1 for i in range(64)}, **{f"a{i}".encode(): 2 for i in range(64)}},
        ),
    ],
)
def test_bin_keys_collapse_into_a_contract_summary(name: str, hist: dict) -> None:
    """Lower importance, v2 only: a bin key is taken as its UTF-8 text, and spellings of one
    name collapse (the last wins, as for a repeated key). What is accepted still keeps the
    contract the sums rely on: text keys, at most 64 kinds, each count in range."""
    v = judge(sealed_v2(ENC(summary_python(action_hist=hist))))
    assert isinstance(v, Accepted), (name, v)
    got = v.summary.action_hist
    assert len(got) <= MAX_ACTION_KINDS
    assert all(type(k) is str and 0 <= n <= MAX_STEPS_PER_ROUND for k, n in got.items())


def test_a_repeated_key_is_one_value_in_both_versions() -> None:
    """A repeated key (in the payload map or in counts) is its last value in v1 and in v2,
    so no earlier, unvalidated value can reach the sums."""
    bad_then_good = b"\x82\xa5steps\xce\x00\x03\x0d\x41\xa5steps\x05"  # 200001, then 5
    v2 = judge(sealed_v2(BASE.replace(COUNTS, bad_then_good)))
    plain = json.dumps(summary_json()).replace(
        json.dumps(summary_json()["counts"]), '{"steps": 200001, "steps": 5}'
    )
    v1 = judge(sealed_v1(plain.encode()))
    for v in (v2, v1):
        assert isinstance(v, Accepted), v
        assert v.summary.counts.steps == 5


# -- 4. masked inputs: words at or above 2**bits ----------------------------------------------
def test_masked_words_above_the_modulus_cannot_shift_the_sum(monkeypatch) -> None:
    """Words of a masked input are residues mod 2**bits in a u32/u64 word; a client may set
    the bits above ``bits`` (the validator cannot know) and the server sums in the word and
    reduces at the end, so the released sum is exactly the sum of the residues."""
    params = RoundParams(round_id="eu:c1:7", n=8, k=7, t=5, min_clients=5, dim=16, bits=16)
    raw, enc = make_inputs(params)
    receive = secagg_server.SecAggServer.receive

    def through_the_wire(self, msg):  # type: ignore[no-untyped-def]
        if isinstance(msg, MaskedInput) and msg.sender % 2 == 0:
            words = msg.vector() | np.uint32(0xBEEF << 16)  # every word >= 2**16
            obj = {**msgspec.msgpack.decode(encode_payload(msg)), "data": words.tobytes()}
            v = judge(sealed_v2(ENC(obj), "masked_input"))
            assert isinstance(v, Accepted), v  # accepted by ingestion, as v1 would be
            msg = v.payload  # type: ignore[attr-defined]
            assert int(msg.vector().min()) >= 1 << params.bits
        return receive(self, msg)

    monkeypatch.setattr(secagg_server.SecAggServer, "receive", through_the_wire)
    result = run_round(params, enc, rng=SeededRandomness.from_int(5))
    assert int(result.total.max()) < 1 << params.bits
    expected = np.sum([raw[c] for c in range(params.n)], axis=0)
    assert np.array_equal(quantize.decode(result.total, params.bits), expected)


# -- 5. containers of bad items: refused at a cost independent of their number ------------------
N = 20_000
SHARE = {"peer": 1, "nonce": bytes(12), "ct": bytes(40)}
VALUE = {"owner": 1, "y": bytes(33)}


def msg(type_: str, **fields: object) -> dict:
    return {"type": type_, "v": 2, "round_id": "eu:c1:7", "sender": 3, **fields}


@pytest.mark.parametrize(
    "name,model,obj",
    [
        ("shares: N ints", EncryptedShares, msg("secagg_shares", shares=[0] * N)),
        ("shares: N empty maps", EncryptedShares, msg("secagg_shares", shares=[{}] * N)),
        ("shares: 1 good, N bad", EncryptedShares, msg("secagg_shares", shares=[SHARE] + [0] * N)),
        (
            "seed shares: N empty maps",
            UnmaskResponse,
            msg("secagg_unmask_shares", seed_shares=[{}] * N, key_shares=[]),
        ),
        (
            "key shares: N ints",
            UnmaskResponse,
            msg("secagg_unmask_shares", seed_shares=[VALUE], key_shares=[0] * N),
        ),
        (
            # maps wider than MAX_MAP_KEYS never reach the model (section 7); at that width
            "action_hist: 256 int keys",
            RoundSummary,
            summary_python(action_hist=dict.fromkeys(range(MAX_MAP_KEYS), 0)),
        ),
        (
            "action_hist: 256 negative counts",
            RoundSummary,
            summary_python(action_hist={f"{i:x}": -1 for i in range(MAX_MAP_KEYS)}),
        ),
    ],
)
def test_a_container_of_bad_items_costs_a_bounded_number_of_errors(
    name: str, model: type, obj: dict
) -> None:
    """Found by this file: every bad item of a list or map was a pydantic error of its own
    (~3 KB, ~10 µs, then ``_invalid_fields`` turned all of them into dicts to show 8). One
    byte of MessagePack per error: a default 64 KiB record cost 0.2-0.7 s and ~200 MB of one
    worker, a 1 MiB one (a larger ``max_envelope_bytes``, as big rounds need) 5-11 s and up
    to 3.5 GB. Validation now stops at the first bad item of such a container."""
    plain = ENC(obj)
    with pytest.raises(ValidationError) as exc:
        decode_payload(model, plain)
    assert exc.value.error_count() <= 4, (name, exc.value.error_count())
    if len(plain) < LIMIT - 200:
        v = judge(sealed_v2(plain, obj["type"]))
        assert isinstance(v, Rejected) and v.reason is RejectReason.PAYLOAD_INVALID, v


def test_a_container_of_good_items_is_still_accepted_whole() -> None:
    shares = [{**SHARE, "peer": p} for p in range(300)]
    v = judge(sealed_v2(ENC(msg("secagg_shares", shares=shares)), "secagg_shares"))
    assert isinstance(v, Accepted), v
    assert [s.peer for s in v.payload.shares] == list(range(300))  # type: ignore[attr-defined]
    hist = {f"a{i}": i for i in range(MAX_ACTION_KINDS)}
    v = judge(sealed_v2(ENC(summary_python(action_hist=hist))))
    assert isinstance(v, Accepted) and v.summary.action_hist == hist, v


# -- 6. a check-in layout PostgreSQL cannot store ----------------------------------------------
def checkin_plain(layout: str) -> dict:
    return {"type": "secagg_checkin", "v": 1, "token": secrets.token_hex(16), "layout": layout}


@pytest.mark.parametrize("layout", ["\x00", "lora\x00ss-v2", "\x00" * 64])
def test_a_nul_in_a_checkin_layout_is_payload_invalid_in_both(layout: str) -> None:
    """Found by this file: ``Checkin.layout`` took any text, and the round sink writes it to
    ``round_checkins.layout`` in the checkpoint's transaction. PostgreSQL refuses NUL in
    text (psycopg ``DataError``), so the whole batch failed, was re-read and failed again:
    one check-in, which anyone with the region's public key can seal, stopped the region.
    It is refused at the validator now, in v1 and v2 alike."""
    obj = checkin_plain(layout)
    for raw in (
        sealed_v2(ENC(obj), "secagg_checkin"),
        sealed_v1(json.dumps(obj).encode(), "secagg_checkin"),
    ):
        v = judge(raw)
        assert isinstance(v, Rejected), v
        assert v.reason is RejectReason.PAYLOAD_INVALID, (v.reason, v.detail)


@pytest.mark.parametrize("layout", ["", "lora-ss-v2", "t", "a b/c+d", "é" * 64])
def test_honest_checkin_layouts_are_still_accepted(layout: str) -> None:
    obj = checkin_plain(layout)
    for raw in (
        sealed_v2(ENC(obj), "secagg_checkin"),
        sealed_v1(json.dumps(obj).encode(), "secagg_checkin"),
    ):
        v = judge(raw)
        assert isinstance(v, Accepted), v
        assert v.payload == Checkin(token=obj["token"], layout=layout)  # type: ignore[attr-defined]


# -- 7. the same check-in through the real service, on PostgreSQL ------------------------------
@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_a_nul_checkin_layout_is_dead_lettered_on_postgres_and_the_region_goes_on(
    settings: SottoSettings, postgres_url: str
) -> None:
    pg = on_postgres(settings, postgres_url)
    eu = pg.policy.region("eu")
    ensure_region_topics(eu)
    key: KeyEntry = keystore.load_keyset(eu.keyset_dir).current()
    rng = np.random.default_rng(7)
    truth = Truth()

    def valid() -> bytes:
        s = random_summary(rng)
        truth.add("c", 1, s)
        return seal_for(pg, "eu", s, "c", 1).to_bytes()

    bad_v2 = seal_raw_v2(ENC(checkin_plain("lora\x00")), key, "c", 1, "secagg_checkin")
    honest = checkin_plain("lora-ss-v2")
    good_v2 = seal_raw_v2(ENC(honest), key, "c", 1, "secagg_checkin")
    values = [valid(), bad_v2, valid(), good_v2, valid()]
    produce(pg.kafka_bootstrap, eu.t.ingest, values, partition=0)

    with IngestionApp(pg.policy, "eu", pg.ingest) as app:
        handled, deadline = 0, time.monotonic() + 40
        while handled < len(values) and time.monotonic() < deadline:  # a stuck batch: retried
            handled += app.process_available(timeout_s=10)
        assert (handled, app.stats.checkpoint_failures) == (len(values), 0), app.stats
        assert app.stats.accepted == truth.total + 1  # the honest check-in too
        assert app.stats.dead_letters == 1
        assert_matches(aggregates(app.engine, "eu"), truth)
        with reading(app.engine) as conn:
            stored = conn.execute(select(round_checkins.c.token, round_checkins.c.layout)).all()
        assert [tuple(r) for r in stored] == [(honest["token"], "lora-ss-v2")]

    dls = dead_letters(pg.kafka_bootstrap, eu.t.dead_letter)
    assert [(d.reason, d.original) for d in dls] == [(RejectReason.PAYLOAD_INVALID, bad_v2)]


# -- 8. a rejection's detail never carries a decrypted mapping key, integer keys included --------
@pytest.mark.parametrize(
    "hist",
    [
        {987654321: 1},  # an integer key: pydantic reports it where it would put an index
        {"0612345678": "not-a-count"},
        {"0612345678": -1, 987654321: 2},
    ],
)
def test_a_payload_rejection_names_no_decrypted_key(hist: dict) -> None:
    v = judge(sealed_v2(ENC(summary_python(action_hist=hist))))
    assert isinstance(v, Rejected) and v.reason is RejectReason.PAYLOAD_INVALID, v
    assert "987654321" not in v.detail and "0612345678" not in v.detail, v.detail
    assert "action_hist.<key>" in v.detail, v.detail


def test_a_list_index_is_still_named_in_a_rejection() -> None:
    """Indexes are positions, not plaintext: a bad share is located for the operator."""
    bad = msg("secagg_shares", shares=[SHARE, [5, "x", "y"]])
    v = judge(sealed_v2(ENC(bad), "secagg_shares"))
    assert isinstance(v, Rejected) and v.reason is RejectReason.PAYLOAD_INVALID, v
    assert "shares.1" in v.detail, v.detail


# -- 9. a map of many unknown keys is refused before pydantic makes an error of each ------------
@pytest.mark.parametrize(
    "where",
    ["top level", "nested model", "inside a list item"],
)
def test_a_wide_map_is_refused_before_validation(where: str, monkeypatch) -> None:
    wide = {f"{i:x}": 0 for i in range(8000)}  # fits the 64 KiB record limit
    if where == "top level":
        plain, payload_type = ENC(summary_python(**wide)), "summary"
    elif where == "nested model":
        plain, payload_type = ENC(summary_python(counts=wide)), "summary"
    else:
        plain, payload_type = ENC(msg("secagg_shares", shares=[{**SHARE, **wide}])), "secagg_shares"
    calls: list[type] = []
    real = RoundSummary.model_validate.__func__  # type: ignore[attr-defined]

    def spy(cls: type, obj: object, *a: object, **kw: object) -> object:
        calls.append(cls)
        return real(cls, obj, *a, **kw)

    monkeypatch.setattr(RoundSummary, "model_validate", classmethod(spy))
    monkeypatch.setattr(EncryptedShares, "model_validate", classmethod(spy))
    v = judge(sealed_v2(plain, payload_type))
    assert isinstance(v, Rejected) and v.reason is RejectReason.PAYLOAD_INVALID, v
    assert "a map of" in v.detail and "at most 256" in v.detail, v.detail
    assert calls == []  # refused on its shape: pydantic never saw it


def test_the_widest_honest_map_still_validates() -> None:
    hist = {f"A{i}": 1 for i in range(MAX_ACTION_KINDS)}
    v = judge(sealed_v2(ENC(summary_python(action_hist=hist, counts={"steps": 64}))))
    assert isinstance(v, Accepted), v
