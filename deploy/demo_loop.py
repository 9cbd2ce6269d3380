"""The whole loop, per region, over the region's real Kafka topics.

Per round and region: simulated devices (``deploy.simulation.population``) check in; the round service
(ingestion + SecAgg+ coordinator) opens one round per cohort with the learner's current plan;
the device fleet answers through HPKE envelopes (some devices drop out mid-round); the
coordinator releases each cohort's DP-noised sum to ``<region>.aggregates``; the learner
consumes it, fits, gates, and publishes signed adapters and the next plan to
``<region>.adapters``; a reference device per cohort verifies and installs them. The
harness then scores base / live / candidate adapters on held-out steps: that measurement
uses the simulator's ground truth and is the only thing here that sees raw data.

Stages close the way a deployment's do (:class:`ingestion.round_open.RoundSpec`): each round
aims for the devices expected to stay (``1 - dropout`` of the cohort), over-selected as in
Bonawitz et al. (capped by the cohort's check-ins, so every device is asked); a stage closes
when every expected device answered, or ``grace_s`` after its goal count did, or at a
deadline long enough for a loaded machine.
"""

from __future__ import annotations

import contextlib
import math
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.keystore import signing_public_key
from deploy.settings import SottoSettings
from deploy.simulation.base_model import deployment_base
from deploy.simulation.cohort_channel import StepCache
from deploy.simulation.device_fleet import DeviceFleet
from edge_client.adapter_sync import AdapterFeed, Outcome, apply
from edge_client.contribution import Trunk, build_contribution
from edge_client.round_client import adapter_plan
from edge_client.runtime import DeviceModel
from ingestion.ledger_store import report as ledger_report
from ingestion.round_open import RoundSpec
from ingestion.round_service import RoundService
from learner.service import LearnerApp
from privacy.adapter_file import LoRAWeights, adapter_from_bytes
from privacy.adapter_manifest import SignedAdapter, verify
from privacy.adapter_plan import AdapterPlan
from privacy.contribution import LAYOUT_V2
from privacy.features import StepArrays
from privacy.ledger import Budget
from privacy.round_wire import RoundOpen

FINAL = ("released", "aborted", "refused")


@dataclass
class LoopConfig:
    rounds: int = 8
    epsilon_per_round: float = 1.0
    delta: float = 1e-6
    budget_epsilon: float = 8.0
    budget_delta: float = 1e-5
    dropout: float = 0.1  # share of devices that vanish after sending their masked input
    expected_dropout: float | None = None  # what rounds are sized and goaled for (None: dropout)
    stage_timeout_s: float = 60.0  # stage deadline: a loaded machine still answers within it
    grace_s: float = 1.5  # after a stage's goal count answered, for the stragglers
    overselect: float = 0.3
    round_timeout_s: float = 330.0  # the harness gives up on a round (> 4 stage deadlines)


@dataclass
class RoundRecord:
    round: int
    region: str
    cohort: str
    status: str
    reason: str = ""  # why a round was not released (the abort or refusal detail)
    participants: int = 0
    dropped: int = 0
    epsilon_spent: float = 0.0
    live_version: int = 0
    candidate_version: int | None = None
    hit1_base: float = 0.0
    hit1_live: float = 0.0
    hit1_candidate: float | None = None


