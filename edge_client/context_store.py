"""The device's local context: a bounded, time-decayed window of recent agent steps.

Why a file database: the context must survive app restarts (a phone kills background
processes freely) and it must stay small, so the store keeps only the ``max_steps`` most
recent steps and deletes older ones in the same transaction that inserts a new one.

Why time decay: yesterday's habits say more about the next task than last month's. A step
``age`` old weighs ``0.5 ** (age / half_life)``; the context embedding is the weighted,
re-normalized sum of step embeddings (:func:`privacy.embedding.combine`).

Steps are stored redacted and masked (:meth:`AgentStep.redacted`): typed text never touches
the disk, and personal data in the task is replaced by placeholders (:mod:`edge_client.pii`).
Each row keeps the step's embedding computed at record time together with its
``EMBED_VERSION``; rows from another version are re-embedded on read.

Sealed at rest (:mod:`edge_client.sealing`): the step, its embedding and its embedding
version are one AES-GCM value per row, under the data key of the day the row was stored;
only the row id, the step's timestamp, the time it was stored and the data key id are in
clear. Retention (:class:`edge_client.retention.RetentionPolicy`, ``context``) is enforced
on open and every ``check_every`` records; forgetting (:meth:`ContextStore.delete`) shreds
the data keys no row uses any more and truncates the WAL.

The file is opened with :func:`edge_client.sealing.open_sealed` (the standard library's
:mod:`sqlite3`, no SQLAlchemy on a device): mode 0600, WAL, ``synchronous=FULL``,
``secure_delete``.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edge_client.retention import DEFAULT_RETENTION, RetentionPolicy
from edge_client.sealing import Keys, open_sealed, pack, unpack
from edge_client.steps import AgentStep
from privacy.embedding import EMBED_VERSION, combine
from privacy.wire import EMBEDDING_DIM, utcnow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER NOT NULL PRIMARY KEY,
    ts FLOAT NOT NULL,  -- POSIX seconds of the step, for order, decay and the window
    stored_at FLOAT NOT NULL,  -- POSIX seconds when it was recorded, for retention
    key_id INTEGER NOT NULL,  -- its data key (one per day of recording)
    sealed BLOB NOT NULL  -- AES-GCM: embed version, float32 embedding [128], step JSON
);
CREATE INDEX IF NOT EXISTS ix_steps_ts ON steps (ts);
CREATE INDEX IF NOT EXISTS ix_steps_stored_at ON steps (stored_at);
CREATE INDEX IF NOT EXISTS ix_steps_key_id ON steps (key_id);
"""
_USED_KEYS = (("steps", "key_id"),)
_VERSION = struct.Struct(">H")


class WeightedStep(NamedTuple):
    """A step in the window with its decay weight (1.0 now, 0.5 one half-life ago)."""

    step: AgentStep
    weight: float
    embedding: np.ndarray


def day_scope(at: datetime) -> str:
    """The data-key scope of a row stored at ``at``: its UTC day."""
    return f"day:{at.astimezone(UTC).date().isoformat()}"


def _legacy_steps(conn: sqlite3.Connection) -> list[AgentStep]:
    """The steps of a context file from before sealing (``step`` held the JSON in clear)."""
    try:
        rows = conn.execute("SELECT step FROM steps ORDER BY ts, id").fetchall()
    except sqlite3.Error:
        return []
    steps = []
    for (raw,) in rows:
        with suppress(ValueError):
            steps.append(AgentStep.model_validate_json(raw))
    return steps


