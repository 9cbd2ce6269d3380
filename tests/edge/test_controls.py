"""DeviceControls on a bare data dir: the recording gate, never-record matching, pause, hint
switches, show/describe/export and forget. No torch, no backend, no broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_client.controls import DEFAULT_NEVER_RECORD, DeviceControls
from edge_client.outbox import Outbox
from edge_client.steps import AgentStep

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def step(task: str = "打开导航", at: datetime = T0, **kw) -> AgentStep:
    kw.setdefault("action", "Launch")
    if kw["action"] == "Launch":
        kw.setdefault("app", "高德地图")
    kw.setdefault("outcome", "accepted")
    return AgentStep(instruction=task, timestamp=at, **kw)


@pytest.fixture
def controls(tmp_path: Path) -> DeviceControls:
    with DeviceControls(tmp_path / "dev", clock=lambda: T0 + timedelta(minutes=5)) as c:
        yield c


@pytest.mark.parametrize(
    ("entry", "app", "covered"),
    [
        ("支付宝", "支付宝", True),
        ("*银行*", "招商银行", True),
        ("*Bank*", "HSBC UK Mobile Banking", True),
        ("*Bank*", "Bank of China", True),
        ("Google Maps", "GoogleMaps", True),  # Open-AutoGLM reports whichever spelling
        ("微信支付", "微信", False),  # a feature of 微信, not the app
        ("*银行*", "高德地图", False),
    ],
)
def test_never_record_matching(
    controls: DeviceControls, entry: str, app: str, covered: bool
) -> None:
    controls.remove_never_record(*DEFAULT_NEVER_RECORD)
    controls.add_never_record(entry)
    assert controls.never_records(step(app=app)) is covered
    assert controls.never_records(step(action="Tap", element=(1, 1), current_app=app)) is covered


def test_never_record_is_enforced_before_anything_is_stored(controls: DeviceControls) -> None:
    assert controls.never_record == DEFAULT_NEVER_RECORD
    assert not controls.record_step(step(app="支付宝"))
    assert not controls.record_step(step("用支付宝付款", action="Home"))  # the task names it
    assert not controls.record_step(step("导航去招商银行", app="招商银行"))
    assert controls.record_step(step("导航去招商银行"))  # a bank as a destination is fine
    assert len(controls.context) == 1 and len(controls.memory) == 1

    assert controls.add_never_record("高德地图")[-1] == "高德地图"
    assert not controls.record_step(step())
    controls.remove_never_record("高德地图")
    assert controls.record_step(step())
    assert controls.reset_never_record() == DEFAULT_NEVER_RECORD


def test_pause_stops_storing_learning_and_counting(tmp_path: Path) -> None:
    with DeviceControls(tmp_path / "dev") as running, DeviceControls(tmp_path / "dev") as cli:
        cli.pause()  # another process: read at the next step
        flagged = step(action="Unknown", app=None, flags=("unknown_action",), outcome="failed")
        assert not running.record_step(flagged) and not running.record_step(step())
        assert len(running.context) == 0 and len(running.memory) == 0
        assert running.counters["unknown_action"] == 0
        cli.resume()
        assert running.record_step(flagged)
        assert running.counters["unknown_action"] == 1


def test_hint_switches_persist(tmp_path: Path) -> None:
    with DeviceControls(tmp_path / "dev") as c:
        assert (c.hint_enabled, c.hint_local_only) == (True, False)
        c.set_hint(enabled=False, local_only=True)
    with DeviceControls(tmp_path / "dev") as c:
        assert (c.hint_enabled, c.hint_local_only) == (False, True)
        c.set_hint(enabled=True)
        assert (c.hint_enabled, c.hint_local_only) == (True, True)


def test_show_describe_export(controls: DeviceControls) -> None:
    controls.record_step(step())
    controls.record_step(step(action="Tap", element=(2000 // 2, 5), current_app="高德地图"))
    controls.record_step(step(action="Type", text="公司", current_app="高德地图"))
    shown = controls.show()
    assert shown["steps"]["count"] == 3 and shown["steps"]["by_app"] == {"高德地图": 3}
    assert shown["preferences"] == {"navigation": {"高德地图": pytest.approx(0.92, abs=1e-3)}}
    assert shown["adapters"] is None and shown["outbox"] is None
    text = controls.describe()
    assert "3 agent steps" in text and "navigation: 高德地图 0.92" in text
    assert "never recorded: 支付宝" in text and "hint to the agent: on" in text
    doc = controls.export()
    raw = json.dumps(doc, ensure_ascii=False)
    assert "公司" not in raw  # typed text was never stored, so it cannot be exported
    assert [s["action"] for s in doc["steps"]] == ["Launch", "Tap", "Type"]


def test_forget_everything_one_app_one_intent_a_time_range(tmp_path: Path) -> None:
    data = tmp_path / "dev"
    outbox = Outbox(data / "outbox.db")
    outbox.put(b"sealed summary", "sotto.cn.ingest", dedupe_key="summary|cn|c0|7")
    outbox.put(b"round message", "sotto.cn.ingest", dedupe_key="round|cn|c0|7|1")
    with DeviceControls(data, outbox=outbox) as c:
        c.record_step(step())
        c.record_step(step("播放音乐", app="QQ音乐", at=T0 + timedelta(hours=1)))
        c.record_step(
            step("播放音乐", action="Back", current_app="QQ音乐", at=T0 + timedelta(hours=2))
        )
        c.record_step(step("打车去机场", app="滴滴出行", at=T0 + timedelta(days=3)))
        with pytest.raises(ValueError, match="timezone-aware"):
            c.forget(since=datetime(2026, 11, 24))
        assert c.forget(app="qq音乐") == {"steps": 2, "memory": 1, "envelopes": 1}
        assert c.forget(intent="navigation") == {"steps": 1, "memory": 1, "envelopes": 0}
        assert c.forget(until=T0 + timedelta(days=1)) == {"steps": 0, "memory": 0, "envelopes": 0}
        assert c.forget(since=T0 + timedelta(days=1))["steps"] == 1
        assert len(c.context) == 0 and len(c.memory) == 0
        assert [i.value for i in outbox.pending()] == [b"round message"]  # only summaries go
    outbox.close()
