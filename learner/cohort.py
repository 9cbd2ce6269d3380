"""One cohort's learning loop, pure: released aggregates in, adapter actions and plans out.

Per released round (:meth:`CohortLearner.learn_one`), in this order:

1. ignore the release if its round was already applied (idempotent under redelivery);
2. decode it with its :class:`~privacy.contribution.ContributionLayout` and push the stats
   block into the sliding :class:`~learner.window.StatsWindow`; when the newest rounds differ
   from the older ones beyond the DP and sampling noise
   (:meth:`~learner.window.StatsWindow.change_point`: the cohort's habits changed), the
   changed columns of the stats block forget the rounds before the change;
3. read the evaluation blocks *under the plan that was in force for that round*: the shadow
   block feeds the candidate's gate (shadow -> canary), the rollout block feeds either the
   canary gate (canary -> live) or, with no canary running, the
   :class:`~learner.rollout.RegressionMonitor` (live vs previous -> rollback);
4. after a detected change, withdraw the candidate in flight if it was fitted only on rounds
   before the change (it learned the old habit);
5. with no candidate in flight, fit a new one from the window (:func:`learner.fit.fit_adapter`,
   warm-started from live) and ship it to shadow.

Every status change goes through :func:`learner.rollout.transition`. The learner does no I/O;
:meth:`to_state` / :meth:`from_state` checkpoint it exactly (JSON with hex-encoded float64
arrays; River detectors are rebuilt by replaying their bounded history), so a learner killed
between rounds resumes with the same future actions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from river import stats as river_stats
from river import utils as river_utils

from learner.actions import AdapterAction
from learner.fit import (
    FitConfig,
    _net_digest,
    fit_adapter,
    reference_app_gram,
    reference_gram,
)
from learner.gate import PairedEvidence
from learner.model import PersonalizationNet
from learner.rollout import ACTION_KIND, Event, MonitorConfig, RegressionMonitor, transition
from learner.window import RoundStats, StatsWindow
from privacy.adapter_file import LoRAWeights
from privacy.adapter_plan import AdapterPlan, AdapterStatus
from privacy.contribution import ContributionLayout, layout_named
from privacy.errors import LocalProtocolError
from privacy.wire import ReleasedAggregate

S = AdapterStatus
STATE_VERSION = 1


@dataclass(frozen=True)
class LearnerConfig:
    """Policy of one cohort's loop. Margins are in hit@1 units (0.02 = two points)."""

    layout: str = "lora-ss-v2"
    window: int = 6
    max_age_s: float | None = 14 * 86400.0
    decay: float = 0.6
    min_window: int = 1  # rounds in the window before the first fit
    shadow_margin: float = 0.02
    canary_margin: float = 0.03
    confidence: float = 0.95
    min_devices: float = 20.0
    canary_fraction: float = 0.5
    max_shadow_rounds: int = 3
    max_canary_rounds: int = 3
    cooldown_rounds: int = 1  # rounds without a new candidate after a rollback
    fit: FitConfig = field(default_factory=FitConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LearnerConfig:
        d = dict(d)
        d["fit"] = FitConfig(**d["fit"])
        d["monitor"] = MonitorConfig(**d["monitor"])
        return cls(**d)


@dataclass(frozen=True)
class _Version:
    version: int
    status: AdapterStatus
    weights: LoRAWeights
    parent: int | None
    rounds: tuple[int, ...]


def _hex(a: np.ndarray) -> dict:
    return {"shape": list(a.shape), "hex": np.asarray(a, dtype="<f8").tobytes().hex()}


def _unhex(d: dict) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(d["hex"]), dtype="<f8").reshape(d["shape"]).copy()


