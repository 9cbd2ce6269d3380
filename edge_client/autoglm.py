"""Open-AutoGLM integration: observe a PhoneAgent's steps, without importing Open-AutoGLM.

PhoneAgent (``phone_agent.agent``) runs ``run(task)`` as a loop of ``_execute_step`` calls.
Each step takes a screenshot, reads the foreground app (``get_current_app``), asks the model
(``model_client.request(messages)``), parses the reply (``parse_action``), executes it
(``action_handler.execute``, which calls ``confirmation_callback`` for a sensitive tap and
``takeover_callback`` for ``Take_over``) and returns a ``StepResult(success, finished,
action, thinking, message)``. Everything here is duck-typed on those shapes, so it works
with the real package when installed and costs nothing when it is not.

Why wrap the instance (never the class): the agent's loop is inside ``run``; wrapping
``_execute_step``, ``model_client.request`` and the confirmation callback of one agent is the
one hook that sees every step, what the model was shown and what the user decided, without
forking the agent. :meth:`AgentObserver.detach` restores the originals.

What a step is recorded as:

* its foreground app is the one *before* the action: the app the agent itself put in the
  model's request for this step (its ``screen_info``), so no extra adb call is made. Without
  a model client to read it from, a ``current_app`` callable is asked before the step, else
  the last app launched successfully is assumed;
* ``failed``: the action failed (a ``Launch`` Open-AutoGLM could not perform is a failure,
  and the app does not become the foreground), the model's reply could not be parsed (the
  agent turns it into a ``finish``; flagged ``parse_failure``), the model endpoint errored
  (a ``finish``, flagged ``model_error``), or the action was unknown or off the 0..1000 grid
  (flagged ``unknown_action`` / ``out_of_range`` / ``malformed``: recorded and counted,
  never dropped);
* ``overridden``: the user refused a sensitive action (the confirmation callback returned
  False), or the caller reports an override (:meth:`AgentObserver.user_override`);
* ``handed_over``: ``Take_over`` (the user acts: neither accepted nor overridden);
* ``accepted`` otherwise.

Free text the agent typed or said is dropped by the context store.

:func:`personalize` wires both directions into one agent: the observer records its steps and
a :class:`edge_client.hint.PreferenceHint` tells it, per task, what this user tends to open,
unless the hint is off (for the call, the task, the device) or the endpoint is remote and
the hint is local-only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit

from edge_client.steps import AgentStep, Flag, Outcome, autoglm_flags
from privacy.wire import utcnow

if TYPE_CHECKING:
    from edge_client.hint import PreferenceHint

log = logging.getLogger(__name__)

OPT_OUT_PREFIXES: tuple[str, ...] = ("#nohint", "#无提示")
"""Task prefixes that turn the hint off for that task (removed before the agent sees it)."""

# What Open-AutoGLM's ActionHandler answers when the confirmation callback said no.
_CANCELLED = "User cancelled sensitive operation"


class StepRecorder(Protocol):
    """Anything with ``record_step``: an :class:`edge_client.device.EdgeDevice`, a
    :class:`edge_client.controls.DeviceControls` or a ContextStore wrapper."""

    def record_step(self, step: AgentStep) -> Any: ...


class HintGate(Protocol):
    """The device-side hint switches (:class:`edge_client.controls.DeviceControls`)."""

    @property
    def hint_enabled(self) -> bool: ...

    @property
    def hint_local_only(self) -> bool: ...


@dataclass
class _Capture:
    """What the observer saw of the step under way."""

    screen_app: str | None = None  # the foreground app the agent sent the model
    polled_app: str | None = None  # from the current_app callable, asked before the step
    reply: str | None = None  # the model's raw action text, before parse_action
    refused: bool = False  # the confirmation callback returned False


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
        ``device_factory.get_current_app``), asked *before* each step, and only for agents
        whose model requests cannot be read (a PhoneAgent's can: no extra adb call then).
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
        self._capture = _Capture()
        self._reads_requests = False
        self._patched: list[tuple[Any, str, Any, bool]] = []
        self._skipped = 0
        self._recorded = 0
        self._flags: Counter[str] = Counter()
        self.last_hint = ""
        """The hint text the last hinted run was given (``""``: none)."""
        self.hint_off_reason: str | None = None
        """Why the last run got no hint, when it was not the hint's own silence."""

    @property
    def task(self) -> str | None:
        return self._task

    @property
    def last(self) -> AgentStep | None:
        """The last step recorded (or refused by the recorder's controls)."""
        return self._last

    @property
    def skipped(self) -> int:
        """Steps that could not be recorded at all (no task had been given)."""
        return self._skipped

    @property
    def recorded(self) -> int:
        """Steps the recorder stored (not refused by the user's controls)."""
        return self._recorded

    @property
    def anomalies(self) -> dict[str, int]:
        """Flag -> steps observed with it in this session (unknown actions, coordinates off
        the grid, unparsable replies, model errors)."""
        return dict(self._flags)

    def start_task(self, task: str) -> None:
        """A new user instruction: every following step is recorded under it."""
        self._task = self.task_filter(task) if self.task_filter else task
        self._last = None

    # --- one step ----------------------------------------------------------------------------

    def observe(
        self,
        result: Any,
        *,
        outcome: Outcome | None = None,
        foreground: str | None = None,
    ) -> AgentStep | None:
        """Record one ``StepResult``. Returns the step, or None without a task to file it under.

        ``foreground``: the app on screen before the step, if the caller knows it (else
        what the observer captured, see the module docstring)."""
        seen, self._capture = self._capture, _Capture()
        if self._task is None:
            self._skipped += 1
            return None
        action = getattr(result, "action", None)
        flags: set[Flag] = set()
        if not isinstance(action, Mapping):
            # PhoneAgent's answer to a model endpoint error: finished, no action.
            action = {"_metadata": "finish"}
            flags.add("model_error")
        elif (
            action.get("_metadata") == "finish"
            and seen.reply is not None
            and not seen.reply.strip().startswith("finish")
        ):
            # parse_action raised and the agent wrapped the raw reply in a finish.
            flags.add("parse_failure")
        flags.update(autoglm_flags(action))
        name = _action_name(action, flags)
        if outcome is None:
            outcome = _outcome(name, result, flags, refused=seen.refused)
        before = foreground or seen.screen_app or seen.polled_app or self._foreground
        step = AgentStep.from_autoglm(
            action,
            instruction=self._task,
            outcome=outcome,
            timestamp=self.clock(),
            current_app=before,
            flags=tuple(flags),
        )
        self._flags.update(step.flags)
        if before is not None:
            self._foreground = before
        if step.action == "Launch" and step.outcome != "failed":
            self._foreground = step.app  # only a launch that worked changes the screen
        self._record(step)
        return step

    def _record(self, step: AgentStep) -> None:
        # EdgeDevice/DeviceControls answer whether they stored it; other recorders None.
        if self.recorder.record_step(step) is not False:
            self._recorded += 1
        self._last = step

    def user_override(self, app: str) -> AgentStep | None:
        """The user rejected the agent's choice and opened ``app`` themselves.

        Recorded as a Launch of ``app`` with outcome ``overridden``: the strongest signal of
        a preference there is (the memory also marks the agent's launch it replaces as
        refused).
        """
        if self._task is None:
            return None
        step = AgentStep(
            action="Launch",
            app=app,
            instruction=self._task,
            outcome="overridden",
            timestamp=self.clock(),
            current_app=self._foreground,
        )
        self._foreground = app
        self._record(step)
        return step

    # --- wiring ------------------------------------------------------------------------------

    def _patch(self, obj: Any, name: str, value: Any) -> None:
        own = name in vars(obj)
        self._patched.append((obj, name, getattr(obj, name), own))
        setattr(obj, name, value)

    def attach(self, agent: Any) -> Any:
        """Wrap ``run``, ``_execute_step`` (or ``step``), ``model_client.request`` and
        ``action_handler.confirmation_callback`` on this agent instance only."""
        run = getattr(agent, "run", None)
        execute = getattr(agent, "_execute_step", None)
        step = getattr(agent, "step", None)
        if execute is None and step is None:
            raise TypeError("agent has neither _execute_step nor step; is it a PhoneAgent?")

        if run is not None:

            def run_wrapper(task: str, *args: Any, **kwargs: Any) -> Any:
                self.start_task(task)
                return run(task, *args, **kwargs)

            self._patch(agent, "run", run_wrapper)

        if execute is not None:

            def execute_wrapper(user_prompt: str | None = None, *args: Any, **kwargs: Any) -> Any:
                is_first = kwargs.get("is_first", args[0] if args else False)
                if user_prompt and (is_first or self._task is None):
                    self.start_task(user_prompt)
                self._begin_step()
                result = execute(user_prompt, *args, **kwargs)
                self.observe(result)
                return result

            self._patch(agent, "_execute_step", execute_wrapper)
        elif step is not None:

            def step_wrapper(task: str | None = None, *args: Any, **kwargs: Any) -> Any:
                if task:
                    self.start_task(task)
                self._begin_step()
                result = step(task, *args, **kwargs)
                self.observe(result)
                return result

            self._patch(agent, "step", step_wrapper)

        self._watch_model(getattr(agent, "model_client", None))
        self._watch_confirmations(getattr(agent, "action_handler", None))
        return agent

    def _begin_step(self) -> None:
        self._capture = _Capture()
        if self.current_app is not None and not self._reads_requests:
            try:
                self._capture.polled_app = self.current_app()
            except Exception:  # the foreground is a nicety; the step must still be recorded
                log.warning("current_app failed; recording the step without it", exc_info=True)

    def _watch_model(self, client: Any) -> None:
        request = getattr(client, "request", None)
        if not callable(request):
            return

        def request_wrapper(messages: Any, *args: Any, **kwargs: Any) -> Any:
            self._capture.screen_app = _screen_app(messages)
            response = request(messages, *args, **kwargs)
            reply = getattr(response, "action", None)
            self._capture.reply = reply if isinstance(reply, str) else None
            return response

        self._patch(client, "request", request_wrapper)
        self._reads_requests = True

    def _watch_confirmations(self, handler: Any) -> None:
        confirm = getattr(handler, "confirmation_callback", None)
        if not callable(confirm):
            return

        def confirmation_wrapper(message: str, *args: Any, **kwargs: Any) -> Any:
            answer = confirm(message, *args, **kwargs)
            if not answer:
                self._capture.refused = True
            return answer

        self._patch(handler, "confirmation_callback", confirmation_wrapper)

    def detach(self) -> None:
        """Restore everything :meth:`attach` (and :func:`personalize`) wrapped."""
        while self._patched:
            obj, name, original, own = self._patched.pop()
            if own:
                setattr(obj, name, original)
            elif name in vars(obj):
                # the wrapper lives in the instance dict; deleting it re-exposes the class's
                delattr(obj, name)
        self._reads_requests = False


