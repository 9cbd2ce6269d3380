"""EdgeDevice against the real Kafka broker: home-region delivery, decryption, outages, routing."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord

from backend.keystore import load_keyset, load_private_keys, rotate
from deploy.kafka_local import free_port
from deploy.settings import SottoSettings
from edge_client.device import EdgeDevice
from edge_client.outbox import Outbox
from edge_client.steps import AgentStep
from privacy.envelope import check_route, open_payload, parse
from privacy.errors import ConfigError, EnvelopeRejected
from privacy.wire import RejectReason

pytestmark = pytest.mark.kafka

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)


def create_topics(bootstrap: str, topics: list[str]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(t, 3, 1) for t in topics])
    finally:
        admin.close()


def read_topic(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 20.0
) -> list[ConsumerRecord]:
    """Every record on ``topic``: waits for ``expected`` of them, then a little more for extras."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(topic)
        assert parts, f"topic {topic} has no partitions"
        consumer.assign([TopicPartition(topic, p) for p in parts])
        consumer.seek_to_beginning()
        records: list[ConsumerRecord] = []
        quiet_until = None
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
            if len(records) >= expected:
                quiet_until = quiet_until or time.monotonic() + 1.0
                if time.monotonic() >= quiet_until:
                    break
        return records
    finally:
        consumer.close()


def record_history(device: EdgeDevice) -> None:
    kw = {"instruction": "play my morning playlist", "timestamp": T0}
    device.record_step(AgentStep(action="Launch", app="Spotify", outcome="accepted", **kw))
    device.record_step(
        AgentStep(action="Tap", element=(200, 640), current_app="Spotify", outcome="accepted", **kw)
    )
    device.record_step(AgentStep(action="Type", text="secret mix", outcome="overridden", **kw))


@pytest.fixture
def topics(deployment: SottoSettings, kafka_bootstrap: str) -> dict[str, str]:
    """The eu and cn ingest topics of this test's deployment, created on the broker."""
    by_region = {r: cfg.t.ingest for r, cfg in deployment.policy.regions.items()}
    create_topics(kafka_bootstrap, list(by_region.values()))
    return by_region


def test_round_arrives_on_home_topic_and_decrypts_with_home_key(
    deployment: SottoSettings, topics: dict[str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    eu = deployment.policy.region("eu")
    cn = deployment.policy.region("cn")
    with EdgeDevice("phone-1", "eu", "cohort-a", deployment.policy, tmp_path / "dev") as device:
        record_history(device)
        receipt = device.send_round(3, now=NOW)
        expected = device.build_summary(3, now=NOW)
        again = device.send_round(3, now=NOW)  # same round: same envelope, not a second one
    assert receipt.delivered and receipt.topic == topics["eu"]
    assert again.msg_id == receipt.msg_id

    records = read_topic(kafka_bootstrap, topics["eu"], expected=1)
    assert len(records) == 1
    assert records[0].key == b"cohort-a"
    env = parse(records[0].value)
    assert env.v == 2  # devices send binary envelopes
    assert (env.msg_id, env.region, env.cohort, env.round) == (receipt.msg_id, "eu", "cohort-a", 3)
    keyset = load_keyset(eu.keyset_dir)
    assert env.key_id == keyset.current().key_id
    check_route(env, region="eu", keyset=keyset, key_region="eu")
    payload = open_payload(env, load_private_keys(eu.keyset_dir)[env.key_id])
    assert payload == expected
    assert b"secret mix" not in records[0].value

    # the other region's key cannot open it, and nothing reached the other region's topic
    cn_key = next(iter(load_private_keys(cn.keyset_dir).values()))
    with pytest.raises(EnvelopeRejected) as info:
        open_payload(env, cn_key)
    assert info.value.reason == RejectReason.DECRYPT_FAILED
    assert read_topic(kafka_bootstrap, topics["cn"], expected=0, timeout_s=2) == []


def test_rotation_takes_effect_on_the_next_round(
    deployment: SottoSettings, topics: dict[str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    eu = deployment.policy.region("eu")
    with EdgeDevice("phone-1", "eu", "cohort-a", deployment.policy, tmp_path / "dev") as device:
        record_history(device)
        first = device.send_round(1, now=NOW)
        new_key = rotate(eu.keyset_dir, "eu").current().key_id
        second = device.send_round(2, now=NOW)
    assert first.delivered and second.delivered
    envs = {
        e.round: e for e in (parse(r.value) for r in read_topic(kafka_bootstrap, topics["eu"], 2))
    }
    assert envs[2].key_id == new_key != envs[1].key_id
    private = load_private_keys(eu.keyset_dir)
    for env in envs.values():  # the old key is decrypt-only now, so both still open
        open_payload(env, private[env.key_id])


def test_broker_outage_keeps_envelopes_pending_then_delivers(
    deployment: SottoSettings, topics: dict[str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "dev"
    offline = SottoSettings(home=deployment.home, kafka_bootstrap=f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    with EdgeDevice("phone-1", "eu", "cohort-a", offline.policy, data_dir, timeout_s=1.0) as device:
        record_history(device)
        receipts = [device.send_round(r, now=NOW) for r in (5, 6)]
        assert device.flush() == 0
        assert device.pending == 2
    assert time.monotonic() - started < 30  # short timeouts, no hang
    assert not any(r.delivered for r in receipts)

    # process restart, network back: the same envelopes go out, none re-sealed
    with EdgeDevice("phone-1", "eu", "cohort-a", deployment.policy, data_dir) as device:
        assert device.pending == 2
        assert device.flush() == 2
        assert device.pending == 0
        resent = device.send_round(5, now=NOW)
    assert resent.msg_id == receipts[0].msg_id and resent.delivered

    records = read_topic(kafka_bootstrap, topics["eu"], expected=2)
    assert sorted(parse(r.value).msg_id for r in records) == sorted(r.msg_id for r in receipts)


def test_device_never_produces_to_another_region(
    deployment: SottoSettings, topics: dict[str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    cn_keyset = load_keyset(deployment.policy.region("cn").keyset_dir)
    with pytest.raises(ConfigError, match="key set of 'cn'"):
        EdgeDevice("phone-1", "eu", "cohort-a", deployment.policy, tmp_path / "x", keyset=cn_keyset)
    with pytest.raises(ConfigError, match="unknown region"):
        EdgeDevice("phone-1", "us", "cohort-a", deployment.policy, tmp_path / "y")

    eu_dir, cn_dir = tmp_path / "eu-phone", tmp_path / "cn-phone"
    with EdgeDevice("eu-phone", "eu", "cohort-a", deployment.policy, eu_dir) as eu_device:
        record_history(eu_device)
        assert eu_device.topic == topics["eu"]
        assert eu_device.send_round(1, now=NOW).delivered
        # an outbox left over from elsewhere holds a record for cn: it is never produced
        with Outbox(eu_dir / "outbox.db") as box:
            box.put(b"stray", topics["cn"], b"cohort-a")
        assert eu_device.flush() == 0
        assert eu_device.pending == 1
    with EdgeDevice("cn-phone", "cn", "cohort-b", deployment.policy, cn_dir) as cn_device:
        record_history(cn_device)
        assert cn_device.send_round(1, now=NOW).delivered

    eu_records = read_topic(kafka_bootstrap, topics["eu"], expected=1)
    cn_records = read_topic(kafka_bootstrap, topics["cn"], expected=1)
    assert [parse(r.value).region for r in eu_records] == ["eu"]
    assert [parse(r.value).region for r in cn_records] == ["cn"]
    assert all(r.value != b"stray" for r in cn_records)