class CohortLearner:
    """The learning logic of one ``(region, cohort)``; see the module docstring."""

    def __init__(
        self,
        region: str,
        cohort: str,
        base_net: PersonalizationNet,
        config: LearnerConfig = LearnerConfig(),
        *,
        gram: np.ndarray | None = None,
    ) -> None:
        self.region = region
        self.cohort = cohort
        self.config = config
        self._net = base_net
        self._base_digest = _net_digest(base_net)
        self._layout: ContributionLayout = layout_named(config.layout)
        self._rank = base_net.config.rank
        self._scale = base_net.config.scale
        self._gram = reference_gram(base_net) if gram is None else np.asarray(gram, np.float64)
        self._app_gram = reference_app_gram(base_net)
        self._window = StatsWindow(config.window, config.max_age_s, config.decay)
        zero = base_net.config.zero_lora()
        self._versions: dict[int, _Version] = {0: _Version(0, S.LIVE, zero, None, ())}
        self._live = 0
        self._previous: int | None = None
        self._candidate: int | None = None
        self._evidence = PairedEvidence()
        self._monitor = RegressionMonitor(config.monitor)
        self._last_round: int | None = None
        self._next_version = 1
        self._cooldown_until = -1
        self._epsilon_spent = 0.0
        self._recent: dict[str, list[float]] = {"shadow_diff": [], "live_minus_previous": []}

    # --- read-only state -------------------------------------------------------------------

    @property
    def live_version(self) -> int:
        return self._live

    @property
    def candidate_version(self) -> int | None:
        return self._candidate

    @property
    def previous_version(self) -> int | None:
        return self._previous

    @property
    def last_round(self) -> int | None:
        return self._last_round

    @property
    def window_rounds(self) -> list[int]:
        return self._window.rounds

    @property
    def epsilon_spent(self) -> float:
        return self._epsilon_spent

    def status(self, version: int) -> AdapterStatus | None:
        v = self._versions.get(version)
        return v.status if v else None

    def weights(self, version: int) -> LoRAWeights:
        return self._versions[version].weights

    @property
    def rolling_metrics(self) -> dict[str, float]:
        """River rolling means over the last ``window`` rounds of the gate's per-round diffs."""
        out = {}
        for name, values in self._recent.items():
            roll = river_utils.Rolling(river_stats.Mean, window_size=self.config.window)
            for v in values:
                roll.update(v)
            out[f"rolling_{name}"] = float(roll.get() or 0.0)
        return out

    def plan(self) -> AdapterPlan:
        """What devices do next round (a function of the state: call it any number of times)."""
        cand = self._versions.get(self._candidate) if self._candidate is not None else None
        canary = cand is not None and cand.status == S.CANARY
        return AdapterPlan(
            cohort=self.cohort,
            live_version=self._live,
            canary_version=cand.version if canary else None,
            canary_fraction=self.config.canary_fraction if canary else 0.0,
            shadow_version=cand.version if cand is not None and not canary else None,
            previous_version=self._previous,
        )

    # --- learning --------------------------------------------------------------------------

    def learn_one(self, release: ReleasedAggregate) -> list[AdapterAction]:
        """Apply one released round; returns the actions to record/sign/publish, in order."""
        if (release.region, release.cohort) != (self.region, self.cohort):
            raise LocalProtocolError(
                f"release for {release.region}/{release.cohort} sent to learner "
                f"{self.region}/{self.cohort}"
            )
        if release.layout != self._layout.name or release.dim != self._layout.dim:
            raise LocalProtocolError(
                f"release layout {release.layout}/{release.dim} != {self._layout.name}/"
                f"{self._layout.dim}"
            )
        if self._last_round is not None and release.round <= self._last_round:
            return []  # already applied (or older): idempotent
        blocks = self._layout.decode(release.vector())
        lay, sd = self._layout, release.noise_stddev
        n = float(release.participants)
        self._epsilon_spent = release.epsilon_spent
        self._window.learn_one(
            RoundStats(
                release.round,
                release.released_at.timestamp(),
                blocks["stats"],
                release.participants,
                lay.block_noise_stddev(sd, "stats") ** 2,
            )
        )
        change = self._window.change_point(self._gram)
        if change is not None:  # the habit changed: those columns forget the older rounds
            after = sum(1 for r in self._window.rounds if r >= change.round)
            self._window.reset(keep_last=after, columns=change.columns)
        in_force = self.plan()  # the state has not changed since that round was announced
        actions: list[AdapterAction] = []
        rollout_var = lay.block_noise_stddev(sd, "rollout") ** 2
        if in_force.canary_version is not None:
            s1, s2 = blocks["rollout"]
            cand = self._versions[in_force.canary_version]
            n_canary = n * in_force.canary_fraction
            actions += self._canary_step(cand, s1, s2, n_canary, rollout_var)
        elif in_force.previous_version is not None:
            s1, s2 = blocks["rollout"]
            self._push_recent("live_minus_previous", s1 / n if n else 0.0)
            self._monitor.update(s1, s2, n, rollout_var)
            if self._monitor.drift_detected:
                actions += self._rollback(release.round)
        # A candidate fitted only on rounds before a habit change learned the old habit: it
        # makes way for one fitted on the new rounds (a canary's devices go back to live).
        if change is not None and self._candidate is not None:
            cand = self._versions[self._candidate]
            if max(cand.rounds, default=-1) < change.round:
                actions += self._withdraw(
                    cand,
                    Event.SUPERSEDED,
                    metrics={"change_p_value": change.p_value},
                    reason=f"habits changed at round {change.round} "
                    f"(stats columns {list(change.columns)}): refit",
                )
        # The shadow gate runs after the monitor: a rollback withdraws the shadow candidate
        # (it was judged against the adapter being withdrawn) before it could be promoted.
        if in_force.shadow_version is not None and self._candidate == in_force.shadow_version:
            s1, s2 = blocks["shadow"]
            self._push_recent("shadow_diff", s1 / n if n else 0.0)
            cand = self._versions[in_force.shadow_version]
            var = lay.block_noise_stddev(sd, "shadow") ** 2
            actions += self._shadow_step(cand, s1, s2, n, var)
        if (
            self._candidate is None
            and release.round >= self._cooldown_until
            and len(self._window) >= self.config.min_window
        ):
            actions += self._fit_candidate()
        self._last_round = release.round
        return actions

    def propose(self, weights: LoRAWeights, reason: str = "proposed") -> list[AdapterAction]:
        """Put an externally built adapter into shadow (supersedes a shadow candidate)."""
        actions: list[AdapterAction] = []
        if self._candidate is not None:
            cand = self._versions[self._candidate]
            if cand.status == S.CANARY:
                raise LocalProtocolError("a canary is running; propose after it settles")
            actions.append(self._move(cand, Event.SUPERSEDED, reason=f"superseded by {reason}"))
            self._drop(cand.version)
        return actions + self._register(weights, reason=reason)

    # --- steps -----------------------------------------------------------------------------

    def _shadow_step(
        self, cand: _Version, s1: float, s2: float, n: float, var: float
    ) -> list[AdapterAction]:
        c = self.config
        self._evidence = self._evidence.learn_one(s1=s1, s2=s2, n=n, noise_var=var)
        decision = self._evidence.decide(c.shadow_margin, c.confidence, c.min_devices)
        metrics = self._evidence.metrics("shadow", c.confidence)
        if decision == "pass":
            self._evidence = PairedEvidence()
            return [
                self._move(
                    cand,
                    Event.SHADOW_PASS,
                    rollout_fraction=c.canary_fraction,
                    metrics=metrics,
                    reason="shadow: not worse than live by more than the margin",
                )
            ]
        if decision == "fail" or self._evidence.rounds >= c.max_shadow_rounds:
            event = Event.SHADOW_FAIL if decision == "fail" else Event.SHADOW_TIMEOUT
            act = self._move(cand, event, metrics=metrics, reason=f"shadow {decision}")
            self._drop(cand.version)
            return [act]
        return []

    def _canary_step(
        self, cand: _Version, s1: float, s2: float, n: float, var: float
    ) -> list[AdapterAction]:
        c = self.config
        self._evidence = self._evidence.learn_one(s1=s1, s2=s2, n=n, noise_var=var)
        decision = self._evidence.decide(
            c.canary_margin, c.confidence, c.min_devices * c.canary_fraction
        )
        metrics = self._evidence.metrics("canary", c.confidence)
        if decision == "pass":
            self._evidence = PairedEvidence()
            actions = []
            old_live = self._versions[self._live]
            if self._previous is not None:  # the fallback two steps back is no longer kept
                self._drop(self._previous)
            actions.append(
                self._move(old_live, Event.REPLACED, reason=f"replaced by {cand.version}")
            )
            actions.append(
                self._move(
                    cand,
                    Event.CANARY_PASS,
                    rollout_fraction=1.0,
                    metrics=metrics,
                    reason="canary: not worse than live by more than the margin",
                    parent=old_live.version,
                )
            )
            self._previous, self._live, self._candidate = old_live.version, cand.version, None
            self._monitor.reset()
            self._recent["live_minus_previous"] = []
            return actions
        if decision == "fail" or self._evidence.rounds >= c.max_canary_rounds:
            event = Event.CANARY_FAIL if decision == "fail" else Event.CANARY_TIMEOUT
            return self._withdraw(cand, event, metrics=metrics, reason=f"canary {decision}")
        return []

    def _withdraw(
        self, cand: _Version, event: Event, *, metrics: dict[str, float] | None, reason: str
    ) -> list[AdapterAction]:
        """Reject the candidate in flight; canary devices go back to the live adapter."""
        actions = [self._move(cand, event, metrics=metrics, reason=reason)]
        if cand.status == S.CANARY:
            live = self._versions[self._live]
            actions.append(
                self._action(  # canary devices return to live; others ignore it
                    "rollback",
                    live,
                    live.status,
                    parent=cand.version,
                    rollout_fraction=1.0,
                    reason=f"canary {cand.version} withdrawn",
                    weights=True,
                )
            )
        self._drop(cand.version)
        return actions

    def _rollback(self, round_: int) -> list[AdapterAction]:
        assert self._previous is not None
        bad, prev = self._versions[self._live], self._versions[self._previous]
        actions: list[AdapterAction] = []
        if self._candidate is not None:  # it was judged against the bad live
            cand = self._versions[self._candidate]
            actions.append(self._move(cand, Event.SUPERSEDED, reason="live rolled back"))
            self._drop(cand.version)
        metrics = self._monitor.evidence.metrics("live_vs_previous", self.config.confidence)
        self._transition_only(bad, Event.REGRESSION)
        restored = self._transition_only(prev, Event.RESTORE)
        actions.append(
            self._action(
                "rollback",
                restored,
                restored.status,
                parent=bad.version,
                rollout_fraction=1.0,
                metrics=metrics,
                reason=f"regression: {self._monitor.reason}",
                weights=True,
            )
        )
        self._drop(bad.version)
        self._live, self._previous = prev.version, None
        self._monitor.reset()
        self._recent["live_minus_previous"] = []
        self._cooldown_until = round_ + 1 + self.config.cooldown_rounds
        return actions

    def _fit_candidate(self) -> list[AdapterAction]:
        live = self._versions[self._live].weights
        weights = fit_adapter(
            self._window.mean_stats(),
            self._gram,
            rank=self._rank,
            scale=self._scale,
            live=live,
            config=replace(self.config.fit, seed=self.config.fit.seed + self._next_version),
            app_gram=self._app_gram,
        )
        return self._register(weights, reason="fitted on window")

    def _register(self, weights: LoRAWeights, reason: str) -> list[AdapterAction]:
        v = _Version(
            self._next_version, S.CANDIDATE, weights, self._live, tuple(self._window.rounds)
        )
        self._next_version += 1
        self._versions[v.version] = v
        self._candidate = v.version
        self._evidence = PairedEvidence()
        reg = self._action(
            "register", v, S.CANDIDATE, parent=self._live, reason=reason, weights=True
        )
        ship = self._move(v, Event.SHIP, reason="to shadow evaluation")
        return [reg, ship]

    # --- bookkeeping -----------------------------------------------------------------------

    def _transition_only(self, v: _Version, event: Event) -> _Version:
        new = replace(v, status=transition(v.status, event))
        self._versions[v.version] = new
        return new

    def _move(
        self,
        v: _Version,
        event: Event,
        *,
        rollout_fraction: float = 0.0,
        metrics: dict[str, float] | None = None,
        reason: str = "",
        parent: int | None = None,
    ) -> AdapterAction:
        new = self._transition_only(v, event)
        with_weights = event in (Event.SHIP, Event.SHADOW_PASS, Event.CANARY_PASS)
        return self._action(
            ACTION_KIND[event],
            new,
            new.status,
            parent=v.parent if parent is None else parent,
            rollout_fraction=rollout_fraction,
            metrics=metrics,
            reason=reason,
            weights=with_weights,
        )

    def _action(
        self,
        kind: str,
        v: _Version,
        status: AdapterStatus,
        *,
        parent: int | None,
        rollout_fraction: float = 0.0,
        metrics: dict[str, float] | None = None,
        reason: str = "",
        weights: bool = False,
    ) -> AdapterAction:
        m = dict(metrics or {})
        m.update(self.rolling_metrics)
        return AdapterAction(
            kind=kind,  # type: ignore[arg-type]
            region=self.region,
            cohort=self.cohort,
            version=v.version,
            parent_version=parent,
            status=status,
            rollout_fraction=rollout_fraction,
            lora_a=v.weights.A.tolist() if weights else None,
            lora_b=v.weights.B.tolist() if weights else None,
            rounds=list(v.rounds),
            epsilon_spent=self._epsilon_spent,
            metrics=m,
            reason=reason,
        )

    def _drop(self, version: int) -> None:
        """Forget a version's weights: memory holds live, previous and one candidate only."""
        if version != 0:
            self._versions.pop(version, None)
        if self._candidate == version:
            self._candidate = None

    def _push_recent(self, name: str, value: float) -> None:
        vals = self._recent[name]
        vals.append(float(value))
        del vals[: -self.config.window]

    # --- checkpoint ------------------------------------------------------------------------

    def to_state(self) -> bytes:
        """Everything needed to resume exactly (not the base net: pass it to from_state)."""
        state = {
            "state_version": STATE_VERSION,
            "region": self.region,
            "cohort": self.cohort,
            "base_digest": self._base_digest,
            "config": self.config.to_dict(),
            "gram": _hex(self._gram),
            "window": self._window.to_dict(),
            "versions": [
                {
                    "version": v.version,
                    "status": v.status.value,
                    "A": _hex(v.weights.A),
                    "B": _hex(v.weights.B),
                    "parent": v.parent,
                    "rounds": list(v.rounds),
                }
                for v in self._versions.values()
            ],
            "live": self._live,
            "previous": self._previous,
            "candidate": self._candidate,
            "evidence": self._evidence.to_dict(),
            "monitor": self._monitor.to_list(),
            "last_round": self._last_round,
            "next_version": self._next_version,
            "cooldown_until": self._cooldown_until,
            "epsilon_spent": self._epsilon_spent,
            "recent": self._recent,
        }
        return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_state(cls, data: bytes, base_net: PersonalizationNet) -> CohortLearner:
        s = json.loads(data)
        if s.get("state_version") != STATE_VERSION:
            raise LocalProtocolError(f"unsupported learner state version {s.get('state_version')}")
        if s["base_digest"] != _net_digest(base_net):
            raise LocalProtocolError("learner state was built for another base model")
        config = LearnerConfig.from_dict(s["config"])
        self = cls(s["region"], s["cohort"], base_net, config, gram=_unhex(s["gram"]))
        self._window = StatsWindow.from_dict(s["window"])
        self._versions = {
            v["version"]: _Version(
                v["version"],
                AdapterStatus(v["status"]),
                LoRAWeights(_unhex(v["A"]), _unhex(v["B"])),
                v["parent"],
                tuple(v["rounds"]),
            )
            for v in s["versions"]
        }
        self._live, self._previous, self._candidate = s["live"], s["previous"], s["candidate"]
        self._evidence = PairedEvidence.from_dict(s["evidence"])
        self._monitor = RegressionMonitor.from_list(s["monitor"], config.monitor)
        self._last_round = s["last_round"]
        self._next_version = s["next_version"]
        self._cooldown_until = s["cooldown_until"]
        self._epsilon_spent = s["epsilon_spent"]
        self._recent = {k: list(v) for k, v in s["recent"].items()}
        return self

    def state_digest(self) -> str:
        """SHA-256 of :meth:`to_state` (for tests and logs)."""
        return hashlib.sha256(self.to_state()).hexdigest()