def _action_name(action: Mapping[str, Any], flags: set[Flag]) -> str:
    if "unknown_action" in flags:
        return "Unknown"
    if action.get("_metadata") == "finish":
        return "finish"
    return str(action.get("action"))


def _outcome(name: str, result: Any, flags: set[Flag], *, refused: bool) -> Outcome:
    success = bool(getattr(result, "success", True))
    if flags:
        return "failed"  # nothing the user chose: the agent or its model went wrong
    if refused or (name == "Tap" and getattr(result, "message", None) == _CANCELLED):
        return "overridden"
    if name == "Take_over":
        return "handed_over" if success else "failed"
    return "accepted" if success else "failed"


def _screen_app(messages: Any) -> str | None:
    """The ``current_app`` of the screen info PhoneAgent put in its last user message
    (``{"current_app": "微信"}`` after the task, or after ``** Screen Info **``)."""
    if not isinstance(messages, Sequence):
        return None
    for message in reversed(messages):
        if not isinstance(message, Mapping) or message.get("role") != "user":
            continue
        content = message.get("content")
        texts = (
            [content]
            if isinstance(content, str)
            else [
                c.get("text")
                for c in content or ()
                if isinstance(c, Mapping) and c.get("type") == "text"
            ]
        )
        for text in reversed([t for t in texts if isinstance(t, str)]):
            try:
                info = json.loads(text.rsplit("\n\n", 1)[-1])
            except ValueError:
                continue
            app = info.get("current_app") if isinstance(info, dict) else None
            if isinstance(app, str) and app.strip():
                return app
        return None
    return None