@dataclass
class RegionLoop:
    """Everything one region runs, entered together and closed together."""

    settings: SottoSettings
    region: str
    cache: StepCache
    config: LoopConfig
    workdir: Path
    records: list[RoundRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    sync: Counter[str] = field(default_factory=Counter)
    refusals: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        pop = self.cache.population
        self.devices = {d.device_id: d.cohort for d in pop.devices if d.region == self.region}
        self.cohorts = sorted(set(self.devices.values()))
        rng = np.random.default_rng(zlib.crc32(self.region.encode()))  # not hash(): salted
        ids = sorted(self.devices)
        flaky = set(rng.choice(ids, size=int(len(ids) * self.config.dropout), replace=False))
        self.flaky = flaky
        self.plans = {c: AdapterPlan(cohort=c) for c in self.cohorts}
        self.weights: dict[str, dict[int, LoRAWeights]] = {c: {} for c in self.cohorts}
        self.current_round = 0
        self.svc = RoundService(
            self.settings.policy,
            self.region,
            self.settings.ingest,
            budget=Budget(epsilon=self.config.budget_epsilon, delta=self.config.budget_delta),
            rounds=self.settings.rounds,  # its coordinator lease; rounds use the demo flags
        )
        self.learner = LearnerApp(
            self.settings.policy,
            self.region,
            self.settings.learner,
            base=lambda: deployment_base(self.settings.home),
        )

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> RegionLoop:
        cfg = self.settings.policy.region(self.region)
        self.svc.__enter__()
        self.learner.__enter__()
        _, onnx_bytes, _ = deployment_base(self.settings.home)
        self.trunk = Trunk.from_onnx(onnx_bytes)
        self.public_key = signing_public_key(cfg.keyset_dir)
        self.refs = {
            c: DeviceModel(onnx_bytes, self.public_key, self.region, c, device_id=f"{c}-ref")
            for c in self.cohorts
        }
        self.fleet = DeviceFleet(
            self.settings.policy,
            self.region,
            self.devices,
            self._contribution,
            self.workdir / f"fleet-{self.region}",
            drop=_split_drop(self.flaky),
            keep_inputs=False,
            layout=LAYOUT_V2.name,
        )
        self.fleet.start()
        self.feed = AdapterFeed(cfg.bootstrap_servers, cfg.t.adapters)
        return self

    def __exit__(self, *exc: object) -> None:
        for closer in (
            self.fleet.close,
            self.feed.close,
            lambda: self.learner.__exit__(None, None, None),
            lambda: self.svc.__exit__(None, None, None),
        ):
            # closing everything matters more than the first error
            with contextlib.suppress(Exception):
                closer()

    # --- devices ---------------------------------------------------------------------------

    def _contribution(self, device_id: str, announce: RoundOpen) -> np.ndarray:
        plan = adapter_plan(announce) or AdapterPlan(cohort=announce.cohort)
        steps = self.cache.train(device_id, self.current_round)
        return build_contribution(
            self.trunk, steps, plan, device_id, adapters=self.weights[announce.cohort]
        )

    def _take_feed(self) -> None:
        # everything the learner published so far: a device must hold the adapters the
        # next plan names before it can evaluate them
        for item in self.feed.poll_all(timeout_s=15):
            cohort = getattr(item, "cohort", None) or getattr(
                getattr(item, "manifest", None), "cohort", None
            )
            if cohort not in self.refs:
                continue
            result = apply(self.refs[cohort], item)
            self.sync[result.outcome.value] += 1
            if isinstance(item, AdapterPlan):
                self.plans[cohort] = item
            elif isinstance(item, SignedAdapter) and result.outcome is not Outcome.REJECTED:
                m = item.manifest
                weights = adapter_from_bytes(verify(item, self.public_key)).weights
                self.weights[cohort][m.version] = weights
                self.events.append(
                    {
                        "round": self.current_round,
                        "region": self.region,
                        "cohort": cohort,
                        "version": m.version,
                        "kind": m.kind,
                        "rollout_fraction": m.rollout_fraction,
                        "parent": m.parent_version,
                    }
                )

    # --- one round -------------------------------------------------------------------------

    def open(self, r: int) -> dict[str, str]:
        """Check in, open a round per cohort; returns ``cohort -> round_id``."""
        self.current_round = r
        for device_id in self.devices:
            # simulate this round's steps now: the simulator's cost must not eat into the
            # SecAgg+ stage deadlines (real devices have their steps already)
            self.cache.train(device_id, r)
        self._take_feed()
        self.fleet.checkin()
        self.svc.app.process_available(timeout_s=30)  # the check-ins must be stored to be sampled
        opened: dict[str, str] = {}
        for c in self.cohorts:
            spec = self.spec(sum(1 for cc in self.devices.values() if cc == c))
            res = self.svc.coordinator.open_round(c, spec, adapter_plan=self.plans[c])
            opened[c] = res.round_id
            if res.status != "open":
                self.refusals.append({"round": r, "cohort": c, "reason": res.reason[:300]})
        return opened

    def spec(self, members: int) -> RoundSpec:
        """The round of a cohort of ``members`` devices: its goal is the devices expected to
        stay, over-selected (the sample is capped by the check-ins: every member is asked)."""
        cfg = self.config
        expected = cfg.dropout if cfg.expected_dropout is None else cfg.expected_dropout
        return RoundSpec(
            layout=LAYOUT_V2.name,
            dim=LAYOUT_V2.dim,
            clip=LAYOUT_V2.clip,
            epsilon=cfg.epsilon_per_round,
            delta=cfg.delta,
            stage_timeout_s=cfg.stage_timeout_s,
            grace_s=cfg.grace_s,
            goal=max(2, math.ceil(members * (1.0 - expected) - 1e-9)),
            overselect=cfg.overselect,
            min_participants=3,
            dropout=expected or None,  # size the graph for the flaky share
        )

    def step(self) -> None:
        self.svc.step(timeout_ms=20)
        self.fleet.pump(timeout_ms=20)

    def done(self, opened: dict[str, str]) -> bool:
        return all(self.svc.coordinator.status(rid) in FINAL for rid in opened.values())

    def finish(self, r: int, opened: dict[str, str]) -> None:
        """Learner catches up, devices take what it shipped, the harness measures."""
        self.svc.coordinator.publish()
        self.learner.process_available(timeout_s=30)
        self.learner.publish_outbox()
        self._take_feed()
        spent = {b.cohort: b.epsilon_spent for b in ledger_report(self.svc.app.engine, self.region)}
        for c in self.cohorts:
            status = self.svc.coordinator.status(opened[c]) or "unknown"
            refused = [x["reason"] for x in self.refusals if (x["round"], x["cohort"]) == (r, c)]
            reason = (
                refused[0]
                if refused
                else _round_detail(self.svc.app.engine, self.region, opened[c])
            )
            held = StepArrays.concat(
                self.cache.heldout(d, r) for d, cc in self.devices.items() if cc == c
            )
            plan = self.plans[c]
            cand = plan.canary_version or plan.shadow_version
            # the cohort's live adapter is the plan's (the reference device may be a canary)
            live = plan.live_version or 0
            rec = RoundRecord(
                round=r,
                region=self.region,
                cohort=c,
                status=status,
                reason=reason if status != "released" else "",
                epsilon_spent=spent.get(c, 0.0),
                live_version=live,
                candidate_version=cand,
                hit1_base=self._hit1(held, None),
                hit1_live=self._hit1(held, self.weights[c].get(live)),
                hit1_candidate=self._hit1(held, self.weights[c].get(cand)) if cand else None,
            )
            rel = _release_row(self.svc.app.engine, self.region, c, opened[c])
            if rel is not None:
                rec.participants, rec.dropped = rel
            self.records.append(rec)

    def _hit1(self, data: StepArrays, weights: LoRAWeights | None) -> float:
        if len(data) == 0:
            return 0.0
        h = self.trunk.features(data)
        return data.hits(self.trunk.logits(data, weights, h))

    def ingest_stats(self) -> dict[str, Any]:
        return self.svc.app.stats.as_dict()


def _split_drop(flaky: set[str]) -> dict[str, set[str]]:
    """Half the flaky devices vanish before sending their masked input (their pairwise masks
    must be rebuilt from shares), half after it (their self masks are removed)."""
    ordered = sorted(flaky)
    return {"masked": set(ordered[::2]), "unmask": set(ordered[1::2])}


def _round_detail(engine: Any, region: str, round_id: str) -> str:
    from sqlalchemy import select

    from ingestion.rounds_db import rounds

    with engine.connect() as conn:
        detail = conn.execute(
            select(rounds.c.detail).where(rounds.c.region == region, rounds.c.round_id == round_id)
        ).scalar()
    return str(detail or "")


def _release_row(engine: Any, region: str, cohort: str, round_id: str) -> tuple[int, int] | None:
    from sqlalchemy import select

    from ingestion.rounds_db import round_releases

    with engine.connect() as conn:
        row = conn.execute(
            select(round_releases.c.participants, round_releases.c.dropped).where(
                round_releases.c.region == region, round_releases.c.round_id == round_id
            )
        ).first()
    return (int(row.participants), int(row.dropped)) if row else None


def run_rounds(loops: list[RegionLoop], config: LoopConfig, on_round: Any = None) -> None:
    """Drive every region's rounds in lockstep (one thread; each region only on its topics)."""
    for r in range(config.rounds):
        opened = {loop.region: loop.open(r) for loop in loops}
        deadline = time.monotonic() + config.round_timeout_s
        while not all(loop.done(opened[loop.region]) for loop in loops):
            if time.monotonic() > deadline:
                break
            for loop in loops:
                loop.step()
        for loop in loops:
            loop.finish(r, opened[loop.region])
        if on_round is not None:
            on_round(r)
