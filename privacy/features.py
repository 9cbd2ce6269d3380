"""Agent episodes to model inputs: the one place that turns what an agent did into features.

Why episodes, not steps: a real Open-AutoGLM task is one ``Launch`` followed by Tap, Type,
Swipe, Back, Wait... and a ``finish``; six steps in seven are inside an app and say nothing
about which app the user wants. What does say it is the *outcome of the task*:

* the app of an **overridden** launch (the user opened another app than the agent's);
* else the app in the **foreground at finish** (what the user ended up using), else the app
  of the last launch that worked;
* a launch that **failed** (Open-AutoGLM refused the name, or the foreground never became the
  app: not installed) is a failure of that app, never a preference for it;
* a ``Take_over`` makes the task **handed_over**: what the user did by hand is not the
  agent's choice, so it is not a preference signal either way.

:func:`episode_of` reads those from the steps (anything shaped like
:class:`edge_client.steps.AgentStep`), :func:`episodes_of` splits a step history into tasks,
:func:`context_of` makes the context embedding from recent tasks (one event per task,
:func:`privacy.embedding.embed_episode`), and :func:`rows_of` turns a task into labelled rows:
a positive row for the app the user used, a negative row per app that failed to launch.
Training, evaluation and the device compute exactly these, so they agree.

:class:`StepArrays` holds rows as arrays over a column universe of apps (by default every
catalogue app): a row's ``available`` mask says which apps the device could suggest.

>>> from datetime import UTC, datetime, timedelta
>>> from types import SimpleNamespace as S
>>> t = datetime(2025, 1, 6, 8, tzinfo=UTC)
>>> steps = [S(action="Launch", app="百度地图", current_app=None, outcome="accepted",
...            instruction="导航回家", timestamp=t),
...          S(action="Launch", app="高德地图", current_app="百度地图", outcome="overridden",
...            instruction="导航回家", timestamp=t + timedelta(seconds=4)),
...          S(action="Tap", app=None, current_app="高德地图", outcome="accepted",
...            instruction="导航回家", timestamp=t + timedelta(seconds=9)),
...          S(action="finish", app=None, current_app="高德地图", outcome="accepted",
...            instruction="导航回家", timestamp=t + timedelta(seconds=20))]
>>> ep = episode_of(steps)
>>> ep.outcome, ep.used_app, ep.failed_apps
('overridden', '高德地图', ())
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Protocol

import numpy as np

from privacy import catalog
from privacy.embedding import combine, embed_app, embed_episode, instruction_vector
from privacy.wire import EMBEDDING_DIM

OUTCOMES: tuple[str, ...] = ("accepted", "overridden", "failed", "handed_over")
PREFERENCE_OUTCOMES = frozenset({"accepted", "overridden"})
NO_APP = "System Home"  # what Open-AutoGLM reports as the foreground app when it knows none

CONTEXT_EPISODES = 12  # tasks the context embedding reads, newest first
CONTEXT_RECENCY = 0.85  # weight per task of age (newest 1.0)
CONTEXT_HALF_LIFE = timedelta(days=3)  # and per unit of time


def instruction_features(text: str) -> np.ndarray:
    """The 128-d instruction embedding (cached, read-only): the model's instruction input."""
    return instruction_vector(text)


def app_features(names: Sequence[str]) -> np.ndarray:
    """``[len(names), 128]`` float32 identity features of ``names`` (the model's app input)."""
    if not names:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return np.stack([embed_app(n) for n in names])


# --- steps -> episodes ----------------------------------------------------------------------


class StepLike(Protocol):
    """What :func:`episode_of` reads of a step (an ``edge_client.steps.AgentStep``)."""

    @property
    def action(self) -> str: ...

    @property
    def app(self) -> str | None: ...

    @property
    def current_app(self) -> str | None: ...

    @property
    def outcome(self) -> str: ...

    @property
    def instruction(self) -> str: ...

    @property
    def timestamp(self) -> datetime: ...