# --- where the hint may go -------------------------------------------------------------------


def is_local_endpoint(url: str | None) -> bool:
    """Whether a model endpoint is on this machine: ``localhost`` (or ``*.localhost``), a
    loopback address (``127.0.0.0/8``, ``::1``) or a unix socket.

    >>> [is_local_endpoint(u) for u in ("http://localhost:8000/v1", "http://127.0.0.2/v1",
    ...  "http://[::1]:8000/v1", "unix:///run/vllm.sock", "http+unix://%2Frun%2Fm.sock/v1")]
    [True, True, True, True, True]
    >>> [is_local_endpoint(u) for u in ("https://open.bigmodel.cn/api/paas/v4",
    ...  "http://192.168.1.20:8000/v1", "http://localhost.evil.com/v1", None, "")]
    [False, False, False, False, False]
    """
    if not url:
        return False
    parts = urlsplit(url)
    if parts.scheme in ("unix", "http+unix", "https+unix"):
        return True
    try:
        host = parts.hostname
    except ValueError:
        return False
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def strip_opt_out(task: str, prefixes: Sequence[str] = OPT_OUT_PREFIXES) -> tuple[str, bool]:
    """``task`` without a leading opt-out prefix, and whether it had one.

    >>> strip_opt_out("#nohint 打开导航"), strip_opt_out("打开导航")
    (('打开导航', True), ('打开导航', False))
    """
    head = task.lstrip()
    for prefix in prefixes:
        if prefix and head.casefold().startswith(prefix.casefold()):
            return head[len(prefix) :].lstrip(" :："), True
    return task, False


