"""Every kind of bad input lands in the region's DLQ, verbatim, with the right reason, while
valid traffic interleaved in the same stream is aggregated exactly."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest

from backend import keystore
from deploy.settings import SottoSettings
from ingestion.aggregates import aggregates
from ingestion.audit import verify_chain
from ingestion.service import IngestionApp
from privacy.envelope import seal, seal_v1
from privacy.wire import Envelope, Frozen, RejectReason, b64d, b64e
from tests.ingestion.helpers import (
    Truth,
    assert_matches,
    dead_letters,
    produce,
    random_summary,
    seal_for,
    seal_raw_v2,
    seal_v1_for,
    v2_moved,
)

pytestmark = pytest.mark.kafka


class NotASummary(Frozen):
    """Decrypts fine but is not a valid RoundSummary."""

    type: Literal["summary"] = "summary"
    garbage: str = "x"


def _flip_v2(raw: bytes, at: int) -> bytes:
    bad = bytearray(raw)
    bad[at] ^= 0x01
    return bytes(bad)


def _flip_ct(env: Envelope) -> bytes:
    ct = bytearray(b64d(env.ct))
    ct[len(ct) // 2] ^= 0x01
    return env.model_copy(update={"ct": b64e(bytes(ct))}).to_bytes()


def test_bad_inputs_go_to_dlq_and_valid_ones_count(settings: SottoSettings) -> None:
    rng = np.random.default_rng(11)
    eu, cn = settings.policy.region("eu"), settings.policy.region("cn")
    cn_key = keystore.load_keyset(cn.keyset_dir).current()
    eu_key = keystore.load_keyset(eu.keyset_dir).current()
    truth = Truth()

    sent = [0]

    def valid() -> bytes:  # v2 and v1 alternate: devices migrate one by one
        s = random_summary(rng)
        truth.add("c", 3, s)
        sent[0] += 1
        sealer = seal_for if sent[0] % 2 else seal_v1_for
        return sealer(settings, "eu", s, "c", 3).to_bytes()

    good = seal_v1_for(settings, "eu", random_summary(rng), "c", 4)  # v1's rules still hold
    good2 = seal_for(settings, "eu", random_summary(rng), "c", 4)
    raw2 = good2.to_bytes()
    bad: list[tuple[RejectReason, bytes]] = [
        (RejectReason.MALFORMED, raw2[:-1]),
        (RejectReason.MALFORMED, raw2 + b"\x00"),
        (RejectReason.UNSUPPORTED_VERSION, raw2[:3] + b"\x07" + raw2[4:]),
        (RejectReason.SCHEMA, v2_moved(good2, round=-1)),
        (RejectReason.KEY_REGION_MISMATCH, v2_moved(good2, key_id=cn_key.key_id)),
        (RejectReason.UNKNOWN_KEY, v2_moved(good2, key_id="eu-nobody")),
        (RejectReason.DECRYPT_FAILED, _flip_v2(raw2, len(raw2) // 2)),
        (RejectReason.DECRYPT_FAILED, _flip_v2(raw2, len(raw2) - 1)),
        (RejectReason.DECRYPT_FAILED, v2_moved(good2, round=5)),
        (RejectReason.DECRYPT_FAILED, v2_moved(good2, cohort="other")),
        (RejectReason.DECRYPT_FAILED, v2_moved(good2, msg_id=bytes(16))),
        (RejectReason.PAYLOAD_INVALID, seal_raw_v2(b'{"json": "in v2"}', eu_key, "c", 3)),
        (
            RejectReason.OVERSIZED,
            raw2[:4] + b"\x00" * (settings.ingest.max_envelope_bytes + 1),
        ),
        (RejectReason.MALFORMED, b"\x00\xffnot json at all"),
        (RejectReason.MALFORMED, b"[1, 2, 3]"),
        (RejectReason.SCHEMA, b'{"v": 1, "msg_id": "nothex", "region": "eu"}'),
        (
            RejectReason.UNSUPPORTED_VERSION,
            good.model_copy(update={"v": 1}).to_bytes().replace(b'"v":1', b'"v":9'),
        ),
        (
            RejectReason.WRONG_REGION,
            seal_for(settings, "cn", random_summary(rng), "c", 3).to_bytes(),
        ),
        (
            RejectReason.KEY_REGION_MISMATCH,
            good.model_copy(update={"key_id": cn_key.key_id}).to_bytes(),
        ),
        (RejectReason.UNKNOWN_KEY, good.model_copy(update={"key_id": "eu-nobody"}).to_bytes()),
        (RejectReason.DECRYPT_FAILED, _flip_ct(good)),
        (RejectReason.DECRYPT_FAILED, good.model_copy(update={"round": 5}).to_bytes()),
        (RejectReason.DECRYPT_FAILED, good.model_copy(update={"cohort": "other"}).to_bytes()),
        (
            RejectReason.PAYLOAD_INVALID,
            seal_v1(NotASummary(), key=eu_key, cohort="c", round=3).to_bytes(),
        ),
        (
            RejectReason.PAYLOAD_INVALID,
            seal(NotASummary(), key=eu_key, cohort="c", round=3).to_bytes(),
        ),
        (
            RejectReason.OVERSIZED,
            b'{"pad": "' + b"x" * (settings.ingest.max_envelope_bytes + 1) + b'"}',
        ),
    ]
    replayed = valid()
    values: list[bytes] = [replayed]
    expected: list[RejectReason | None] = [None]
    for reason, raw in bad:
        values += [raw, valid()]
        expected += [reason, None]
    values.append(replayed)  # same bytes twice in one stream
    expected.append(RejectReason.REPLAY)

    meta = produce(settings.kafka_bootstrap, eu.t.ingest, values, partition=0)
    # a valid cn envelope on cn's topic, which eu's ingestion is (mis)configured to read too
    cn_raw = seal_for(settings, "cn", random_summary(rng), "c", 3).to_bytes()
    cn_meta = produce(settings.kafka_bootstrap, cn.t.ingest, [cn_raw], partition=0)

    with IngestionApp(settings.policy, "eu", settings.ingest, extra_topics=[cn.t.ingest]) as app:
        app.process_available(timeout_s=60)
        assert_matches(aggregates(app.engine, "eu"), truth)
        assert app.stats.accepted == truth.total

    # a replay across runs: the id is now durable in seen_messages
    replay_meta = produce(settings.kafka_bootstrap, eu.t.ingest, [replayed], partition=0)
    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        app.process_available(timeout_s=60)
        assert_matches(aggregates(app.engine, "eu"), truth)
        assert verify_chain(app.engine, "eu") == (True, None)

    want = {
        (eu.t.ingest, p, o): (reason, raw)
        for (p, o), reason, raw in zip(meta, expected, values, strict=True)
        if reason is not None
    }
    # cn's record is refused by eu but its bytes are not copied into eu: they stay on cn's topic
    want[(cn.t.ingest, *cn_meta[0])] = (RejectReason.TOPIC_REGION_MISMATCH, b"")
    want[(eu.t.ingest, *replay_meta[0])] = (RejectReason.REPLAY, replayed)

    got = {
        (d.source_topic, d.source_partition, d.source_offset): d
        for d in dead_letters(settings.kafka_bootstrap, eu.t.dead_letter)
    }
    assert set(got) == set(want)
    for key, (reason, raw) in want.items():
        assert got[key].reason is reason, (key, got[key].detail)
        assert got[key].original == raw  # verbatim
        assert got[key].region == "eu"
    # nothing of eu's went to cn's DLQ
    assert dead_letters(settings.kafka_bootstrap, cn.t.dead_letter) == []