@dataclass(frozen=True)
class Episode:
    """What one task says about the user (see the module docstring for the rules).

    ``used_app`` is a canonical catalogue name where the app is known, else the name as the
    agent wrote it; None when no app was used. ``hour`` is the local hour of the first step.
    """

    instruction: str
    outcome: str
    used_app: str | None
    failed_apps: tuple[str, ...]
    timestamp: datetime
    hour: int
    steps: int

    @property
    def is_preference(self) -> bool:
        """Whether the task says which app the user prefers (accepted or overridden)."""
        return self.outcome in PREFERENCE_OUTCOMES and self.used_app is not None

    @property
    def needs_no_app(self) -> bool:
        """Whether the agent did the task without any app (answered "你好" at once): the
        model should not be sure of any app for such a request."""
        return self.outcome == "accepted" and self.used_app is None

    def embedding(self) -> np.ndarray:
        """This task as one context event (:func:`privacy.embedding.embed_episode`)."""
        return self._embedding

    @cached_property
    def _embedding(self) -> np.ndarray:
        v = embed_episode(
            self.instruction, self.used_app, self.outcome, self.hour, self.failed_apps
        )
        v.setflags(write=False)
        return v


def _name(raw: str | None) -> str | None:
    if not raw or raw == NO_APP:
        return None
    return catalog.resolve(raw) or raw


_BROKEN_FLAGS = frozenset({"parse_failure", "model_error"})


def _broken(step: StepLike) -> bool:
    """A ``finish`` the agent made of an unparsable reply or a model error."""
    return step.action != "finish" or bool(_BROKEN_FLAGS & set(getattr(step, "flags", ()) or ()))


def episode_of(steps: Sequence[StepLike]) -> Episode:
    """The :class:`Episode` of one task's steps, in order (the first step's instruction)."""
    if not steps:
        raise ValueError("an episode has at least one step")
    launched: str | None = None
    failed: list[str] = []
    overridden = handed = False
    final: str | None = None
    for i, s in enumerate(steps):
        if s.action == "Launch":
            name = _name(s.app)
            if name is None:
                continue
            nxt = steps[i + 1] if i + 1 < len(steps) else None
            # Open-AutoGLM reports a launch of any name in its table as done, installed or not:
            # the next step's foreground app says whether the app really came up.
            shown = nxt.current_app if nxt is not None else None
            never_came_up = (
                shown is not None
                and not catalog.same_app(shown, name)
                and not (nxt is not None and nxt.action == "Launch" and nxt.outcome == "overridden")
            )
            if (
                s.outcome == "failed"
                and catalog.resolve(s.app)
                and not catalog.is_launchable(s.app or "")
            ):
                continue  # the agent misspelt a known app ("哔哩哔哩"): not the app's failure
            if s.outcome == "failed" or never_came_up:
                if name not in failed:
                    failed.append(name)
                continue
            launched = name
            if s.outcome == "overridden":
                overridden = True
        elif s.action == "Take_over" or s.outcome == "handed_over":
            handed = True
        if s.action == "finish":
            final = _name(s.current_app)
    used = final or launched
    tried = any(s.action == "Launch" for s in steps)
    if overridden:
        outcome = "overridden"
    elif handed:
        outcome = "handed_over"
    elif used is None and (tried or len(steps) > 1 or _broken(steps[-1])):
        outcome = "failed"
    else:  # an app was used, or the agent answered at once without one ("你好")
        outcome = "accepted"
    first = steps[0]
    failed_apps = tuple(a for a in failed if a != used)
    return Episode(
        instruction=first.instruction,
        outcome=outcome,
        used_app=used,
        failed_apps=failed_apps,
        timestamp=first.timestamp,
        hour=first.timestamp.hour,
        steps=len(steps),
    )


def episodes_of(steps: Iterable[StepLike]) -> list[Episode]:
    """Split a step history (oldest first) into tasks and read each one: a task ends at a
    ``finish`` step or where the instruction changes."""
    out: list[Episode] = []
    current: list[StepLike] = []
    for s in steps:
        if current and s.instruction != current[0].instruction:
            out.append(episode_of(current))
            current = []
        current.append(s)
        if s.action == "finish":
            out.append(episode_of(current))
            current = []
    if current:
        out.append(episode_of(current))
    return out


