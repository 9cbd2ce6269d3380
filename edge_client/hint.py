"""Turn the live on-device adapter into a one-line preference hint for a phone agent.

Why a text hint: a phone agent such as Open-AutoGLM decides every action with a
vision-language model that reads a system prompt and the user's task. The cheapest way to
make it personal, without forking the agent or touching its model, is to tell it in words
what this user tends to open for this kind of request: "此类请求通常使用 高德地图（0.82）".
The agent stays in charge; the hint only breaks ties the task leaves open.

What leaves the on-device model here: app names from the public catalogue and this device's
own probabilities for them, rounded to two digits. Never the context embedding, the step
history, other users' scores or anything the user typed. The hint does go into the agent's
prompt, so it reaches whatever endpoint serves the agent's model: keep ``min_score`` high
enough that only real habits are stated, and ``show_scores=False`` drops the numbers too.
The task itself is read masked (:func:`edge_client.pii.mask`: "给<PHONE>发消息"), as the
device stores and embeds it; the hint never repeats the task, and :meth:`augment_task`
hands the agent its task unchanged (it needs the number to act).

When the hint stays silent (empty string, ``choose_app`` is None):

* the model's best app scores below ``min_score``. The model ranks the device's candidate
  apps, so it always has *some* best app, even for "你好"; the threshold is what keeps
  unrelated tasks free of hints;
* the task already names an app, in any of its spellings ("打开百度地图", "打开B站",
  "open bilibili"; :func:`privacy.catalog.resolve`), or names one Open-AutoGLM cannot launch
  ("打开支付宝"): the user's explicit choice wins.

Every app the hint names is one Open-AutoGLM's ``Launch`` accepts, spelt as it accepts it: the
model's candidates are (:func:`edge_client.runtime.candidate_apps`), and an app the memory
remembers that is not (a name the user typed for an override, say) is never named.

Runners-up are listed only when they clear ``min_alternative`` and serve an intent the top
app serves (maps after maps, not a music app after maps).

Memory first, then the model. With a :class:`edge_client.memory.PersonalMemory`, the
hint asks it first: when this user's own evidence for the task's intent clears ``min_score``
(one fresh accepted launch does: 0.8), the memory's apps are the hint and the model is not
consulted. Otherwise the model's suggestions are used, with the memory's (low) scores
replacing the model's for the apps the memory knows: an app the user refused or that
failed to launch is not suggested again on the model's word alone. Without a model the
memory alone is used.

Example (``model`` a :class:`edge_client.runtime.DeviceModel`, ``device`` an
:class:`edge_client.device.EdgeDevice`)::

    hint = PreferenceHint(model, device.context_embedding, lang="cn")
    hint.choose_app("打开导航")      # "高德地图" once the live adapter is confident, else None
    hint.augment_task("打开导航")    # "打开导航\\n\\n用户偏好（设备端学习）：此类请求通常使用 高德地图（0.82），..."

>>> PreferenceHint.strip("打开导航\\n\\n用户偏好（设备端学习）：此类请求通常使用 高德地图（0.82）。")
'打开导航'
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from edge_client.pii import mask
from privacy import catalog
from privacy.wire import utcnow

if TYPE_CHECKING:
    from edge_client.runtime import Suggestion

Lang = Literal["cn", "en"]

LAUNCH_PREFIX = "launch:"
HINT_PREFIX: dict[str, str] = {
    "cn": "用户偏好（设备端学习）：",
    "en": "User preference (learned on device): ",
}
_SEPARATOR = "\n\n"


class SuggestionSource(Protocol):
    """What the hint reads: :meth:`edge_client.runtime.DeviceModel.suggest` (live adapter)."""

    def suggest(
        self, instruction: str, context_embedding: np.ndarray, k: int = 3
    ) -> list[Suggestion]: ...


class MemorySource(Protocol):
    """What the hint reads first: :meth:`edge_client.memory.PersonalMemory.scores`."""

    def scores(self, instruction: str, now: datetime | None = None) -> dict[str, float]: ...


@dataclass(frozen=True)
class AppPreference:
    """One app the hint may name, with this device's probability for it."""

    app: str
    score: float


# Spellings that are also everyday words: they name the app only when capitalised as the app
# writes itself ("Signal", not "the signal strength"), or never (one letter, common nouns).
_CASE_SENSITIVE = frozenset(
    {
        "Signal",
        "Bolt",
        "Just Eat",
        "FREE NOW",
        "Keep",
        "Clock",
        "Files",
        "Contacts",
        "Settings",
        "Booking",
        "Chrome",
    }
)
_NEVER = frozenset(
    {"X", "RED", "keep", "clock", "files", "contacts", "booking", "chrome", "settings"}
    | {"File Manager", "file manager", "芒果", "贝壳", "点评", "红果", "设置", "电报", "七猫"}
)


def _app_pattern(spelling: str) -> re.Pattern[str]:
    # Latin names match as whole words only ("Bolt" must not fire on "Bolton"); CJK names
    # have no word boundaries, so a plain substring is the right test there.
    flags = 0 if spelling in _CASE_SENSITIVE else re.IGNORECASE
    body = re.escape(spelling)
    if re.search(r"[A-Za-z0-9]", spelling):
        return re.compile(rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])", flags)
    return re.compile(body, flags)


