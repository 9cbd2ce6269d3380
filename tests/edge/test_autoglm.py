"""The Open-AutoGLM observer, driven with step records in PhoneAgent's real format.

``AutoGLMShapedAgent`` reproduces PhoneAgent's public loop (``run`` calling
``_execute_step(task, is_first=True)`` then ``_execute_step(is_first=False)`` until a
StepResult is finished) and returns the dicts ``parse_action`` produces, so the observer is
exercised exactly as the real package would call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edge_client.autoglm import AgentObserver
from edge_client.context_store import ContextStore
from edge_client.steps import AgentStep


@dataclass
class StepResult:  # field-for-field Open-AutoGLM's phone_agent.agent.StepResult
    success: bool
    finished: bool
    action: dict[str, Any] | None
    thinking: str
    message: str | None = None


def do(**kwargs: Any) -> dict[str, Any]:
    kwargs["_metadata"] = "do"
    return kwargs


def finish(**kwargs: Any) -> dict[str, Any]:
    kwargs["_metadata"] = "finish"
    return kwargs


class AutoGLMShapedAgent:
    def __init__(self, script: list[StepResult]) -> None:
        self._script = list(script)
        self._step_count = 0

    def run(self, task: str) -> str:
        result = self._execute_step(task, is_first=True)
        while not result.finished:
            result = self._execute_step(is_first=False)
        return result.message or "Task completed"

    def _execute_step(self, user_prompt: str | None = None, is_first: bool = False) -> StepResult:
        self._step_count += 1
        return self._script.pop(0)


class Recorder:
    def __init__(self) -> None:
        self.steps: list[AgentStep] = []

    def record_step(self, step: AgentStep) -> None:
        self.steps.append(step)


def _clock() -> Any:
    t = [datetime(2026, 11, 24, 8, 0, tzinfo=UTC)]

    def now() -> datetime:
        t[0] += timedelta(seconds=5)
        return t[0]

    return now


SCRIPT = [
    StepResult(True, False, do(action="Launch", app="高德地图"), "open maps"),
    StepResult(True, False, do(action="Tap", element=[500, 120]), "search box"),
    StepResult(True, False, do(action="Type", text="公司"), "type destination"),
    StepResult(False, False, do(action="Swipe", start=[500, 800], end=[500, 200]), "scroll"),
    StepResult(True, False, do(action="Wait", duration="2 seconds"), "wait"),
    StepResult(True, True, finish(message="导航已开始"), "done", "导航已开始"),
]


def test_observer_records_every_step_of_a_run() -> None:
    rec = Recorder()
    obs = AgentObserver(rec, clock=_clock())
    agent = obs.attach(AutoGLMShapedAgent(SCRIPT))
    assert agent.run("打开导航去公司") == "导航已开始"
    actions = [s.action for s in rec.steps]
    assert actions == ["Launch", "Tap", "Type", "Swipe", "Wait", "finish"]
    assert all(s.instruction == "打开导航去公司" for s in rec.steps)
    assert rec.steps[0].app == "高德地图"
    assert rec.steps[1].current_app == "高德地图"  # foreground follows the launch
    assert rec.steps[3].outcome == "failed"
    assert rec.steps[4].duration_s == 2.0
    assert rec.steps[1].element == (500, 120)
    assert obs.skipped == 0


def test_take_over_is_handed_over_and_user_override_is_an_override() -> None:
    rec = Recorder()
    obs = AgentObserver(rec, clock=_clock())
    obs.start_task("order lunch")
    obs.observe(StepResult(True, False, do(action="Launch", app="美团"), ""))
    obs.observe(StepResult(True, False, do(action="Take_over", message="login"), ""))
    obs.user_override("饿了么")
    assert [s.outcome for s in rec.steps] == ["accepted", "handed_over", "overridden"]
    assert rec.steps[1].current_app == "美团"
    assert rec.steps[-1].app == "饿了么" and rec.steps[-1].current_app == "美团"


def test_nothing_is_dropped_unknown_actions_model_errors_and_bad_points_are_flagged() -> None:
    rec = Recorder()
    obs = AgentObserver(rec, clock=_clock())
    obs.observe(StepResult(True, False, do(action="Launch", app="x"), ""))  # no task yet
    obs.start_task("t")
    obs.observe(StepResult(False, True, None, "", "Model error: boom"))
    obs.observe(StepResult(False, False, do(action="Teleport"), "", "Unknown action: Teleport"))
    obs.observe(StepResult(True, False, do(action="Tap", element=[1500, -3]), ""))
    obs.observe(StepResult(False, False, do(action="Tap"), "", "No element coordinates"))
    assert obs.skipped == 1  # only the step with no task to file it under
    assert [(s.action, s.outcome, s.flags) for s in rec.steps] == [
        ("finish", "failed", ("model_error",)),
        ("Unknown", "failed", ("unknown_action",)),
        ("Tap", "failed", ("out_of_range",)),
        ("Unknown", "failed", ("malformed",)),
    ]
    assert rec.steps[2].element == (1000, 0)  # clamped onto the grid
    assert obs.anomalies == {
        "model_error": 1,
        "unknown_action": 1,
        "out_of_range": 1,
        "malformed": 1,
    }


def test_a_failed_launch_does_not_become_the_foreground() -> None:
    rec = Recorder()
    obs = AgentObserver(rec, clock=_clock())
    obs.start_task("打开导航")
    obs.observe(StepResult(True, False, do(action="Launch", app="高德地图"), ""))
    obs.observe(StepResult(False, False, do(action="Launch", app="腾讯地图"), "", "App not found"))
    obs.observe(StepResult(True, False, do(action="Tap", element=[1, 2]), ""))
    assert [s.outcome for s in rec.steps] == ["accepted", "failed", "accepted"]
    assert rec.steps[2].current_app == "高德地图"


def test_the_foreground_is_read_before_the_step_from_a_callable() -> None:
    screen = ["微信"]
    rec = Recorder()
    obs = AgentObserver(rec, clock=_clock(), current_app=lambda: screen[0])

    class HomeAgent(AutoGLMShapedAgent):
        def _execute_step(self, user_prompt: str | None = None, is_first: bool = False) -> Any:
            result = super()._execute_step(user_prompt, is_first)
            screen[0] = "System Home"  # what the action did: read after it, it would be wrong
            return result

    agent = obs.attach(HomeAgent([StepResult(True, True, do(action="Home"), "", "done")]))
    agent.run("回到桌面")
    assert rec.steps[0].current_app == "微信"


def test_detach_restores_the_agent_and_steps_reach_the_context_store(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "ctx.db")

    class StoreRecorder:
        def record_step(self, step: AgentStep) -> None:
            store.record(step)

    obs = AgentObserver(StoreRecorder(), clock=_clock())
    agent = AutoGLMShapedAgent(SCRIPT)
    obs.attach(agent)
    agent.run("打开导航去公司")
    obs.detach()
    assert "_execute_step" not in vars(agent) and "run" not in vars(agent)
    window = store.window(datetime(2026, 11, 25, tzinfo=UTC))
    assert len(window) == 6
    assert all(w.step.text is None for w in window)  # typed text never persisted
    store.close()
