"""PersonalMemory (on-device launch preferences), the intent matcher, and memory-then-model
in PreferenceHint. No torch, no backend: runs in the edge-only venv too."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from edge_client.hint import PreferenceHint
from edge_client.intents import intent_of
from edge_client.memory import PersonalMemory
from edge_client.steps import AgentStep, Outcome

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def launch(app: str, outcome: Outcome = "accepted", task: str = "打开导航", at: datetime = T0):
    return AgentStep(action="Launch", app=app, instruction=task, outcome=outcome, timestamp=at)


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("打开导航去公司", "navigation"),
        ("导航回家", "navigation"),
        ("navigate to work", "navigation"),
        ("给妈妈发微信", "messaging"),
        ("message Anna on Signal", "messaging"),
        ("播放音乐", "music"),
        ("play some music on spotify", "music"),
        ("帮我点外卖", "food_delivery"),
        ("打车去机场", "ride_hailing"),
        ("用微信付款", "payments"),  # 微信 serves two intents: the keyword decides
        ("check the signal strength", None),  # an everyday word is not the app
        ("你好", None),
    ],
)
def test_intent_of(text: str, intent: str | None) -> None:
    assert intent_of(text) == intent


def test_one_accepted_launch_is_a_preference_for_the_whole_intent() -> None:
    with PersonalMemory(":memory:") as memory:
        memory.learn_one(launch("高德地图", task="打开导航去公司"))
        assert memory.scores("导航回家", T0) == {"高德地图": pytest.approx(0.92, abs=1e-3)}
        assert memory.scores("播放音乐", T0) == {}  # another intent
        assert memory.scores("你好", T0) == {}  # no intent at all


def test_what_teaches_what() -> None:
    with PersonalMemory(":memory:") as memory:
        memory.learn_one(launch("腾讯地图", "failed"))
        assert memory.scores("打开导航", T0) == {"腾讯地图": 0.0}  # a failure is no habit
        memory.learn_one(launch("百度地图", "handed_over"))
        tap = AgentStep(action="Tap", element=(1, 2), instruction="打开导航", outcome="accepted",
                        timestamp=T0)  # fmt: skip
        memory.learn_one(tap)
        assert len(memory) == 1  # only launches, only preference outcomes teach

        # the agent opened 高德地图, the user went for 百度地图: the override wins outright
        memory.learn_one(launch("高德地图", task="导航去机场"))
        memory.learn_one(launch("百度地图", "overridden", task="导航去机场"))
        scores = memory.scores("打开导航", T0)
        assert next(iter(scores)) == "百度地图"  # best first
        # the launch the user refused is a negative now
        # its habit share 2 / 2.25, and it is the latest choice
        assert scores == {
            "百度地图": pytest.approx(0.6 + 0.4 * 2 / 2.25),
            "高德地图": 0.0,
            "腾讯地图": 0.0,
        }
        assert [e.kind for e in memory.evidence()] == ["failed", "refused", "overridden"]


def test_one_run_switches_an_old_habit() -> None:
    """Weeks of 百度地图, then one accepted run with 高德地图: the next hint follows the switch."""
    with PersonalMemory(":memory:") as memory:
        for day in range(10):
            memory.learn_one(launch("百度地图", at=T0 + timedelta(days=day)))
        switched = T0 + timedelta(days=10)
        assert next(iter(memory.scores("导航回家", switched))) == "百度地图"
        memory.learn_one(launch("高德地图", at=switched))
        scores = memory.scores("导航回家", switched + timedelta(minutes=5))
        assert next(iter(scores)) == "高德地图" and scores["高德地图"] >= 0.6  # clears min_score


def test_evidence_decays_and_is_bounded() -> None:
    with PersonalMemory(":memory:", half_life=timedelta(days=14), max_events=3) as memory:
        memory.learn_one(launch("高德地图"))
        two_weeks = T0 + timedelta(days=14)
        assert memory.scores("打开导航", two_weeks) == {
            "高德地图": pytest.approx(0.6 * 0.5 + 0.4 * 0.5 / 0.75)  # the latest choice decays too
        }
        assert memory.scores("打开导航", T0 - timedelta(seconds=1)) == {}  # not yet learned
        for i in range(5):
            memory.learn_one(launch("百度地图", at=T0 + timedelta(hours=i + 1)))
        assert len(memory) == 3 and {e.app for e in memory.evidence()} == {"百度地图"}
        memory.learn_one(launch("高德地图", at=T0 + timedelta(days=200)))
        assert [e.app for e in memory.evidence()] == ["高德地图"]  # ten half-lives: gone


def test_forget_and_export_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    with PersonalMemory(path) as memory:
        memory.learn_one(launch("高德地图"))
        memory.learn_one(launch("QQ音乐", task="播放音乐", at=T0 + timedelta(days=1)))
        memory.learn_one(launch("网易云音乐", task="play music", at=T0 + timedelta(days=2)))
    with PersonalMemory(path) as memory:  # on disk: survives a restart
        doc = memory.export(T0 + timedelta(days=2))
        assert [e["app"] for e in doc["evidence"]] == ["高德地图", "QQ音乐", "网易云音乐"]
        assert set(doc["preferences"]) == {"navigation", "music"}
        assert memory.forget(since=T0 + timedelta(days=2)) == 1
        assert memory.forget(app="高德地图") == 1
        assert memory.forget(intent="navigation") == 0
        assert memory.forget(intent="music") == 1
        assert len(memory) == 0
        memory.learn_one(launch("高德地图"))
        assert memory.forget() == 1


# --- memory first, then the model -------------------------------------------------------------


@dataclass(frozen=True)
class S:  # the shape of edge_client.runtime.Suggestion
    candidate: str
    score: float


class Model:
    """A model whose navigation favourite is 高德地图 (0.9), as the population's."""

    def suggest(self, instruction: str, context: np.ndarray, k: int = 3) -> list[S]:
        return [S("launch:高德地图", 0.9), S("launch:百度地图", 0.05), S("launch:腾讯地图", 0.05)]


def hint_with(memory: PersonalMemory) -> PreferenceHint:
    return PreferenceHint(
        Model(), lambda: np.zeros(128, np.float32), memory=memory, clock=lambda: T0
    )


def test_memory_wins_when_it_has_evidence_and_the_model_fills_in() -> None:
    with PersonalMemory(":memory:") as memory:
        hint = hint_with(memory)
        assert hint.choose_app("打开导航") == "高德地图"  # nothing remembered: the model
        memory.learn_one(launch("百度地图"))
        assert hint.choose_app("导航回家") == "百度地图"  # one accepted run is enough
        assert hint.text("导航回家").startswith(
            "用户偏好（设备端学习）：此类请求通常使用 百度地图（0.92）"
        )
        assert hint.choose_app("用高德地图导航") is None  # the user named an app


def test_an_app_that_failed_is_not_suggested_on_the_models_word() -> None:
    with PersonalMemory(":memory:") as memory:
        memory.learn_one(launch("高德地图", "failed"))
        hint = hint_with(memory)
        assert hint.preferences("打开导航") == []  # 高德地图 is now 0.0, the rest too unsure
        memory_only = PreferenceHint(memory=memory, clock=lambda: T0)
        assert memory_only.text("打开导航") == ""
        with pytest.raises(ValueError, match="needs context"):
            PreferenceHint(Model())
