"""What the user controls about what their phone records: see it, export it, forget it, stop it.

:class:`DeviceControls` works on a device's data dir (``context.db``, ``memory.db``,
``controls.db``, ``outbox.db``) and needs nothing else: no region policy, no broker, no
model. The same object is the gate every recorded step passes
(:meth:`DeviceControls.record_step`, which :meth:`edge_client.device.EdgeDevice.record_step`
calls), so a rule the user sets holds before anything is stored:

* **pause**: while paused, nothing is stored, learned or counted;
* **never record**: a step is dropped when its app, its foreground app, or an app its task
  names is on the list. The list starts with payment and banking apps
  (:data:`DEFAULT_NEVER_RECORD`; ``*`` matches any text, so ``*银行*`` is every bank app);
  the user adds and removes entries;
* **hint**: off on this device, or only for a model endpoint on this machine (read by
  :func:`edge_client.autoglm.personalize`; they only ever make the hint options stricter).

And what the user can do with what was stored: :meth:`~DeviceControls.show` (and
:meth:`~DeviceControls.describe`, in words), :meth:`~DeviceControls.export` (JSON), and
:meth:`~DeviceControls.forget`: everything, one app, one intent or a time range, from the
context store (so from the next round's summary, which is built from it), from the memory,
and unsent summaries sealed before are discarded.

Counters (``unknown_action``, ``out_of_range``, ``malformed``, ``parse_failure``,
``model_error``): how many stored steps carried each flag, since the last forget-all. Steps
dropped by a pause or the never-record list are not counted: not recording means not
recording.

All SQL of ``controls.db`` is in :class:`ControlsStore`.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_client.context_store import ContextStore
from edge_client.intents import intent_of
from edge_client.memory import PersonalMemory, app_key, canonical_app
from edge_client.outbox import Outbox
from edge_client.retention import DEFAULT_RETENTION, RetentionPolicy
from edge_client.sealing import KeyProvider, Keys, open_sealed
from edge_client.steps import FLAGS, AgentStep
from privacy.wire import utcnow

if TYPE_CHECKING:
    from edge_client.runtime import DeviceModel

DEFAULT_NEVER_RECORD: tuple[str, ...] = (
    "支付宝",
    "微信支付",
    "云闪付",
    "数字人民币",
    "*银行*",
    "Alipay",
    "PayPal",
    "Revolut",
    "Google Wallet",
    "*Bank*",
)
"""Payment and banking apps: never recorded unless the user removes them (matching ignores
case, spaces and hyphens; ``*`` is any text, so ``*Bank*`` is every bank app)."""

CONTEXT_FILE, MEMORY_FILE, CONTROLS_FILE, OUTBOX_FILE = (
    "context.db",
    "memory.db",
    "controls.db",
    "outbox.db",
)
SUMMARY_DEDUPE_PREFIX = "summary|"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    name TEXT NOT NULL PRIMARY KEY,
    key_id INTEGER NOT NULL,
    sealed BLOB NOT NULL  -- AES-GCM: the JSON value (a never-record list names apps)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL PRIMARY KEY,
    n INTEGER NOT NULL
);
"""


