"""The outbox: durable across restarts, idempotent by dedupe key, bounded once sent."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import edge_client
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


def test_files_are_private_to_the_owner(tmp_path: Path) -> None:
    path = tmp_path / "new" / "outbox.db"
    with Outbox(path) as box:
        box.put(b"sealed", "t")
        files = list(tmp_path.rglob("outbox.db*"))
        assert {p.name for p in files} >= {"outbox.db", "outbox.db-wal", "outbox.db-shm"}
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        assert modes == dict.fromkeys(modes, 0o600)


def test_a_file_written_by_the_previous_version_opens_and_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    old = sqlite3.connect(path)  # the schema SQLAlchemy created, verbatim, world-readable
    old.executescript(
        "CREATE TABLE outbox (\n\tid INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, \n\ttopic TEXT "
        'NOT NULL, \n\t"key" BLOB, \n\tvalue BLOB NOT NULL, \n\tdedupe_key TEXT, \n\tcreated_at '
        "FLOAT NOT NULL, \n\tsent_at FLOAT, \n\tattempts INTEGER NOT NULL, \n\tUNIQUE (dedupe_key)"
        "\n);\nCREATE INDEX ix_outbox_sent_at ON outbox (sent_at);\n"
        "INSERT INTO outbox (topic, key, value, dedupe_key, created_at, attempts) "
        "VALUES ('t', NULL, CAST('legacy-envelope' AS BLOB), 'dedupe-d', strftime('%s', 'now'), 3);"
    )
    old.close()
    path.chmod(0o644)
    with Outbox(path) as box:
        assert [(p.id, p.value, p.attempts) for p in box.pending()] == [(1, b"legacy-envelope", 3)]
        assert box.put(b"other", "t", dedupe_key="dedupe-d") == 1
        box.mark_sent([1])
        assert box.put(b"new", "t") == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # resealed: the clear-text row of the old file is gone from it
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("outbox.db*"))
    assert b"legacy-envelope" not in raw and b"dedupe-d" not in raw


def test_usable_from_another_thread(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as box, ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda i: box.put(bytes([i]), "t", dedupe_key=str(i % 5)), range(20)))
        assert len(set(ids)) == 5 and len(box.pending()) == 5


def test_the_stores_do_not_import_sqlalchemy() -> None:
    """The device SDK installs without the backend's libraries (tests/test_edge_install.py)."""
    root = Path(edge_client.__file__).resolve().parents[1]
    code = (
        "import sys, edge_client.outbox, edge_client.context_store\n"
        "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
