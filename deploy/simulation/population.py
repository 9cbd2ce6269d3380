"""A seeded, reproducible population of phone-agent users, for training and evaluation.

Why a simulator: the base model needs population-level data without any download, and
personalization can only be judged against users whose habits we know. Each device has
persistent habits (a preferred app per intent, an evening app for some intents, its own
time-of-day profile and language); cohorts share tendencies; the two regions use different
apps. At chosen *drift* rounds a whole cohort switches its app for one intent, so learners can
be tested on change.

Every call is a pure function of ``(seed, device, round)``: ``steps_for_round`` may be called
in any order, any number of times, with the same answer. numpy's Generator is fine here —
this is simulation, never secrets.

>>> pop = Population(seed=7, regions=("cn", "eu"), cohorts_per_region=2, devices_per_cohort=3)
>>> len(pop.devices), pop.devices[0].device_id
(12, 'cn-c0-d000')
>>> a = pop.steps_for_round(pop.devices[0], 2)
>>> b = pop.steps_for_round(pop.devices[0], 2)
>>> [s.instruction for s in a] == [s.instruction for s in b]
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import numpy as np

from privacy.catalog import INTENTS, apps_for, candidate_id
from privacy.embedding import combine, embed_step

# Rounds are days; round 0 starts here (UTC).
EPOCH = datetime(2025, 1, 6, tzinfo=UTC)
_UTC_OFFSET_H = {"cn": 8, "eu": 1}
_CONTEXT_WINDOW = 8
_CONTEXT_DECAY = 0.8

# Local hours at which each intent tends to happen.
_PEAK_HOURS: Mapping[str, tuple[int, ...]] = {
    "navigation": (8, 18),
    "messaging": (10, 14, 21),
    "music": (8, 18, 22),
    "food_delivery": (12, 19),
    "shopping": (13, 21),
    "ride_hailing": (9, 23),
    "video": (21, 23),
    "payments": (12, 19),
}
# Intents whose app some users change in the evening (a time-of-day pattern).
_EVENING_INTENTS = ("music", "video", "messaging")
_EVENING_FROM = 19

# Phrasings per intent and language; {s} is filled from the slot list.
_PHRASES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "navigation": {
        "zh": ("导航去{s}", "打开导航到{s}", "帮我规划去{s}的路线", "去{s}怎么走", "带我去{s}"),
        "en": (
            "navigate to {s}",
            "directions to {s}",
            "how do I get to {s}",
            "take me to {s}",
            "route to {s} please",
        ),
    },
    "messaging": {
        "zh": ("给{s}发消息说我晚点到", "发消息给{s}", "告诉{s}我到了", "回复{s}的消息"),
        "en": (
            "message {s} that I'm running late",
            "text {s}",
            "tell {s} I arrived",
            "reply to {s}",
        ),
    },
    "music": {
        "zh": ("播放{s}的歌", "放点音乐", "我想听{s}", "来一首{s}"),
        "en": ("play some {s}", "play music", "I want to listen to {s}", "put on {s}"),
    },
    "food_delivery": {
        "zh": ("点一份{s}外卖", "帮我叫个{s}外卖", "订{s}送到家", "我饿了点个{s}"),
        "en": (
            "order {s} delivery",
            "get me some {s} delivered",
            "order food: {s}",
            "I'm hungry, order {s}",
        ),
    },
    "shopping": {
        "zh": ("帮我买{s}", "搜索{s}", "下单一个{s}", "看看{s}多少钱"),
        "en": ("buy {s}", "search for {s} to buy", "order a new {s}", "how much is a {s}"),
    },
    "ride_hailing": {
        "zh": ("叫车去{s}", "帮我打车到{s}", "打个车去{s}", "叫一辆车去{s}"),
        "en": ("get me a ride to {s}", "book a taxi to {s}", "call a car to {s}", "ride to {s}"),
    },
    "video": {
        "zh": ("看{s}视频", "播放{s}", "刷会儿视频", "找一下{s}的视频"),
        "en": ("watch {s} videos", "play {s}", "show me some videos", "find videos about {s}"),
    },
    "payments": {
        "zh": ("给{s}转账", "付钱给{s}", "扫码付款", "还{s}钱"),
        "en": ("send money to {s}", "pay {s}", "pay the bill", "transfer money to {s}"),
    },
}
_SLOTS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "navigation": {
        "zh": ("机场", "公司", "火车站", "西湖", "家"),
        "en": ("the airport", "work", "the station", "the museum", "home"),
    },
    "messaging": {"zh": ("妈妈", "老王", "小李", "老板"), "en": ("mom", "Alex", "Sam", "my boss")},
    "music": {
        "zh": ("周杰伦", "陈奕迅", "轻音乐", "摇滚"),
        "en": ("jazz", "Taylor Swift", "lofi beats", "rock"),
    },
    "food_delivery": {
        "zh": ("麻辣烫", "披萨", "奶茶", "饺子"),
        "en": ("pizza", "sushi", "burgers", "pad thai"),
    },
    "shopping": {
        "zh": ("耳机", "手机壳", "洗发水", "运动鞋"),
        "en": ("headphones", "phone case", "shampoo", "running shoes"),
    },
    "ride_hailing": {
        "zh": ("机场", "公司", "火车站", "医院"),
        "en": ("the airport", "the office", "the station", "the hospital"),
    },
    "video": {
        "zh": ("猫咪", "美食", "科技", "电影解说"),
        "en": ("cats", "cooking", "tech reviews", "football"),
    },
    "payments": {
        "zh": ("房东", "小李", "妈妈", "老王"),
        "en": ("my landlord", "Sam", "Alex", "mom"),
    },
}
_NAMED_APP = {"zh": "用{app}{text}", "en": "{text} with {app}"}


@dataclass(frozen=True)
class Drift:
    """From ``round`` on, devices of ``cohort`` switch their ``intent`` app to ``new_app``."""

    round: int
    cohort: str
    intent: str
    new_app: str
    uptake: float = 0.9  # share of the cohort's devices that switch


@dataclass(frozen=True)
class Device:
    """One simulated phone and its persistent habits (before any drift)."""

    index: int
    device_id: str
    region: str
    cohort: str
    language: str
    habits: Mapping[str, str]  # intent -> preferred app
    evening_habits: Mapping[str, str]  # intent -> app preferred from 19:00
    intent_weights: tuple[float, ...]  # activity profile over INTENTS
    adherence: float  # probability of picking the habitual app


@dataclass(frozen=True, eq=False)
class Step:
    """One agent step: what the user asked, what the agent proposed, what the user took.

    ``context`` is the device's 128-d context embedding *before* this step (a decayed
    combination of its recent steps), i.e. what the device can feed the model.
    """

    device_id: str
    region: str
    cohort: str
    round: int
    index: int
    instruction: str
    language: str
    intent: str
    hour: int
    timestamp: datetime
    agent_app: str
    chosen_app: str
    outcome: str  # "accepted" (took the agent's app) or "overridden"
    context: np.ndarray = field(repr=False)
    action: str = "launch"

    @property
    def candidate(self) -> str:
        """The catalogue id of what the user actually did: the label to predict."""
        return candidate_id(self.chosen_app, self.action)

    def embedding(self) -> np.ndarray:
        """The behavior embedding of this step, as the device computes it."""
        return embed_step(self.instruction, self.action, self.chosen_app, self.outcome, self.hour)


@dataclass(frozen=True)
class _RawStep:
    instruction: str
    intent: str
    hour: int
    minute: int
    agent_app: str
    chosen_app: str
    outcome: str


class Population:
    """A reproducible set of devices in ``cohorts_per_region`` cohorts per region.

    ``drift_rounds`` holds :class:`Drift` objects, or bare round numbers for which a seeded
    drift is drawn (first one on navigation, then random intents); see :attr:`drifts`.
    """

    def __init__(
        self,
        seed: int,
        regions: Sequence[str] = ("cn", "eu"),
        cohorts_per_region: int = 3,
        devices_per_cohort: int = 10,
        drift_rounds: Iterable[int | Drift] = (),
        steps_per_round: int = 24,
        heldout_per_round: int = 12,
        cohort_consensus: float = 0.8,
    ) -> None:
        self.seed = seed
        self.regions = tuple(regions)
        self.cohorts_per_region = cohorts_per_region
        self.devices_per_cohort = devices_per_cohort
        self.drift_rounds = tuple(drift_rounds)
        self.steps_per_round = steps_per_round
        self.heldout_per_round = heldout_per_round
        self.cohort_consensus = cohort_consensus
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
        self._cohort_prefs = self._draw_cohorts(rng)
        self._devices = self._draw_devices(rng)
        self._drifts = self._draw_drifts(rng)

    # --- structure -------------------------------------------------------------------------

    @property
    def devices(self) -> tuple[Device, ...]:
        return self._devices

    @property
    def cohorts(self) -> tuple[str, ...]:
        return tuple(self._cohort_prefs)

    @property
    def drifts(self) -> tuple[Drift, ...]:
        return self._drifts

    def cohort_preference(self, cohort: str, intent: str, round: int = 0) -> str:
        """The app most of ``cohort`` uses for ``intent`` at ``round`` (after drifts)."""
        return self._pref_after(cohort, intent, self._drifts, round)

    def devices_in(self, cohort: str) -> tuple[Device, ...]:
        return tuple(d for d in self._devices if d.cohort == cohort)

    def habit(self, device: Device, intent: str, round: int, hour: int = 12) -> str:
        """The app ``device`` habitually uses for ``intent`` at ``hour`` of ``round``."""
        if hour >= _EVENING_FROM and intent in device.evening_habits:
            app = device.evening_habits[intent]
        else:
            app = device.habits[intent]
        for k, d in enumerate(self._drifts):
            if d.cohort == device.cohort and d.intent == intent and d.round <= round:
                follows = self._rng(device, -1 - k, 0).random() < d.uptake
                if follows:
                    app = d.new_app
        return app

    # --- data ------------------------------------------------------------------------------

    def steps_for_round(self, device: Device, round: int) -> list[Step]:
        """The device's agent steps during ``round`` (a day), with their contexts."""
        history = self._raw(device, round - 1, 1, self.steps_per_round) if round > 0 else []
        raw = self._raw(device, round, 1, self.steps_per_round)
        return self._with_context(device, round, history[-_CONTEXT_WINDOW:], raw)

    def heldout(self, device: Device, round: int) -> list[Step]:
        """A probe set: independent draws from the same habits as ``round`` (their contexts
        start from the end of the round's steps). Never returned by :meth:`steps_for_round`,
        so they can judge a model fitted on those steps."""
        history = self._raw(device, round, 1, self.steps_per_round)
        raw = self._raw(device, round, 2, self.heldout_per_round)
        return self._with_context(device, round, history[-_CONTEXT_WINDOW:], raw)

    # --- internals -------------------------------------------------------------------------

    def _rng(self, device: Device, round: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(
            np.random.SeedSequence([self.seed, 1, device.index, round + 1_000_000, stream])
        )

    def _draw_cohorts(self, rng: np.random.Generator) -> dict[str, dict[str, str]]:
        prefs: dict[str, dict[str, str]] = {}
        for region in self.regions:
            for c in range(self.cohorts_per_region):
                cohort = f"{region}-c{c}"
                prefs[cohort] = {}
                for intent in INTENTS:
                    apps = apps_for(intent, region)
                    # Half the cohorts follow the region's favourite, the rest another app.
                    pick = 0 if rng.random() < 0.5 else int(rng.integers(1, len(apps)))
                    prefs[cohort][intent] = apps[pick]
        return prefs

    def _draw_devices(self, rng: np.random.Generator) -> tuple[Device, ...]:
        devices: list[Device] = []
        for cohort, prefs in self._cohort_prefs.items():
            region = cohort.split("-c")[0]
            for j in range(self.devices_per_cohort):
                habits: dict[str, str] = {}
                for intent in INTENTS:
                    apps = apps_for(intent, region)
                    if rng.random() < self.cohort_consensus:
                        habits[intent] = prefs[intent]
                    else:
                        habits[intent] = apps[int(rng.integers(len(apps)))]
                evening: dict[str, str] = {}
                for intent in _EVENING_INTENTS:
                    if rng.random() < 0.3:
                        others = [a for a in apps_for(intent, region) if a != habits[intent]]
                        evening[intent] = others[int(rng.integers(len(others)))]
                main_lang = "zh" if region == "cn" else "en"
                other_lang = "en" if main_lang == "zh" else "zh"
                language = main_lang if rng.random() < 0.92 else other_lang
                weights = rng.dirichlet(np.full(len(INTENTS), 2.0))
                devices.append(
                    Device(
                        index=len(devices),
                        device_id=f"{cohort}-d{j:03d}",
                        region=region,
                        cohort=cohort,
                        language=language,
                        habits=MappingProxyType(habits),
                        evening_habits=MappingProxyType(evening),
                        intent_weights=tuple(float(w) for w in weights),
                        adherence=float(rng.uniform(0.8, 0.95)),
                    )
                )
        return tuple(devices)

    def _draw_drifts(self, rng: np.random.Generator) -> tuple[Drift, ...]:
        drifts: list[Drift] = []
        cohorts = list(self._cohort_prefs)
        for item in self.drift_rounds:
            if isinstance(item, Drift):
                region = item.cohort.split("-c")[0]
                if item.cohort not in self._cohort_prefs or item.new_app not in apps_for(
                    item.intent, region
                ):
                    raise ValueError(f"{item} names an unknown cohort or an app of another region")
                drifts.append(item)
                continue
            cohort = cohorts[int(rng.integers(len(cohorts)))]
            intent = "navigation" if not drifts else INTENTS[int(rng.integers(len(INTENTS)))]
            region = cohort.split("-c")[0]
            current = self._pref_after(cohort, intent, drifts, int(item))
            others = [a for a in apps_for(intent, region) if a != current]
            drifts.append(Drift(int(item), cohort, intent, others[int(rng.integers(len(others)))]))
        return tuple(sorted(drifts, key=lambda d: d.round))

    def _pref_after(self, cohort: str, intent: str, drifts: Sequence[Drift], round: int) -> str:
        app = self._cohort_prefs[cohort][intent]
        for d in drifts:
            if d.cohort == cohort and d.intent == intent and d.round <= round:
                app = d.new_app
        return app

    def _raw(self, device: Device, round: int, stream: int, n: int) -> list[_RawStep]:
        rng = self._rng(device, round, stream)
        out: list[_RawStep] = []
        lang = device.language
        for _ in range(n):
            intent = INTENTS[int(rng.choice(len(INTENTS), p=device.intent_weights))]
            peaks = _PEAK_HOURS[intent]
            hour = int(round_half(peaks[int(rng.integers(len(peaks)))] + rng.normal(0, 1.5))) % 24
            minute = int(rng.integers(60))
            apps = apps_for(intent, device.region)
            habit = self.habit(device, intent, round, hour)
            if rng.random() < device.adherence:
                chosen = habit
            else:
                others = [a for a in apps if a != habit]
                chosen = others[int(rng.integers(len(others)))]
            phrase = _PHRASES[intent][lang][int(rng.integers(len(_PHRASES[intent][lang])))]
            slots = _SLOTS[intent][lang]
            text = phrase.format(s=slots[int(rng.integers(len(slots)))])
            if rng.random() < 0.1:  # the user names the app outright
                text = _NAMED_APP[lang].format(app=chosen, text=text)
            agent = apps[0]  # a non-personalized agent proposes the region's favourite
            outcome = "accepted" if chosen == agent else "overridden"
            out.append(_RawStep(text, intent, hour, minute, agent, chosen, outcome))
        return sorted(out, key=lambda r: (r.hour, r.minute))  # a day, in order

    def _with_context(
        self, device: Device, round: int, history: list[_RawStep], raw: list[_RawStep]
    ) -> list[Step]:
        window = [self._embed(r) for r in history]
        steps: list[Step] = []
        offset = timedelta(hours=_UTC_OFFSET_H.get(device.region, 0))
        for i, r in enumerate(raw):
            recent = window[-_CONTEXT_WINDOW:]
            weights = [_CONTEXT_DECAY ** (len(recent) - 1 - k) for k in range(len(recent))]
            context = combine(recent, weights)
            local = EPOCH + timedelta(days=round, hours=r.hour, minutes=r.minute)
            steps.append(
                Step(
                    device_id=device.device_id,
                    region=device.region,
                    cohort=device.cohort,
                    round=round,
                    index=i,
                    instruction=r.instruction,
                    language=device.language,
                    intent=r.intent,
                    hour=r.hour,
                    timestamp=local - offset,
                    agent_app=r.agent_app,
                    chosen_app=r.chosen_app,
                    outcome=r.outcome,
                    context=context,
                )
            )
            window.append(self._embed(r))
        return steps

    @staticmethod
    def _embed(r: _RawStep) -> np.ndarray:
        return embed_step(r.instruction, "launch", r.chosen_app, r.outcome, r.hour)


def round_half(x: float) -> float:
    """Round half away from zero (numpy's round is banker's rounding)."""
    return float(np.floor(x + 0.5))
