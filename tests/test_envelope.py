"""The envelope contract: HPKE binding of the header, rejection reasons, key rotation.

These are v1's (JSON) rules, sealed with ``seal_v1`` as devices not yet migrated do; v2's
binary framing has its own file (tests/test_envelope_v2.py), and both versions go through
the same ``parse``/``check_route``/``open_payload``."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from privacy.envelope import check_route, open_payload, parse, seal, seal_v1
from privacy.errors import ConfigError, EnvelopeRejected
from privacy.keys import KeySet, PrivateKey
from privacy.policy import RegionPolicy
from privacy.wire import BehaviorCounts, Envelope, RejectReason, RoundSummary, b64d, b64e

NOW = datetime(2026, 11, 24, tzinfo=UTC)


def _region(name: str) -> tuple[KeySet, PrivateKey]:
    key = PrivateKey.generate(f"{name}-k1")
    return KeySet(region=name, keys=[]).rotated(key.key_id, key.public_bytes(), NOW), key


def _summary(seed: int = 0) -> RoundSummary:
    vec = np.random.default_rng(seed).normal(size=128)
    return RoundSummary.build(
        vec / np.linalg.norm(vec), BehaviorCounts(steps=5, accepted=4, failed=1)
    )


@pytest.mark.parametrize("sealer", [seal, seal_v1], ids=["v2", "v1"])
def test_roundtrip_keeps_payload_exactly(sealer) -> None:
    ks, key = _region("eu")
    s = _summary()
    sent = sealer(s, key=ks.current(), cohort="c1", round=7)
    env = parse(sent.to_bytes())
    assert (env.v, env.msg_id, env.cohort, env.round) == (sent.v, sent.msg_id, "c1", 7)
    check_route(env, region="eu", keyset=ks, key_region="eu")
    assert open_payload(env, key) == s


@pytest.mark.parametrize(
    "field,value", [("round", 8), ("cohort", "c2"), ("region", "cn"), ("msg_id", "0" * 32)]
)
def test_header_is_bound_into_hpke_info(field: str, value: object) -> None:
    ks, key = _region("eu")
    env = seal_v1(_summary(), key=ks.current(), cohort="c1", round=7)
    moved = env.model_copy(update={field: value})
    with pytest.raises(EnvelopeRejected) as exc:
        open_payload(moved, key)
    assert exc.value.reason == RejectReason.DECRYPT_FAILED


def test_tampered_ciphertext_fails() -> None:
    ks, key = _region("eu")
    env = seal_v1(_summary(), key=ks.current(), cohort="c1", round=1)
    ct = bytearray(b64d(env.ct))
    ct[-5] ^= 1
    with pytest.raises(EnvelopeRejected) as exc:
        open_payload(env.model_copy(update={"ct": b64e(bytes(ct))}), key)
    assert exc.value.reason == RejectReason.DECRYPT_FAILED


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"\xff\xfe not json", RejectReason.MALFORMED),
        (b"[1,2,3]", RejectReason.MALFORMED),
        (b'{"v": 1, "region": "eu"}', RejectReason.SCHEMA),
        (b'{"v": 2}', RejectReason.UNSUPPORTED_VERSION),
        (b"{" + b" " * 70000 + b"}", RejectReason.OVERSIZED),
    ],
)
def test_parse_rejections(raw: bytes, reason: RejectReason) -> None:
    with pytest.raises(EnvelopeRejected) as exc:
        parse(raw, max_bytes=65536)
    assert exc.value.reason == reason


def test_route_checks_region_and_key_owner() -> None:
    eu, _ = _region("eu")
    cn, _ = _region("cn")
    env_cn = seal_v1(_summary(), key=cn.current(), cohort="c1", round=1)
    with pytest.raises(EnvelopeRejected) as exc:
        check_route(env_cn, region="eu", keyset=eu, key_region="cn")
    assert exc.value.reason == RejectReason.WRONG_REGION
    forged = env_cn.model_copy(update={"region": "eu"})
    with pytest.raises(EnvelopeRejected) as exc:
        check_route(forged, region="eu", keyset=eu, key_region="cn")
    assert exc.value.reason == RejectReason.KEY_REGION_MISMATCH
    unknown = env_cn.model_copy(update={"region": "eu", "key_id": "eu-nope"})
    with pytest.raises(EnvelopeRejected) as exc:
        check_route(unknown, region="eu", keyset=eu, key_region=None)
    assert exc.value.reason == RejectReason.UNKNOWN_KEY


def test_rotation_old_key_decrypts_until_retired() -> None:
    ks, old = _region("eu")
    env_old = seal_v1(_summary(), key=ks.current(), cohort="c1", round=1)
    new = PrivateKey.generate("eu-k2")
    ks2 = ks.rotated(new.key_id, new.public_bytes(), NOW)
    assert ks2.current().key_id == "eu-k2"
    assert check_route(env_old, region="eu", keyset=ks2, key_region="eu").key_id == "eu-k1"
    ks3 = ks2.retired("eu-k1")
    with pytest.raises(EnvelopeRejected) as exc:
        check_route(env_old, region="eu", keyset=ks3, key_region="eu")
    assert exc.value.reason == RejectReason.RETIRED_KEY
    with pytest.raises(ConfigError):
        ks3.retired("eu-k2")  # the current key cannot be retired


def test_private_key_never_prints_its_secret() -> None:
    key = PrivateKey.generate("eu-k1")
    assert key.raw_bytes().hex() not in repr(key)
    assert "secret" in repr(key)


def test_envelope_json_is_versioned() -> None:
    ks, _ = _region("eu")
    raw = seal_v1(_summary(), key=ks.current(), cohort="c1", round=1).to_bytes()
    assert json.loads(raw)["v"] == 1
    assert Envelope.from_bytes(raw).v == 1


def test_policy_rejects_shared_topics() -> None:
    text = """
[regions.eu]
database_url = "sqlite://"
keyset_dir = "k/eu"
[regions.eu.topics]
ingest = "shared"
dead_letter = "eu.dlq"
aggregates = "eu.agg"
rounds = "eu.rounds"
adapters = "eu.adapters"
[regions.cn]
database_url = "sqlite://"
keyset_dir = "k/cn"
[regions.cn.topics]
ingest = "shared"
dead_letter = "cn.dlq"
aggregates = "cn.agg"
rounds = "cn.rounds"
adapters = "cn.adapters"
"""
    with pytest.raises(ConfigError, match="shared"):
        RegionPolicy.from_toml(text)


def test_policy_maps_topics_to_regions() -> None:
    text = '[regions.eu]\ndatabase_url = "sqlite://"\nkeyset_dir = "k"\n'
    policy = RegionPolicy.from_toml(text)
    assert policy.region_of_topic("sotto.eu.ingest") == "eu"
    assert policy.region_of_topic("sotto.cn.ingest") is None
    with pytest.raises(ConfigError, match="unknown region"):
        policy.region("cn")
