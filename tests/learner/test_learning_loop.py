"""The whole learning loop in memory: simulated devices -> clipped contributions -> DP channel
(Gaussian with calibrated noise, or a real SecAgg+ round) -> CohortLearner -> actions -> devices.
"""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.simulation.cohort_channel import CohortFleet, StepCache
from deploy.simulation.population import OPTIONS, Drift, Population
from edge_client.contribution import Trunk
from edge_client.runtime import DeviceModel
from learner.actions import AdapterAction
from learner.cohort import CohortLearner, LearnerConfig
from learner.finetune import fit_lora
from learner.model import PersonalizationNet, model_sha256
from learner.publish import ship_lora
from privacy import accountant
from privacy.adapter_file import LoRAWeights
from privacy.adapter_manifest import AdapterRejected
from privacy.adapter_plan import AdapterStatus
from privacy.catalog import APP_NAMES
from privacy.features import StepArrays

COHORT = "cn-c0"
DRIFT_ROUND = 4
ROUNDS = 10
RECOVERY_BOUND = 5  # rounds after the drift by which navigation hit@1 must be back
RECOVERY_RATIO = 0.8  # ... to this share of a central oracle fitted on post-drift raw steps
EPSILON_ROUND = 2.0
S = AdapterStatus


@pytest.fixture(scope="module")
def trunk(base_net: PersonalizationNet) -> Trunk:
    return Trunk.from_net(base_net)


@pytest.fixture(scope="module")
def cache() -> StepCache:
    shape = {"seed": 11, "cohorts_per_region": 1, "devices_per_cohort": 120}
    before = Population(**shape).cohort_preference(COHORT, "navigation", 0)  # type: ignore[arg-type]
    new = next(a for a in OPTIONS["cn"]["navigation"] if a != before)
    pop = Population(**shape, drift_rounds=[Drift(DRIFT_ROUND, COHORT, "navigation", new)])  # type: ignore[arg-type]
    return StepCache(pop)


def _z(epsilon_round: float) -> float:
    """The noise multiplier for one round's epsilon, as the privacy layer calibrates it."""
    return accountant.calibrate(epsilon_round, 1e-5)


@pytest.fixture(scope="module")
def run(base_net: PersonalizationNet, trunk: Trunk, cache: StepCache) -> dict:
    """One recorded run with a habit drift; several tests read it."""
    fleet = CohortFleet(cache, COHORT, trunk, noise_multiplier=_z(EPSILON_ROUND), seed=1)
    learner = CohortLearner("cn", COHORT, base_net, LearnerConfig())
    releases, actions, states, nav_hits, oracle_hits = [], [], [], [], []
    nav = [APP_NAMES.index(a) for a in OPTIONS["cn"]["navigation"]]
    for r in range(ROUNDS):
        states.append(learner.to_state())
        rel = fleet.release(r, learner.plan())
        acts = learner.learn_one(rel)
        fleet.apply(acts)
        releases.append(rel)
        actions.append(acts)
        held = fleet.heldout([r])
        nav_held = held.subset(np.isin(held.labels, nav))
        nav_hits.append(fleet.hit1(nav_held, fleet.adapters.get(learner.live_version)))
        if r >= DRIFT_ROUND:  # what central learning on the raw post-drift steps reaches
            raw = StepArrays.concat(
                cache.train(d, q) for d in fleet.device_ids for q in range(DRIFT_ROUND, r + 1)
            )
            oracle_hits.append(fleet.hit1(nav_held, fit_lora(base_net, raw, seed=0)))
    return {
        "fleet": fleet,
        "learner": learner,
        "releases": releases,
        "actions": actions,
        "states": states,
        "nav_hits": nav_hits,
        "oracle_hits": oracle_hits,
    }


def test_personalized_adapter_beats_base(run: dict) -> None:
    fleet, learner = run["fleet"], run["learner"]
    held = fleet.heldout([ROUNDS - 2, ROUNDS - 1])
    base = fleet.hit1(held, None)
    live = fleet.hit1(held, fleet.adapters[learner.live_version])
    print(f"hit@1 base={base:.3f} live(v{learner.live_version})={live:.3f} n={len(held)}")
    assert learner.live_version >= 1
    assert live >= base + 0.08
    assert learner.epsilon_spent == pytest.approx(
        accountant.epsilon([_z(EPSILON_ROUND)] * ROUNDS, 1e-5), rel=1e-6
    )


