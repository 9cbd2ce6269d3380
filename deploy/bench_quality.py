"""``sotto bench quality``: does private learning get close to central learning, at ε = 1, 2, 8?

On a simulated population (seeded, disjoint from the base model's training population) each
cohort runs the full loop for ``rounds`` rounds through the DP channel, once per budget in
``epsilons``: the per-round noise multiplier is chosen so the cohort's *whole run* costs that
ε (user-level: a device is in every round; RDP accounting, δ = 1e-6,
:mod:`privacy.accountant`). The population, the devices' rows and the oracle are computed
once and shared by every budget, so the three budgets differ only in the noise.
Figures, all hit@1 on held-out steps of the last two rounds, averaged over cohorts:

* ``base_hit1`` — the base model;
* ``personalized_hit1`` (per budget, in ``by_epsilon``) — the live adapter the private
  learner ends with;
* ``oracle_hit1`` — the same model with a LoRA fitted centrally (``learner.finetune.fit_lora``)
  on the raw, non-private steps of the same window of rounds.

``rounds_to_recover_after_drift``: one cohort switches its navigation app at ``drift_round``;
rounds until the live adapter's navigation hit@1 is back to 90 % of its pre-drift level.

Evaluation reads the held-out rows of the first ``eval_devices`` devices of each cohort (the
simulator writes a device's rows on demand, and 1,000 devices' held-out rows of every round
would double the bench's time for no better estimate); learning uses every device.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from deploy.simulation.base_model import build_base_model
from deploy.simulation.cohort_channel import CohortFleet, StepCache, noise_multiplier_for
from deploy.simulation.population import OPTIONS, Drift, Population
from edge_client.contribution import Trunk
from learner.cohort import CohortLearner, LearnerConfig
from learner.finetune import fit_lora
from learner.model import PersonalizationNet
from privacy.catalog import APP_NAMES
from privacy.contribution import layout_named
from privacy.features import StepArrays

DELTA = 1e-6
EPSILONS = (1.0, 2.0, 8.0)
GOAL = 0.9
MAX_DEVICES = 1000  # per cohort: the goal's bound (noise is per sum, signal grows with n)


def _nav_mask(labels: np.ndarray, region: str) -> np.ndarray:
    nav = [APP_NAMES.index(a) for a in OPTIONS[region]["navigation"]]
    return np.isin(labels, nav)


def _heldout(cache: StepCache, devices: Sequence[str], rounds: Sequence[int]) -> StepArrays:
    return StepArrays.concat(cache.heldout(d, r) for d in devices for r in rounds)


def _private_run(
    cache: StepCache,
    trunk: Trunk,
    net: PersonalizationNet,
    cohort: str,
    *,
    z: float,
    seed: int,
    rounds: int,
    config: LearnerConfig,
    eval_ids: Sequence[str],
    drift_round: int | None,
    on_round: Any = None,
) -> dict[str, Any]:
    """One cohort's private loop at noise multiplier ``z``: final hit@1, ε spent, recovery."""
    fleet = CohortFleet(
        cache,
        cohort,
        trunk,
        noise_multiplier=z,
        delta=DELTA,
        seed=seed,
        layout=layout_named(config.layout),
    )
    learner = CohortLearner(cohort.split("-c")[0], cohort, net, config)
    nav_hits: list[float] = []
    for r in range(rounds):
        fleet.apply(learner.learn_one(fleet.release(r, learner.plan())))
        if drift_round is not None:
            held = _heldout(cache, eval_ids, [r])
            live = fleet.adapters.get(learner.live_version)
            nav = held.subset(_nav_mask(held.labels, fleet.region))
            nav_hits.append(fleet.hit1(nav, live))
        if on_round is not None:
            on_round()
    final = _heldout(cache, eval_ids, [rounds - 2, rounds - 1])
    out: dict[str, Any] = {
        "personalized": fleet.hit1(final, fleet.adapters.get(learner.live_version)),
        "epsilon_spent": learner.epsilon_spent,
        "recover": None,
    }
    if drift_round is not None:
        pre = float(np.mean(nav_hits[drift_round - 2 : drift_round]))
        out["recover"] = next(
            (r - drift_round for r in range(drift_round, rounds) if nav_hits[r] >= 0.9 * pre),
            None,
        )
    return out