class ControlsStore:
    """``controls.db``: the user's settings (JSON values by name) and the step counters.

    Setting values are sealed at rest (:mod:`edge_client.sealing`; the never-record list names
    the user's apps); setting names and the flag counters are in clear.

    Read on every use, never cached, so a ``sotto device pause`` in another process holds from
    the running agent's next step on."""

    def __init__(self, path: str | Path, *, keys: Keys | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn, self._vault, _ = open_sealed(path, _SCHEMA, store="controls", keys=keys)

    def _value(self, row: tuple[Any, ...]) -> Any:
        rowid, key_id, blob = row
        return json.loads(self._vault.open("settings", int(rowid), int(key_id), blob))

    def get(self, name: str, default: Any) -> Any:
        with self._lock:
            row = self._conn.execute(
                "SELECT rowid, key_id, sealed FROM settings WHERE name = ?", (name,)
            ).fetchone()
            return default if row is None else self._value(row)

    def put(self, name: str, value: Any) -> None:
        data = json.dumps(value, ensure_ascii=False).encode()
        with self._lock, self._vault.write() as conn:
            conn.execute(
                "INSERT INTO settings (name, key_id, sealed) VALUES (?, 0, x'') "
                "ON CONFLICT (name) DO NOTHING",
                (name,),
            )
            (rowid,) = conn.execute("SELECT rowid FROM settings WHERE name = ?", (name,)).fetchone()
            key_id, blob = self._vault.seal("settings", int(rowid), data, scope="settings")
            conn.execute(
                "UPDATE settings SET key_id = ?, sealed = ? WHERE rowid = ?", (key_id, blob, rowid)
            )

    def settings(self) -> dict[str, Any]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, rowid, key_id, sealed FROM settings ORDER BY name"
            ).fetchall()
            return {row[0]: self._value(row[1:]) for row in rows}

    def count(self, names: list[str]) -> None:
        if not names:
            return
        with self._lock:
            self._conn.executemany(
                "INSERT INTO counters (name, n) VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET n = n + 1",
                [(n,) for n in names],
            )

    def counters(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT name, n FROM counters ORDER BY name").fetchall()
        return {name: int(n) for name, n in rows}

    def reset_counters(self) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM counters")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _matches(entry: str, app: str) -> bool:
    """Whether never-record ``entry`` covers ``app``: the same spelling, a wildcard that
    matches it, or the catalogue's name of an app written another way ("微信" covers
    "WeChat"; an alias such as "微信支付" covers only itself)."""
    if "*" in entry or "?" in entry:
        return fnmatchcase(app_key(app), app_key(entry))  # app_key keeps * and ?
    if app_key(entry) == app_key(app):
        return True
    return canonical_app(entry) == entry and canonical_app(app) == entry


def _named_in(entry: str, text: str) -> bool:
    if "*" in entry or "?" in entry:
        return False  # wildcards judge app names only: "*银行*" must not drop "导航去银行"
    if re.search(r"[A-Za-z0-9]", entry):
        return (
            re.search(rf"(?<![A-Za-z0-9]){re.escape(entry)}(?![A-Za-z0-9])", text, re.I) is not None
        )
    return entry in text


class DeviceControls:
    """The user's controls over one device data dir (see the module docstring).

    Parameters
    ----------
    data_dir
        The device's data dir; the files are created if missing.
    context, memory, outbox
        Stores already open on that dir (an :class:`~edge_client.device.EdgeDevice` passes
        its own); the ones not given are opened here (the outbox only if its file exists)
        and closed by :meth:`close`.
    max_steps, half_life
        The context window, for a context store opened here.
    keys, retention
        The device's key provider and retention policy, for the stores opened here (every
        opener of a data dir must use the device's key: see :mod:`edge_client.sealing`).
    clock
        Source of "now" for :meth:`show`, :meth:`export` and the memory's scores.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        context: ContextStore | None = None,
        memory: PersonalMemory | None = None,
        outbox: Outbox | None = None,
        max_steps: int = 200,
        half_life: timedelta = timedelta(days=7),
        keys: KeyProvider | None = None,
        retention: RetentionPolicy = DEFAULT_RETENTION,
        clock: Any = utcnow,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.clock = clock
        self._owned: list[Any] = []
        if context is None:
            context = ContextStore(
                self.data_dir / CONTEXT_FILE, max_steps, half_life, keys=keys, retention=retention
            )
            self._owned.append(context)
        if memory is None:
            memory = PersonalMemory(self.data_dir / MEMORY_FILE, keys=keys, retention=retention)
            self._owned.append(memory)
        if outbox is None and (self.data_dir / OUTBOX_FILE).exists():
            outbox = Outbox(self.data_dir / OUTBOX_FILE, keys=keys, retention=retention)
            self._owned.append(outbox)
        self.context = context
        self.memory = memory
        self.outbox = outbox
        self._store = ControlsStore(self.data_dir / CONTROLS_FILE, keys=keys)
        self._owned.append(self._store)

    def __repr__(self) -> str:
        return f"DeviceControls(data_dir={str(self.data_dir)!r})"

    # --- the gate ----------------------------------------------------------------------------

    def admits(self, step: AgentStep) -> bool:
        """Whether ``step`` may be stored: recording is on and no app of it is never-record."""
        if self.paused:
            return False
        return not self.never_records(step)

    def never_records(self, step: AgentStep) -> bool:
        """Whether the never-record list covers ``step`` (its app, its foreground app, or an
        app its task names)."""
        entries = self.never_record
        apps = [a for a in (step.app, step.current_app) if a]
        if any(_matches(e, a) for e in entries for a in apps):
            return True
        return any(_named_in(e, step.instruction) for e in entries)

    def record_step(self, step: AgentStep) -> bool:
        """Store ``step`` in the context store and teach it to the memory, if :meth:`admits`
        it; returns whether it was stored. Its flags are counted."""
        if not self.admits(step):
            return False
        self.context.record(step)
        self.memory.learn_one(step)
        self._store.count(list(step.flags))
        return True

    # --- pause -------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return bool(self._store.get("paused", False))

    def pause(self) -> None:
        """Stop recording: nothing is stored, learned or counted until :meth:`resume`."""
        self._store.put("paused", True)

    def resume(self) -> None:
        self._store.put("paused", False)

    # --- never record ------------------------------------------------------------------------

    @property
    def never_record(self) -> tuple[str, ...]:
        return tuple(self._store.get("never_record", list(DEFAULT_NEVER_RECORD)))

    def add_never_record(self, *apps: str) -> tuple[str, ...]:
        """Never record these apps from now on (already stored steps stay until forgotten:
        :meth:`forget` with ``app=``). Returns the new list."""
        current = list(self.never_record)
        for app in apps:
            if app.strip() and app.strip() not in current:
                current.append(app.strip())
        self._store.put("never_record", current)
        return tuple(current)

    def remove_never_record(self, *apps: str) -> tuple[str, ...]:
        """Record these apps again (a default entry too). Returns the new list."""
        gone = {a.strip() for a in apps}
        current = [a for a in self.never_record if a not in gone]
        self._store.put("never_record", current)
        return tuple(current)

    def reset_never_record(self) -> tuple[str, ...]:
        """Back to :data:`DEFAULT_NEVER_RECORD`."""
        self._store.put("never_record", list(DEFAULT_NEVER_RECORD))
        return DEFAULT_NEVER_RECORD

    # --- the hint ----------------------------------------------------------------------------

    @property
    def hint_enabled(self) -> bool:
        return bool(self._store.get("hint_enabled", True))

    @property
    def hint_local_only(self) -> bool:
        return bool(self._store.get("hint_local_only", False))

    def set_hint(self, *, enabled: bool | None = None, local_only: bool | None = None) -> None:
        """Turn the hint on or off on this device, and whether it may reach a model endpoint
        that is not on this machine."""
        if enabled is not None:
            self._store.put("hint_enabled", bool(enabled))
        if local_only is not None:
            self._store.put("hint_local_only", bool(local_only))

    # --- counters ----------------------------------------------------------------------------

    @property
    def counters(self) -> dict[str, int]:
        """Flag -> stored steps that carried it (every flag, zeros included)."""
        stored = self._store.counters()
        return {flag: stored.get(flag, 0) for flag in FLAGS}

    # --- seeing ------------------------------------------------------------------------------

    def show(
        self, model: DeviceModel | None = None, *, now: datetime | None = None
    ) -> dict[str, Any]:
        """What is stored and set, as plain data (:meth:`describe` puts it in words).

        ``model``: the running agent's :class:`~edge_client.runtime.DeviceModel`, whose
        adapters live in memory only; without it the adapters are reported as not stored.
        ``now``: the time preferences are decayed to (default: the clock)."""
        now = now or self.clock()
        steps = self.context.steps()
        apps = Counter(s.target_app for s in steps if s.target_app)
        flagged = Counter(f for s in steps for f in s.flags)
        return {
            "data_dir": str(self.data_dir),
            "recording": "paused" if self.paused else "on",
            "steps": {
                "count": len(steps),
                "kept_at_most": self.context.max_steps,
                "first": steps[0].timestamp.isoformat() if steps else None,
                "last": steps[-1].timestamp.isoformat() if steps else None,
                "by_app": dict(apps.most_common()),
                "by_outcome": dict(Counter(s.outcome for s in steps).most_common()),
                "by_action": dict(Counter(s.action for s in steps).most_common()),
                "flagged": dict(flagged.most_common()),
            },
            "preferences": self.memory.preferences(now),
            "memory": {
                "evidence": len(self.memory),
                "half_life_days": self.memory.half_life / timedelta(days=1),
            },
            "never_record": list(self.never_record),
            "hint": {"enabled": self.hint_enabled, "local_only": self.hint_local_only},
            "counters": self.counters,
            "adapters": _adapters(model),
            "outbox": None if self.outbox is None else {"pending": len(self.outbox.pending())},
        }

    def describe(self, model: DeviceModel | None = None, *, now: datetime | None = None) -> str:
        """:meth:`show` in plain language, for a person."""
        doc = self.show(model, now=now)
        st = doc["steps"]
        lines = [f"Sotto data on this device ({doc['data_dir']}); none of it is sent as is."]
        if st["count"]:
            lines.append(
                f"- {st['count']} agent steps, {st['first'][:16]} to {st['last'][:16]} "
                f"(the newest {st['kept_at_most']} are kept; typed text is never stored)"
            )
            lines.append("  apps: " + _listing(st["by_app"], "steps"))
            lines.append("  outcomes: " + _listing(st["by_outcome"], ""))
        else:
            lines.append("- no agent steps stored")
        prefs = doc["preferences"]
        if prefs:
            lines.append(
                f"- preferences learned from {doc['memory']['evidence']} launches "
                f"(evidence counts half after {doc['memory']['half_life_days']:g} days):"
            )
            for intent, scores in prefs.items():
                shown = ", ".join(f"{app} {score:.2f}" for app, score in scores.items())
                lines.append(f"  {intent}: {shown}")
        else:
            lines.append("- no preferences learned")
        lines.append("- never recorded: " + (", ".join(doc["never_record"]) or "(nothing)"))
        lines.append(
            "- recording: "
            + ("PAUSED (nothing is stored until resumed)" if doc["recording"] == "paused" else "on")
        )
        hint = doc["hint"]
        if not hint["enabled"]:
            lines.append("- hint to the agent: off")
        else:
            where = "local model endpoints only" if hint["local_only"] else "any model endpoint"
            lines.append(f"- hint to the agent: on, for {where}")
        unusual = {k: v for k, v in doc["counters"].items() if v}
        lines.append(
            "- unusual steps recorded: "
            + (", ".join(f"{v} {k.replace('_', ' ')}" for k, v in unusual.items()) or "none")
        )
        adapters = doc["adapters"]
        if adapters is None:
            lines.append("- adapters: none stored on disk (a running agent holds them in memory)")
        else:
            lines.append(
                f"- adapters: live version {adapters['live_version']}"
                + (
                    f", previous {adapters['previous_version']}"
                    if adapters["previous_version"]
                    else ""
                )
                + (
                    f", candidate {adapters['candidate_version']}"
                    if adapters["candidate_version"]
                    else ""
                )
            )
        if doc["outbox"] is not None:
            lines.append(f"- sealed round messages waiting to be sent: {doc['outbox']['pending']}")
        return "\n".join(lines)

    def export(self, *, now: datetime | None = None) -> dict[str, Any]:
        """Everything stored about the user, as JSON-able data: the steps (as stored), the
        memory's evidence and preferences (decayed to ``now``), the settings and the
        counters."""
        now = now or self.clock()
        return {
            "format": "sotto-device-export",
            "version": 1,
            "exported_at": now.isoformat(),
            "data_dir": str(self.data_dir),
            "steps": [s.model_dump(mode="json", exclude_none=True) for s in self.context.steps()],
            "memory": self.memory.export(now),
            "controls": {
                "paused": self.paused,
                "never_record": list(self.never_record),
                "hint_enabled": self.hint_enabled,
                "hint_local_only": self.hint_local_only,
            },
            "counters": self.counters,
        }

    # --- forgetting --------------------------------------------------------------------------

    def forget(
        self,
        app: str | None = None,
        intent: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[str, int]:
        """Forget what matches every filter given; everything when none is.

        ``app``: steps launching it or taken in it (any spelling of it), and its memory;
        ``intent``: steps of tasks with that intent, and the memory of it; ``since``/``until``:
        stamped in ``[since, until)``. Unsent round summaries are discarded in every case
        (they were sealed from what is now forgotten). Returns how many steps, memory
        entries and envelopes went."""
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware")
        everything = app is None and intent is None and since is None and until is None

        def match(step: AgentStep) -> bool:
            if app is not None and not any(
                _matches(app, a) or _matches(a, app) for a in (step.app, step.current_app) if a
            ):
                return False
            if intent is not None and intent_of(step.instruction) != intent:
                return False
            if since is not None and step.timestamp < since:
                return False
            return not (until is not None and step.timestamp >= until)

        steps = self.context.delete(None if everything else match)
        memory = self.memory.forget(app=app, intent=intent, since=since, until=until)
        envelopes = 0
        if self.outbox is not None:
            envelopes = self.outbox.discard_pending(SUMMARY_DEDUPE_PREFIX)
        if everything:
            self._store.reset_counters()
        return {"steps": steps, "memory": memory, "envelopes": envelopes}

    # --- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close what this object opened (stores passed in are left to their owner)."""
        for store in reversed(self._owned):
            store.close()
        self._owned.clear()

    def __enter__(self) -> DeviceControls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _adapters(model: DeviceModel | None) -> dict[str, Any] | None:
    if model is None:
        return None
    manifest = model.live_manifest
    return {
        "live_version": model.live_version,
        "previous_version": model.previous_version,
        "candidate_version": model.candidate_version,
        "live_region": getattr(manifest, "region", None),
    }


def _listing(counts: dict[str, int], unit: str) -> str:
    return ", ".join(f"{k} ({v}{' ' + unit if unit else ''})" for k, v in counts.items())
