"""The outbox: durable across restarts, idempotent by dedupe key, bounded once sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_client.outbox import Outbox


def test_pending_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        first = box.put(b"one", "sotto.eu.ingest", b"c1")
        second = box.put(b"two", "sotto.eu.ingest")
        box.mark_sent([first])
    with Outbox(path) as reopened:
        pending = reopened.pending()
        assert [(p.id, p.value, p.key) for p in pending] == [(second, b"two", None)]
        assert reopened.get(first).sent and not reopened.get(second).sent


def test_dedupe_key_returns_the_existing_record(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as box:
        a = box.put(b"round-7-first", "t", dedupe_key="summary|eu|c1|7")
        b = box.put(b"round-7-second", "t", dedupe_key="summary|eu|c1|7")
        assert a == b
        assert [p.value for p in box.pending()] == [b"round-7-first"]
        box.mark_sent([a])
        assert box.put(b"again", "t", dedupe_key="summary|eu|c1|7") == a
        assert box.pending() == []


def test_attempts_and_topic_filter(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as box:
        eu = box.put(b"x", "sotto.eu.ingest")
        box.put(b"y", "sotto.cn.ingest")
        box.note_attempt([eu])
        box.note_attempt([eu])
        only_eu = box.pending(topics={"sotto.eu.ingest"})
        assert [(p.id, p.attempts) for p in only_eu] == [(eu, 2)]
        assert len(box.pending(limit=1)) == 1


def test_sent_rows_are_trimmed_but_ids_never_reused(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db", keep_sent=2) as box:
        ids = [box.put(str(i).encode(), "t") for i in range(5)]
        box.mark_sent(ids)
        assert box.get(ids[0]) is None and box.get(ids[-1]) is not None
        new = box.put(b"later", "t")
        assert new > max(ids)


def test_invalid_keep_sent(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Outbox(tmp_path / "x.db", keep_sent=-1)
