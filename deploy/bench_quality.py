"""``sotto bench quality``: does private learning get close to central learning?

On a simulated population (seeded, disjoint from the base model's training population) each
cohort runs the full loop for ``rounds`` rounds through the DP channel, with the noise
multiplier chosen so the cohort's whole run costs ``epsilon`` (RDP accounting, delta 1e-5).
Figures, all hit@1 on held-out steps of the last two rounds, averaged over cohorts:

* ``base_hit1`` — the base model;
* ``personalized_hit1`` — the live adapter the private learner ends with;
* ``oracle_hit1`` — the same model with a LoRA fitted centrally (``learner.finetune.fit_lora``)
  on the raw, non-private steps of the same window of rounds.

``rounds_to_recover_after_drift``: one cohort switches its navigation app at ``drift_round``;
rounds until the live adapter's navigation hit@1 is back to 90 % of its pre-drift level.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from deploy.simulation.base_model import build_base_model
from deploy.simulation.cohort_channel import CohortFleet, StepCache, noise_multiplier_for
from deploy.simulation.population import OPTIONS, Drift, Population
from edge_client.contribution import Trunk
from learner.cohort import CohortLearner, LearnerConfig
from learner.finetune import fit_lora
from privacy.catalog import APP_NAMES
from privacy.features import StepArrays

DELTA = 1e-5


def _nav_mask(labels: np.ndarray, region: str) -> np.ndarray:
    nav = [APP_NAMES.index(a) for a in OPTIONS[region]["navigation"]]
    return np.isin(labels, nav)


def _subset(data: StepArrays, mask: np.ndarray) -> StepArrays:
    return data.subset(mask)


def run_quality_bench(
    *,
    devices_per_cohort: int = 200,
    rounds: int = 12,
    epsilon: float = 8.0,
    drift_round: int = 6,
    cohorts: tuple[str, ...] = ("cn-c0", "eu-c0"),
    seed: int = 7,
    progress: bool = True,
) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import Progress

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    net = build_base_model()
    trunk = Trunk.from_net(net)
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
    z = noise_multiplier_for(epsilon, rounds, DELTA)
    config = LearnerConfig()
    out: dict[str, list[float]] = {"base": [], "personalized": [], "oracle": [], "eps": []}
    recover: int | None = None
    console = Console(stderr=True)
    with Progress(console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("quality", total=len(cohorts) * rounds)
        for ci, cohort in enumerate(cohorts):
            fleet = CohortFleet(cache, cohort, trunk, noise_multiplier=z, seed=ci)
            learner = CohortLearner(cohort.split("-c")[0], cohort, net, config)
            nav_hits: list[float] = []
            for r in range(rounds):
                fleet.apply(learner.learn_one(fleet.release(r, learner.plan())))
                held = fleet.heldout([r])
                live = fleet.adapters.get(learner.live_version)
                nav = _subset(held, _nav_mask(held.labels, fleet.region))
                nav_hits.append(fleet.hit1(nav, live))
                bar.advance(task)
            final = fleet.heldout([rounds - 2, rounds - 1])
            live = fleet.adapters.get(learner.live_version)
            window = range(max(0, rounds - config.window), rounds)
            raw = StepArrays.concat(
                fleet.cache.train(d, r) for d in fleet.device_ids for r in window
            )
            oracle = fit_lora(net, raw, seed=0)
            out["base"].append(fleet.hit1(final, None))
            out["personalized"].append(fleet.hit1(final, live))
            out["oracle"].append(fleet.hit1(final, oracle))
            out["eps"].append(learner.epsilon_spent)
            if cohort == drifted:
                pre = float(np.mean(nav_hits[drift_round - 2 : drift_round]))
                recover = next(
                    (
                        r - drift_round
                        for r in range(drift_round, rounds)
                        if nav_hits[r] >= 0.9 * pre
                    ),
                    None,
                )
    base, pers, orc = (float(np.mean(out[k])) for k in ("base", "personalized", "oracle"))
    return {
        "base_hit1": round(base, 4),
        "personalized_hit1": round(pers, 4),
        "oracle_hit1": round(orc, 4),
        "personalized_over_oracle": round(pers / orc, 4),
        "goal_personalized_over_oracle": 0.9,
        "epsilon": round(max(out["eps"]), 4),
        "epsilon_budget": epsilon,
        "delta": DELTA,
        "noise_multiplier": round(z, 4),
        "rounds": rounds,
        "devices_per_cohort": devices_per_cohort,
        "cohorts": list(cohorts),
        "per_cohort": {
            c: {k: round(out[k][i], 4) for k in ("base", "personalized", "oracle")}
            for i, c in enumerate(cohorts)
        },
        "drift_round": drift_round,
        "rounds_to_recover_after_drift": recover,
        "seconds": round(time.perf_counter() - t0, 1),
    }