def _named_table() -> tuple[tuple[str, re.Pattern[str]], ...]:
    """(name to report, pattern) for every spelling of every catalogue app (reported by its
    canonical name) and every known app Open-AutoGLM cannot launch (reported as listed)."""
    table: dict[str, str] = {}
    for entry in catalog.APPS:
        for spelling in entry.spellings:
            table.setdefault(spelling, entry.name)
    for name in catalog.UNLAUNCHABLE:
        table.setdefault(name, name)
    return tuple((app, _app_pattern(sp)) for sp, app in table.items() if sp not in _NEVER)


_APP_PATTERNS = _named_table()


def _intents(app: str) -> frozenset[str]:
    return frozenset(catalog.intents_of(app))


def _app_of(s: Suggestion) -> str:
    """The app of a suggestion (``Suggestion.app``; a source that only gives the action id
    ``"launch:<app>"`` works too)."""
    app = getattr(s, "app", None)
    if app is None:
        candidate = str(getattr(s, "candidate", ""))
        app = candidate[len(LAUNCH_PREFIX) :] if candidate.startswith(LAUNCH_PREFIX) else candidate
    return str(app)


def _overlaid(s: Suggestion, remembered: dict[str, float]) -> Suggestion:
    app = _app_of(s)
    if app not in remembered:
        return s
    return dataclasses.replace(s, score=remembered[app])


def named_apps(text: str) -> list[str]:
    """The apps ``text`` names explicitly, by any spelling in the catalogue's alias table
    (canonical names; a known app Open-AutoGLM cannot launch is reported as listed), in the
    order they appear. A longer match wins over a shorter one inside it ("QQ音乐", not "QQ").

    >>> named_apps("打开百度地图导航去公司"), named_apps("open spotify"), named_apps("打开B站")
    (['百度地图'], ['Spotify'], ['bilibili'])
    >>> named_apps("打开bilibili"), named_apps("用哔哩哔哩看猫咪视频"), named_apps("放QQ音乐")
    (['bilibili'], ['bilibili'], ['QQ音乐'])
    >>> named_apps("check the signal strength"), named_apps("message Anna on Signal")
    ([], ['Signal'])
    """
    spans: list[tuple[int, int, str]] = []
    for app, pattern in _APP_PATTERNS:
        for m in pattern.finditer(text):
            spans.append((m.start(), m.end(), app))
    spans.sort(key=lambda s: (-(s[1] - s[0]), s[0]))
    taken: list[tuple[int, int, str]] = []
    for start, end, app in spans:
        if all(end <= a or start >= b for a, b, _ in taken):
            taken.append((start, end, app))
    out: list[str] = []
    for _, _, app in sorted(taken):
        if app not in out:
            out.append(app)
    return out


