"""Open-AutoGLM integration: observe a PhoneAgent's steps, without importing Open-AutoGLM.

PhoneAgent (``phone_agent.agent``) runs ``run(task)`` as a loop of ``_execute_step`` calls,
each returning a ``StepResult(success, finished, action, thinking, message)`` whose
``action`` is the dict from ``parse_action``: ``{"_metadata": "do", "action": "Launch",
"app": "高德地图"}``, ``{"_metadata": "do", "action": "Tap", "element": [500, 120]}`` or
``{"_metadata": "finish", "message": "..."}``. Everything here is duck-typed on those
shapes, so it works with the real package when installed and costs nothing when it is not.

Why wrap ``_execute_step`` rather than ask users to call us: the agent's loop is inside
``run``; wrapping the instance (never the class) is the one hook that sees every step
without forking the agent. :meth:`AgentObserver.detach` restores the originals.

What is recorded: the action, its app and coordinates, the task text (hashed into the
embedding, never sent), the foreground app, and an outcome: ``failed`` when the step did
not succeed, ``overridden`` when the user took over or the caller reports an override,
``accepted`` otherwise. Free text the agent typed is dropped by the context store.

:func:`personalize` wires both directions into one agent: the observer records its steps and
a :class:`edge_client.hint.PreferenceHint` tells it, per task, what this user tends to open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from edge_client.steps import ACTIONS, AgentStep, Outcome
from privacy.wire import utcnow

if TYPE_CHECKING:
    from edge_client.hint import PreferenceHint

log = logging.getLogger(__name__)


class StepRecorder(Protocol):
    """Anything with ``record_step``: an :class:`edge_client.device.EdgeDevice` or a ContextStore."""

    def record_step(self, step: AgentStep) -> None: ...


class AgentObserver:
    """Turns PhoneAgent steps into :class:`AgentStep` behavior events.

    Parameters
    ----------
    recorder
        Where steps go (``EdgeDevice.record_step``).
    clock
        Source of timestamps; injectable so tests and replays are deterministic.
    current_app
        Optional callable returning the foreground app (e.g. Open-AutoGLM's
        ``device_factory.get_current_app``); without it the last launched app is used.
    task_filter
        Maps the task the agent was given to the instruction to record, e.g.
        :meth:`PreferenceHint.strip` so an appended hint is never learned from.
    """

    def __init__(
        self,
        recorder: StepRecorder,
        *,
        clock: Callable[[], datetime] = utcnow,
        current_app: Callable[[], str | None] | None = None,
        task_filter: Callable[[str], str] | None = None,
    ) -> None:
        self.recorder = recorder
        self.clock = clock
        self.current_app = current_app
        self.task_filter = task_filter
        self._task: str | None = None
        self._foreground: str | None = None
        self._last: AgentStep | None = None
        self._attached: list[tuple[Any, dict[str, Any]]] = []
        self._skipped = 0

    @property
    def task(self) -> str | None:
        return self._task

    @property
    def skipped(self) -> int:
        """Steps that could not be recorded (unknown action names, missing task)."""
        return self._skipped

    def start_task(self, task: str) -> None:
        """A new user instruction: every following step is recorded under it."""
        self._task = self.task_filter(task) if self.task_filter else task
        self._last = None

    def observe(self, result: Any, *, outcome: Outcome | None = None) -> AgentStep | None:
        """Record one ``StepResult``. Returns the recorded step, or None if not recordable."""
        action = getattr(result, "action", None)
        if not isinstance(action, dict) or self._task is None:
            self._skipped += 1
            return None
        name = action.get("action") if action.get("_metadata") == "do" else "finish"
        if name not in ACTIONS:
            self._skipped += 1
            return None
        if outcome is None:
            if not getattr(result, "success", True):
                outcome = "failed"
            elif name == "Take_over":
                outcome = "overridden"
            else:
                outcome = "accepted"
        foreground = self.current_app() if self.current_app else self._foreground
        try:
            step = AgentStep.from_autoglm(
                action,
                instruction=self._task,
                outcome=outcome,
                timestamp=self.clock(),
                current_app=foreground if name != "Launch" else None,
            )
        except ValueError:
            self._skipped += 1
            return None
        if name == "Launch":
            self._foreground = step.app
        self.recorder.record_step(step)
        self._last = step
        return step

    def user_override(self, app: str) -> AgentStep | None:
        """The user rejected the agent's choice and opened ``app`` themselves.

        Recorded as a Launch of ``app`` with outcome ``overridden``: the strongest signal of
        a preference there is.
        """
        if self._task is None:
            return None
        step = AgentStep(
            action="Launch",
            app=app,
            instruction=self._task,
            outcome="overridden",
            timestamp=self.clock(),
        )
        self._foreground = app
        self.recorder.record_step(step)
        self._last = step
        return step

    def attach(self, agent: Any) -> Any:
        """Wrap ``agent.run``/``agent.step``/``agent._execute_step`` on this instance only."""
        originals: dict[str, Any] = {}
        run = getattr(agent, "run", None)
        execute = getattr(agent, "_execute_step", None)
        step = getattr(agent, "step", None)
        if execute is None and step is None:
            raise TypeError("agent has neither _execute_step nor step; is it a PhoneAgent?")

        if run is not None:
            originals["run"] = run

            def run_wrapper(task: str, *args: Any, **kwargs: Any) -> Any:
                self.start_task(task)
                return run(task, *args, **kwargs)

            agent.run = run_wrapper

        if execute is not None:
            originals["_execute_step"] = execute

            def execute_wrapper(user_prompt: str | None = None, *args: Any, **kwargs: Any) -> Any:
                is_first = kwargs.get("is_first", args[0] if args else False)
                if user_prompt and (is_first or self._task is None):
                    self.start_task(user_prompt)
                result = execute(user_prompt, *args, **kwargs)
                self.observe(result)
                return result

            agent._execute_step = execute_wrapper
        elif step is not None:
            originals["step"] = step

            def step_wrapper(task: str | None = None, *args: Any, **kwargs: Any) -> Any:
                if task:
                    self.start_task(task)
                result = step(task, *args, **kwargs)
                self.observe(result)
                return result

            agent.step = step_wrapper
        self._attached.append((agent, originals))
        return agent

    def detach(self) -> None:
        """Restore every wrapped agent method."""
        for agent, originals in self._attached:
            for name in originals:
                # the wrappers live in the instance dict; deleting them re-exposes the class's
                if name in vars(agent):
                    delattr(agent, name)
        self._attached.clear()


def personalize(
    agent: Any,
    recorder: StepRecorder,
    hint: PreferenceHint,
    *,
    where: Literal["task", "system_prompt"] = "task",
    clock: Callable[[], datetime] = utcnow,
    current_app: Callable[[], str | None] | None = None,
) -> AgentObserver:
    """Make a PhoneAgent personal in one call: record its steps and hint every task.

    After this, ``agent.run(task)`` runs with the hint for ``task`` appended to the task text
    (``where="task"``) or to ``agent.agent_config.system_prompt`` for that run only
    (``where="system_prompt"``; restored afterwards). Steps are recorded to ``recorder``
    under the user's own ``task``: the appended hint is stripped first, so the device never
    learns from its own suggestions. Only ``run`` is hinted; ``step()`` is observed as is.

    Why hint failures are swallowed: personalization is optional. A model or context store
    error is logged and the task runs unhinted rather than not at all.

    Returns the :class:`AgentObserver` (for ``user_override`` and ``detach``, which also
    removes the hint)::

        observer = personalize(agent, device, PreferenceHint(model, device.context_embedding))
        agent.run("打开导航去公司")
    """
    if not callable(getattr(agent, "run", None)):
        raise TypeError("agent has no run(task); is it a PhoneAgent?")
    config = getattr(agent, "agent_config", None)
    if where == "system_prompt" and not isinstance(getattr(config, "system_prompt", None), str):
        raise TypeError("where='system_prompt' needs agent.agent_config.system_prompt")
    prompt_config: Any = config
    observer = AgentObserver(recorder, clock=clock, current_app=current_app, task_filter=hint.strip)
    observer.attach(agent)
    observed_run = agent.run

    def personalized_run(task: str, *args: Any, **kwargs: Any) -> Any:
        if where == "task":
            return observed_run(_hinted(hint.augment_task, task, task), *args, **kwargs)
        base = prompt_config.system_prompt
        prompt_config.system_prompt = _hinted(lambda t: hint.system_prompt(base, t), task, base)
        try:
            return observed_run(task, *args, **kwargs)
        finally:
            prompt_config.system_prompt = base

    agent.run = personalized_run
    return observer


def _hinted(render: Callable[[str], str], task: str, fallback: str) -> str:
    try:
        return render(task)
    except Exception:  # see personalize(): a broken hint must not stop the user's task
        log.warning("preference hint failed; running the task without it", exc_info=True)
        return fallback
