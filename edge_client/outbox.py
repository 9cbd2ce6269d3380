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
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path
from typing import NamedTuple

import sqlalchemy as sa

from privacy.wire import utcnow

_metadata = sa.MetaData()
_outbox = sa.Table(
    "outbox",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("key", sa.LargeBinary, nullable=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("dedupe_key", sa.Text, nullable=True, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("sent_at", sa.Float, nullable=True, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sqlite_autoincrement=True,  # ids are never reused, even after sent rows are trimmed
)


class OutboxItem(NamedTuple):
    """One record, exactly as it will be produced."""

    id: int
    topic: str
    key: bytes | None
    value: bytes
    attempts: int
    sent: bool


class Outbox:
    """SQLite-backed outbox. Parameters are stored under their own names."""

    def __init__(self, path: str | Path, keep_sent: int = 100) -> None:
        if keep_sent < 0:
            raise ValueError("keep_sent must be >= 0")
        self.path = Path(path)
        self.keep_sent = keep_sent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._engine = sa.create_engine(f"sqlite:///{self.path}")
        _metadata.create_all(self._engine)

    def __repr__(self) -> str:
        return f"Outbox(path={str(self.path)!r}, keep_sent={self.keep_sent})"

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
        with self._engine.begin() as conn:
            if dedupe_key is not None:
                existing = conn.execute(
                    sa.select(_outbox.c.id).where(_outbox.c.dedupe_key == dedupe_key)
                ).scalar_one_or_none()
                if existing is not None:
                    return int(existing)
            result = conn.execute(
                _outbox.insert().values(
                    topic=topic,
                    key=key,
                    value=value,
                    dedupe_key=dedupe_key,
                    created_at=utcnow().timestamp(),
                    attempts=0,
                )
            )
            return int(result.inserted_primary_key[0])

    def get(self, id: int) -> OutboxItem | None:
        """Record ``id``, or ``None`` if it never existed or was trimmed after sending."""
        with self._engine.connect() as conn:
            row = conn.execute(_select_items().where(_outbox.c.id == id)).one_or_none()
        return None if row is None else _item(row)

    def pending(
        self, limit: int | None = None, topics: Collection[str] | None = None
    ) -> list[OutboxItem]:
        """Unsent records, oldest first; only those for ``topics`` if given."""
        query = _select_items().where(_outbox.c.sent_at.is_(None)).order_by(_outbox.c.id)
        if topics is not None:
            query = query.where(_outbox.c.topic.in_(list(topics)))
        with self._engine.connect() as conn:
            return [_item(row) for row in conn.execute(query.limit(limit)).all()]

    def note_attempt(self, ids: Iterable[int]) -> None:
        """Count a delivery attempt (for operators: how long has this been stuck?)."""
        ids = list(ids)
        if not ids:
            return
        with self._engine.begin() as conn:
            conn.execute(
                _outbox.update()
                .where(_outbox.c.id.in_(ids))
                .values(attempts=_outbox.c.attempts + 1)
            )

    def mark_sent(self, ids: Iterable[int]) -> None:
        """Mark records acknowledged by the broker, then trim old sent rows."""
        ids = list(ids)
        if not ids:
            return
        with self._engine.begin() as conn:
            conn.execute(
                _outbox.update()
                .where(_outbox.c.id.in_(ids), _outbox.c.sent_at.is_(None))
                .values(sent_at=utcnow().timestamp())
            )
            keep = (
                sa.select(_outbox.c.id)
                .where(_outbox.c.sent_at.is_not(None))
                .order_by(_outbox.c.id.desc())
                .limit(self.keep_sent)
            )
            conn.execute(
                _outbox.delete().where(
                    _outbox.c.sent_at.is_not(None), _outbox.c.id.not_in(keep.scalar_subquery())
                )
            )

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _select_items() -> sa.Select:
    c = _outbox.c
    return sa.select(c.id, c.topic, c.key, c.value, c.attempts, c.sent_at)


def _item(row: sa.Row) -> OutboxItem:
    id_, topic, key, value, attempts, sent_at = row
    return OutboxItem(int(id_), topic, key, value, int(attempts), sent_at is not None)
