"""Sealed at rest: a stolen store reads as noise, a wrong key reads nothing, a lost key starts
fresh, and what is forgotten or expired is gone from the file and its keys shredded."""

from __future__ import annotations

import logging
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_client.context_store import ContextStore
from edge_client.device import EdgeDevice
from edge_client.outbox import Outbox
from edge_client.retention import RetentionPolicy
from edge_client.sealing import (
    UNSEALED,
    EphemeralKeyProvider,
    FileKeyProvider,
    KeyProvider,
    SealedDataError,
    WrongKeyError,
    open_sealed,
    pack,
    unpack,
)
from edge_client.steps import AgentStep
from privacy.policy import RegionConfig, RegionPolicy

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SECRETS = ("play tech reviews", "YouTube", "Bilibili", "hunter2", "13812345678", "晚点到")


def step(i: int = 0, at: datetime = T0, **kw: object) -> AgentStep:
    fields: dict[str, object] = {
        "action": "Launch",
        "app": "YouTube",
        "instruction": "play tech reviews",
        "outcome": "accepted",
        "timestamp": at + timedelta(minutes=i),
    }
    fields.update(kw)
    return AgentStep(**fields)  # type: ignore[arg-type]


def raw_bytes(directory: Path, name: str) -> bytes:
    """Every byte of a store's files (db, -wal, -shm), as a thief copying them would get."""
    return b"".join(p.read_bytes() for p in sorted(directory.glob(name + "*")))


def assert_noise(blob: bytes) -> None:
    for secret in SECRETS:
        for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
            assert secret.encode(encoding) not in blob, secret


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def fill(store: ContextStore) -> None:
    store.record(step(0))
    store.record(step(1, action="Type", app=None, current_app="Bilibili", text="hunter2"))
    store.record(step(2, app="微信", instruction="给13812345678发消息说我晚点到"))


# --- a stolen store ------------------------------------------------------------------------------


def test_a_stolen_context_store_reads_as_noise(tmp_path: Path) -> None:
    with ContextStore(tmp_path / "context.db") as store:
        fill(store)
        assert_noise(raw_bytes(tmp_path, "context.db"))  # open: with its WAL and SHM
        assert [w.step.instruction for w in store.window(T0 + timedelta(hours=1))] == [
            "play tech reviews",
            "play tech reviews",
            "给<PHONE>发消息说我晚点到",
        ]
    assert_noise(raw_bytes(tmp_path, "context.db"))  # closed
    dump = "\n".join(sqlite3.connect(tmp_path / "context.db").iterdump())
    assert_noise(dump.encode())
    assert "晚点到" not in dump and "steps" in dump


def test_a_stolen_outbox_reads_as_noise(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as box:
        box.put(b"play tech reviews", "sotto.eu.ingest", b"YouTube", dedupe_key="summary|Bilibili")
        box.put(b"hunter2", "sotto.eu.ingest")
        assert_noise(raw_bytes(tmp_path, "outbox.db"))
        assert box.put(b"x", "sotto.eu.ingest", dedupe_key="summary|Bilibili") == 1
        assert [i.value for i in box.pending(topics=["sotto.eu.ingest"])] == [
            b"play tech reviews",
            b"hunter2",
        ]
        assert box.pending(topics=["other"]) == []
    blob = raw_bytes(tmp_path, "outbox.db")
    assert_noise(blob)
    assert b"sotto.eu.ingest" not in blob and b"summary|" not in blob


def test_store_files_and_the_key_file_are_private(tmp_path: Path) -> None:
    with ContextStore(tmp_path / "context.db") as store:
        store.record(step())
        files = [*tmp_path.glob("context.db*"), tmp_path / "device.key"]
        assert {p.name for p in files} >= {"context.db", "context.db-wal", "context.db-shm"}
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), files


def test_a_loose_key_file_is_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = FileKeyProvider(tmp_path / "device.key")
    (tmp_path / "device.key").chmod(0o644)
    with caplog.at_level(logging.WARNING):
        again = FileKeyProvider(tmp_path / "device.key")
    assert again.key_id == keys.key_id
    assert stat.S_IMODE((tmp_path / "device.key").stat().st_mode) == 0o600
    assert "readable by others" in caplog.text


# --- the wrong key -------------------------------------------------------------------------------


def test_the_wrong_key_raises_and_reads_nothing(tmp_path: Path) -> None:
    other = FileKeyProvider(tmp_path / "other" / "device.key")  # exists before the store
    with ContextStore(tmp_path / "context.db") as store:
        fill(store)
    for opener in (
        lambda: ContextStore(tmp_path / "context.db", keys=other),
        lambda: ContextStore(tmp_path / "context.db", keys=UNSEALED),
    ):
        with pytest.raises(WrongKeyError) as err:
            opener()
        assert_noise(str(err.value).encode())
    with ContextStore(tmp_path / "context.db") as store:  # nothing was wiped
        assert len(store.window(T0 + timedelta(hours=1))) == 3


