"""A durable outbox: sealed envelopes wait on disk until the broker has acknowledged them.

Why: a phone loses its network and its process at any moment. An envelope is written here
(committed) before any send is attempted and marked sent only after the broker acked it, so
nothing is lost across crashes or outages. The price is at-least-once delivery: a crash
between the ack and :meth:`Outbox.mark_sent` resends the same bytes, with the same
``msg_id``, and ingestion recognises the replay and drops it. That is intended.

``dedupe_key`` makes :meth:`Outbox.put` idempotent for the caller: the device keys a round's
summary by cohort and round, so calling ``send_round`` again after a crash re-sends the
envelope already built instead of sealing a second, different one for the same round.

Sent rows are kept (bounded by ``keep_sent`` and ``retention.outbox_sent``) only so that
``dedupe_key`` still recognises recent rounds; pending rows are kept until they are sent or
``retention.outbox_pending`` has passed (a round that old has closed).

Sealed at rest (:mod:`edge_client.sealing`): the topic, the record key, the value and the
dedupe key are one AES-GCM value per row, under the data key of the day the row was written;
the topic and the dedupe key are also kept as keyed tags, for lookups. In clear: the row id,
when it was written and sent, and the attempt count.

Why the standard library's :mod:`sqlite3` and not an ORM: the device SDK installs without
the backend's libraries (no SQLAlchemy on a phone). :func:`connect_private` (re-exported
from :mod:`edge_client.sealing`) is the one way the on-device stores open their files.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from edge_client.retention import DEFAULT_RETENTION, RetentionPolicy
from edge_client.sealing import PRIVATE_MODE, Keys, connect_private, open_sealed, pack, unpack
from privacy.wire import utcnow

__all__ = ["PRIVATE_MODE", "Outbox", "OutboxItem", "connect_private"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    topic_tag BLOB NOT NULL,  -- keyed tag of the topic, for pending(topics=...)
    dedupe_tag BLOB,  -- keyed tag of the dedupe key
    key_id INTEGER NOT NULL,  -- the data key (one per day written)
    sealed BLOB NOT NULL,  -- AES-GCM: topic, record key, value, dedupe key
    created_at FLOAT NOT NULL,
    sent_at FLOAT,
    attempts INTEGER NOT NULL,
    UNIQUE (dedupe_tag)
);
CREATE INDEX IF NOT EXISTS ix_outbox_sent_at ON outbox (sent_at);
CREATE INDEX IF NOT EXISTS ix_outbox_key_id ON outbox (key_id);
"""
_USED_KEYS = (("outbox", "key_id"),)
_ITEM_COLUMNS = "id, key_id, sealed, attempts, sent_at"


class OutboxItem(NamedTuple):
    """One record, exactly as it will be produced."""

    id: int
    topic: str
    key: bytes | None
    value: bytes
    attempts: int
    sent: bool


def _legacy_rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """The rows of an outbox file from before sealing (the schema SQLAlchemy created)."""
    try:
        return conn.execute(
            'SELECT id, topic, "key", value, dedupe_key, created_at, sent_at, attempts '
            "FROM outbox ORDER BY id"
        ).fetchall()
    except sqlite3.Error:
        return []