def run_quality_bench(
    *,
    devices_per_cohort: int = 1000,
    rounds: int = 12,
    epsilons: Sequence[float] = EPSILONS,
    drift_round: int = 6,
    cohorts: tuple[str, ...] = ("cn-c0", "eu-c0"),
    seed: int = 7,
    eval_devices: int = 250,
    config: LearnerConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import Progress

    if devices_per_cohort > MAX_DEVICES:
        raise ValueError(f"the goal allows at most {MAX_DEVICES:,} devices per cohort")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    net = build_base_model()
    trunk = Trunk.from_net(net)
    config = config or LearnerConfig()
    drifted = cohorts[0]
    shape = {
        "seed": seed,
        "cohorts_per_region": 1 + max(int(c.split("-c")[1]) for c in cohorts),
        "devices_per_cohort": devices_per_cohort,
    }
    before = Population(**shape).cohort_preference(drifted, "navigation", 0)  # type: ignore[arg-type]
    target = next(a for a in OPTIONS[drifted.split("-c")[0]]["navigation"] if a != before)
    pop = Population(**shape, drift_rounds=[Drift(drift_round, drifted, "navigation", target)])  # type: ignore[arg-type]
    cache = StepCache(pop)
    eval_ids = {c: [d.device_id for d in pop.devices_in(c)][:eval_devices] for c in cohorts}
    base: dict[str, float] = {}
    oracle: dict[str, float] = {}
    window = range(max(0, rounds - config.window), rounds)
    runs: dict[float, dict[str, dict[str, Any]]] = {float(e): {} for e in epsilons}
    zs = {e: noise_multiplier_for(e, rounds, DELTA) for e in runs}
    console = Console(stderr=True)
    with Progress(console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("quality", total=len(cohorts) * (len(runs) * rounds + 1))
        for ci, cohort in enumerate(cohorts):
            ids = [d.device_id for d in pop.devices_in(cohort)]
            final = _heldout(cache, eval_ids[cohort], [rounds - 2, rounds - 1])
            for e in runs:
                runs[e][cohort] = _private_run(
                    cache,
                    trunk,
                    net,
                    cohort,
                    z=zs[e],
                    seed=ci,
                    rounds=rounds,
                    config=config,
                    eval_ids=eval_ids[cohort],
                    drift_round=drift_round if cohort == drifted else None,
                    on_round=lambda: bar.advance(task),
                )
            raw = StepArrays.concat(cache.train(d, r) for d in ids for r in window)
            base[cohort] = trunk_hit1(trunk, final, None)
            oracle[cohort] = trunk_hit1(trunk, final, fit_lora(net, raw, seed=0))
            bar.advance(task)
    base_mean, oracle_mean = (
        float(np.mean(list(base.values()))),
        float(np.mean(list(oracle.values()))),
    )
    by_epsilon: dict[str, Any] = {}
    for e, per in runs.items():
        pers = float(np.mean([per[c]["personalized"] for c in cohorts]))
        spent = max(per[c]["epsilon_spent"] for c in cohorts)
        by_epsilon[f"{e:g}"] = {
            "personalized_hit1": round(pers, 4),
            "personalized_over_oracle": round(pers / oracle_mean, 4),
            "meets_goal": pers / oracle_mean >= GOAL,
            "epsilon_budget": e,
            "epsilon_spent": round(spent, 4),
            "within_budget": spent <= e * (1 + 1e-9),
            "noise_multiplier": round(zs[e], 4),
            "per_cohort": {
                c: {
                    "personalized": round(per[c]["personalized"], 4),
                    "over_oracle": round(per[c]["personalized"] / oracle[c], 4),
                }
                for c in cohorts
            },
            "rounds_to_recover_after_drift": per[drifted]["recover"],
        }
    return {
        "base_hit1": round(base_mean, 4),
        "oracle_hit1": round(oracle_mean, 4),
        "goal_personalized_over_oracle": GOAL,
        "delta": DELTA,
        "accounting": "user-level: every device in every round; RDP (dp_accounting), no "
        "amplification by sampling",
        "by_epsilon": by_epsilon,
        "rounds": rounds,
        "devices_per_cohort": devices_per_cohort,
        "eval_devices_per_cohort": min(eval_devices, devices_per_cohort),
        "cohorts": list(cohorts),
        "per_cohort": {
            c: {"base": round(base[c], 4), "oracle": round(oracle[c], 4)} for c in cohorts
        },
        "drift_round": drift_round,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def trunk_hit1(trunk: Trunk, data: StepArrays, weights: Any) -> float:
    """hit@1 on the preference rows of ``data`` (each among its available apps)."""
    return data.hits(trunk.logits(data, weights))