def test_live_adapter_recovers_after_habit_drift(run: dict) -> None:
    hits, oracle = run["nav_hits"], run["oracle_hits"]
    pre = float(np.mean(hits[DRIFT_ROUND - 2 : DRIFT_ROUND]))
    print("navigation hit@1 live:", [round(h, 2) for h in hits])
    print("navigation hit@1 oracle after drift:", [round(h, 2) for h in oracle])
    assert hits[DRIFT_ROUND] < 0.8 * pre  # the drift really hurt the live adapter
    recovered = [
        r for r in range(DRIFT_ROUND, ROUNDS) if hits[r] >= RECOVERY_RATIO * oracle[r - DRIFT_ROUND]
    ]
    assert recovered and recovered[0] - DRIFT_ROUND <= RECOVERY_BOUND


def test_every_promotion_went_through_shadow_and_canary(run: dict) -> None:
    seen: dict[int, list[str]] = {}
    for acts in run["actions"]:
        for a in acts:
            seen.setdefault(a.version, []).append(a.status.value)
    live_ones = [v for v, path in seen.items() if "live" in path and v != 0]
    assert live_ones
    for v in live_ones:
        assert seen[v][:4] == ["candidate", "shadow", "canary", "live"]


def test_restored_learner_produces_the_same_actions(
    run: dict, base_net: PersonalizationNet
) -> None:
    k = 5  # mid-stream, with a candidate in flight and a previous version kept
    restored = CohortLearner.from_state(run["states"][k], base_net)
    for r in range(k, ROUNDS):
        acts = restored.learn_one(run["releases"][r])
        assert [a.model_dump() for a in acts] == [a.model_dump() for a in run["actions"][r]]
    assert restored.to_state() == run["learner"].to_state()


def test_duplicate_release_is_not_applied_twice(run: dict, base_net: PersonalizationNet) -> None:
    learner = CohortLearner.from_state(run["learner"].to_state(), base_net)
    before = learner.to_state()
    for rel in (run["releases"][-1], run["releases"][3]):
        assert learner.learn_one(rel) == []
    assert learner.to_state() == before


def _bad_candidate_run(
    base_net: PersonalizationNet, trunk: Trunk, cache: StepCache, bad: str
) -> list[AdapterAction]:
    fleet = CohortFleet(cache, COHORT, trunk, noise_multiplier=_z(1.0), seed=2)
    learner = CohortLearner("cn", COHORT, base_net)
    log: list[AdapterAction] = []
    r = 0
    while learner.live_version < 1:  # get a live adapter first
        assert r < 8, "no adapter went live"
        fleet.apply(acts := learner.learn_one(fleet.release(r, learner.plan())))
        log += acts
        r += 1
    live = learner.weights(learner.live_version)
    rng = np.random.default_rng(5)
    weights = (
        LoRAWeights(live.A, -3.0 * live.B)
        if bad == "negated"
        else LoRAWeights(rng.normal(size=live.A.shape), rng.normal(size=live.B.shape))
    )
    if (
        learner.candidate_version is not None
        and learner.status(learner.candidate_version) == S.CANARY
    ):
        fleet.apply(acts := learner.learn_one(fleet.release(r, learner.plan())))
        log += acts
        r += 1
    injected = learner._next_version
    fleet.apply(acts := learner.propose(weights, reason=f"{bad} (test)"))
    log += acts
    for q in range(r, r + 4):
        fleet.apply(acts := learner.learn_one(fleet.release(q, learner.plan())))
        log += acts
    return [a for a in log if a.version == injected]


@pytest.mark.parametrize("bad", ["negated", "random"])
def test_bad_candidate_never_gets_past_canary(
    base_net: PersonalizationNet, trunk: Trunk, cache: StepCache, bad: str
) -> None:
    mine = _bad_candidate_run(base_net, trunk, cache, bad)
    statuses = [a.status for a in mine]
    print(bad, [(a.kind, a.status.value, a.metrics.get("shadow_diff")) for a in mine])
    assert statuses[-1] == S.REJECTED
    assert S.LIVE not in statuses and S.CANARY not in statuses


