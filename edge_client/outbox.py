"""A durable outbox: sealed envelopes wait on disk until the broker has acknowledged them.

Why: a phone loses its network and its process at any moment. An envelope is written here
(committed) before any send is attempted and marked sent only after the broker acked it, so
nothing is lost across crashes or outages. The price is at-least-once delivery: a crash
between the ack and :meth:`Outbox.mark_sent` resends the same bytes, with the same
``msg_id``, and ingestion recognises the replay and drops it. That is intended.

``dedupe_key`` makes :meth:`Outbox.put` idempotent for the caller: the device keys a round's
summary by cohort and round, so calling ``send_round`` again after a crash re-sends the
envelope already built instead of sealing a second, different one for the same round.

Sent rows are kept (bounded by ``keep_sent``) only so that ``dedupe_key`` still recognises
recent rounds; pending rows are never dropped.

Why the standard library's :mod:`sqlite3` and not an ORM: the device SDK installs without
the backend's libraries (no SQLAlchemy on a phone). :func:`connect_private` is the one way
both on-device stores (this one and :mod:`edge_client.context_store`) open their files.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

from privacy.wire import utcnow

PRIVATE_MODE = 0o600
"""A device's database files (and their WAL/SHM side files) are readable by their owner only."""

_SIDE_FILES = ("-wal", "-shm", "-journal")

# The schema SQLAlchemy created before this module used sqlite3 (same table, columns and
# index names), so existing files open unchanged. AUTOINCREMENT: ids are never reused, even
# after sent rows are trimmed.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    "key" BLOB,
    value BLOB NOT NULL,
    dedupe_key TEXT,
    created_at FLOAT NOT NULL,
    sent_at FLOAT,
    attempts INTEGER NOT NULL,
    UNIQUE (dedupe_key)
);
CREATE INDEX IF NOT EXISTS ix_outbox_sent_at ON outbox (sent_at);
"""

_ITEM_COLUMNS = 'id, topic, "key", value, attempts, sent_at'


def _restrict(path: Path) -> None:
    """Drop group/other permissions from ``path`` if it exists (older files were 0644)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    # PermissionError: not our file, nothing we can fix here; SQLite then decides access.
    if mode & 0o077:
        with suppress(PermissionError):
            path.chmod(PRIVATE_MODE)


def connect_private(path: Path, schema: str) -> sqlite3.Connection:
    """Open (creating with mode 0600 if missing) the SQLite file ``path`` and apply ``schema``.

    Why each setting:

    - the file is created by :func:`os.open` with mode 0600 before SQLite touches it, so no
      byte is ever written to a world-readable file; SQLite creates the WAL and SHM side files
      with the main file's mode, and any side file left by an older version is tightened too;
    - WAL with ``synchronous=FULL``: a committed transaction survives a power cut, which is
      what "commit before send" relies on;
    - ``isolation_level=None``: the stores issue ``BEGIN IMMEDIATE``/``COMMIT`` themselves,
      so a read-then-write (dedupe check, then insert) holds the write lock throughout;
    - ``check_same_thread=False``: the objects are shared across threads (a fleet pumps from
      a background thread); callers serialize access with their own lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    os.close(fd)
    _restrict(path)
    for suffix in _SIDE_FILES:
        _restrict(path.with_name(path.name + suffix))
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, schema.split(";")):
                conn.execute(statement)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    for suffix in _SIDE_FILES:  # created by the first transaction; belt and braces
        _restrict(path.with_name(path.name + suffix))
    return conn


class OutboxItem(NamedTuple):
    """One record, exactly as it will be produced."""

    id: int
    topic: str
    key: bytes | None
    value: bytes
    attempts: int
    sent: bool


class Outbox:
    """SQLite-backed outbox. Parameters are stored under their own names.

    Safe to share between threads: one connection, every use under one lock.
    """

    def __init__(self, path: str | Path, keep_sent: int = 100) -> None:
        if keep_sent < 0:
            raise ValueError("keep_sent must be >= 0")
        self.path = Path(path)
        self.keep_sent = keep_sent
        self._lock = threading.Lock()
        self._conn = connect_private(self.path, _SCHEMA)

    def __repr__(self) -> str:
        return f"Outbox(path={str(self.path)!r}, keep_sent={self.keep_sent})"

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (durably) on success, rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def put(
        self,
        value: bytes,
        topic: str,
        key: bytes | None = None,
        *,
        dedupe_key: str | None = None,
    ) -> int:
        """Store a record durably and return its id.

        With ``dedupe_key`` already present, nothing is stored and the existing id is
        returned (whether that record is still pending or already sent).
        """
        with self._write() as conn:
            if dedupe_key is not None:
                existing = conn.execute(
                    "SELECT id FROM outbox WHERE dedupe_key = ?", (dedupe_key,)
                ).fetchone()
                if existing is not None:
                    return int(existing[0])
            cursor = conn.execute(
                'INSERT INTO outbox (topic, "key", value, dedupe_key, created_at, attempts) '
                "VALUES (?, ?, ?, ?, ?, 0)",
                (topic, key, value, dedupe_key, utcnow().timestamp()),
            )
            assert cursor.lastrowid is not None
            return int(cursor.lastrowid)

    def get(self, id: int) -> OutboxItem | None:
        """Record ``id``, or ``None`` if it never existed or was trimmed after sending."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_ITEM_COLUMNS} FROM outbox WHERE id = ?", (id,)
            ).fetchone()
        return None if row is None else _item(row)

    def pending(
        self, limit: int | None = None, topics: Collection[str] | None = None
    ) -> list[OutboxItem]:
        """Unsent records, oldest first; only those for ``topics`` if given."""
        sql = f"SELECT {_ITEM_COLUMNS} FROM outbox WHERE sent_at IS NULL"
        params: list[object] = []
        if topics is not None:
            topics = list(topics)
            sql += f" AND topic IN ({', '.join('?' * len(topics))})"
            params.extend(topics)
        sql += " ORDER BY id LIMIT ?"
        params.append(-1 if limit is None else limit)  # SQLite: a negative LIMIT is no limit
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_item(row) for row in rows]

    def note_attempt(self, ids: Iterable[int]) -> None:
        """Count a delivery attempt (for operators: how long has this been stuck?)."""
        unique = sorted(set(ids))
        if not unique:
            return
        with self._write() as conn:
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", [(i,) for i in unique]
            )

    def mark_sent(self, ids: Iterable[int]) -> None:
        """Mark records acknowledged by the broker, then trim old sent rows."""
        unique = sorted(set(ids))
        if not unique:
            return
        now = utcnow().timestamp()
        with self._write() as conn:
            conn.executemany(
                "UPDATE outbox SET sent_at = ? WHERE id = ? AND sent_at IS NULL",
                [(now, i) for i in unique],
            )
            conn.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND id NOT IN ("
                "SELECT id FROM outbox WHERE sent_at IS NOT NULL ORDER BY id DESC LIMIT ?)",
                (self.keep_sent,),
            )

    def close(self) -> None:
        """Close the connection (idempotent); the last close checkpoints and removes the WAL."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _item(row: tuple[Any, ...]) -> OutboxItem:
    id_, topic, key, value, attempts, sent_at = row
    return OutboxItem(int(id_), topic, key, value, int(attempts), sent_at is not None)
