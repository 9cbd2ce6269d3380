"""On-device personal memory: which app this user opens for which kind of task.

Why a memory beside the model: the adapter learns from a whole cohort, in rounds, under
differential privacy, so it moves slowly and never for one person alone. The memory is this
user's own short record, kept on the phone and never sent: after *one* accepted run with
高德地图 for a navigation task, the next navigation task is hinted with 高德地图. Where the
memory has nothing to say, the adapter's scores fill in (:class:`edge_client.hint.PreferenceHint`).

What it learns from, per intent (:func:`edge_client.intents.intent_of` of the task), from
``Launch`` steps only:

============== ======= ==============================================================
launch outcome weight  why
============== ======= ==============================================================
``accepted``   +1      the agent opened it and the user let it stand
``overridden`` +2      the user opened it themselves instead (the strongest signal)
``failed``     -1      it could not be launched: a suggestion that fails is no preference
refused        -1      an accepted launch the user then overrode in the same task
============== ======= ==============================================================

``handed_over`` and every other action teach it nothing. Each piece of evidence decays with
its age, ``0.5 ** (age / half_life)``, and only the newest ``max_events`` are kept, so the
memory follows the user's habits as they change. An app's score for an intent is its
habit, its decayed positive evidence over all the positive evidence of that intent, plus its
own negative evidence, plus a small prior, ``h_a = p_a / (sum_b p_b + n_a + prior)``, blended
with the user's latest choice: ``0.4 * h_a + 0.6 * d * [a is the app of the newest positive
evidence, not failed since]``, ``d`` that evidence's decay. Why the latest choice leads: a user who switches from 百度地图
to 高德地图 expects the next task to follow the switch, not weeks of old habit; one run
switches the hint, the habit share says how settled it is. One fresh acceptance scores 0.92,
and an app that only ever failed scores 0.

What is stored: the timestamp, the intent, the app and the kind of evidence. Never the task
text (it is used, in memory, only to pair an override with the launch it overrides).

All SQL is in :class:`MemoryStore`, one class, which also seals the file at rest like the
context store (:func:`edge_client.sealing.open_sealed`: rows AES-GCM sealed, intent and app
as keyed tags) and keeps evidence for ``retention.memory`` (90 days by default).

>>> from datetime import UTC, datetime
>>> from edge_client.steps import AgentStep
>>> t = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
>>> memory = PersonalMemory(":memory:")
>>> memory.learn_one(AgentStep(action="Launch", app="高德地图", instruction="打开导航去公司",
...                            outcome="accepted", timestamp=t))
>>> memory.scores("导航回家", t)
{'高德地图': 0.92}
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from edge_client.intents import intent_of
from edge_client.retention import DEFAULT_RETENTION, RetentionPolicy
from edge_client.sealing import Keys, open_sealed, pack, unpack
from edge_client.steps import AgentStep
from privacy import catalog
from privacy.wire import utcnow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    ts FLOAT NOT NULL,  -- POSIX seconds of the step
    stored_at FLOAT NOT NULL,  -- POSIX seconds when it was learned, for retention
    intent_tag BLOB NOT NULL,  -- keyed tag of the intent, for lookups
    app_tag BLOB NOT NULL,  -- keyed tag of the canonical app name, for forget-by-app
    key_id INTEGER NOT NULL,  -- its data key (one per day learned)
    sealed BLOB NOT NULL  -- AES-GCM: intent, app, kind
);
CREATE INDEX IF NOT EXISTS ix_evidence_intent ON evidence (intent_tag, ts);
CREATE INDEX IF NOT EXISTS ix_evidence_stored_at ON evidence (stored_at);
CREATE INDEX IF NOT EXISTS ix_evidence_key_id ON evidence (key_id);
"""
_USED_KEYS = (("evidence", "key_id"),)

WEIGHTS: dict[str, float] = {"accepted": 1.0, "overridden": 2.0, "failed": -1.0, "refused": -1.0}
"""Evidence per kind (see the module docstring)."""


class Evidence(NamedTuple):
    """One remembered launch."""

    id: int
    timestamp: datetime
    intent: str
    app: str
    kind: str
    weight: float


LATEST_WEIGHT = 0.6  # share of a score that goes to the user's most recent choice