def personalize(
    agent: Any,
    recorder: StepRecorder,
    hint: PreferenceHint,
    *,
    where: Literal["task", "system_prompt"] = "task",
    clock: Callable[[], datetime] = utcnow,
    current_app: Callable[[], str | None] | None = None,
    local_only: bool = False,
    enabled: bool = True,
    opt_out: Sequence[str] = OPT_OUT_PREFIXES,
    controls: HintGate | None = None,
) -> AgentObserver:
    """Make a PhoneAgent personal in one call: record its steps and hint every task.

    After this, ``agent.run(task)`` runs with the hint for ``task`` appended to the task text
    (``where="task"``) or to ``agent.agent_config.system_prompt`` for that run only
    (``where="system_prompt"``; restored afterwards). Steps are recorded to ``recorder``
    under the user's own ``task``: the appended hint is stripped first, so the device never
    learns from its own suggestions. Only ``run`` is hinted; ``step()`` is observed as is.

    No hint is given, and the task goes to the agent exactly as typed, when:

    * ``agent.run(task, hint=False)`` (per call), or the task starts with an opt-out prefix
      (``"#nohint 打开导航"``; the prefix is removed);
    * ``enabled`` is false, or the device's controls turned the hint off
      (``controls``, default ``recorder.controls`` when the recorder has them);
    * ``local_only`` (or the device's ``hint_local_only``) and ``agent.model_config.base_url``
      is not on this machine (:func:`is_local_endpoint`), read at every run.

    Why hint failures are swallowed: personalization is optional. A model or context store
    error is logged and the task runs unhinted rather than not at all.

    Returns the :class:`AgentObserver` (for ``user_override``, ``last_hint``, ``anomalies``
    and ``detach``, which also removes the hint)::

        observer = personalize(agent, device, PreferenceHint(model, device.context_embedding,
                                                             memory=device.memory))
        agent.run("打开导航去公司")
    """
    if not callable(getattr(agent, "run", None)):
        raise TypeError("agent has no run(task); is it a PhoneAgent?")
    config = getattr(agent, "agent_config", None)
    if where == "system_prompt" and not isinstance(getattr(config, "system_prompt", None), str):
        raise TypeError("where='system_prompt' needs agent.agent_config.system_prompt")
    gate = controls if controls is not None else getattr(recorder, "controls", None)
    prompt_config: Any = config
    observer = AgentObserver(recorder, clock=clock, current_app=current_app, task_filter=hint.strip)
    observer.attach(agent)
    observed_run = agent.run
    source = hint

    def blocked() -> str | None:
        if not enabled:
            return "hint disabled"
        if gate is not None and not gate.hint_enabled:
            return "hint turned off on this device"
        if local_only or (gate is not None and gate.hint_local_only):
            url = getattr(getattr(agent, "model_config", None), "base_url", None)
            if not is_local_endpoint(url):
                return "model endpoint is not on this device"
        return None

    def personalized_run(task: str, *args: Any, hint: bool = True, **kwargs: Any) -> Any:
        task, opted_out = strip_opt_out(task, opt_out)
        reason = "hint off for this task" if not hint or opted_out else blocked()
        observer.last_hint, observer.hint_off_reason = "", reason
        if reason is not None:
            return observed_run(task, *args, **kwargs)
        if where == "task":
            hinted = _hinted(source.augment_task, task, task)
            observer.last_hint = hinted[len(task) :].strip()
            return observed_run(hinted, *args, **kwargs)
        base = prompt_config.system_prompt
        prompt = _hinted(lambda t: source.system_prompt(base, t), task, base)
        observer.last_hint = prompt[len(base.rstrip()) :].strip() if prompt != base else ""
        prompt_config.system_prompt = prompt
        try:
            return observed_run(task, *args, **kwargs)
        finally:
            prompt_config.system_prompt = base

    observer._patch(agent, "run", personalized_run)
    return observer


def _hinted(render: Callable[[str], str], task: str, fallback: str) -> str:
    try:
        return render(task)
    except Exception:  # see personalize(): a broken hint must not stop the user's task
        log.warning("preference hint failed; running the task without it", exc_info=True)
        return fallback