def context_of(episodes: Sequence[Episode], now: datetime | None = None) -> np.ndarray:
    """The context embedding before the next task: the newest :data:`CONTEXT_EPISODES`
    tasks (oldest first in ``episodes``), each weighted ``CONTEXT_RECENCY**age`` and halved
    every :data:`CONTEXT_HALF_LIFE`; unit norm, zeros with no history."""
    recent = list(episodes[-CONTEXT_EPISODES:])
    if not recent:
        return np.zeros(EMBEDDING_DIM, dtype=np.float32)
    now = now or recent[-1].timestamp
    n = len(recent)
    weights = []
    for k, ep in enumerate(recent):
        age = max((now - ep.timestamp) / CONTEXT_HALF_LIFE, 0.0)
        weights.append(CONTEXT_RECENCY ** (n - 1 - k) * 0.5**age)
    return combine((ep.embedding() for ep in recent), weights)


def context_from_steps(steps: Iterable[StepLike], now: datetime | None = None) -> np.ndarray:
    """:func:`context_of` the tasks in a step history (e.g. a context store's window)."""
    return context_of(episodes_of(steps), now)


# --- episodes -> labelled rows --------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Row:
    """One labelled decision: for ``instruction`` in ``context``, the user used ``app``
    (``polarity`` +1), ``app`` failed to launch (``polarity`` -1), or the task needed no app
    at all (``polarity`` 0, ``app`` empty: every candidate equally unlikely); ``candidates``
    are the apps the device could have suggested."""

    instruction: str
    context: np.ndarray = field(repr=False)
    app: str
    polarity: float
    candidates: tuple[str, ...]


def rows_of(episode: Episode, context: np.ndarray, candidates: Sequence[str]) -> list[Row]:
    """The rows a task yields: its used app if it is a preference (or a no-app row when the
    agent needed none), each failed app. Apps outside ``candidates`` yield nothing (the
    device could not have suggested them)."""
    cands = tuple(candidates)
    allowed = set(cands)
    rows: list[Row] = []
    if episode.is_preference and episode.used_app in allowed:
        rows.append(Row(episode.instruction, context, episode.used_app, 1.0, cands))  # type: ignore[arg-type]
    elif episode.needs_no_app and cands:
        rows.append(Row(episode.instruction, context, "", 0.0, cands))
    for app in episode.failed_apps:
        if app in allowed:
            rows.append(Row(episode.instruction, context, app, -1.0, cands))
    return rows


class HasRows(Protocol):
    @property
    def rows(self) -> Sequence[Row]: ...