class Outbox:
    """SQLite-backed outbox, sealed at rest. Parameters are stored under their own names;
    ``keys``, ``retention`` and ``clock`` are as for :class:`edge_client.context_store.ContextStore`.

    Safe to share between threads: one connection, every use under one lock.
    """

    def __init__(
        self,
        path: str | Path,
        keep_sent: int = 100,
        *,
        keys: Keys | None = None,
        retention: RetentionPolicy = DEFAULT_RETENTION,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if keep_sent < 0:
            raise ValueError("keep_sent must be >= 0")
        self.path = Path(path)
        self.keep_sent = keep_sent
        self.retention = retention
        self._clock = clock
        self._lock = threading.Lock()
        self._conn, self._vault, legacy = open_sealed(
            self.path, _SCHEMA, store="outbox", keys=keys, legacy=_legacy_rows
        )
        self._writes = 0
        if legacy:
            with self._write():
                for id_, topic, key, value, dedupe, created, sent, attempts in legacy:
                    self._insert(topic, key, value, dedupe, created, sent, attempts, id_)
        self.expire(vacuum=True)

    def __repr__(self) -> str:
        return (
            f"Outbox(path={str(self.path)!r}, keep_sent={self.keep_sent}, "
            f"sealed={self._vault.sealed})"
        )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (durably) on success, rolled back on error."""
        with self._lock, self._vault.write() as conn:
            yield conn

    def _insert(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        dedupe_key: str | None,
        created_at: float,
        sent_at: float | None = None,
        attempts: int = 0,
        id: int | None = None,
    ) -> int:
        """Insert one sealed row; caller holds a write transaction."""
        vault = self._vault
        dedupe_tag = None if dedupe_key is None else vault.tag(dedupe_key)
        cursor = self._conn.execute(
            "INSERT INTO outbox (id, topic_tag, dedupe_tag, key_id, sealed, created_at, "
            "sent_at, attempts) VALUES (?, ?, ?, 0, x'', ?, ?, ?)",
            (id, vault.tag(topic), dedupe_tag, created_at, sent_at, attempts),
        )
        assert cursor.lastrowid is not None
        row_id = int(cursor.lastrowid)
        payload = pack(
            topic.encode(), key, value, None if dedupe_key is None else dedupe_key.encode()
        )
        key_id, blob = vault.seal("outbox", row_id, payload, scope=_day(created_at))
        self._conn.execute(
            "UPDATE outbox SET key_id = ?, sealed = ? WHERE id = ?", (key_id, blob, row_id)
        )
        return row_id

    def _open(
        self, row_id: int, key_id: int, blob: bytes
    ) -> tuple[str, bytes | None, bytes, str | None]:
        topic, key, value, dedupe = unpack(self._vault.open("outbox", row_id, key_id, blob))
        assert topic is not None and value is not None
        return topic.decode(), key, value, None if dedupe is None else dedupe.decode()

    def _item(self, row: tuple[Any, ...]) -> OutboxItem:
        id_, key_id, blob, attempts, sent_at = row
        topic, key, value, _ = self._open(int(id_), int(key_id), blob)
        return OutboxItem(int(id_), topic, key, value, int(attempts), sent_at is not None)

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
                    "SELECT id FROM outbox WHERE dedupe_tag = ?", (self._vault.tag(dedupe_key),)
                ).fetchone()
                if existing is not None:
                    return int(existing[0])
            row_id = self._insert(topic, key, value, dedupe_key, self._clock().timestamp())
            self._writes += 1
            due = self._writes % self.retention.check_every == 0
        if due:
            self.expire()
        return row_id

    def get(self, id: int) -> OutboxItem | None:
        """Record ``id``, or ``None`` if it never existed or was trimmed after sending."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_ITEM_COLUMNS} FROM outbox WHERE id = ?", (id,)
            ).fetchone()
            return None if row is None else self._item(row)

    def pending(
        self, limit: int | None = None, topics: Collection[str] | None = None
    ) -> list[OutboxItem]:
        """Unsent records, oldest first; only those for ``topics`` if given."""
        sql = f"SELECT {_ITEM_COLUMNS} FROM outbox WHERE sent_at IS NULL"
        params: list[object] = []
        if topics is not None:
            tags = [self._vault.tag(t) for t in topics]
            sql += f" AND topic_tag IN ({', '.join('?' * len(tags))})"
            params.extend(tags)
        sql += " ORDER BY id LIMIT ?"
        params.append(-1 if limit is None else limit)  # SQLite: a negative LIMIT is no limit
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
            return [self._item(row) for row in rows]

    def discard_pending(self, dedupe_prefix: str) -> int:
        """Delete the unsent records whose ``dedupe_key`` starts with ``dedupe_prefix``;
        returns how many. For the user's "forget": a summary sealed before it must not be
        sent after it (the round is then built afresh, or the device sits it out)."""
        with self._write() as conn:
            rows = conn.execute(
                "SELECT id, key_id, sealed FROM outbox WHERE sent_at IS NULL"
            ).fetchall()
            ids = []
            for id_, key_id, blob in rows:
                dedupe = self._open(int(id_), int(key_id), blob)[3]
                if dedupe is not None and dedupe.startswith(dedupe_prefix):
                    ids.append((id_,))
            conn.executemany("DELETE FROM outbox WHERE id = ?", ids)
            self._vault.shred_unused(_USED_KEYS)
        if ids:
            with self._lock:
                self._vault.purge()
        return len(ids)

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
        now = self._clock().timestamp()
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

    def expire(self, *, vacuum: bool = False) -> int:
        """Delete sent rows older than ``retention.outbox_sent`` and pending ones older than
        ``retention.outbox_pending`` (logged: they were never delivered), shred the data
        keys no row uses any more, truncate the WAL; returns how many rows went. Runs on open
        and every ``retention.check_every`` puts."""
        now = self._clock()
        sent_cutoff = (now - self.retention.outbox_sent).timestamp()
        pending_cutoff = (now - self.retention.outbox_pending).timestamp()
        with self._write() as conn:
            sent = conn.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?", (sent_cutoff,)
            ).rowcount
            pending = conn.execute(
                "DELETE FROM outbox WHERE sent_at IS NULL AND created_at < ?", (pending_cutoff,)
            ).rowcount
            shredded = self._vault.shred_unused(_USED_KEYS)
        if pending:
            log.warning("outbox %s: %d undelivered envelopes expired", self.path, pending)
        if sent or pending or shredded:
            with self._lock:
                self._vault.purge(vacuum=vacuum)
        return int(sent) + int(pending)

    def close(self) -> None:
        """Close the connection (idempotent); the last close checkpoints and removes the WAL."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _day(ts: float) -> str:
    """The data-key scope of a row written at ``ts``: its UTC day."""
    return "day:" + datetime.fromtimestamp(ts, UTC).date().isoformat()