class PreferenceHint:
    """Render the live adapter's suggestions as a short hint for an agent's prompt.

    Parameters
    ----------
    model
        A :class:`~edge_client.runtime.DeviceModel` (anything with ``suggest``), or None for
        a memory-only hint. Read on every call, so an adapter installed or rolled back
        meanwhile is reflected at once.
    context
        The device's current context embedding, e.g. ``EdgeDevice.context_embedding``
        (needed with a model).
    memory
        This user's :class:`~edge_client.memory.PersonalMemory` (``EdgeDevice.memory``):
        asked first, see the module docstring.
    clock
        The time the memory's evidence is decayed to.
    min_score
        Probability the top app needs before anything is said or launched.
    min_alternative
        Probability a same-intent runner-up needs to be listed after the top app.
    k
        How many suggestions to read from the model (the top one plus runners-up).
    lang
        ``"cn"`` or ``"en"``, as Open-AutoGLM's ``AgentConfig.lang``.
    show_scores
        Whether the rendered hint carries the probabilities.
    """

    def __init__(
        self,
        model: SuggestionSource | None = None,
        context: Callable[[], np.ndarray] | None = None,
        *,
        memory: MemorySource | None = None,
        clock: Callable[[], datetime] = utcnow,
        min_score: float = 0.6,
        min_alternative: float = 0.1,
        k: int = 3,
        lang: Lang = "cn",
        show_scores: bool = True,
    ) -> None:
        if not 0.0 < min_score <= 1.0:
            raise ValueError("min_score must be in (0, 1]")
        if not 0.0 < min_alternative <= 1.0:
            raise ValueError("min_alternative must be in (0, 1]")
        if k < 1:
            raise ValueError("k must be >= 1")
        if lang not in HINT_PREFIX:
            raise ValueError(f"lang must be one of {sorted(HINT_PREFIX)}, not {lang!r}")
        if model is not None and context is None:
            raise ValueError("a model needs context (e.g. EdgeDevice.context_embedding)")
        self.model = model
        self.context = context
        self.memory = memory
        self.clock = clock
        self.min_score = min_score
        self.min_alternative = min_alternative
        self.k = k
        self.lang: Lang = lang
        self.show_scores = show_scores

    def __repr__(self) -> str:
        return (
            f"PreferenceHint(min_score={self.min_score}, min_alternative={self.min_alternative}, "
            f"k={self.k}, lang={self.lang!r})"
        )

    # --- what the model prefers --------------------------------------------------------------

    def preferences(self, instruction: str) -> list[AppPreference]:
        """The confident top app and its same-intent runners-up, best first; ``[]`` when the
        hint should stay silent (see the module docstring for when)."""
        if not instruction.strip() or named_apps(instruction):
            return []
        instruction = mask(instruction)  # embedded and remembered as the device stores it
        remembered = self.memory.scores(instruction, self.clock()) if self.memory else {}
        if remembered and max(remembered.values()) >= self.min_score:
            found = self._from_memory(remembered)
            if found:
                return found
        if self.model is None or self.context is None:
            return []
        suggestions = self.model.suggest(instruction, self.context(), k=self.k)
        if remembered:  # the user's own evidence replaces the model's word for those apps
            suggestions = sorted(
                (_overlaid(s, remembered) for s in suggestions), key=lambda s: -s.score
            )
        return self._select(suggestions)

    def _launchable(self, app: str) -> bool:
        """Whether the agent can launch ``app`` as spelt: a catalogue launch name, or one of
        the model's candidates (the phone's launchable apps)."""
        return catalog.is_launchable(app) or app in getattr(self.model, "apps", ())

    def _from_memory(self, remembered: dict[str, float]) -> list[AppPreference]:
        ranked = sorted(
            ((app, score) for app, score in remembered.items() if self._launchable(app)),
            key=lambda kv: -kv[1],
        )
        if not ranked or ranked[0][1] < self.min_score:
            return []
        top, rest = ranked[0], ranked[1 : self.k]
        return [AppPreference(*top)] + [
            AppPreference(app, score) for app, score in rest if score >= self.min_alternative
        ]

    def _select(self, suggestions: Sequence[Suggestion]) -> list[AppPreference]:
        ranked = [(_app_of(s), float(s.score)) for s in suggestions]
        ranked = [(app, score) for app, score in ranked if self._launchable(app)]
        if not ranked or ranked[0][1] < self.min_score:
            return []
        top = AppPreference(*ranked[0])
        intents = _intents(top.app)
        picked = [top]
        for app, score in ranked[1:]:
            if score >= self.min_alternative and _intents(app) & intents:
                picked.append(AppPreference(app, score))
        return picked

    def choose_app(self, instruction: str) -> str | None:
        """The app to Launch for ``instruction`` when the live adapter is confident, else None."""
        prefs = self.preferences(instruction)
        return prefs[0].app if prefs else None

    # --- rendering ---------------------------------------------------------------------------

    def text(self, instruction: str) -> str:
        """The hint sentence for ``instruction``, or ``""`` when nothing is confident."""
        return self.render(self.preferences(instruction))

    def render(self, prefs: Sequence[AppPreference]) -> str:
        """Words for ``prefs`` (as :meth:`preferences` returns them) in this hint's language."""
        if not prefs:
            return ""
        top, rest = prefs[0], prefs[1:]
        if self.lang == "cn":
            said = f"此类请求通常使用 {self._app(top, '（', '）')}"
            if rest:
                said += "，其次 " + "、".join(self._app(p, "（", "）") for p in rest)
            return f"{HINT_PREFIX['cn']}{said}。任务未指定应用时，优先打开 {top.app}。"
        said = f"for requests like this the user usually opens {self._app(top, ' (', ')')}"
        if rest:
            said += ", then " + ", ".join(self._app(p, " (", ")") for p in rest)
        return f"{HINT_PREFIX['en']}{said}. If the task names no app, prefer {top.app}."

    def _app(self, pref: AppPreference, open_: str, close: str) -> str:
        return f"{pref.app}{open_}{pref.score:.2f}{close}" if self.show_scores else pref.app

    # --- where the hint goes ---------------------------------------------------------------

    def augment_task(self, task: str) -> str:
        """``task`` with the hint appended after a blank line; ``task`` unchanged if no hint.

        :meth:`strip` recovers ``task``, which is what the device must record as the
        instruction: learning from hint text would feed the model's output back as its input.
        """
        hint = self.text(task)
        return f"{task}{_SEPARATOR}{hint}" if hint else task

    def system_prompt(self, base_prompt: str, instruction: str) -> str:
        """``base_prompt`` (e.g. Open-AutoGLM's ``AgentConfig.system_prompt``) with the hint
        for ``instruction`` appended; unchanged if no hint."""
        hint = self.text(instruction)
        return f"{base_prompt.rstrip()}{_SEPARATOR}{hint}" if hint else base_prompt

    @staticmethod
    def strip(text: str) -> str:
        """``text`` without a hint that :meth:`augment_task` appended (in either language)."""
        cut = len(text)
        for prefix in HINT_PREFIX.values():
            at = text.find(_SEPARATOR + prefix)
            if at != -1:
                cut = min(cut, at)
        return text[:cut]
