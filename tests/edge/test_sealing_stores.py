"""The personal memory and the user's controls are sealed like the context store and the
outbox: their files read as noise, forgetting shreds, retention expires."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_client.controls import ControlsStore, DeviceControls
from edge_client.memory import MemoryStore, PersonalMemory
from edge_client.retention import RetentionPolicy
from edge_client.sealing import FileKeyProvider, WrongKeyError
from edge_client.steps import AgentStep

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def raw_bytes(directory: Path, name: str) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.glob(name + "*")))


def keys_in(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT scope FROM _sealing_keys ORDER BY id")]
    finally:
        conn.close()


def launch(app: str, at: datetime = T0, task: str = "打开导航去公司") -> AgentStep:
    return AgentStep(action="Launch", app=app, instruction=task, outcome="accepted", timestamp=at)


def test_a_stolen_memory_reads_as_noise(tmp_path: Path) -> None:
    with PersonalMemory(tmp_path / "memory.db") as memory:
        memory.learn_one(launch("高德地图"))
        memory.learn_one(launch("Spotify", task="play some jazz"))
        assert memory.scores("导航回家", T0) == {"高德地图": 0.92}
        blob = raw_bytes(tmp_path, "memory.db")
    blob += raw_bytes(tmp_path, "memory.db")
    for secret in ("高德地图", "Spotify", "navigation", "music", "accepted"):
        assert secret.encode() not in blob, secret


def test_memory_forget_by_app_and_retention(tmp_path: Path) -> None:
    clock = Clock(T0)
    policy = RetentionPolicy(memory=timedelta(days=90), check_every=1)
    path = tmp_path / "memory.db"
    store = MemoryStore(path, retention=policy, clock=clock)
    store.add(T0, "navigation", "高德地图", "accepted")
    store.add(T0, "music", "Spotify", "accepted")
    assert store.apps() == ["Spotify", "高德地图"]
    assert store.delete(apps=("Spotify",)) == 1 and store.apps() == ["高德地图"]
    clock.at = T0 + timedelta(days=91)
    store.add(clock.at, "navigation", "百度地图", "accepted")  # the first one expires
    assert [e.app for e in store.rows()] == ["百度地图"]
    assert keys_in(path) == ["_tag", "day:2027-03-02"]
    store.close()


def test_controls_values_are_sealed(tmp_path: Path) -> None:
    with DeviceControls(tmp_path) as controls:
        controls.add_never_record("招商银行", "Tinder")
        assert "Tinder" in controls.never_record
    blob = raw_bytes(tmp_path, "controls.db")
    assert b"Tinder" not in blob and "招商银行".encode() not in blob
    with DeviceControls(tmp_path) as controls:
        assert "Tinder" in controls.never_record


def test_memory_and_controls_refuse_the_wrong_key(tmp_path: Path) -> None:
    other = FileKeyProvider(tmp_path / "elsewhere" / "device.key")
    ControlsStore(tmp_path / "controls.db").close()
    MemoryStore(tmp_path / "memory.db").close()
    with pytest.raises(WrongKeyError):
        ControlsStore(tmp_path / "controls.db", keys=other)
    with pytest.raises(WrongKeyError):
        MemoryStore(tmp_path / "memory.db", keys=other)
