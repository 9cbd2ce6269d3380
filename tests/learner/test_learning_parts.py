"""The learning loop's parts, one at a time: layout, device contribution, window, fit, gate,
transition table, regression monitor."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.simulation.population import Population
from edge_client.contribution import Trunk, build_contribution, stats_block
from edge_client.runtime import DeviceModel
from learner.finetune import fit_lora
from learner.fit import (
    FitConfig,
    _app_metric,
    fit_adapter,
    newton_target,
    optimal_rank_r,
    reference_app_gram,
    reference_gram,
)
from learner.gate import PairedEvidence
from learner.model import PersonalizationNet, model_sha256
from learner.publish import ship_lora
from learner.rollout import TRANSITIONS, Event, RegressionMonitor, transition
from learner.window import RoundStats, StatsWindow
from privacy.adapter_file import LoRAWeights
from privacy.adapter_plan import AdapterPlan, AdapterStatus
from privacy.contribution import LAYOUT_V2
from privacy.errors import LocalProtocolError
from privacy.features import StepArrays

S = AdapterStatus


def test_layout_clips_every_vector_to_c_and_decodes_blocks() -> None:
    rng = np.random.default_rng(0)
    big = {"stats": rng.normal(size=(64, 32)) * 10, "shadow": np.array([0.9, 0.81])}
    v = LAYOUT_V2.encode(big)
    assert np.linalg.norm(v) <= LAYOUT_V2.clip + 1e-9
    assert LAYOUT_V2.l2_sensitivity == pytest.approx(LAYOUT_V2.clip)
    small = {"stats": np.full((64, 32), 1e-3), "rollout": np.array([0.1, 0.01])}
    back = LAYOUT_V2.decode(LAYOUT_V2.encode(small))
    np.testing.assert_allclose(back["stats"], small["stats"])
    np.testing.assert_allclose(back["rollout"], small["rollout"])
    assert not back["shadow"].any()
    with pytest.raises(ValueError):
        LAYOUT_V2.encode({"stats": np.zeros(3)})
    with pytest.raises(KeyError):
        LAYOUT_V2.encode({"gradients": np.zeros(3)})


def test_trunk_from_onnx_matches_torch(base_net: PersonalizationNet, base_onnx: bytes) -> None:
    pop = Population(seed=3, cohorts_per_region=1, devices_per_cohort=2)
    data = StepArrays.from_rows(r for d in pop.devices for r in pop.rows_for_round(d, 0))
    assert (data.polarity < 0).any()  # failed launches are in the rows too
    trunk = Trunk.from_onnx(base_onnx)
    lora = LoRAWeights(np.full((64, 4), 0.01, np.float32), np.full((4, 32), 0.02, np.float32))
    ours = trunk.logits(data, lora)
    np.testing.assert_allclose(ours, base_net.logits(data, lora), atol=1e-4)
    # The stats block is the negative gradient of the row loss (cross-entropy over the
    # available apps for used apps, -log(1-p) for failed launches) w.r.t. a query-layer delta.
    import torch

    from learner.model import row_loss

    h = torch.from_numpy(trunk.features(data))
    v = torch.from_numpy(trunk.app_vectors(data.app_features()))
    delta = torch.zeros(64, 32, dtype=torch.float64, requires_grad=True)
    logits = torch.from_numpy(trunk.logits(data)) + (h @ delta) @ v.T
    loss = row_loss(
        logits,
        torch.from_numpy(data.labels),
        torch.from_numpy(data.polarity),
        torch.from_numpy(data.available),
    )
    loss.backward()
    np.testing.assert_allclose(stats_block(trunk, data), -delta.grad.numpy(), atol=1e-8)


def test_device_model_shadow_path_equals_numpy_path(
    base_net: PersonalizationNet, base_onnx: bytes
) -> None:
    key = Ed25519PrivateKey.generate()
    pop = Population(seed=4, cohorts_per_region=1, devices_per_cohort=1)
    steps = pop.rows_for_round(pop.devices[0], 1)
    lora = fit_lora(base_net, StepArrays.from_rows(steps), steps=30)
    signed = ship_lora(
        lora,
        base_model_sha256=model_sha256(base_onnx),
        version=1,
        region="cn",
        cohort="cn-c0",
        private_key=key,
    )
    device = DeviceModel(base_onnx, key.public_key(), "cn", "cn-c0", device_id="d1")
    device.stage(signed)
    plan = AdapterPlan(cohort="cn-c0", live_version=0, shadow_version=1)
    trunk = Trunk.from_onnx(base_onnx)
    via_ort = build_contribution(device, steps, plan, "d1", adapters={1: lora}, trunk=trunk)
    via_numpy = build_contribution(trunk, steps, plan, "d1", adapters={1: lora})
    np.testing.assert_allclose(via_ort, via_numpy, atol=1e-6)
    shadow = LAYOUT_V2.decode(via_numpy)["shadow"]
    assert shadow[1] == pytest.approx(shadow[0] ** 2)
    with pytest.raises(ValueError, match="trunk"):
        build_contribution(device, steps, plan, "d1")


def test_window_is_bounded_by_count_and_age() -> None:
    w = StatsWindow(size=3, max_age_s=2.5 * 86400)
    for r in range(10):
        w.learn_one(RoundStats(r, r * 86400.0, np.ones((2, 2)) * r, participants=4))
    assert w.rounds == [7, 8, 9]
    w2 = StatsWindow(size=10, max_age_s=1.5 * 86400)
    for r in range(5):
        w2.learn_one(RoundStats(r, r * 86400.0, np.ones((2, 2)), participants=4))
    assert w2.rounds == [3, 4]
    with pytest.raises(ValueError):
        w2.learn_one(RoundStats(4, 0.0, np.ones((2, 2)), participants=1))
    assert StatsWindow.from_dict(w.to_dict()).mean_stats() == pytest.approx(w.mean_stats())


def test_fit_reaches_the_optimal_rank_r_solution(base_net: PersonalizationNet) -> None:
    rng = np.random.default_rng(1)
    gram = reference_gram(base_net)
    stats = rng.normal(size=(64, 32)) * 0.05
    cfg = FitConfig()
    gram_reg = gram + (cfg.ridge + cfg.prox) * np.eye(64)
    app_gram = reference_app_gram(base_net)  # the Kronecker curvature the learner uses
    weights = fit_adapter(stats, gram, rank=4, scale=2.0, config=cfg, app_gram=app_gram)
    target = newton_target(stats, gram, None, 2.0, cfg, app_gram)
    best = optimal_rank_r(target, gram_reg, 4, _app_metric(app_gram, 32, cfg))
    got = 2.0 * weights.delta()
    assert np.linalg.norm(got - best) / np.linalg.norm(best) < 0.05


def test_gate_standard_error_includes_dp_noise() -> None:
    quiet = PairedEvidence().learn_one(s1=10.0, s2=2.0, n=200, noise_var=0.0)
    noisy = PairedEvidence().learn_one(s1=10.0, s2=2.0, n=200, noise_var=400.0)
    assert noisy.se > quiet.se
    assert noisy.se**2 == pytest.approx(quiet.se**2 + 400.0 / 200**2)
    assert quiet.decide(margin=0.02) == "pass"
    assert noisy.decide(margin=0.02) == "wait"  # same mean, too noisy to tell
    bad = PairedEvidence().learn_one(s1=-40.0, s2=10.0, n=200, noise_var=4.0)
    assert bad.decide(margin=0.02) == "fail"
    # evidence accumulates: more rounds, smaller SE
    twice = noisy.learn_one(s1=10.0, s2=2.0, n=200, noise_var=400.0)
    assert twice.se < noisy.se and twice.rounds == 2


def test_transition_table_is_the_only_way_to_move() -> None:
    assert transition(S.CANDIDATE, Event.SHIP) == S.SHADOW
    assert transition(S.CANARY, Event.CANARY_PASS) == S.LIVE
    assert transition(S.LIVE, Event.REGRESSION) == S.ROLLED_BACK
    terminal = {S.REJECTED, S.ROLLED_BACK}
    for status in terminal:
        for event in Event:
            with pytest.raises(LocalProtocolError):
                transition(status, event)
    with pytest.raises(LocalProtocolError):
        transition(S.SHADOW, Event.CANARY_PASS)  # no skipping the canary
    assert {b for (_, _), b in TRANSITIONS.items()} >= {S.LIVE, S.REJECTED, S.RETIRED}


def test_regression_monitor_fires_on_a_drop_and_replays_exactly() -> None:
    m = RegressionMonitor()
    for _ in range(3):
        m.update(s1=4.0, s2=1.0, n=100, noise_var=9.0)  # live a bit better than previous
    assert not m.drift_detected
    m.update(s1=-30.0, s2=12.0, n=100, noise_var=9.0)  # live 30 points worse
    assert m.drift_detected and "drop" in m.reason
    again = RegressionMonitor.from_list(m.to_list(), m.config)
    assert again.drift_detected and again.evidence == m.evidence


def test_fit_cost_does_not_depend_on_history(base_net: PersonalizationNet) -> None:
    """The window holds W rounds whatever the stream length, and the fit reads only it."""
    w = StatsWindow(size=4)
    for r in range(200):
        w.learn_one(RoundStats(r, float(r), np.ones((64, 32)) * 1e-3, participants=10))
    assert len(w) == 4 and len(w.to_dict()["rounds"]) == 4
    gram = reference_gram(base_net)
    weights = fit_adapter(
        w.mean_stats(), gram, rank=4, scale=2.0, app_gram=reference_app_gram(base_net)
    )
    assert weights.A.shape == (64, 4) and np.all(np.isfinite(weights.B))