def _apply_signed(
    devices: list[DeviceModel], actions: list[AdapterAction], key: Ed25519PrivateKey, sha: str
) -> None:
    """What the service + devices do with actions: sign, then stage / offer / install."""
    for a in actions:
        if a.lora_a is None or a.kind in ("register",):
            continue
        w = LoRAWeights(np.array(a.lora_a), np.array(a.lora_b))
        kind = "rollback" if a.kind == "rollback" else "release"
        signed = ship_lora(
            w,
            base_model_sha256=sha,
            version=a.version,
            region=a.region,
            cohort=a.cohort,
            private_key=key,
            rollout_fraction=a.rollout_fraction if kind == "release" else 1.0,
            parent_version=a.parent_version,
            kind=kind,
        )
        for d in devices:
            try:
                if a.kind == "ship":
                    d.stage(signed)
                elif kind == "rollback":
                    d.install(signed)
                else:
                    d.offer(signed)
            except AdapterRejected:
                pass  # not this device's business (other parent, already installed)


def test_forced_regression_rolls_every_device_back_within_one_round(
    base_net: PersonalizationNet,
    base_onnx: bytes,
    trunk: Trunk,
    cache: StepCache,
    signing_key: Ed25519PrivateKey,
) -> None:
    ids = [d.device_id for d in cache.population.devices_in(COHORT)][:60]
    fleet = CohortFleet(cache, COHORT, trunk, noise_multiplier=_z(4.0), seed=3, devices=ids)
    devices = [
        DeviceModel(base_onnx, signing_key.public_key(), "cn", COHORT, device_id=i) for i in ids
    ]
    sha = model_sha256(base_onnx)
    learner = CohortLearner("cn", COHORT, base_net, LearnerConfig(min_devices=10))
    r = 0
    while learner.previous_version is None or learner.live_version < 1:
        acts = learner.learn_one(fleet.release(r, learner.plan()))
        fleet.apply(acts)
        _apply_signed(devices, acts, signing_key, sha)
        r += 1
        assert r < 8, "no adapter went live"
    bad, previous = learner.live_version, learner.previous_version
    assert all(d.live_version == bad for d in devices)
    live = learner.weights(bad)
    fleet.corrupt(bad, LoRAWeights(live.A, -3.0 * live.B))  # the live adapter misbehaves
    acts = learner.learn_one(fleet.release(r, learner.plan()))
    rollbacks = [a for a in acts if a.kind == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0].version == previous
    assert rollbacks[0].parent_version == bad
    assert learner.live_version == previous and learner.status(bad) is None
    plan = learner.plan()
    assert plan.live_version == previous and plan.canary_version is None
    _apply_signed(devices, acts, signing_key, sha)
    assert all(d.live_version == previous for d in devices)


def test_release_through_real_secagg_round(
    base_net: PersonalizationNet, trunk: Trunk, cache: StepCache
) -> None:
    """Two rounds through SecAgg+ (quantization, distributed discrete Gaussian noise, masking
    and unmasking): the learner reads them like the Gaussian channel's releases."""
    ids = [d.device_id for d in cache.population.devices_in(COHORT)][:24]
    fleet = CohortFleet(cache, COHORT, trunk, noise_multiplier=_z(4.0), devices=ids)
    learner = CohortLearner("cn", COHORT, base_net, LearnerConfig(min_devices=5))
    rel0 = fleet.release(0, learner.plan(), channel="secagg")
    assert rel0.participants == 24 and rel0.noise_stddev > 0
    acts0 = learner.learn_one(rel0)
    assert [a.kind for a in acts0] == ["register", "ship"]
    fleet.apply(acts0)
    plan = learner.plan()
    rel1 = fleet.release(1, plan, channel="secagg")
    clear = np.sum(fleet.contributions(1, plan), axis=0)
    noise = rel1.vector() - clear
    assert abs(float(noise.std()) - rel1.noise_stddev) < 0.2 * rel1.noise_stddev
    acts1 = learner.learn_one(rel1)
    assert learner.last_round == 1 and rel1.epsilon_spent > rel0.epsilon_spent
    assert all(a.version == 1 for a in acts1)
