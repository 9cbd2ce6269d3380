"""Agent steps as the edge SDK records them, shaped after Open-AutoGLM's actions.

Open-AutoGLM's PhoneAgent answers each turn with ``do(action=..., ...)`` or
``finish(message=...)``; its ``parse_action`` turns that into a dict such as
``{"_metadata": "do", "action": "Tap", "element": [500, 120]}``. :class:`AgentStep` is that
dict plus what the SDK needs to learn from it: the user's instruction, the app in the
foreground, the step's outcome and when it happened. :meth:`AgentStep.from_autoglm`
converts the agent's dict directly.

Outcomes, and what each one tells the learner:

================ =========================================================================
``accepted``     the agent's step stood: the user let it happen (a preference signal)
``overridden``   the user chose otherwise: refused a sensitive action, or opened another
                 app than the agent's (the strongest preference signal)
``failed``       the step did not work: the action failed, the model's reply could not be
                 parsed, the model endpoint errored, the action or its coordinates were
                 invalid (not a preference: nobody chose anything)
``handed_over``  the agent asked the user to act (``Take_over``: a login, a captcha); what
                 the user did then is not the agent's choice, so it is *neither* accepted
                 nor overridden, and nothing counts it as either
================ =========================================================================

What the agent said that Sotto cannot represent is recorded too, never dropped: an action
name Open-AutoGLM does not know becomes ``action="Unknown"``, and coordinates off the
agent's 0..1000 grid are clamped onto it; both carry a ``flags`` entry saying so
(:data:`FLAGS`), so such steps can be counted and shown to the user.

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
    "Unknown",
]
"""Every action Open-AutoGLM's ActionHandler knows, plus ``finish``, plus ``Unknown`` for a
name it does not know (the step is recorded, flagged ``unknown_action``)."""

ACTIONS: tuple[str, ...] = get_args(Action)
Outcome = Literal["accepted", "overridden", "failed", "handed_over"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)
PREFERENCE_OUTCOMES: frozenset[str] = frozenset({"accepted", "overridden"})
"""The outcomes that say something about what the user wants (``failed`` and
``handed_over`` do not)."""

Flag = Literal["unknown_action", "out_of_range", "malformed", "parse_failure", "model_error"]
"""Why a step is unusual: an action name the agent does not know, coordinates off the
0..1000 grid (clamped), arguments that do not fit the action, a model reply the agent could
not parse, a model endpoint error."""
FLAGS: tuple[str, ...] = get_args(Flag)

# Open-AutoGLM's coordinates are relative, 0..1000 on both axes, whatever the screen size.
Coord = Annotated[int, Field(ge=0, le=1000)]
Point = tuple[Coord, Coord]

_NEEDS_ELEMENT = frozenset({"Tap", "Double Tap", "Long Press"})
_TYPES_TEXT = frozenset({"Type", "Type_Name"})
_HAS_MESSAGE = frozenset({"finish", "Take_over", "Tap", "Interact", "Note", "Call_API"})
_POINT_KEYS = ("element", "start", "end")
GRID = 1000
"""Open-AutoGLM's coordinates are relative: 0..1000 on both axes, whatever the screen."""


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
    flags: tuple[Flag, ...] = ()

    @field_validator("flags")
    @classmethod
    def _flags_canonical(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(value)))

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
        flags: tuple[Flag, ...] = (),
    ) -> AgentStep:
        """Build a step from Open-AutoGLM's parsed action dict (``parse_action`` output).

        ``{"_metadata": "finish", "message": ...}`` becomes a ``finish`` step; ``do`` dicts
        map their keys one to one. A ``Wait`` duration such as ``"3 seconds"`` is parsed.
        Unknown keys are ignored (the agent's vocabulary grows faster than ours).

        Nothing the agent did is refused: an unknown action name (or ``_metadata``) becomes
        an ``Unknown`` step flagged ``unknown_action``; coordinates off the 0..1000 grid are
        clamped onto it and flagged ``out_of_range``. Use :func:`autoglm_flags` to learn the
        flags before choosing the outcome. Only what no step can hold (a blank instruction, a
        naive timestamp) raises :class:`ValueError`.

        >>> from datetime import UTC, datetime
        >>> t = datetime(2025, 1, 6, 8, 30, tzinfo=UTC)
        >>> AgentStep.from_autoglm({"_metadata": "do", "action": "Teleport"},
        ...                        instruction="x", outcome="failed", timestamp=t).action
        'Unknown'
        >>> AgentStep.from_autoglm({"_metadata": "do", "action": "Tap", "element": [1200, 40]},
        ...                        instruction="x", outcome="failed", timestamp=t).element
        (1000, 40)
        """
        base: dict[str, Any] = {
            "instruction": instruction,
            "outcome": outcome,
            "timestamp": timestamp,
            "current_app": current_app,
        }
        found = autoglm_flags(action)
        all_flags = tuple(set(flags) | set(found))
        if "unknown_action" in found:
            return cls(action="Unknown", flags=all_flags, **base)
        fields = dict(base, flags=all_flags)
        if action.get("_metadata", "do") == "finish":
            fields["action"] = "finish"
            fields["message"] = _text(action.get("message"))
            return cls(**fields)
        name = action.get("action")
        fields["action"] = name
        if name == "Launch":
            fields["app"] = action.get("app")
        for key in _POINT_KEYS:
            if key in action:
                fields[key] = _clamped(action[key])
        for key in ("text", "message"):
            if key in action:
                fields[key] = _text(action[key])
        if name == "Wait" and "duration" in action:
            fields["duration_s"] = _seconds(action["duration"])
        try:
            return cls(**fields)
        except ValueError:
            # The action is known but its arguments do not fit it (a Tap without a point, a
            # Launch without an app): still a step the agent took, recorded as Unknown. If this
            # fails too, the instruction, outcome or timestamp is bad, and that error is raised.
            return cls(action="Unknown", flags=(*all_flags, "malformed"), **base)


