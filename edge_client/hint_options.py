"""The options of the hint Sotto gives an Open-AutoGLM agent, as one validated object.

One model, three readers: ``sotto.toml``'s ``[autoglm]`` section and ``SOTTO_AUTOGLM__*``
variables (composed by ``deploy.settings``, documented by ``sotto config doc``), the
``python -m edge_client.autoglm_cli`` command (the same variables, then its flags), and code
that calls :func:`edge_client.autoglm.personalize` itself.

What the user set on the device (``sotto device hint --off`` / ``--local-only``,
:class:`edge_client.controls.DeviceControls`) can only make these stricter: a hint turned off
on the device stays off whatever the options say.

>>> HintOptions.from_env({"SOTTO_AUTOGLM__MIN_SCORE": "0.8", "SOTTO_AUTOGLM__LOCAL_ONLY": "1"})
HintOptions(enabled=True, where='task', min_score=0.8, min_alternative=0.1, show_scores=True, local_only=True, opt_out_prefixes='#nohint,#无提示')
>>> HintOptions().prefixes
('#nohint', '#无提示')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, Field

ENV_PREFIX = "SOTTO_AUTOGLM__"


class HintOptions(BaseModel):
    """How (and whether) the agent is hinted; every field documents itself."""

    enabled: bool = Field(
        True,
        description="Give the agent the on-device preference hint; `false` records steps "
        "(and learns from them) without ever hinting.",
    )
    where: Literal["task", "system_prompt"] = Field(
        "task",
        description="Where the hint goes: appended to the task text (`task`) or to the "
        "agent's system prompt for that run only (`system_prompt`).",
    )
    min_score: Annotated[
        float,
        Field(
            gt=0,
            le=1,
            description="Preference the top app needs (from this user's memory, else the "
            "on-device model) before the hint says anything.",
        ),
    ] = 0.6
    min_alternative: Annotated[
        float,
        Field(
            gt=0,
            le=1,
            description="Preference a same-intent runner-up needs to be named after the top app.",
        ),
    ] = 0.1
    show_scores: bool = Field(
        True, description="Whether the hint carries the preferences as numbers (two digits)."
    )
    local_only: bool = Field(
        False,
        description="Hint only when the agent's model endpoint (`--base-url`) is on this "
        "machine: `localhost`, a loopback address (`127.0.0.0/8`, `::1`) or a unix socket. "
        "A remote endpoint then gets the task exactly as the user typed it.",
    )
    opt_out_prefixes: str = Field(
        "#nohint,#无提示",
        description="Comma-separated task prefixes that turn the hint off for that task "
        "(the prefix is removed before the agent sees the task).",
    )

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.opt_out_prefixes.split(",") if p.strip())

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: object) -> HintOptions:
        """Options from ``SOTTO_AUTOGLM__<FIELD>`` variables, then ``overrides`` (flags)."""
        data: dict[str, object] = {}
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in env:
                data[name] = env[key]
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)