class ContextStore:
    """SQLite-backed sliding window of the last ``max_steps`` steps, sealed at rest.

    Parameters
    ----------
    path
        The database file; created with its parent directory if missing.
    max_steps
        How many of the most recent steps (by timestamp) are kept; older ones are deleted.
    half_life
        Time after which a step's weight halves.
    keys
        The device's :class:`~edge_client.sealing.KeyProvider` (default: ``device.key``
        beside the file); :data:`~edge_client.sealing.UNSEALED` for benchmarks only.
    retention
        How long a step is kept after it was recorded (``retention.context``).
    clock
        The device's wall clock, for retention (injectable for tests).

    Safe to share between threads: one connection, every use under one lock.
    """

    def __init__(
        self,
        path: str | Path,
        max_steps: int = 200,
        half_life: timedelta = timedelta(days=7),
        *,
        keys: Keys | None = None,
        retention: RetentionPolicy = DEFAULT_RETENTION,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if half_life <= timedelta(0):
            raise ValueError("half_life must be positive")
        self.path = Path(path)
        self.max_steps = max_steps
        self.half_life = half_life
        self.retention = retention
        self._clock = clock
        self._lock = threading.Lock()
        self._conn, self._vault, legacy = open_sealed(
            self.path, _SCHEMA, store="context", keys=keys, legacy=_legacy_steps
        )
        self._writes = 0
        for step in legacy:  # a file from before sealing: its steps, masked and sealed now
            self.record(step)
        self.expire(vacuum=True)

    def __repr__(self) -> str:
        return (
            f"ContextStore(path={str(self.path)!r}, max_steps={self.max_steps}, "
            f"half_life={self.half_life!r}, sealed={self._vault.sealed})"
        )

    def record(self, step: AgentStep) -> None:
        """Persist ``step`` (redacted and masked) and drop whatever falls out of the window."""
        kept = step.redacted()
        vec = np.asarray(kept.embedding(), dtype="<f4")
        payload = pack(_VERSION.pack(EMBED_VERSION), vec.tobytes(), kept.model_dump_json().encode())
        stored = self._clock()
        with self._lock:
            with self._vault.write() as conn:
                cur = conn.execute(
                    "INSERT INTO steps (ts, stored_at, key_id, sealed) VALUES (?, ?, 0, x'')",
                    (kept.timestamp.timestamp(), stored.timestamp()),
                )
                assert cur.lastrowid is not None
                row_id = int(cur.lastrowid)
                key_id, blob = self._vault.seal("steps", row_id, payload, scope=day_scope(stored))
                conn.execute(
                    "UPDATE steps SET key_id = ?, sealed = ? WHERE id = ?", (key_id, blob, row_id)
                )
                conn.execute(
                    "DELETE FROM steps WHERE id NOT IN ("
                    "SELECT id FROM steps ORDER BY ts DESC, id DESC LIMIT ?)",
                    (self.max_steps,),
                )
            self._writes += 1
            due = self._writes % self.retention.check_every == 0
        if due:
            self.expire()

    def expire(self, *, vacuum: bool = False) -> int:
        """Delete the steps recorded longer ago than ``retention.context``, shred the data
        keys no step uses any more, truncate the WAL; returns how many steps went. Runs on
        open and every ``retention.check_every`` records."""
        cutoff = (self._clock() - self.retention.context).timestamp()
        with self._lock:
            with self._vault.write() as conn:
                gone = int(
                    conn.execute("DELETE FROM steps WHERE stored_at < ?", (cutoff,)).rowcount
                )
                shredded = self._vault.shred_unused(_USED_KEYS)
            if gone or shredded:
                self._vault.purge(vacuum=vacuum)
        return gone

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM steps").fetchone()[0])

    def weight(self, timestamp: datetime, now: datetime) -> float:
        """The decay weight of a step stamped ``timestamp``, seen at ``now``."""
        age = (now - timestamp) / self.half_life
        return float(0.5 ** max(age, 0.0))

    def window(self, now: datetime | None = None) -> list[WeightedStep]:
        """Steps stamped at or before ``now``, oldest first, each with its weight.

        Steps stamped after ``now`` are not part of the window yet, so a window (and the
        summary built from it) for a given ``now`` is reproducible.
        """
        now = now or utcnow()
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return list(self._iter_window(now))

    def _iter_window(self, now: datetime) -> Iterator[WeightedStep]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, key_id, sealed FROM steps WHERE ts <= ? ORDER BY ts, id",
                (now.timestamp(),),
            ).fetchall()
            opened = [self._open(row) for row in rows]
        for step, vec in opened:
            yield WeightedStep(step, self.weight(step.timestamp, now), vec)

    def _open(self, row: tuple[Any, ...]) -> tuple[AgentStep, np.ndarray]:
        """A row's step and embedding (:class:`~edge_client.sealing.SealedDataError` if its
        sealed value does not authenticate). Caller holds the lock."""
        row_id, key_id, blob = row
        version, emb, raw = unpack(self._vault.open("steps", int(row_id), int(key_id), blob))
        assert version is not None and emb is not None and raw is not None
        step = AgentStep.model_validate_json(raw)
        if _VERSION.unpack(version)[0] == EMBED_VERSION:
            vec = np.frombuffer(emb, dtype="<f4").astype(np.float32)
        else:
            vec = step.embedding()
        return step, vec

    def steps(self) -> list[AgentStep]:
        """Every stored step (redacted, as stored), oldest first: what the user may see and
        export."""
        with self._lock:
            rows = self._conn.execute("SELECT id, key_id, sealed FROM steps ORDER BY ts, id")
            return [self._open(row)[0] for row in rows.fetchall()]

    def delete(self, match: Callable[[AgentStep], bool] | None = None) -> int:
        """Delete the stored steps for which ``match`` is true (every step when it is None);
        returns how many. The user's "forget": the next window, context embedding and round
        summary no longer see them, and they are gone from the file too: overwritten
        (``secure_delete``), their data keys shredded once no step uses them, the WAL
        truncated."""
        with self._lock:
            with self._vault.write() as conn:
                if match is None:
                    gone = int(conn.execute("DELETE FROM steps").rowcount)
                else:
                    rows = conn.execute("SELECT id, key_id, sealed FROM steps").fetchall()
                    ids = [(row[0],) for row in rows if match(self._open(row)[0])]
                    conn.executemany("DELETE FROM steps WHERE id = ?", ids)
                    gone = len(ids)
                self._vault.shred_unused(_USED_KEYS)
            self._vault.purge(vacuum=match is None)
        return gone

    def context_embedding(self, now: datetime | None = None) -> np.ndarray:
        """The decay-weighted, unit-norm 128-d context (all zeros if the window is empty)."""
        items = self.window(now)
        if not items:
            return np.zeros(EMBEDDING_DIM, dtype=np.float32)
        return combine((w.embedding for w in items), (w.weight for w in items))

    def close(self) -> None:
        """Close the connection (idempotent); the last close checkpoints and removes the WAL."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ContextStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
