"""``sotto bench hint``: is the hint right on realistic Open-AutoGLM episodes?

On a simulated population disjoint from the base model's (whole agent episodes: a Launch, then
Tap, Type, Swipe... and a finish; overrides, failed launches, hand-overs, unparsable replies;
Chinese and English), every device lives ``rounds`` days. Each cohort's private adapter is
learned on them through the DP channel (the same loop as ``sotto bench quality``). Then, on the
held-out tasks of the last day, in time order, each method gives the hint the device would
give (:class:`edge_client.hint.PreferenceHint`, default thresholds) and is scored against the
app the user actually used. Tasks that name their app are left out (the hint is silent there by
design), and so are tasks that say nothing about a preference (failed, handed over, no app).

Methods:

* ``base`` — the base model alone (zero adapter), with the device's context;
* ``memory`` — :class:`edge_client.memory.PersonalMemory` alone, fed every step the device
  recorded (online: each held-out task is learned after it is scored);
* ``memory+adapter`` — the memory first, then the cohort's private adapter (what a device
  runs);
* ``oracle`` — not private: a LoRA fitted on this one user's raw rows of all days
  (:func:`learner.finetune.fit_lora`), with the device's context.

Per method: ``precision`` (right among the tasks hinted), ``coverage`` (share hinted),
``accuracy`` (right among all tasks), overall and per language and region (``zh-cn``,
``en-cn``, ``en-eu``...). ``launchable_share``: of every app any method named, the share
Open-AutoGLM's ``Launch`` accepts as spelt, checked against its own ``APP_PACKAGES`` when the
vendored copy is found (``$SOTTO_AUTOGLM_PATH`` or ``shared/vendor/open-autoglm`` beside the
checkout), else against :mod:`privacy.catalog` (``launchable_checked_against`` says which).

``new_habit``: a device takes up an intent it never used (its history for that intent is
removed) with an app that is not the region's favourite, by naming it ("用百度地图导航去公司",
accepted); after 1 and after 3 such runs, an unnamed task of that intent is hinted. Goal:
precision >= 0.9 after one run. ``habit_switch``: the same, but the device keeps its old habit
for the intent (informational: one run against weeks of evidence should not flip a hint).
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.simulation.base_model import build_base_model
from deploy.simulation.cohort_channel import CohortFleet, StepCache
from deploy.simulation.population import OPTIONS, Device, Episode, Population
from edge_client.contribution import Trunk
from edge_client.hint import PreferenceHint
from edge_client.memory import PersonalMemory
from edge_client.runtime import DeviceModel, Suggestion
from learner.cohort import CohortLearner
from learner.finetune import fit_lora
from learner.model import export_onnx, model_sha256
from learner.publish import ship_lora
from privacy import accountant, catalog
from privacy import features as F
from privacy.adapter_file import LoRAWeights

METHODS = ("base", "memory", "memory+adapter", "oracle")
GOAL_AFTER_ONE = 0.9
DELTA = 1e-5
_REPO = Path(__file__).resolve().parents[1]


def autoglm_app_table(path: str | Path | None = None) -> dict[str, str] | None:
    """Open-AutoGLM's ``APP_PACKAGES`` (name -> package), read from a checkout of it: ``path``,
    else ``$SOTTO_AUTOGLM_PATH``, else ``shared/vendor/open-autoglm`` beside this checkout;
    None when none is found. Only its data table is read."""
    candidates = [
        path,
        os.environ.get("SOTTO_AUTOGLM_PATH"),
        _REPO.parent / "shared" / "vendor" / "open-autoglm",
    ]
    for root in candidates:
        if not root:
            continue
        apps = Path(root) / "phone_agent" / "config" / "apps.py"
        if apps.is_file():
            spec = importlib.util.spec_from_file_location("_autoglm_apps", apps)
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return dict(module.APP_PACKAGES)
    return None


class _TrunkModel:
    """A suggestion source over the numpy trunk with a fixed LoRA (the oracle's adapters are
    not signed or shipped: they exist only in the bench)."""

    def __init__(self, trunk: Trunk, lora: LoRAWeights | None, apps: Sequence[str]) -> None:
        self.trunk, self.lora, self.apps = trunk, lora, tuple(apps)

    def suggest(
        self, instruction: str, context_embedding: np.ndarray, k: int = 3
    ) -> list[Suggestion]:
        n = len(self.apps)
        data = F.StepArrays(
            F.instruction_features(instruction)[None],
            np.asarray(context_embedding, dtype=np.float32)[None],
            np.zeros(1, dtype=np.int64),
            np.ones(1, dtype=np.float32),
            np.ones((1, n), dtype=bool),
            self.apps,
        )
        z = self.trunk.logits(data, self.lora)[0]
        p = np.exp(z - z.max())
        p /= p.sum()
        top = np.argsort(-p, kind="stable")[:k]
        return [Suggestion(self.apps[i], float(p[i])) for i in top]


class _Tally:
    """Right / hinted / seen counts per group."""

    def __init__(self) -> None:
        self.n: dict[str, int] = defaultdict(int)
        self.hinted: dict[str, int] = defaultdict(int)
        self.right: dict[str, int] = defaultdict(int)

    def add(self, groups: Sequence[str], top: str | None, truth: str) -> None:
        for g in groups:
            self.n[g] += 1
            if top is not None:
                self.hinted[g] += 1
                self.right[g] += top == truth

    def report(self) -> dict[str, dict[str, float | int]]:
        out: dict[str, dict[str, float | int]] = {}
        for g in sorted(self.n, key=lambda g: (g != "all", g)):
            n, h, r = self.n[g], self.hinted[g], self.right[g]
            out[g] = {
                "precision": round(r / h, 4) if h else 0.0,
                "coverage": round(h / n, 4) if n else 0.0,
                "accuracy": round(r / n, 4) if n else 0.0,
                "n": n,
            }
        return out


def _is_probe(ep: Episode) -> bool:
    """A task the hint should speak for: unnamed, and the user showed which app they use."""
    return (
        ep.named_app is None
        and ep.outcome in ("accepted", "overridden")
        and ep.used_app is not None
        and ep.used_app in ep.candidates
    )


def _top(hint: PreferenceHint, instruction: str, seen: list[str]) -> str | None:
    prefs = hint.preferences(instruction)
    seen.extend(p.app for p in prefs)
    return prefs[0].app if prefs else None


def run_hint_bench(
    *,
    devices_per_cohort: int = 100,
    cohorts_per_region: int = 1,
    rounds: int = 6,
    epsilon_round: float = 2.0,
    habit_devices: int = 40,
    seed: int = 23,
    progress: bool = True,
) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import Progress

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    net = build_base_model()
    onnx_bytes = export_onnx(net)
    trunk = Trunk.from_net(net)
    key = Ed25519PrivateKey.generate()
    sha = model_sha256(onnx_bytes)
    pop = Population(
        seed=seed, cohorts_per_region=cohorts_per_region, devices_per_cohort=devices_per_cohort
    )
    cache = StepCache(pop)
    z = accountant.calibrate(epsilon_round, DELTA)
    table = autoglm_app_table()
    launchable: Callable[[str], bool] = (
        (lambda a: a in table) if table is not None else catalog.is_launchable
    )
    console = Console(stderr=True)
    tallies = {m: _Tally() for m in METHODS}
    habit = {
        k: {m: _Tally() for m in METHODS}
        for k in ("new_after_1", "new_after_3", "switch_after_1", "switch_after_3")
    }
    named: list[str] = []
    eps_spent: list[float] = []
    rng = np.random.default_rng(seed)
    with Progress(console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("hint", total=len(pop.cohorts) * (rounds + devices_per_cohort))
        for ci, cohort in enumerate(pop.cohorts):
            region = cohort.split("-c")[0]
            # the cohort's private adapter: the DP loop over its devices' episodes
            fleet = CohortFleet(cache, cohort, trunk, noise_multiplier=z, seed=ci)
            learner = CohortLearner(region, cohort, net)
            for r in range(rounds):
                fleet.apply(learner.learn_one(fleet.release(r, learner.plan())))
                bar.advance(task)
            eps_spent.append(learner.epsilon_spent)
            base = DeviceModel(onnx_bytes, key.public_key(), region, cohort)
            private = DeviceModel(onnx_bytes, key.public_key(), region, cohort)
            live = fleet.adapters.get(learner.live_version)
            if live is not None:
                private.install(
                    ship_lora(
                        live,
                        base_model_sha256=sha,
                        version=learner.live_version,
                        region=region,
                        cohort=cohort,
                        private_key=key,
                    )
                )
            for di, device in enumerate(pop.devices_in(cohort)):
                history = [e for r in range(rounds) for e in pop.episodes_for_round(device, r)]
                oracle = fit_lora(net, F.StepArrays.from_episodes(history), steps=100)
                _evaluate(
                    device,
                    history,
                    pop.heldout(device, rounds - 1),
                    base,
                    private,
                    _TrunkModel(trunk, oracle, base.apps),
                    tallies,
                    named,
                )
                if di < habit_devices:
                    _habit(pop, device, history, net, trunk, base, private, habit, named, rng)
                bar.advance(task)
    share = sum(map(launchable, named)) / len(named) if named else 1.0
    return {
        "bench": "hint",
        "methods": list(METHODS),
        "memory": f"{PersonalMemory.__module__}.{PersonalMemory.__qualname__}",
        "precision": {m: tallies[m].report() for m in METHODS},
        "launchable_share": round(share, 6),
        "goal_launchable_share": 1.0,
        "launchable_checked_against": (
            "Open-AutoGLM APP_PACKAGES (vendored phone_agent/config/apps.py)"
            if table is not None
            else "privacy.catalog launch names (Open-AutoGLM not found)"
        ),
        "apps_named": len(named),
        "new_habit": {
            "after_1": {m: habit["new_after_1"][m].report()["all"] for m in METHODS},
            "after_3": {m: habit["new_after_3"][m].report()["all"] for m in METHODS},
            "goal_after_1": GOAL_AFTER_ONE,
        },
        "habit_switch": {
            "after_1": {m: habit["switch_after_1"][m].report()["all"] for m in METHODS},
            "after_3": {m: habit["switch_after_3"][m].report()["all"] for m in METHODS},
        },
        "population": {
            "seed": seed,
            "regions": list(pop.regions),
            "cohorts": list(pop.cohorts),
            "devices_per_cohort": devices_per_cohort,
            "rounds": rounds,
            "tasks_per_round": pop.steps_per_round,
            "habit_devices_per_cohort": min(habit_devices, devices_per_cohort),
        },
        "privacy": {
            "epsilon_per_round": epsilon_round,
            "epsilon_spent": round(max(eps_spent), 4) if eps_spent else 0.0,
            "delta": DELTA,
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _memory(steps: Sequence[Any]) -> PersonalMemory:
    memory = PersonalMemory(":memory:")
    for s in steps:
        memory.learn_one(s)
    return memory


def _hints(
    base: DeviceModel,
    private: DeviceModel,
    oracle: _TrunkModel,
    memory: PersonalMemory,
    context: Callable[[], np.ndarray],
    clock: Callable[[], datetime],
) -> dict[str, PreferenceHint]:
    return {
        "base": PreferenceHint(base, context),
        "memory": PreferenceHint(None, None, memory=memory, clock=clock),
        "memory+adapter": PreferenceHint(private, context, memory=memory, clock=clock),
        "oracle": PreferenceHint(oracle, context),
    }


def _evaluate(
    device: Device,
    history: list[Episode],
    heldout: list[Episode],
    base: DeviceModel,
    private: DeviceModel,
    oracle: _TrunkModel,
    tallies: dict[str, _Tally],
    named: list[str],
) -> None:
    memory = _memory(s for e in history for s in e.steps)
    now: list[datetime] = [history[-1].timestamp if history else heldout[0].timestamp]
    ctx: list[np.ndarray] = [np.zeros(128, dtype=np.float32)]
    hints = _hints(base, private, oracle, memory, lambda: ctx[0], lambda: now[0])
    try:
        for ep in heldout:
            if _is_probe(ep):
                now[0], ctx[0] = ep.timestamp, ep.context
                groups = ("all", f"{ep.language}-{ep.region}")
                for m, hint in hints.items():
                    tallies[m].add(groups, _top(hint, ep.instruction, named), ep.used_app or "")
            for s in ep.steps:  # the device learns the task after the hint was given
                memory.learn_one(s)
    finally:
        memory.close()


def _habit(
    pop: Population,
    device: Device,
    history: list[Episode],
    net: Any,
    trunk: Trunk,
    base: DeviceModel,
    private: DeviceModel,
    habit: dict[str, dict[str, _Tally]],
    named: list[str],
    rng: np.random.Generator,
) -> None:
    region = device.region
    intents = [i for i, apps in OPTIONS[region].items() if len(apps) > 1]
    intent = intents[int(rng.integers(len(intents)))]
    choices = [a for a in OPTIONS[region][intent][1:] if a not in device.missing]
    if not choices:
        return
    app = choices[int(rng.integers(len(choices)))]
    start = history[-1].timestamp + timedelta(hours=2)
    for kind in ("new", "switch"):
        if kind == "switch" and app == pop.habit(device, intent, 99, start.hour):
            continue  # already the habit: nothing to switch
        kept = [e for e in history if kind == "switch" or e.intent != intent]
        seen = [e.features for e in kept]
        memory = _memory(s for e in kept for s in e.steps)
        runs: list[Episode] = []
        try:
            for n in (1, 3):
                while len(runs) < n:
                    when = start + timedelta(hours=3 * len(runs))
                    ep = pop.task(
                        device,
                        when,
                        intent,
                        rng=rng,
                        wanted=app,
                        name_app=True,
                        history=[*seen, *(r.features for r in runs)],
                        index=len(runs),
                    )
                    runs.append(ep)
                    for s in ep.steps:
                        memory.learn_one(s)
                probe_at = runs[-1].timestamp + timedelta(hours=1)
                probe = pop.task(device, probe_at, intent, rng=rng, wanted=app, name_app=False)
                ctx = F.context_of([*seen, *(r.features for r in runs)], probe_at)
                rows = [r for e in kept + runs for r in e.rows]
                oracle = _TrunkModel(
                    trunk, fit_lora(net, F.StepArrays.from_rows(rows), steps=100), base.apps
                )
                hints = _hints(base, private, oracle, memory, lambda c=ctx: c, lambda t=probe_at: t)
                for m, hint in hints.items():
                    top = _top(hint, probe.instruction, named)
                    habit[f"{kind}_after_{n}"][m].add(("all",), top, app)
        finally:
            memory.close()
