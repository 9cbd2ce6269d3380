"""Agent steps as the edge SDK records them, shaped after Open-AutoGLM's actions.

Open-AutoGLM's PhoneAgent answers each turn with ``do(action=..., ...)`` or
``finish(message=...)``; its ``parse_action`` turns that into a dict such as
``{"_metadata": "do", "action": "Tap", "element": [500, 120]}``. :class:`AgentStep` is that
dict plus what the SDK needs to learn from it: the user's instruction, the app in the
foreground, the step's outcome (did the user accept, override, or did it fail) and when it
happened. :meth:`AgentStep.from_autoglm` converts the agent's dict directly.

Privacy: a step can carry raw text the user typed (``text``) or the agent said (``message``),
because the agent needs it to act. None of it is ever stored or sent: :meth:`AgentStep.redacted`
drops it before the context store persists a step, and :meth:`AgentStep.embedding` hashes
only the instruction and categorical features, never typed text. ``redacted`` also masks
personal data in the instruction (:func:`edge_client.pii.mask`: phone numbers, ID and card
numbers, emails, credential URLs, street addresses become ``<PHONE>``, ``<ID>``...), so the
stored step, its embedding and whatever learns from it see "给<PHONE>发消息", never the number.

>>> from datetime import UTC, datetime
>>> step = AgentStep(action="Launch", app="Maps", instruction="navigate home",
...                  outcome="accepted", timestamp=datetime(2025, 1, 6, 8, 30, tzinfo=UTC))
>>> step.embedding().shape
(128,)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_client.pii import mask
from privacy.embedding import embed_step

Action = Literal[
    "Launch",
    "Tap",
    "Type",
    "Type_Name",
    "Swipe",
    "Back",
    "Home",
    "Double Tap",
    "Long Press",
    "Wait",
    "Take_over",
    "Note",
    "Call_API",
    "Interact",
    "finish",
]
"""Every action Open-AutoGLM's ActionHandler knows, plus ``finish``."""

ACTIONS: tuple[str, ...] = get_args(Action)
Outcome = Literal["accepted", "overridden", "failed"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)

# Open-AutoGLM's coordinates are relative, 0..1000 on both axes, whatever the screen size.
Coord = Annotated[int, Field(ge=0, le=1000)]
Point = tuple[Coord, Coord]

_NEEDS_ELEMENT = frozenset({"Tap", "Double Tap", "Long Press"})
_TYPES_TEXT = frozenset({"Type", "Type_Name"})
_HAS_MESSAGE = frozenset({"finish", "Take_over", "Tap", "Interact", "Note", "Call_API"})


class AgentStep(BaseModel):
    """One step of a phone agent, validated on construction (a :class:`ValueError` if not)."""

    # hide_input_in_errors: a validation error must not echo typed text into logs.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    action: Action
    instruction: Annotated[str, Field(min_length=1, max_length=4096)]
    outcome: Outcome
    timestamp: datetime
    app: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    current_app: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    element: Point | None = None
    start: Point | None = None
    end: Point | None = None
    # Free text: kept out of repr (and so out of logs), dropped by redacted().
    text: Annotated[str | None, Field(max_length=4096, repr=False)] = None
    message: Annotated[str | None, Field(max_length=4096, repr=False)] = None
    duration_s: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] | None = None

    @field_validator("instruction")
    @classmethod
    def _instruction_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("instruction is blank; record the user's task text")
        return value

    @field_validator("timestamp")
    @classmethod
    def _timestamp_aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamp must be timezone-aware (e.g. datetime.now(UTC))")
        return value

    @model_validator(mode="after")
    def _fields_fit_action(self) -> AgentStep:
        a = self.action
        if a == "Launch" and self.app is None:
            raise ValueError("a Launch step needs app (the app it launches)")
        if a in _NEEDS_ELEMENT and self.element is None:
            raise ValueError(f"a {a} step needs element=(x, y), relative 0..1000")
        if a != "Launch" and self.app is not None:
            raise ValueError(f"app is the target of Launch only; use current_app for {a}")
        if a not in _NEEDS_ELEMENT and self.element is not None:
            raise ValueError(f"a {a} step takes no element")
        if a == "Swipe" and (self.start is None or self.end is None):
            raise ValueError("a Swipe step needs start=(x, y) and end=(x, y), relative 0..1000")
        if a != "Swipe" and (self.start is not None or self.end is not None):
            raise ValueError(f"start and end are for Swipe only, not {a}")
        if self.text is not None and a not in _TYPES_TEXT:
            raise ValueError(f"text is only for Type/Type_Name, not {a}")
        if self.message is not None and a not in _HAS_MESSAGE:
            raise ValueError(f"a {a} step takes no message")
        if self.duration_s is not None and a != "Wait":
            raise ValueError(f"duration_s is only for Wait, not {a}")
        return self

    @property
    def target_app(self) -> str | None:
        """The app the step is about: the one launched, else the one in the foreground."""
        return self.app or self.current_app

    def redacted(self) -> AgentStep:
        """What may be persisted: this step without free text (typed text, agent messages)
        and with personal data in the instruction masked (:func:`edge_client.pii.mask`:
        "给<PHONE>发消息"). Idempotent."""
        instruction = mask(self.instruction)
        if self.text is None and self.message is None and instruction == self.instruction:
            return self
        return self.model_copy(update={"text": None, "message": None, "instruction": instruction})

    def embedding(self) -> np.ndarray:
        """The step's 128-d behavior embedding (hashed features only, never typed text).

        The hour is read in the timestamp's own timezone: habits follow the user's local day.
        """
        return embed_step(
            self.instruction,
            self.action,
            self.target_app,
            self.outcome,
            self.timestamp.hour,
        )

    @classmethod
    def from_autoglm(
        cls,
        action: Mapping[str, Any],
        *,
        instruction: str,
        outcome: Outcome,
        timestamp: datetime,
        current_app: str | None = None,
    ) -> AgentStep:
        """Build a step from Open-AutoGLM's parsed action dict (``parse_action`` output).

        ``{"_metadata": "finish", "message": ...}`` becomes a ``finish`` step; ``do`` dicts
        map their keys one to one. A ``Wait`` duration such as ``"3 seconds"`` is parsed.
        Unknown keys are ignored (the agent's vocabulary grows faster than ours); unknown
        actions are refused.
        """
        meta = action.get("_metadata", "do")
        fields: dict[str, Any] = {
            "instruction": instruction,
            "outcome": outcome,
            "timestamp": timestamp,
            "current_app": current_app,
        }
        if meta == "finish":
            fields["action"] = "finish"
            fields["message"] = action.get("message")
            return cls(**fields)
        if meta != "do":
            raise ValueError(f"unknown Open-AutoGLM action type {meta!r}")
        name = action.get("action")
        fields["action"] = name
        if name == "Launch":
            fields["app"] = action.get("app")
        for key in ("element", "start", "end", "text", "message"):
            if key in action:
                fields[key] = action[key]
        if name == "Wait" and "duration" in action:
            fields["duration_s"] = _seconds(action["duration"])
        return cls(**fields)


def _seconds(raw: object) -> float | None:
    """Open-AutoGLM writes durations as ``"3 seconds"`` or a bare number."""
    if isinstance(raw, int | float):
        return float(raw)
    try:
        return float(str(raw).replace("seconds", "").strip())
    except ValueError:
        return None