@dataclass(frozen=True)
class StepArrays:
    """Rows as arrays over the column universe ``apps``:

    * ``instruction``, ``context``: float32 ``[N, 128]``;
    * ``labels``: int64 ``[N]``, the row's app as a column of ``apps`` (0, unused, for a
      no-app row);
    * ``polarity``: float32 ``[N]``, +1 (used), -1 (failed to launch) or 0 (no app needed);
    * ``available``: bool ``[N, len(apps)]``, the apps the row's device could suggest.
    """

    instruction: np.ndarray
    context: np.ndarray
    labels: np.ndarray
    polarity: np.ndarray
    available: np.ndarray
    apps: tuple[str, ...] = catalog.APP_NAMES

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def from_rows(cls, rows: Iterable[Row], apps: Sequence[str] = catalog.APP_NAMES) -> StepArrays:
        """Rows whose app is not a column of ``apps`` are left out."""
        apps = tuple(apps)
        col = {a: i for i, a in enumerate(apps)}
        kept = [r for r in rows if r.app in col or r.polarity == 0]
        if not kept:
            return cls.empty(apps)
        masks: dict[tuple[str, ...], np.ndarray] = {}
        available = np.zeros((len(kept), len(apps)), dtype=bool)
        for i, r in enumerate(kept):
            m = masks.get(r.candidates)
            if m is None:
                m = np.zeros(len(apps), dtype=bool)
                m[[col[a] for a in r.candidates if a in col]] = True
                masks[r.candidates] = m
            available[i] = m
        return cls(
            instruction=np.stack([instruction_features(r.instruction) for r in kept]),
            context=np.stack([np.asarray(r.context, dtype=np.float32) for r in kept]),
            labels=np.array([col.get(r.app, 0) for r in kept], dtype=np.int64),
            polarity=np.array([r.polarity for r in kept], dtype=np.float32),
            available=available,
            apps=apps,
        )

    @classmethod
    def from_episodes(
        cls, episodes: Iterable[HasRows], apps: Sequence[str] = catalog.APP_NAMES
    ) -> StepArrays:
        """The rows of objects that carry them (simulated episodes)."""
        return cls.from_rows((r for e in episodes for r in e.rows), apps)

    @classmethod
    def empty(cls, apps: Sequence[str] = catalog.APP_NAMES) -> StepArrays:
        apps = tuple(apps)
        z = np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        return cls(
            z,
            z.copy(),
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.float32),
            np.zeros((0, len(apps)), dtype=bool),
            apps,
        )

    @classmethod
    def concat(cls, parts: Iterable[StepArrays]) -> StepArrays:
        parts = list(parts)
        if not parts:
            return cls.empty()
        apps = parts[0].apps
        if any(p.apps != apps for p in parts):
            raise ValueError("StepArrays over different app columns")
        return cls(
            instruction=np.concatenate([p.instruction for p in parts]),
            context=np.concatenate([p.context for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            polarity=np.concatenate([p.polarity for p in parts]),
            available=np.concatenate([p.available for p in parts]),
            apps=apps,
        )

    def subset(self, mask: np.ndarray) -> StepArrays:
        """The rows where ``mask`` is true."""
        m = np.asarray(mask, dtype=bool)
        return StepArrays(
            self.instruction[m],
            self.context[m],
            self.labels[m],
            self.polarity[m],
            self.available[m],
            self.apps,
        )

    def positives(self) -> StepArrays:
        """The preference rows only (what hit@k is measured on)."""
        return self.subset(self.polarity > 0)

    def app_features(self) -> np.ndarray:
        """``[len(apps), 128]``: the app input of the model for these columns."""
        return app_features(self.apps)

    def masked(self, scores: np.ndarray) -> np.ndarray:
        """``scores`` with the apps a row could not suggest set to -inf."""
        return np.where(self.available, scores, -np.inf)

    def hits(self, scores: np.ndarray, k: int = 1) -> float:
        """hit@k over the preference rows, each ranked among its available apps."""
        pos = self.polarity > 0
        return hit_at_k(self.masked(scores)[pos], self.labels[pos], k)


def hit_at_k(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Share of rows whose label is among the ``k`` highest scores (0.0 for no rows)."""
    if len(labels) == 0:
        return 0.0
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def softmax_masked(logits: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the available apps (0 elsewhere), float64."""
    z = np.where(available, logits.astype(np.float64), -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def row_gradient(
    probs: np.ndarray,
    labels: np.ndarray,
    polarity: np.ndarray,
    available: np.ndarray | None = None,
) -> np.ndarray:
    """``-dL/dlogits`` per row (``[N, apps]``): for a used app the cross-entropy's
    ``e_y - p``; for an app that failed to launch, that of ``-log(1 - p_y)``, i.e.
    ``-(p_y / (1 - p_y)) (e_y - p)``: it pushes the failed app down and the rest up; for a
    task that needed no app, that of the cross-entropy to the uniform over the available
    apps, ``u - p``."""
    n = len(labels)
    g = -probs.copy()
    g[np.arange(n), labels] += 1.0
    py = probs[np.arange(n), labels]
    neg = polarity < 0
    if neg.any():
        factor = np.clip(py[neg] / np.maximum(1.0 - py[neg], 1e-6), 0.0, 50.0)
        g[neg] *= -factor[:, None]
    flat = polarity == 0
    if flat.any():
        avail = np.ones_like(probs, dtype=bool) if available is None else available
        u = avail[flat] / np.maximum(avail[flat].sum(axis=1, keepdims=True), 1)
        g[flat] = u - probs[flat]
    return g


__all__ = [
    "CONTEXT_EPISODES",
    "OUTCOMES",
    "PREFERENCE_OUTCOMES",
    "Episode",
    "Row",
    "StepArrays",
    "app_features",
    "context_from_steps",
    "context_of",
    "episode_of",
    "episodes_of",
    "hit_at_k",
    "instruction_features",
    "row_gradient",
    "rows_of",
    "softmax_masked",
]