def test_a_tampered_or_moved_row_raises(tmp_path: Path) -> None:
    path = tmp_path / "context.db"
    with ContextStore(path) as store:
        store.record(step(0))
        store.record(step(1, instruction="navigate home"))
    raw = sqlite3.connect(path)
    (a,), (b,) = raw.execute("SELECT sealed FROM steps ORDER BY id").fetchall()
    raw.execute("UPDATE steps SET sealed = ? WHERE id = 1", (b,))  # row 2's value in row 1
    raw.commit()
    raw.close()
    with ContextStore(path) as store, pytest.raises(SealedDataError) as err:
        store.window(T0 + timedelta(hours=1))
    assert_noise(str(err.value).encode())
    raw = sqlite3.connect(path)
    raw.execute("UPDATE steps SET sealed = ? WHERE id = 1", (a[:-1] + bytes([a[-1] ^ 1]),))
    raw.commit()
    raw.close()
    with ContextStore(path) as store, pytest.raises(SealedDataError):
        store.steps()


def test_a_store_written_unsealed_is_wiped_when_a_key_opens_it(tmp_path: Path) -> None:
    with ContextStore(tmp_path / "context.db", keys=UNSEALED) as store:
        store.record(step())
        assert b"play tech reviews" in raw_bytes(tmp_path, "context.db")
    with ContextStore(tmp_path / "context.db") as store:
        assert len(store) == 0
    assert_noise(raw_bytes(tmp_path, "context.db"))


# --- the lost key ----------------------------------------------------------------------------


def policy(tmp_path: Path) -> RegionPolicy:
    region = RegionConfig(
        name="eu",
        bootstrap_servers=["127.0.0.1:9"],
        database_url="sqlite://",
        keyset_dir=str(tmp_path / "keys"),
    )
    return RegionPolicy(regions={"eu": region})


def test_a_device_whose_key_is_gone_starts_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "dev"
    with EdgeDevice("phone-1", "eu", "cohort-a", policy(tmp_path), data) as device:
        device.record_step(step())
        device._outbox.put(b"envelope", device.topic, dedupe_key="summary|eu|cohort-a|1")
        assert len(device.context_embedding(T0).nonzero()[0]) > 0 and device.pending == 1
    (data / "device.key").unlink()
    with (
        caplog.at_level(logging.WARNING),
        EdgeDevice("phone-1", "eu", "cohort-a", policy(tmp_path), data) as device,
    ):
        assert not device.context_embedding(T0).any() and device.pending == 0
        device.record_step(step(1))  # and it works as a new device
        assert device.context_embedding(T0 + timedelta(hours=1)).any()
    assert "is lost" in caplog.text and "context" in caplog.text and "outbox" in caplog.text
    assert (data / "device.key").exists()


def test_a_corrupt_key_file_counts_as_lost(tmp_path: Path) -> None:
    with ContextStore(tmp_path / "context.db") as store:
        store.record(step())
    (tmp_path / "device.key").write_bytes(b"garbage")
    with ContextStore(tmp_path / "context.db") as store:
        assert len(store) == 0


def test_openers_racing_on_a_missing_key_agree(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: FileKeyProvider(tmp_path / "device.key").key_id, range(16)))
    assert len(ids) == 1


# --- forgetting and retention ----------------------------------------------------------------


