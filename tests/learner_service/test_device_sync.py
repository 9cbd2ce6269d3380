"""The device side of the adapters topic: valid records apply, forged / tampered / foreign /
garbage records are refused and counted, and nothing stops the sync."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kafka import KafkaProducer

from backend import keystore
from deploy.settings import SottoSettings
from deploy.simulation.base_model import deployment_base
from edge_client.adapter_sync import AdapterFeed, Applied, Outcome, SyncStats, apply
from edge_client.runtime import DeviceModel
from learner import adapter_topic
from learner.model import ModelConfig
from learner.publish import ship_lora
from learner.registry import list_adapters, live_adapter, open_registry
from learner.service import LearnerApp
from privacy.adapter_file import LoRAWeights
from privacy.adapter_manifest import SignedAdapter, key_id
from privacy.wire import b64d, b64e
from tests.learner_service.helpers import counting_factory, produce_releases, read_topic, release

pytestmark = [pytest.mark.kafka]


def _learn(settings: SottoSettings, group: str, rounds: range) -> None:
    eu = settings.policy.region("eu")
    with LearnerApp(
        settings.policy,
        "eu",
        settings.learner,
        base=lambda: deployment_base(settings.home),
        learner_factory=counting_factory(0.0),
        group_id=group,
    ) as app:
        produce_releases(
            settings.kafka_bootstrap or "",
            eu.t.aggregates,
            [release("eu", "c0", r) for r in rounds],
        )
        app.process_available(timeout_s=60)


def _hostile_records(settings: SottoSettings) -> list[tuple[bytes | None, bytes | None]]:
    eu = settings.policy.region("eu")
    sha = deployment_base(settings.home).sha256
    real_key = keystore.load_or_create_signing_key(eu.keyset_dir)
    attacker = Ed25519PrivateKey.generate()
    w = ModelConfig().zero_lora()
    big = LoRAWeights(w.A + 1.0, w.B + 1.0)

    forged = ship_lora(
        big, base_model_sha256=sha, version=90, region="eu", cohort="c0", private_key=attacker
    )
    spoofed = forged.model_copy(update={"key_id": key_id(real_key.public_key())})

    valid = [
        SignedAdapter.from_bytes(v)
        for _, _, _, v, h in read_topic(settings.kafka_bootstrap or "", eu.t.adapters)
        if h["sotto-type"] == b"release" and v is not None
    ][-1]
    bumped = valid.manifest.model_copy(update={"version": 91, "rollout_fraction": 1.0})
    tampered_manifest = valid.model_copy(update={"manifest": bumped})
    raw = bytearray(b64d(valid.adapter))
    raw[len(raw) // 2] ^= 0xFF
    tampered_bytes = valid.model_copy(update={"adapter": b64e(bytes(raw))})
    foreign = ship_lora(
        big, base_model_sha256=sha, version=92, region="cn", cohort="c0", private_key=real_key
    )

    return [
        (b"c0|90", forged.to_bytes()),  # signed by a key the device does not trust
        (b"c0|90", spoofed.to_bytes()),  # ... claiming the region's key id
        (b"c0|91", tampered_manifest.to_bytes()),  # a valid artifact with its manifest edited
        (b"c0|1", tampered_bytes.to_bytes()),  # a valid artifact with its adapter edited
        (b"c0|92", foreign.to_bytes()),  # properly signed, but for another region
        (b"c0|93", b"\x00garbage"),
        (b"c0|94", json.dumps([1, 2]).encode()),
        (b"no-version", None),  # a tombstone whose key names nothing
    ]


def test_forged_and_tampered_records_are_rejected_valid_ones_apply(
    settings: SottoSettings, group: str
) -> None:
    eu = settings.policy.region("eu")
    boot = settings.kafka_bootstrap or ""
    _learn(settings, group, range(0, 4))
    producer = KafkaProducer(bootstrap_servers=boot, acks="all")
    partition = adapter_topic.partition_for("c0", 3)
    for key, value in _hostile_records(settings):
        producer.send(eu.t.adapters, key=key, value=value, partition=partition)
    producer.flush(30)
    producer.close()
    _learn(settings, group, range(4, 6))  # valid records keep flowing after the hostile ones

    bundle = deployment_base(settings.home)
    device = DeviceModel(bundle.onnx_bytes, keystore.signing_public_key(eu.keyset_dir), "eu", "c0")
    stats = SyncStats()
    with AdapterFeed(boot, eu.t.adapters) as feed:
        for item in feed.poll_all():
            apply(device, item, stats)
        assert feed.stats.malformed == 3

    assert stats.rejected == Counter({"unknown_key": 1, "bad_signature": 3, "wrong_region": 1})
    assert stats.outcomes[Outcome.INSTALLED] >= 2 and stats.outcomes[Outcome.STAGED] >= 1
    engine = open_registry(eu.database_url)
    live = live_adapter(engine, "eu", "c0")
    assert live is not None and device.live_version == live.version
    assert device.candidate_version == max(a.version for a in list_adapters(engine, "eu"))
    assert device.live_version < 90 and device.previous_version is not None
    engine.dispose()


def test_rollback_and_withdrawal_reach_the_device(settings: SottoSettings, group: str) -> None:
    """The 7th release rolls live v5 back to v1: a device on v5 goes back, one that joins
    later installs v1 directly; a withdrawn (rejected) candidate is discarded."""
    eu = settings.policy.region("eu")
    boot = settings.kafka_bootstrap or ""
    bundle = deployment_base(settings.home)
    _learn(settings, group, range(0, 6))
    trusted = keystore.signing_public_key(eu.keyset_dir)
    early = DeviceModel(bundle.onnx_bytes, trusted, "eu", "c0")
    with AdapterFeed(boot, eu.t.adapters) as feed:
        first = [apply(early, item) for item in feed.poll_all()]
        assert early.live_version == 5
        # the 4th release rejected shadow v3: its tombstone made the device drop it
        assert Applied(Outcome.DISCARDED, 3) in first
        _learn(settings, group, range(6, 7))
        outcomes = [apply(early, item).outcome for item in feed.poll_all()]
    assert Outcome.INSTALLED in outcomes
    assert early.live_version == 1 and early.previous_version is None

    late = DeviceModel(bundle.onnx_bytes, trusted, "eu", "c0")
    with AdapterFeed(boot, eu.t.adapters) as feed:
        for item in feed.poll_all():
            apply(late, item)
    assert late.live_version == 1
