"""The context store: bounded window, decay weights, persistence, no typed text on disk."""

from __future__ import annotations

import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from edge_client.context_store import ContextStore
from edge_client.steps import AgentStep

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def step(i: int, at: datetime, **kw) -> AgentStep:
    fields = {
        "action": "Launch",
        "app": f"app{i % 3}",
        "instruction": f"task number {i}",
        "outcome": "accepted",
        "timestamp": at,
    }
    fields.update(kw)
    return AgentStep(**fields)


def test_window_is_bounded_to_the_newest_steps(tmp_path: Path) -> None:
    with ContextStore(tmp_path / "ctx.db", max_steps=5) as store:
        for i in range(12):
            store.record(step(i, T0 + timedelta(minutes=i)))
        assert len(store) == 5
        kept = [w.step.instruction for w in store.window(T0 + timedelta(hours=1))]
    assert kept == [f"task number {i}" for i in range(7, 12)]


def test_late_arriving_old_step_is_the_one_dropped(tmp_path: Path) -> None:
    with ContextStore(tmp_path / "ctx.db", max_steps=3) as store:
        for i in range(3):
            store.record(step(i, T0 + timedelta(minutes=i)))
        store.record(step(99, T0 - timedelta(days=1)))  # recorded late, but oldest
        kept = [w.step.instruction for w in store.window(T0 + timedelta(hours=1))]
    assert kept == ["task number 0", "task number 1", "task number 2"]


def test_decay_weights_halve_every_half_life(tmp_path: Path) -> None:
    now = T0 + timedelta(days=14)
    with ContextStore(tmp_path / "ctx.db", half_life=timedelta(days=7)) as store:
        store.record(step(0, T0))  # 2 half-lives old
        store.record(step(1, T0 + timedelta(days=7)))  # 1 half-life old
        store.record(step(2, now))  # now
        weights = [w.weight for w in store.window(now)]
    assert weights == pytest.approx([0.25, 0.5, 1.0])


def test_future_steps_are_not_in_the_window_yet(tmp_path: Path) -> None:
    with ContextStore(tmp_path / "ctx.db") as store:
        store.record(step(0, T0))
        store.record(step(1, T0 + timedelta(hours=1)))
        assert len(store.window(T0)) == 1
        assert len(store.window(T0 + timedelta(hours=1))) == 2


def test_context_embedding_is_unit_norm_and_favours_recent_steps(tmp_path: Path) -> None:
    now = T0 + timedelta(days=30)
    with ContextStore(tmp_path / "ctx.db", half_life=timedelta(days=1)) as store:
        assert not store.context_embedding(now).any()  # empty window: zero vector
        old = step(0, T0, app="Maps", instruction="navigate to work")
        new = step(1, now, app="Music", instruction="play jazz")
        store.record(old)
        store.record(new)
        ctx = store.context_embedding(now)
    assert ctx.shape == (128,) and ctx.dtype == np.float32
    assert float(np.linalg.norm(ctx)) == pytest.approx(1.0, abs=1e-6)
    assert float(ctx @ new.embedding()) > 0.99
    assert float(ctx @ new.embedding()) > float(ctx @ old.embedding())


def test_store_survives_restart_and_keeps_no_typed_text(tmp_path: Path) -> None:
    path = tmp_path / "ctx.db"
    typed = step(0, T0, action="Type", app=None, text="my-secret-pin-4711")
    with ContextStore(path) as store:
        store.record(typed)
        before = store.context_embedding(T0)
    with ContextStore(path) as reopened:
        items = reopened.window(T0)
        after = reopened.context_embedding(T0)
    assert len(items) == 1 and items[0].step.text is None
    assert np.array_equal(before, after)
    # The whole secret, not a fragment of it: four digits turn up by chance in a hex dump of
    # ciphertext about once in sixty runs, and that is noise, not a leak.
    secret = "my-secret-pin-4711"
    dump = "\n".join(sqlite3.connect(path).iterdump())
    assert secret not in dump
    blob = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("ctx.db*")))
    for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
        assert secret.encode(encoding) not in blob, encoding


def test_invalid_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_steps"):
        ContextStore(tmp_path / "a.db", max_steps=0)
    with pytest.raises(ValueError, match="half_life"):
        ContextStore(tmp_path / "b.db", half_life=timedelta(0))
    with ContextStore(tmp_path / "c.db") as store, pytest.raises(ValueError, match="aware"):
        store.window(datetime(2025, 1, 1))


def test_files_are_private_to_the_owner(tmp_path: Path) -> None:
    path = tmp_path / "ctx.db"
    with ContextStore(path) as store:
        store.record(step(0, T0))
        files = list(tmp_path.glob("ctx.db*"))
        assert {p.name for p in files} >= {"ctx.db", "ctx.db-wal", "ctx.db-shm"}
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), files
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