def keys_in(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT scope FROM _sealing_keys ORDER BY id")]
    finally:
        conn.close()


def test_retention_deletes_expired_steps_and_shreds_their_day_keys(tmp_path: Path) -> None:
    clock = Clock(T0)
    policy = RetentionPolicy(context=timedelta(days=30), check_every=1)
    path = tmp_path / "context.db"
    with ContextStore(path, retention=policy, clock=clock) as store:
        store.record(step(0))
        clock.at = T0 + timedelta(days=1)
        store.record(step(1, at=clock.at))
        assert keys_in(path) == ["_tag", "day:2026-12-01", "day:2026-12-02"]
        clock.at = T0 + timedelta(days=30, hours=12)  # the first day's step is now too old
        store.record(step(2, at=clock.at))
        assert len(store) == 2
        assert keys_in(path) == ["_tag", "day:2026-12-02", "day:2026-12-31"]
    clock.at = T0 + timedelta(days=400)  # enforced on open too
    with ContextStore(path, retention=policy, clock=clock) as store:
        assert len(store) == 0
    assert keys_in(path) == ["_tag"]
    assert_noise(raw_bytes(tmp_path, "context.db"))


def test_a_forgotten_step_is_gone_and_its_key_shredded(tmp_path: Path) -> None:
    path = tmp_path / "context.db"
    keys = FileKeyProvider(tmp_path / "device.key")
    with ContextStore(path, keys=keys) as store:
        store.record(step(0))
        (row,) = sqlite3.connect(path).execute("SELECT id, key_id, sealed FROM steps").fetchall()
        assert store.delete(lambda s: s.app == "YouTube") == 1
        assert keys_in(path) == ["_tag"]
        assert (tmp_path / "context.db-wal").stat().st_size == 0  # truncated after the purge
    # the row's ciphertext, copied before the forget, can no longer be opened
    conn, vault, _ = open_sealed(path, "", store="context", keys=keys)
    with pytest.raises(SealedDataError, match="gone"):
        vault.open("steps", row[0], row[1], row[2])
    conn.close()


def test_outbox_retention(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(T0)
    policy = RetentionPolicy(outbox_sent=timedelta(days=7), outbox_pending=timedelta(days=30))
    path = tmp_path / "outbox.db"
    with Outbox(path, retention=policy, clock=clock) as box:
        sent = box.put(b"a", "t", dedupe_key="r1")
        box.mark_sent([sent])
        box.put(b"b", "t", dedupe_key="r2")
        clock.at = T0 + timedelta(days=8)
        assert box.expire() == 1  # the sent one
        assert [i.value for i in box.pending()] == [b"b"]
        clock.at = T0 + timedelta(days=31)
        with caplog.at_level(logging.WARNING):
            assert box.expire() == 1
        assert "undelivered" in caplog.text and box.pending() == []
    assert keys_in(path) == ["_tag"]


def test_retention_policy_is_typed_and_validated() -> None:
    assert RetentionPolicy().describe() == {
        "context": 30.0,
        "memory": 90.0,
        "outbox_sent": 7.0,
        "outbox_pending": 30.0,
        "check_every": 50,
    }
    with pytest.raises(ValueError):
        RetentionPolicy(context=timedelta(0))
    with pytest.raises(ValueError):
        RetentionPolicy(check_every=0)


# --- the pieces ------------------------------------------------------------------------------


def test_a_file_from_before_sealing_is_masked_and_resealed(tmp_path: Path) -> None:
    path = tmp_path / "context.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE steps (id INTEGER NOT NULL, ts FLOAT NOT NULL, step TEXT NOT NULL, "
        "embed_version INTEGER NOT NULL, embedding BLOB NOT NULL, PRIMARY KEY (id));"
    )
    legacy = step(0, app="微信", instruction="给13812345678发消息说我晚点到")
    old.execute(
        "INSERT INTO steps (ts, step, embed_version, embedding) VALUES (?, ?, 1, x'')",
        (legacy.timestamp.timestamp(), legacy.model_dump_json()),
    )
    old.commit()
    old.close()
    with ContextStore(path) as store:
        assert [s.instruction for s in store.steps()] == ["给<PHONE>发消息说我晚点到"]
    assert_noise(raw_bytes(tmp_path, "context.db"))


def test_key_providers_keep_their_key_out_of_reprs(tmp_path: Path) -> None:
    for keys in (FileKeyProvider(tmp_path / "k"), EphemeralKeyProvider()):
        assert isinstance(keys, KeyProvider)
        assert "key_id" in repr(keys)
        wrapped = keys.wrap(b"k" * 32, b"ctx")
        assert keys.unwrap(wrapped, b"ctx") == b"k" * 32
        with pytest.raises(WrongKeyError):
            keys.unwrap(wrapped, b"other context")
    raw = (tmp_path / "k").read_bytes()
    assert raw[-32:].hex() not in repr(FileKeyProvider(tmp_path / "k"))


def test_pack_round_trips() -> None:
    fields = [b"", None, b"\x00\x01", "步骤".encode()]
    assert unpack(pack(*fields)) == fields


def test_a_key_shredded_by_another_process_is_not_reused(tmp_path: Path) -> None:
    """The running agent and ``sotto device forget`` share the file: a day key the CLI shreds
    must not go on sealing the agent's next steps (they could never be read)."""
    path = tmp_path / "context.db"
    with ContextStore(path) as agent, ContextStore(path) as cli:
        agent.record(step(0))
        assert cli.delete() == 1
        agent.record(step(1))
        assert [s.timestamp for s in cli.steps()] == [T0 + timedelta(minutes=1)]
        assert len(agent.steps()) == 1