def autoglm_flags(action: Mapping[str, Any]) -> tuple[Flag, ...]:
    """What is unusual about an Open-AutoGLM action dict, before it becomes a step.

    >>> autoglm_flags({"_metadata": "do", "action": "Tap", "element": [500, 1001]})
    ('out_of_range',)
    >>> autoglm_flags({"_metadata": "do", "action": "Fly"}), autoglm_flags({"_metadata": "x"})
    (('unknown_action',), ('unknown_action',))
    >>> autoglm_flags({"_metadata": "do", "action": "Tap", "element": "top left"})
    ('malformed',)
    """
    meta = action.get("_metadata", "do")
    if meta == "finish":
        return ()
    if (
        meta != "do"
        or action.get("action") not in ACTIONS
        or action.get("action")
        in (
            "finish",
            "Unknown",
        )
    ):
        return ("unknown_action",)
    flags: set[Flag] = set()
    for key in _POINT_KEYS:
        if key not in action:
            continue
        point = _numbers(action[key])
        if point is None:
            flags.add("malformed")
        elif not all(0 <= v <= GRID for v in point):
            flags.add("out_of_range")
    return tuple(sorted(flags))


def _numbers(raw: object) -> tuple[float, float] | None:
    """``raw`` as two numbers, or None if it is not a point at all."""
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
        return None
    return float(raw[0]), float(raw[1])


def _clamped(raw: object) -> object:
    """A point moved onto the 0..1000 grid; anything that is not two numbers is left for
    validation to refuse (the step then becomes ``Unknown``, flagged ``malformed``)."""
    point = _numbers(raw)
    if point is None:
        return raw
    return tuple(min(max(round(v), 0), GRID) for v in point)


def _text(raw: object) -> str | None:
    """Free text as a string of at most 4096 characters (it is dropped before storage anyway;
    an over-long message must not make the whole step unrecordable)."""
    if raw is None:
        return None
    return str(raw)[:4096]


def _seconds(raw: object) -> float | None:
    """Open-AutoGLM writes durations as ``"3 seconds"`` or a bare number."""
    if isinstance(raw, int | float):
        return float(raw)
    try:
        return float(str(raw).replace("seconds", "").strip())
    except ValueError:
        return None
