"""The adapter lifecycle as data, and the detector that rolls a live adapter back.

Transitions are a table keyed by ``(status, event)`` (as in h11's ``_state.py``): the learner
only moves a version through :func:`transition`, tests walk the table, and docs/learning.md
prints it. Anything not in the table is a :class:`~privacy.errors.LocalProtocolError`.

::

    candidate --ship--> shadow --shadow_pass--> canary --canary_pass--> live --replaced--> retired
                           |                      |                      |                  |
              shadow_fail/timeout/superseded   canary_fail/timeout/  regression          restore
                                                  superseded
                           v                      v                      v                  v
                        rejected               rejected            rolled_back            live

:class:`RegressionMonitor` watches the live adapter against the previous (fallback) one
through the ``rollout`` block: per round, ``d = hit(live) - hit(previous)`` with its standard
error. It fires on either a significant drop (``d + z SE < -margin`` in one round, or over the
rounds since promotion) or a River :class:`~river.drift.PageHinkley` alarm on the series of
``d`` (a slower, sustained decline that no single round shows).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from river.drift import PageHinkley

from learner.gate import PairedEvidence
from privacy.adapter_plan import AdapterStatus
from privacy.errors import LocalProtocolError

S = AdapterStatus


class Event(StrEnum):
    SHIP = "ship"
    SHADOW_PASS = "shadow_pass"
    SHADOW_FAIL = "shadow_fail"
    SHADOW_TIMEOUT = "shadow_timeout"
    SUPERSEDED = "superseded"
    CANARY_PASS = "canary_pass"
    CANARY_FAIL = "canary_fail"
    CANARY_TIMEOUT = "canary_timeout"
    REPLACED = "replaced"
    REGRESSION = "regression"
    RESTORE = "restore"


TRANSITIONS: dict[tuple[AdapterStatus, Event], AdapterStatus] = {
    (S.CANDIDATE, Event.SHIP): S.SHADOW,
    (S.SHADOW, Event.SHADOW_PASS): S.CANARY,
    (S.SHADOW, Event.SHADOW_FAIL): S.REJECTED,
    (S.SHADOW, Event.SHADOW_TIMEOUT): S.REJECTED,
    (S.SHADOW, Event.SUPERSEDED): S.REJECTED,
    (S.CANARY, Event.CANARY_PASS): S.LIVE,
    (S.CANARY, Event.CANARY_FAIL): S.REJECTED,
    (S.CANARY, Event.CANARY_TIMEOUT): S.REJECTED,
    (S.CANARY, Event.SUPERSEDED): S.REJECTED,
    (S.LIVE, Event.REPLACED): S.RETIRED,
    (S.LIVE, Event.REGRESSION): S.ROLLED_BACK,
    (S.RETIRED, Event.RESTORE): S.LIVE,
}

# Which AdapterAction kind records each transition.
ACTION_KIND: dict[Event, str] = {
    Event.SHIP: "ship",
    Event.SHADOW_PASS: "promote",
    Event.CANARY_PASS: "promote",
    Event.SHADOW_FAIL: "reject",
    Event.SHADOW_TIMEOUT: "reject",
    Event.SUPERSEDED: "reject",
    Event.CANARY_FAIL: "reject",
    Event.CANARY_TIMEOUT: "reject",
    Event.REPLACED: "retire",
    Event.REGRESSION: "rollback",
    Event.RESTORE: "rollback",
}


def transition(status: AdapterStatus, event: Event) -> AdapterStatus:
    """The next status, or :class:`LocalProtocolError` if the table has no such edge."""
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise LocalProtocolError(f"no transition from {status.value} on {event.value}") from None


def mermaid() -> str:
    """The table as a Mermaid state diagram (what docs/learning.md shows)."""
    lines = ["stateDiagram-v2"]
    lines += [f"    {a.value} --> {b.value}: {e.value}" for (a, e), b in TRANSITIONS.items()]
    return "\n".join(lines)


@dataclass(frozen=True)
class MonitorConfig:
    margin: float = 0.03  # a live adapter may trail its fallback by this much
    confidence: float = 0.95
    ph_threshold: float = 0.12  # Page-Hinkley alarm level, in hit-rate units summed over rounds
    ph_delta: float = 0.01  # tolerated drift per round
    ph_min_instances: int = 2


class RegressionMonitor:
    """Live-vs-previous watcher. ``update`` per round; read ``drift_detected`` (River's verbs)."""

    def __init__(self, config: MonitorConfig = MonitorConfig()) -> None:
        self.config = config
        self._history: list[tuple[float, float, float, float]] = []
        self._reset_state()

    def _reset_state(self) -> None:
        c = self.config
        self._ph = PageHinkley(
            min_instances=c.ph_min_instances,
            delta=c.ph_delta,
            threshold=c.ph_threshold,
            mode="down",
        )
        self._total = PairedEvidence()
        self._last = PairedEvidence()
        self._detected = False
        self._reason = ""

    @property
    def drift_detected(self) -> bool:
        return self._detected

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def evidence(self) -> PairedEvidence:
        return self._total

    def update(self, s1: float, s2: float, n: float, noise_var: float) -> None:
        self._history.append((s1, s2, n, noise_var))
        self._apply(s1, s2, n, noise_var)

    def _apply(self, s1: float, s2: float, n: float, noise_var: float) -> None:
        c = self.config
        self._last = PairedEvidence().learn_one(s1=s1, s2=s2, n=n, noise_var=noise_var)
        self._total = self._total.learn_one(s1=s1, s2=s2, n=n, noise_var=noise_var)
        self._ph.update(self._last.mean)
        if self._last.upper(c.confidence) < -c.margin:
            self._detected, self._reason = True, "significant drop this round"
        elif self._total.upper(c.confidence) < -c.margin:
            self._detected, self._reason = True, "significant drop since promotion"
        elif self._ph.drift_detected:
            self._detected, self._reason = True, "page-hinkley alarm"

    def reset(self) -> None:
        """Start over (a new live adapter, or after a rollback)."""
        self._history = []
        self._reset_state()

    def to_list(self) -> list[list[float]]:
        return [list(h) for h in self._history]

    @classmethod
    def from_list(cls, history: list[list[float]], config: MonitorConfig) -> RegressionMonitor:
        """Replay the rounds since the last reset: River's state is rebuilt exactly."""
        m = cls(config)
        for s1, s2, n, nv in history:
            m.update(s1, s2, n, nv)
        return m