def canonical_app(name: str) -> str:
    """The catalogue's name for any spelling of an app ("WeChat" -> "微信"); unknown names
    stay as written."""
    resolve = getattr(catalog, "resolve", None)
    found = resolve(name) if resolve is not None else None
    return found or name


def app_key(name: str) -> str:
    """The spelling-insensitive key of an app name: "Google Maps", "GoogleMaps" and
    "google-maps" are one app (Open-AutoGLM reports whichever its table lists first).

    >>> app_key("Google-Maps") == app_key("googlemaps"), app_key("ＱＱ音乐") == app_key("qq音乐")
    (True, True)
    """
    return re.sub(r"[\s\-_.'’:：·]+", "", unicodedata.normalize("NFKC", name)).casefold()


def same_app(a: str, b: str) -> bool:
    """Whether two names are one app: one spelling of the other, or the catalogue's."""
    return app_key(a) == app_key(b) or canonical_app(a) == canonical_app(b)


class MemoryStore:
    """The SQLite file behind :class:`PersonalMemory`: every statement it runs is here.

    Sealed at rest (:mod:`edge_client.sealing`): intent, app and kind are one AES-GCM value
    per row; the intent and the app are also keyed tags, for lookups. In clear: row id, step
    timestamp, time learned, data key id. Retention (``retention.memory``, counted from when
    a row was learned) is enforced on open and every ``retention.check_every`` additions.

    ``":memory:"`` keeps everything in RAM (tests, doctests). Thread-safe: one connection,
    every use under one lock.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        keys: Keys | None = None,
        retention: RetentionPolicy = DEFAULT_RETENTION,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.path = path
        self.retention = retention
        self._clock = clock
        self._lock = threading.Lock()
        self._conn, self._vault, _ = open_sealed(path, _SCHEMA, store="memory", keys=keys)
        self._writes = 0
        self.expire(vacuum=True)

    def _seal(self, row_id: int, intent: str, app: str, kind: str, stored_at: float) -> None:
        key_id, blob = self._vault.seal(
            "evidence",
            row_id,
            pack(intent.encode(), app.encode(), kind.encode()),
            scope=_day(stored_at),
        )
        self._conn.execute(
            "UPDATE evidence SET key_id = ?, sealed = ? WHERE id = ?", (key_id, blob, row_id)
        )

    def _open(self, row: tuple[Any, ...]) -> Evidence:
        id_, ts, key_id, blob = row
        intent, app, kind = unpack(self._vault.open("evidence", int(id_), int(key_id), blob))
        assert intent is not None and app is not None and kind is not None
        k = kind.decode()
        return Evidence(
            int(id_), datetime.fromtimestamp(ts, UTC), intent.decode(), app.decode(), k, WEIGHTS[k]
        )

    def add(self, ts: datetime, intent: str, app: str, kind: str) -> int:
        WEIGHTS[kind]  # KeyError for an unknown kind, before anything is written
        stored_at = self._clock().timestamp()
        with self._lock:
            with self._vault.write() as conn:
                cur = conn.execute(
                    "INSERT INTO evidence (ts, stored_at, intent_tag, app_tag, key_id, sealed) "
                    "VALUES (?, ?, ?, ?, 0, x'')",
                    (ts.timestamp(), stored_at, self._vault.tag(intent), self._vault.tag(app)),
                )
                assert cur.lastrowid is not None
                row_id = int(cur.lastrowid)
                self._seal(row_id, intent, app, kind, stored_at)
            self._writes += 1
            due = self._writes % self.retention.check_every == 0
        if due:
            self.expire()
        return row_id

    def relabel(self, id: int, kind: str) -> None:
        WEIGHTS[kind]
        with self._lock, self._vault.write() as conn:
            row = conn.execute(
                "SELECT id, ts, key_id, sealed, stored_at FROM evidence WHERE id = ?", (id,)
            ).fetchone()
            if row is not None:
                e = self._open(row[:4])
                self._seal(id, e.intent, e.app, kind, float(row[4]))

    def rows(self, intent: str | None = None, until: datetime | None = None) -> list[Evidence]:
        sql = "SELECT id, ts, key_id, sealed FROM evidence WHERE 1 = 1"
        params: list[object] = []
        if intent is not None:
            sql += " AND intent_tag = ?"
            params.append(self._vault.tag(intent))
        if until is not None:
            sql += " AND ts <= ?"
            params.append(until.timestamp())
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY ts, id", params).fetchall()
            return [self._open(r) for r in rows]

    def delete(
        self,
        *,
        apps: tuple[str, ...] | None = None,
        intent: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """Delete what matches every filter given (all of it when none is); returns how many.
        Gone from the file too: overwritten, unused data keys shredded, the WAL truncated."""
        sql = "DELETE FROM evidence WHERE 1 = 1"
        params: list[object] = []
        if apps is not None:
            sql += f" AND app_tag IN ({', '.join('?' * len(apps))})"
            params.extend(self._vault.tag(a) for a in apps)
        if intent is not None:
            sql += " AND intent_tag = ?"
            params.append(self._vault.tag(intent))
        if since is not None:
            sql += " AND ts >= ?"
            params.append(since.timestamp())
        if until is not None:
            sql += " AND ts < ?"
            params.append(until.timestamp())
        with self._lock:
            with self._vault.write() as conn:
                gone = int(conn.execute(sql, params).rowcount)
                self._vault.shred_unused(_USED_KEYS)
            self._vault.purge()
        return gone

    def trim(self, keep: int, older_than: datetime) -> None:
        """Keep the newest ``keep`` rows, and none stamped before ``older_than``."""
        with self._lock, self._vault.write() as conn:
            conn.execute("DELETE FROM evidence WHERE ts < ?", (older_than.timestamp(),))
            conn.execute(
                "DELETE FROM evidence WHERE id NOT IN ("
                "SELECT id FROM evidence ORDER BY ts DESC, id DESC LIMIT ?)",
                (keep,),
            )

    def expire(self, *, vacuum: bool = False) -> int:
        """Delete the evidence learned longer ago than ``retention.memory``, shred unused data
        keys, truncate the WAL; returns how many rows went."""
        cutoff = (self._clock() - self.retention.memory).timestamp()
        with self._lock:
            with self._vault.write() as conn:
                gone = int(
                    conn.execute("DELETE FROM evidence WHERE stored_at < ?", (cutoff,)).rowcount
                )
                shredded = self._vault.shred_unused(_USED_KEYS)
            if gone or shredded:
                self._vault.purge(vacuum=vacuum)
        return gone

    def apps(self) -> list[str]:
        return sorted({e.app for e in self.rows()})

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM evidence").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _day(ts: float) -> str:
    """The data-key scope of a row learned at ``ts``: its UTC day."""
    return "day:" + datetime.fromtimestamp(ts, UTC).date().isoformat()


class PersonalMemory:
    """This user's launch preferences per intent, learned on the device (see the module
    docstring for what is learned and how it is scored).

    Parameters
    ----------
    path
        The SQLite file (``<data_dir>/memory.db`` on a device), or ``":memory:"``.
    half_life
        Age at which a piece of evidence counts half.
    max_events
        How many pieces of evidence are kept (newest first); evidence older than ten
        half-lives is dropped too (it weighs under 0.1%).
    prior
        Pseudo-evidence against every app: what keeps one old acceptance from sounding sure.
    keys, retention
        The device's key provider and retention policy (see :class:`MemoryStore`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        half_life: timedelta = timedelta(days=14),
        max_events: int = 500,
        prior: float = 0.25,
        keys: Keys | None = None,
        retention: RetentionPolicy = DEFAULT_RETENTION,
    ) -> None:
        if half_life <= timedelta(0):
            raise ValueError("half_life must be positive")
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        if prior <= 0:
            raise ValueError("prior must be positive")
        self.path = path
        self.half_life = half_life
        self.max_events = max_events
        self.prior = prior
        self._store = MemoryStore(path, keys=keys, retention=retention)
        self._lock = threading.Lock()
        # task text -> (evidence id, app) of the last accepted launch of that task, kept in
        # RAM only, so an override can mark the launch it overrode as refused.
        self._open: dict[str, tuple[int, str]] = {}

    def __repr__(self) -> str:
        return (
            f"PersonalMemory(path={str(self.path)!r}, half_life={self.half_life!r}, "
            f"max_events={self.max_events}, prior={self.prior})"
        )

    def __len__(self) -> int:
        return len(self._store)

    # --- learning ----------------------------------------------------------------------------

    def learn_one(self, step: AgentStep) -> None:
        """Learn from one recorded step (only ``Launch`` steps of a task with an intent teach
        anything; see the module docstring)."""
        if step.action != "Launch" or step.app is None or step.outcome not in WEIGHTS:
            return
        intent = intent_of(step.instruction)
        if intent is None:
            return
        app = canonical_app(step.app)
        with self._lock:
            if step.outcome == "overridden":
                earlier = self._open.pop(step.instruction, None)
                if earlier is not None and earlier[1] != app:
                    self._store.relabel(earlier[0], "refused")
            event = self._store.add(step.timestamp, intent, app, step.outcome)
            if step.outcome == "accepted":
                self._open[step.instruction] = (event, app)
                if len(self._open) > 64:  # only the last few tasks can still be overridden
                    self._open.pop(next(iter(self._open)))
            self._store.trim(self.max_events, step.timestamp - 10 * self.half_life)

    # --- reading -----------------------------------------------------------------------------

    def scores(self, instruction: str, now: datetime | None = None) -> dict[str, float]:
        """App -> this user's preference in [0, 1) for the intent of ``instruction``, best
        first; ``{}`` when the task has no intent or the memory has nothing for it."""
        intent = intent_of(instruction)
        if intent is None:
            return {}
        return self._scores(intent, now or utcnow())

    def preferences(self, now: datetime | None = None) -> dict[str, dict[str, float]]:
        """Intent -> (app -> score), for every intent the memory has evidence for."""
        now = now or utcnow()
        intents = sorted({e.intent for e in self._store.rows(until=now)})
        return {intent: self._scores(intent, now) for intent in intents}

    def _scores(self, intent: str, now: datetime) -> dict[str, float]:
        pos: dict[str, float] = {}
        neg: dict[str, float] = {}
        # the app of the newest positive evidence (unless it failed since), and its decay
        latest: tuple[str, float] | None = None
        for e in sorted(self._store.rows(intent, until=now), key=lambda e: (e.timestamp, e.id)):
            decay = self._decay(e.timestamp, now)
            w = e.weight * decay
            pos.setdefault(e.app, 0.0)
            neg.setdefault(e.app, 0.0)
            if w > 0:
                pos[e.app] += w
                latest = (e.app, decay)
            else:
                neg[e.app] -= w
                latest = None if latest is not None and latest[0] == e.app else latest
        total = sum(pos.values())
        habit = {app: pos[app] / (total + neg[app] + self.prior) for app in pos}
        out = {app: (1 - LATEST_WEIGHT) * h for app, h in habit.items()}
        if latest is not None:  # the user's latest choice leads: one run switches the hint
            out[latest[0]] += LATEST_WEIGHT * latest[1]
        return {app: round(score, 6) for app, score in sorted(out.items(), key=lambda kv: -kv[1])}

    def _decay(self, timestamp: datetime, now: datetime) -> float:
        return float(0.5 ** max((now - timestamp) / self.half_life, 0.0))

    def evidence(self) -> list[Evidence]:
        """Everything remembered, oldest first."""
        return self._store.rows()

    # --- user controls -----------------------------------------------------------------------

    def forget(
        self,
        app: str | None = None,
        intent: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """Delete the evidence matching every filter given (everything when none is):
        one app (any spelling), one intent, stamped in ``[since, until)``. Returns how many
        pieces were deleted."""
        with self._lock:
            apps = None
            if app is not None:
                apps = tuple(a for a in self._store.apps() if same_app(a, app))
                if not apps:
                    return 0
            self._open.clear()
            return self._store.delete(apps=apps, intent=intent, since=since, until=until)

    def export(self, now: datetime | None = None) -> dict[str, Any]:
        """Everything remembered and what it adds up to, as plain JSON-able data."""
        now = now or utcnow()
        return {
            "half_life_days": self.half_life / timedelta(days=1),
            "evidence": [
                {
                    "at": e.timestamp.isoformat(),
                    "intent": e.intent,
                    "app": e.app,
                    "kind": e.kind,
                    "weight": e.weight,
                }
                for e in self._store.rows()
            ],
            "preferences": self.preferences(now),
        }

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> PersonalMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
