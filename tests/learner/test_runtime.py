"""The device installs only what it should, hot-swaps, and rolls back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_client.runtime import DeviceModel, in_canary
from learner.model import PersonalizationNet
from learner.publish import ship_lora
from privacy import catalog
from privacy.adapter_file import LoRAWeights
from privacy.adapter_manifest import (
    AdapterRejected,
    AdapterRejectReason,
    SignedAdapter,
    make_manifest,
    sign_artifact,
)
from privacy.embedding import combine, embed_episode
from privacy.errors import ConfigError, LocalProtocolError, SottoError

REGION, COHORT = "cn", "cn-c0"
T0 = datetime(2025, 1, 6, tzinfo=UTC)
INSTRUCTION = "导航去机场"
CONTEXT = combine([embed_episode("导航去公司", "百度地图", "overridden", 8)], [1.0])


def lora(net: PersonalizationNet, seed: int) -> LoRAWeights:
    rng = np.random.default_rng(seed)
    c = net.config
    return LoRAWeights(
        rng.normal(0, 0.5, (c.hidden, c.rank)), rng.normal(0, 0.5, (c.rank, c.query_dim))
    )


@pytest.fixture
def ship(base_net: PersonalizationNet, base_onnx: bytes, signing_key: Ed25519PrivateKey):
    from learner.model import model_sha256

    def _ship(version: int, seed: int | None = None, **kw) -> SignedAdapter:
        kw.setdefault("region", REGION)
        kw.setdefault("cohort", COHORT)
        kw.setdefault("base_model_sha256", model_sha256(base_onnx))
        kw.setdefault("private_key", signing_key)
        kw.setdefault("created_at", T0)
        return ship_lora(lora(base_net, version if seed is None else seed), version=version, **kw)

    return _ship


@pytest.fixture
def device(base_onnx: bytes, signing_key: Ed25519PrivateKey) -> DeviceModel:
    return DeviceModel(base_onnx, signing_key.public_key(), REGION, COHORT, device_id="cn-c0-d001")


def scores(device: DeviceModel) -> np.ndarray:
    return device.scores(INSTRUCTION, CONTEXT)


@contextmanager
def rejected(reason: AdapterRejectReason) -> Iterator[None]:
    """The block must raise AdapterRejected with ``reason`` (a SottoError)."""
    with pytest.raises(AdapterRejected) as info:
        yield
    assert info.value.reason == reason, info.value
    assert isinstance(info.value, SottoError)


def test_suggest_ranks_launchable_apps(device: DeviceModel) -> None:
    out = device.suggest(INSTRUCTION, CONTEXT, k=3)
    assert len(out) == 3
    assert out[0].score >= out[1].score >= out[2].score
    assert all(catalog.is_launchable(s.app) for s in out)
    assert out[0].candidate == f"launch:{out[0].app}"
    assert device.live_version == 0
    assert set(device.apps) == set(catalog.apps_for_region(REGION))
    assert scores(device).shape == (len(device.apps),)


def test_suggest_scores_are_the_softmax_of_the_live_model(device: DeviceModel, ship) -> None:
    """``suggest`` normalizes only what it returns; the top k and their probabilities must
    still be exactly those of the full softmax (``scores``), with an adapter live."""
    device.install(ship(1, seed=3))
    full = scores(device)
    order = np.argsort(-full, kind="stable")[:5]
    out = device.suggest(INSTRUCTION, CONTEXT, k=5)
    assert [s.app for s in out] == [device.apps[i] for i in order]
    assert np.allclose([s.score for s in out], full[order], rtol=1e-6, atol=0)


def test_candidates_are_open_and_normalized(device: DeviceModel) -> None:
    """Any launchable app can be a candidate (the phone's installed apps); spellings become
    the catalogue's launchable name, apps Open-AutoGLM cannot launch are dropped."""
    apps = ["百度地图", "高德", "B站", "支付宝", "MyCityMaps"]
    out = device.suggest(INSTRUCTION, CONTEXT, k=10, apps=apps)
    assert {s.app for s in out} == {"百度地图", "高德地图", "bilibili", "MyCityMaps"}
    assert sum(s.score for s in out) == pytest.approx(1.0, abs=1e-5)
    device.set_apps(apps)
    assert device.apps == ("百度地图", "高德地图", "bilibili", "MyCityMaps")
    with pytest.raises(ConfigError):
        device.set_apps(["支付宝"])


def test_hot_swap_and_local_rollback_restore_outputs(device: DeviceModel, ship) -> None:
    base = scores(device)
    device.install(ship(1))
    v1 = scores(device)
    assert not np.allclose(v1, base)
    device.install(ship(2))
    v2 = scores(device)
    assert not np.allclose(v2, v1)
    assert (device.live_version, device.previous_version) == (2, 1)
    assert device.rollback_local() == 1
    np.testing.assert_allclose(scores(device), v1, atol=1e-7)
    with pytest.raises(LocalProtocolError):
        device.rollback_local()  # one level only
    # the withdrawn version cannot come back, and the next release must be newer
    with rejected(AdapterRejectReason.DOWNGRADE):
        device.install(ship(2))
    device.install(ship(3))
    assert device.rollback_local() == 1
    np.testing.assert_allclose(scores(device), v1, atol=1e-7)


def test_first_local_rollback_returns_to_base(device: DeviceModel, ship) -> None:
    base = scores(device)
    device.install(ship(1))
    assert device.rollback_local() == 0
    np.testing.assert_allclose(scores(device), base, atol=1e-7)


def test_forged_signature_is_rejected(device: DeviceModel, ship) -> None:
    good = ship(1)
    forger = Ed25519PrivateKey.generate()
    forged = sign_artifact(good.manifest, good.adapter_bytes, forger)
    # claims the trusted key's id but is signed by another key
    forged = forged.model_copy(update={"key_id": good.key_id})
    with rejected(AdapterRejectReason.BAD_SIGNATURE):
        device.install(forged)
    with rejected(AdapterRejectReason.UNKNOWN_KEY):
        device.install(sign_artifact(good.manifest, good.adapter_bytes, forger))
    assert device.live_version == 0


def test_tampered_adapter_bytes_are_rejected(device: DeviceModel, ship) -> None:
    wire = json.loads(ship(1).to_bytes())
    raw = bytearray(SignedAdapter.model_validate(wire).adapter_bytes)
    raw[-5] ^= 0x01  # flip one bit of a LoRA weight
    from privacy.wire import b64e

    wire["adapter"] = b64e(bytes(raw))
    with rejected(AdapterRejectReason.BAD_SIGNATURE):
        device.install(SignedAdapter.from_bytes(json.dumps(wire).encode()))


def test_tampered_manifest_is_rejected(device: DeviceModel, ship) -> None:
    good = ship(1)
    for field, value in [("version", 99), ("rollout_fraction", 0.5), ("cohort", "*")]:
        bad = good.model_copy(update={"manifest": good.manifest.model_copy(update={field: value})})
        with rejected(AdapterRejectReason.BAD_SIGNATURE):
            device.install(bad)


def test_wrong_base_region_cohort_are_rejected(device: DeviceModel, ship) -> None:
    with rejected(AdapterRejectReason.WRONG_BASE):
        device.install(ship(1, base_model_sha256="ab" * 32))
    with rejected(AdapterRejectReason.WRONG_REGION):
        device.install(ship(1, region="eu"))
    with rejected(AdapterRejectReason.WRONG_COHORT):
        device.install(ship(1, cohort="cn-c1"))
    device.install(ship(1, cohort="*"))  # region-wide adapters apply to every cohort
    assert device.live_version == 1


def test_downgrade_is_rejected(device: DeviceModel, ship) -> None:
    device.install(ship(5))
    with rejected(AdapterRejectReason.DOWNGRADE):
        device.install(ship(4))
    with rejected(AdapterRejectReason.DOWNGRADE):
        device.install(ship(5))  # replay of the live version
    assert device.live_version == 5


def test_signed_rollback_is_accepted_once(device: DeviceModel, ship) -> None:
    device.install(ship(1))
    v1 = scores(device)
    device.install(ship(2))
    rollback = ship(1, kind="rollback", parent_version=2)
    device.install(rollback)
    assert device.live_version == 1
    np.testing.assert_allclose(scores(device), v1, atol=1e-7)
    assert device.previous_version is None  # the withdrawn v2 is not kept
    with rejected(AdapterRejectReason.ROLLBACK_NOT_APPLICABLE):
        device.install(rollback)  # replay does nothing
    with rejected(AdapterRejectReason.DOWNGRADE):
        device.install(ship(2))  # nor can the withdrawn release return
    device.install(ship(3))


def test_signed_adapter_of_wrong_shape_is_rejected(
    device: DeviceModel, base_onnx: bytes, signing_key: Ed25519PrivateKey, base_net
) -> None:
    from learner.model import model_sha256

    c = base_net.config
    wrong = LoRAWeights.zeros(c.hidden, c.rank + 1, c.query_dim)
    signed = ship_lora(
        wrong,
        base_model_sha256=model_sha256(base_onnx),
        version=1,
        region=REGION,
        cohort=COHORT,
        private_key=signing_key,
    )
    with rejected(AdapterRejectReason.BAD_ADAPTER):
        device.install(signed)


def test_malformed_wire_bytes_are_rejected() -> None:
    with rejected(AdapterRejectReason.MALFORMED):
        SignedAdapter.from_bytes(b'{"manifest": 1}')
    with rejected(AdapterRejectReason.MALFORMED):
        SignedAdapter.from_bytes(b"\xff not json")


def test_wire_round_trip_installs(device: DeviceModel, ship) -> None:
    signed = ship(1)
    device.install(SignedAdapter.from_bytes(signed.to_bytes()))
    assert device.live_manifest == signed.manifest


def test_manifest_lineage_rules() -> None:
    kw = dict(base_model_sha256="0" * 64, region="cn", created_at=T0)
    with pytest.raises(ValueError):
        make_manifest(b"x", version=3, parent_version=5, **kw)  # release older than parent
    with pytest.raises(ValueError):
        make_manifest(b"x", version=5, parent_version=3, kind="rollback", **kw)
    with pytest.raises(ValueError):
        make_manifest(b"x", version=5, kind="rollback", **kw)  # rollback from where?
    with pytest.raises(ValueError):
        sign_artifact(make_manifest(b"x", version=1, **kw), b"y", Ed25519PrivateKey.generate())


def test_canary_is_stable_and_close_to_fraction() -> None:
    ids = [f"dev-{i}" for i in range(2000)]
    first = [in_canary(d, 7, 0.1) for d in ids]
    assert first == [in_canary(d, 7, 0.1) for d in ids]
    assert 0.07 < sum(first) / len(ids) < 0.13
    wider = [in_canary(d, 7, 0.3) for d in ids]
    assert all(w for f, w in zip(first, wider, strict=True) if f)  # widening keeps devices in
    other = [in_canary(d, 8, 0.1) for d in ids]
    assert other != first  # each version draws its own canary set


def test_offer_respects_rollout(base_onnx: bytes, signing_key, ship) -> None:
    taken = 0
    for i in range(40):
        dev = DeviceModel(base_onnx, signing_key.public_key(), REGION, COHORT, device_id=f"d{i}")
        taken += dev.offer(ship(1, rollout_fraction=0.25))
        assert dev.live_version == (1 if in_canary(f"d{i}", 1, 0.25) else 0)
    assert 0 < taken < 40


def test_shadow_eval_scores_candidate_beside_live(device: DeviceModel, ship) -> None:
    with pytest.raises(LocalProtocolError):
        device.shadow_eval(INSTRUCTION, CONTEXT, "百度地图")
    before = device.suggest(INSTRUCTION, CONTEXT)
    device.stage(ship(1))
    assert device.suggest(INSTRUCTION, CONTEXT) == before  # staging changes nothing shown
    live_top = before[0].app
    res = device.shadow_eval(INSTRUCTION, CONTEXT, live_top)
    assert (res.live_version, res.candidate_version, res.live_hit) == (0, 1, True)
    res_k = device.shadow_eval(INSTRUCTION, CONTEXT, live_top, k=len(device.apps))
    assert res_k.candidate_hit
    device.promote()
    assert device.live_version == 1 and device.candidate_version is None
