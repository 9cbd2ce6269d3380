"""AgentStep: Open-AutoGLM-shaped validation, redaction, and conversion from the agent's dicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from pydantic import ValidationError

from edge_client.steps import ACTIONS, AgentStep

T0 = datetime(2025, 3, 3, 9, 15, tzinfo=UTC)


def make(**kw) -> AgentStep:
    base = {"instruction": "order coffee", "outcome": "accepted", "timestamp": T0}
    base.update(kw)
    return AgentStep(**base)


def test_actions_cover_open_autoglm() -> None:
    for name in ("Launch", "Tap", "Type", "Swipe", "Long Press", "Double Tap", "Back", "Home"):
        assert name in ACTIONS
    for name in ("Wait", "Take_over", "finish", "Type_Name", "Note", "Call_API", "Interact"):
        assert name in ACTIONS


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"action": "Launch"}, "Launch step needs app"),
        ({"action": "Tap"}, "Tap step needs element"),
        ({"action": "Long Press"}, "Long Press step needs element"),
        ({"action": "Swipe", "start": (1, 2)}, "Swipe step needs start"),
        ({"action": "Back", "element": (1, 2)}, "takes no element"),
        ({"action": "Home", "app": "Maps"}, "Launch only"),
        ({"action": "Tap", "element": (1, 2), "text": "x"}, "text is only for Type"),
        ({"action": "Back", "start": (1, 2), "end": (3, 4)}, "for Swipe only"),
        ({"action": "Home", "duration_s": 2.0}, "only for Wait"),
        ({"action": "Back", "message": "hi"}, "takes no message"),
        ({"action": "Tap", "element": (1001, 5)}, "less than or equal to 1000"),
        ({"action": "Jump"}, "Input should be"),
        ({"action": "Back", "instruction": "   "}, "instruction is blank"),
        ({"action": "Back", "outcome": "maybe"}, "Input should be"),
        ({"action": "Back", "timestamp": datetime(2025, 1, 1)}, "timezone-aware"),
        ({"action": "Back", "extra_field": 1}, "Extra inputs"),
    ],
)
def test_invalid_steps_say_why(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make(**fields)


def test_valid_steps() -> None:
    make(action="Launch", app="Meituan")
    make(action="Tap", element=(500, 120), current_app="Meituan")
    make(action="Swipe", start=(500, 800), end=(500, 200))
    make(action="Type", text="latte")
    make(action="Wait", duration_s=3)
    make(action="finish", message="done")


def test_steps_are_frozen() -> None:
    step = make(action="Back")
    with pytest.raises(ValidationError):
        step.action = "Home"  # type: ignore[misc]


def test_typed_text_stays_out_of_repr_errors_and_redacted_copy() -> None:
    step = make(action="Type", text="hunter2-password")
    assert "hunter2" not in repr(step)
    assert "hunter2" not in step.redacted().model_dump_json()
    assert step.redacted().text is None
    with pytest.raises(ValidationError) as info:
        make(action="Tap", element=(1, 1), text="hunter2-password")
    assert "hunter2" not in str(info.value)


def test_typed_text_does_not_change_the_embedding() -> None:
    a = make(action="Type", text="my secret address")
    b = make(action="Type", text="something else entirely")
    assert np.array_equal(a.embedding(), b.embedding())


def test_embedding_uses_local_hour() -> None:
    east = timezone(timedelta(hours=8))
    utc_step = make(action="Back", timestamp=datetime(2025, 3, 3, 1, 0, tzinfo=UTC))
    same_instant_local = make(action="Back", timestamp=utc_step.timestamp.astimezone(east))
    # 01:00 UTC is 09:00 in UTC+8: another hour-of-day bucket, so another embedding
    assert not np.array_equal(utc_step.embedding(), same_instant_local.embedding())


def test_from_autoglm_do_and_finish() -> None:
    kw = {"instruction": "打开美团点外卖", "outcome": "accepted", "timestamp": T0}
    launch = AgentStep.from_autoglm({"_metadata": "do", "action": "Launch", "app": "美团"}, **kw)
    assert launch.action == "Launch" and launch.app == "美团"
    tap = AgentStep.from_autoglm(
        {"_metadata": "do", "action": "Tap", "element": [500, 300], "message": "pay"},
        current_app="美团",
        **kw,
    )
    assert tap.element == (500, 300) and tap.target_app == "美团"
    wait = AgentStep.from_autoglm(
        {"_metadata": "do", "action": "Wait", "duration": "3 seconds"}, **kw
    )
    assert wait.duration_s == 3.0
    swipe = AgentStep.from_autoglm(
        {"_metadata": "do", "action": "Swipe", "start": [1, 900], "end": [1, 100]}, **kw
    )
    assert swipe.start == (1, 900)
    done = AgentStep.from_autoglm({"_metadata": "finish", "message": "ordered"}, **kw)
    assert done.action == "finish" and done.message == "ordered"
    # Nothing the agent did is refused: what Sotto cannot represent is recorded and flagged.
    think = AgentStep.from_autoglm({"_metadata": "think"}, **kw)
    teleport = AgentStep.from_autoglm({"_metadata": "do", "action": "Teleport"}, **kw)
    for unknown in (think, teleport):
        assert (unknown.action, unknown.flags) == ("Unknown", ("unknown_action",))
    far = AgentStep.from_autoglm(
        {"_metadata": "do", "action": "Swipe", "start": [-5, 900], "end": [1, 2000.4]}, **kw
    )
    assert (far.start, far.end, far.flags) == ((0, 900), (1, 1000), ("out_of_range",))
    bad = AgentStep.from_autoglm({"_metadata": "do", "action": "Tap", "element": "x"}, **kw)
    assert (bad.action, bad.flags) == ("Unknown", ("malformed",))
    nameless = AgentStep.from_autoglm({"_metadata": "do", "action": "Launch"}, **kw)
    assert (nameless.action, nameless.flags) == ("Unknown", ("malformed",))
    with pytest.raises(ValidationError):  # what no step can hold still raises
        AgentStep.from_autoglm({"_metadata": "do", "action": "Back"}, **{**kw, "instruction": " "})
