"""A seeded, reproducible population of phone-agent users whose tasks are whole agent episodes.

Why a simulator: the base model needs population-level data without any download, and
personalization can only be judged against users whose habits we know. Each device has
persistent habits (a preferred app per intent, an evening app for some intents, its own
time-of-day profile and language), apps that are not installed, and a habit of insisting on
its own app or going along with the agent's; cohorts share tendencies; the two regions use
different apps. At chosen *drift* rounds a whole cohort switches its app for one intent.

What a task looks like is what Open-AutoGLM produces and Sotto's observer records
(:class:`edge_client.steps.AgentStep`): a ``Launch`` of the agent's app, then Tap, Type,
Swipe, Wait, Back... inside it and a ``finish`` whose foreground app is where the user ended.
Around that: the user overrides the agent's app (a second ``Launch``, ``overridden``);
Open-AutoGLM refuses a name it cannot launch (支付宝, a misspelt "哔哩哔哩"); an app that is not
installed never comes up (the next step still shows ``System Home``); the agent hands over for
a login (``Take_over``); the model's reply cannot be parsed and the task ends early. Tasks are
in Chinese or English, and every app the agent launches successfully is one Open-AutoGLM can
launch (:data:`OPTIONS` names catalogue apps only). The labels come from the steps
(:func:`privacy.features.episode_of`), as on a device; the simulator also keeps the truth
(``Episode.used_app``) to judge them.

Every call is a pure function of ``(seed, device, round)``: ``episodes_for_round`` may be
called in any order, any number of times, with the same answer. numpy's Generator is fine
here — this is simulation, never secrets.

>>> pop = Population(seed=7, regions=("cn", "eu"), cohorts_per_region=2, devices_per_cohort=3)
>>> len(pop.devices), pop.devices[0].device_id
(12, 'cn-c0-d000')
>>> a = pop.episodes_for_round(pop.devices[0], 2)
>>> b = pop.episodes_for_round(pop.devices[0], 2)
>>> [e.instruction for e in a] == [e.instruction for e in b]
True
>>> {"Launch", "Tap", "finish"} <= {s.action for e in a for s in e.steps}
True
>>> sum(s.action == "Launch" for e in a for s in e.steps) < sum(len(e.steps) for e in a) / 3
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import cached_property
from types import MappingProxyType

import numpy as np

from edge_client.steps import OUTCOMES as STEP_OUTCOMES
from edge_client.steps import AgentStep
from privacy import catalog
from privacy import features as F

# Rounds are days; round 0 starts here (UTC).
EPOCH = datetime(2025, 1, 6, tzinfo=UTC)
_UTC_OFFSET_H = {"cn": 8, "eu": 1}
_HANDED_OVER = "handed_over" if "handed_over" in STEP_OUTCOMES else "overridden"
_PARSE_FLAGS: dict[str, object] = (
    {"flags": ("parse_failure",)} if "flags" in AgentStep.model_fields else {}
)

# Requests the agent answers without any app: no app should be hinted for them.
_NO_APP: Mapping[str, tuple[str, ...]] = {
    "zh": (
        "你好",
        "今天天气怎么样",
        "讲个笑话",
        "现在几点了",
        "明天会下雨吗",
        "你是谁",
        "帮我算一下十五乘以七",
        "谢谢",
    ),
    "en": (
        "hello",
        "what's the weather today",
        "tell me a joke",
        "what time is it",
        "will it rain tomorrow",
        "who are you",
        "what is 15 times 7",
        "thanks",
    ),
}

# Per region, per intent: the apps its users choose between, the most popular first (what a
# non-personalized agent launches). Catalogue names only: all launchable by Open-AutoGLM.
OPTIONS: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "cn": MappingProxyType(
            {
                "navigation": ("高德地图", "百度地图"),
                "messaging": ("微信", "QQ", "飞书"),
                "music": ("网易云音乐", "QQ音乐", "汽水音乐"),
                "food_delivery": ("美团", "饿了么", "淘宝"),
                "shopping": ("淘宝", "京东", "拼多多"),
                "ride_hailing": ("滴滴出行", "高德地图"),
                "video": ("抖音", "bilibili", "腾讯视频", "爱奇艺"),
                "travel": ("携程", "去哪儿旅行", "铁路12306"),
                "social": ("小红书", "微博", "知乎"),
            }
        ),
        "eu": MappingProxyType(
            {
                "navigation": ("Google Maps", "Osmand"),
                "messaging": ("WhatsApp", "Telegram", "SimpleSMSMessenger"),
                "music": ("RetroMusic", "PiMusicPlayer", "VLC"),
                "food_delivery": ("McDonald",),
                "shopping": ("Temu",),
                "video": ("Tiktok", "VLC"),
                "travel": ("Booking.com", "Expedia"),
                "social": ("Reddit", "Twitter", "Quora"),
            }
        ),
    }
)

# Apps users ask for by name that Open-AutoGLM cannot launch: (intent, app, phrasing).
_UNLAUNCHABLE_TASKS: Mapping[str, tuple[tuple[str, str, str], ...]] = {
    "cn": (
        ("payments", "支付宝", "打开支付宝付款给{s}"),
        ("navigation", "腾讯地图", "用腾讯地图导航去{s}"),
        ("messaging", "钉钉", "打开钉钉给{s}发消息"),
        ("music", "酷狗音乐", "用酷狗音乐放{s}"),
    ),
    "eu": (
        ("music", "Spotify", "play {s} on Spotify"),
        ("video", "YouTube", "watch {s} on YouTube"),
        ("ride_hailing", "Uber", "get an Uber to {s}"),
        ("food_delivery", "Deliveroo", "order {s} on Deliveroo"),
    ),
}

# Local hours at which each intent tends to happen.
_PEAK_HOURS: Mapping[str, tuple[int, ...]] = {
    "navigation": (8, 18),
    "messaging": (10, 14, 21),
    "music": (8, 18, 22),
    "food_delivery": (12, 19),
    "shopping": (13, 21),
    "ride_hailing": (9, 23),
    "video": (21, 23),
    "travel": (11, 20),
    "social": (12, 22),
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
    "travel": {
        "zh": ("订一张去{s}的票", "帮我订{s}的酒店", "查一下去{s}的火车票", "看看去{s}的机票"),
        "en": (
            "book a hotel in {s}",
            "find flights to {s}",
            "book a trip to {s}",
            "look for a room in {s}",
        ),
    },
    "social": {
        "zh": ("看看{s}的帖子", "搜一下{s}相关的笔记", "刷一下{s}的动态", "发个关于{s}的帖子"),
        "en": (
            "check posts about {s}",
            "what are people saying about {s}",
            "post something about {s}",
            "read the {s} thread",
        ),
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
    "travel": {"zh": ("上海", "成都", "三亚", "北京"), "en": ("Lisbon", "Rome", "Berlin", "Paris")},
    "social": {
        "zh": ("露营", "减脂餐", "考研", "装修"),
        "en": ("the match", "the election", "sourdough", "new phones"),
    },
    "payments": {
        "zh": ("房东", "小李", "妈妈", "老王"),
        "en": ("my landlord", "Sam", "Alex", "mom"),
    },
}
_NAMED_APP = {
    "zh": ("用{app}{text}", "打开{app}，{text}", "{text}，用{app}"),
    "en": ("{text} with {app}", "open {app} and {text}", "{text} on {app}"),
}
# What the agent does inside an app, per intent: a few of these, in order.
_IN_APP: Mapping[str, tuple[str, ...]] = {
    "navigation": ("Tap", "Type", "Tap", "Tap"),
    "messaging": ("Tap", "Type_Name", "Tap", "Type", "Tap"),
    "music": ("Tap", "Type", "Tap", "Tap"),
    "food_delivery": ("Tap", "Type", "Swipe", "Tap", "Tap", "Tap"),
    "shopping": ("Tap", "Type", "Swipe", "Tap", "Tap"),
    "ride_hailing": ("Tap", "Type", "Tap", "Tap"),
    "video": ("Tap", "Type", "Swipe", "Tap"),
    "travel": ("Tap", "Type", "Tap", "Swipe", "Tap", "Tap"),
    "social": ("Tap", "Type", "Swipe", "Swipe", "Tap"),
    "payments": ("Tap", "Type", "Tap"),
}
_EXTRA = ("Swipe", "Wait", "Back", "Tap", "Long Press", "Double Tap")


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
    intent_weights: tuple[float, ...]  # activity profile over intents_of(region)
    adherence: float  # probability of insisting on the habitual app against the agent's
    missing: frozenset[str] = frozenset()  # option apps not installed (never a habit)

    @property
    def candidates(self) -> tuple[str, ...]:
        """The apps the device suggests from: the catalogue's apps of its region."""
        return catalog.apps_for_region(self.region)


@dataclass(frozen=True, eq=False)
class Episode:
    """One task of one device: its steps as the SDK records them, and the truth about it.

    ``context`` is the device's context embedding *before* the task
    (:func:`privacy.features.context_of` of its earlier tasks), what the device feeds the
    model. ``used_app`` and ``outcome`` are the simulator's truth; :attr:`features` is what
    the steps say (:func:`privacy.features.episode_of`), which training reads.
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
    habit_app: str  # what the user wanted for this intent at this time
    named_app: str | None  # the app the task names, as the user wrote it
    agent_app: str | None  # the app the agent launched first
    used_app: str | None  # the app the user ended up using (None: none, or not launchable)
    outcome: str  # accepted | overridden | failed | handed_over
    steps: tuple[AgentStep, ...] = field(repr=False)
    context: np.ndarray = field(repr=False)
    candidates: tuple[str, ...] = field(repr=False, default=())

    @cached_property
    def features(self) -> F.Episode:
        return F.episode_of(self.steps)

    @property
    def rows(self) -> list[F.Row]:
        """The labelled rows of this task (:func:`privacy.features.rows_of`)."""
        return F.rows_of(self.features, self.context, self.candidates)


@dataclass(frozen=True)
class _Plan:
    """What happens in a task, before it is written out as steps."""

    instruction: str
    intent: str
    hour: int
    minute: int
    habit: str
    named: str | None  # spelling in the task
    agent_first: str | None  # what the agent tries to launch first (any spelling)
    agent_app: str | None  # canonical app the agent launches (None: unlaunchable request)
    override: bool
    take_over: bool
    parse_failure_at: int | None  # step index where the model's reply is unparsable
    n_in_app: int
    unlaunchable: str | None
    no_app: bool = False


def intents_of(region: str) -> tuple[str, ...]:
    """The intents simulated users of ``region`` have."""
    return tuple(OPTIONS[region])


class Population:
    """A reproducible set of devices in ``cohorts_per_region`` cohorts per region.

    ``drift_rounds`` holds :class:`Drift` objects, or bare round numbers for which a seeded
    drift is drawn (first one on navigation, then random intents); see :attr:`drifts`.
    ``steps_per_round`` and ``heldout_per_round`` count *tasks* (episodes) per day, each several
    agent steps. The ``p_*`` rates set how often a task names its app, names one Open-AutoGLM
    cannot launch, hands over, ends on an unparsable reply or needs no app, and how often an
    app the user does not use is missing from the phone.
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
        p_named: float = 0.1,
        p_unlaunchable: float = 0.04,
        p_take_over: float = 0.05,
        p_parse_failure: float = 0.03,
        p_missing: float = 0.1,
        p_no_app: float = 0.04,
    ) -> None:
        self.seed = seed
        self.regions = tuple(regions)
        self.cohorts_per_region = cohorts_per_region
        self.devices_per_cohort = devices_per_cohort
        self.drift_rounds = tuple(drift_rounds)
        self.steps_per_round = steps_per_round  # tasks per round (a day)
        self.heldout_per_round = heldout_per_round
        self.cohort_consensus = cohort_consensus
        self.p_named = p_named
        self.p_unlaunchable = p_unlaunchable
        self.p_take_over = p_take_over
        self.p_parse_failure = p_parse_failure
        self.p_missing = p_missing
        self.p_no_app = p_no_app
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
        self._cohort_prefs = self._draw_cohorts(rng)
        self._devices = self._draw_devices(rng)
        self._by_id = {d.device_id: d for d in self._devices}
        self._feature_cache: dict[tuple[int, int], tuple[F.Episode, ...]] = {}
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

    def device(self, device_id: str) -> Device:
        return self._by_id[device_id]

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

    def episodes_for_round(self, device: Device, round: int) -> list[Episode]:
        """The device's tasks during ``round`` (a day), in order, with their contexts."""
        history = list(self._features(device.index, round - 1)) if round > 0 else []
        return self._write(device, round, 1, history)

    def heldout(self, device: Device, round: int) -> list[Episode]:
        """A probe set: independent draws from the same habits as ``round`` (their contexts
        start from the end of the round's tasks). Never returned by
        :meth:`episodes_for_round`, so they can judge a model fitted on those tasks."""
        return self._write(device, round, 2, list(self._features(device.index, round)))

    def rows_for_round(self, device: Device, round: int) -> list[F.Row]:
        return [r for e in self.episodes_for_round(device, round) for r in e.rows]

    def task(
        self,
        device: Device,
        when: datetime,
        intent: str,
        *,
        rng: np.random.Generator,
        wanted: str | None = None,
        name_app: bool = False,
        agent_app: str | None = None,
        history: Sequence[F.Episode] = (),
        index: int = 0,
    ) -> Episode:
        """One task written out on demand (benches): ``device`` wants ``wanted`` (default:
        its habit) for ``intent`` at local time ``when``; with ``name_app`` the task names it;
        ``agent_app`` is what the agent launches for an unnamed task (default: the region's
        favourite, as a non-personalized agent does)."""
        hour = when.hour
        habit = wanted or self.habit(device, intent, 0, hour)
        plan = self._plan(
            device,
            rng,
            intent,
            hour,
            when.minute,
            habit,
            force_named=name_app,
            agent_app=agent_app,
            allow_noise=False,
        )
        offset = timezone(timedelta(hours=_UTC_OFFSET_H.get(device.region, 0)))
        start = when.replace(tzinfo=offset) if when.tzinfo is None else when
        return self._episode(device, 0, index, plan, start, list(history), rng)

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
                for intent in intents_of(region):
                    apps = OPTIONS[region][intent]
                    # Half the cohorts follow the region's favourite, the rest another app.
                    pick = 0
                    if len(apps) > 1 and rng.random() >= 0.5:
                        pick = int(rng.integers(1, len(apps)))
                    prefs[cohort][intent] = apps[pick]
        return prefs

    def _draw_devices(self, rng: np.random.Generator) -> tuple[Device, ...]:
        devices: list[Device] = []
        for cohort, prefs in self._cohort_prefs.items():
            region = cohort.split("-c")[0]
            intents = intents_of(region)
            for j in range(self.devices_per_cohort):
                habits: dict[str, str] = {}
                for intent in intents:
                    apps = OPTIONS[region][intent]
                    if rng.random() < self.cohort_consensus:
                        habits[intent] = prefs[intent]
                    else:
                        habits[intent] = apps[int(rng.integers(len(apps)))]
                evening: dict[str, str] = {}
                for intent in _EVENING_INTENTS:
                    others = [a for a in OPTIONS[region][intent] if a != habits[intent]]
                    if others and rng.random() < 0.3:
                        evening[intent] = others[int(rng.integers(len(others)))]
                wanted = set(habits.values()) | set(evening.values())
                missing = frozenset(
                    a
                    for a in sorted({a for i in intents for a in OPTIONS[region][i]})
                    if a not in wanted and rng.random() < self.p_missing
                )
                main_lang = "zh" if region == "cn" else "en"
                other_lang = "en" if main_lang == "zh" else "zh"
                language = main_lang if rng.random() < 0.92 else other_lang
                weights = rng.dirichlet(np.full(len(intents), 2.0))
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
                        missing=missing,
                    )
                )
        return tuple(devices)

    def _draw_drifts(self, rng: np.random.Generator) -> tuple[Drift, ...]:
        drifts: list[Drift] = []
        cohorts = list(self._cohort_prefs)
        for item in self.drift_rounds:
            if isinstance(item, Drift):
                region = item.cohort.split("-c")[0]
                if item.cohort not in self._cohort_prefs or item.new_app not in OPTIONS[region].get(
                    item.intent, ()
                ):
                    raise ValueError(f"{item} names an unknown cohort or an app of another region")
                drifts.append(item)
                continue
            cohort = cohorts[int(rng.integers(len(cohorts)))]
            region = cohort.split("-c")[0]
            choices = [i for i in intents_of(region) if len(OPTIONS[region][i]) > 1]
            intent = "navigation" if not drifts else choices[int(rng.integers(len(choices)))]
            current = self._pref_after(cohort, intent, drifts, int(item))
            others = [a for a in OPTIONS[region][intent] if a != current]
            drifts.append(Drift(int(item), cohort, intent, others[int(rng.integers(len(others)))]))
        return tuple(sorted(drifts, key=lambda d: d.round))

    def _pref_after(self, cohort: str, intent: str, drifts: Sequence[Drift], round: int) -> str:
        app = self._cohort_prefs[cohort][intent]
        for d in drifts:
            if d.cohort == cohort and d.intent == intent and d.round <= round:
                app = d.new_app
        return app

    def _plans(self, device: Device, round: int, stream: int, n: int) -> list[_Plan]:
        rng = self._rng(device, round, stream)
        intents = intents_of(device.region)
        out: list[_Plan] = []
        for _ in range(n):
            intent = intents[int(rng.choice(len(intents), p=device.intent_weights))]
            peaks = _PEAK_HOURS[intent]
            hour = int(round_half(peaks[int(rng.integers(len(peaks)))] + rng.normal(0, 1.5))) % 24
            minute = int(rng.integers(60))
            habit = self.habit(device, intent, round, hour)
            out.append(self._plan(device, rng, intent, hour, minute, habit))
        return sorted(out, key=lambda p: (p.hour, p.minute))  # a day, in order

    def _plan(
        self,
        device: Device,
        rng: np.random.Generator,
        intent: str,
        hour: int,
        minute: int,
        habit: str,
        *,
        force_named: bool = False,
        agent_app: str | None = None,
        allow_noise: bool = True,
    ) -> _Plan:
        lang = device.language
        region = device.region
        draws = rng.random(7)
        if allow_noise and draws[6] < self.p_no_app:
            phrases = _NO_APP[lang]
            return _Plan(
                instruction=phrases[int(rng.integers(len(phrases)))],
                intent="none",
                hour=hour,
                minute=minute,
                habit=habit,
                named=None,
                agent_first=None,
                agent_app=None,
                override=False,
                take_over=False,
                parse_failure_at=None,
                n_in_app=0,
                unlaunchable=None,
                no_app=True,
            )
        unlaunchable = None
        if allow_noise and draws[0] < self.p_unlaunchable:
            intent, unlaunchable, phrase = _UNLAUNCHABLE_TASKS[region][
                int(rng.integers(len(_UNLAUNCHABLE_TASKS[region])))
            ]
            slots = _SLOTS[intent]["zh" if region == "cn" else "en"]
            text = phrase.format(s=slots[int(rng.integers(len(slots)))])
            return _Plan(
                instruction=text,
                intent=intent,
                hour=hour,
                minute=minute,
                habit=habit,
                named=unlaunchable,
                agent_first=unlaunchable,
                agent_app=None,
                override=False,
                take_over=False,
                parse_failure_at=None,
                n_in_app=int(rng.integers(2, 5)),
                unlaunchable=unlaunchable,
            )
        phrases = _PHRASES[intent][lang]
        slots = _SLOTS[intent][lang]
        text = phrases[int(rng.integers(len(phrases)))].format(
            s=slots[int(rng.integers(len(slots)))]
        )
        named = None
        first = None
        if force_named or (allow_noise and draws[1] < self.p_named):  # names the app outright
            spellings = catalog.spellings(habit)
            named = spellings[int(rng.integers(len(spellings)))]
            template = _NAMED_APP[lang][int(rng.integers(len(_NAMED_APP[lang])))]
            text = template.format(app=named, text=text)
            agent = habit
            # the agent sometimes launches the user's spelling as written, which Open-AutoGLM
            # refuses when it is not one of its names ("哔哩哔哩"), then corrects itself
            if not catalog.is_launchable(named) and draws[2] < 0.4:
                first = named
            override = False
        else:
            agent = agent_app or OPTIONS[region][intent][0]
            override = agent != habit and (agent in device.missing or draws[3] < device.adherence)
        take_over = allow_noise and draws[4] < self.p_take_over
        n_in_app = int(rng.integers(3, 7))
        parse_at = None
        if allow_noise and draws[5] < self.p_parse_failure:
            parse_at = int(rng.integers(0, n_in_app + 1))
        return _Plan(
            instruction=text,
            intent=intent,
            hour=hour,
            minute=minute,
            habit=habit,
            named=named,
            agent_first=first or agent,
            agent_app=agent,
            override=override,
            take_over=take_over,
            parse_failure_at=parse_at,
            n_in_app=n_in_app,
            unlaunchable=None,
        )

    def _features(self, device_index: int, round: int) -> tuple[F.Episode, ...]:
        """What the device's tasks of ``round`` say (the next round's context history)."""
        key = (device_index, round)
        found = self._feature_cache.get(key)
        if found is None:
            device = self._devices[device_index]
            found = tuple(F.episode_of(t[2]) for t in self._tasks(device, round, 1))
            self._remember(key, found)
        return found

    def _remember(self, key: tuple[int, int], value: tuple[F.Episode, ...]) -> None:
        self._feature_cache[key] = value
        while len(self._feature_cache) > 4096:  # bounded: oldest first
            self._feature_cache.pop(next(iter(self._feature_cache)))

    def _tasks(
        self, device: Device, round: int, stream: int
    ) -> list[tuple[_Plan, datetime, list[AgentStep], str | None, str]]:
        """The round's tasks written out: (plan, start, steps, used app, outcome) each."""
        n = self.steps_per_round if stream == 1 else self.heldout_per_round
        plans = self._plans(device, round, stream, n)
        rng = self._rng(device, round, stream + 10)
        offset = timezone(timedelta(hours=_UTC_OFFSET_H.get(device.region, 0)))
        day = (EPOCH + timedelta(days=round)).replace(tzinfo=None)
        out = []
        for plan in plans:
            start = (day + timedelta(hours=plan.hour, minutes=plan.minute)).replace(tzinfo=offset)
            steps, used, outcome = _write_steps(device, plan, start, rng)
            out.append((plan, start, steps, used, outcome))
        return out

    def _write(
        self, device: Device, round: int, stream: int, history: list[F.Episode]
    ) -> list[Episode]:
        out: list[Episode] = []
        seen = history[-F.CONTEXT_EPISODES :]
        for i, (plan, start, steps, used, outcome) in enumerate(self._tasks(device, round, stream)):
            ep = self._make(device, round, i, plan, start, steps, used, outcome, seen)
            out.append(ep)
            seen = [*seen, ep.features][-F.CONTEXT_EPISODES :]
        if stream == 1:
            self._remember((device.index, round), tuple(e.features for e in out))
        return out

    def _episode(
        self,
        device: Device,
        round: int,
        index: int,
        plan: _Plan,
        start: datetime,
        history: list[F.Episode],
        rng: np.random.Generator,
    ) -> Episode:
        steps, used, outcome = _write_steps(device, plan, start, rng)
        return self._make(device, round, index, plan, start, steps, used, outcome, history)

    @staticmethod
    def _make(
        device: Device,
        round: int,
        index: int,
        plan: _Plan,
        start: datetime,
        steps: list[AgentStep],
        used: str | None,
        outcome: str,
        history: Sequence[F.Episode],
    ) -> Episode:
        return Episode(
            device_id=device.device_id,
            region=device.region,
            cohort=device.cohort,
            round=round,
            index=index,
            instruction=plan.instruction,
            language=device.language,
            intent=plan.intent,
            hour=plan.hour,
            timestamp=start,
            habit_app=plan.habit,
            named_app=plan.named,
            agent_app=plan.agent_app,
            used_app=used,
            outcome=outcome,
            steps=tuple(steps),
            context=F.context_of(history, start),
            candidates=device.candidates,
        )


def _foreground(app: str, rng: np.random.Generator) -> str:
    """How Open-AutoGLM reports ``app`` in the foreground: one of its names for the package."""
    names = catalog.app(app).launch_names
    return names[0] if rng.random() < 0.7 else names[int(rng.integers(len(names)))]


def _write_steps(
    device: Device, plan: _Plan, start: datetime, rng: np.random.Generator
) -> tuple[list[AgentStep], str | None, str]:
    """The steps of one task as the observer records them, and the truth: (steps, the app the
    user ended up using, outcome)."""
    steps: list[AgentStep] = []
    t = [start]
    text = plan.instruction

    def add(action: str, outcome: str = "accepted", **kw: object) -> None:
        t[0] = t[0] + timedelta(seconds=float(rng.uniform(2.0, 9.0)))
        steps.append(
            AgentStep(action=action, instruction=text, outcome=outcome, timestamp=t[0], **kw)  # type: ignore[arg-type]
        )

    def point() -> tuple[int, int]:
        return (int(rng.integers(40, 960)), int(rng.integers(60, 960)))

    def finish(current: str | None, message: str = "任务完成") -> None:
        add("finish", current_app=current, message=message)

    def in_app(current: str, count: int) -> bool:
        """Steps inside an app; False when the task ended early (unparsable reply)."""
        template = _IN_APP[plan.intent]
        for k in range(count):
            if plan.parse_failure_at is not None and k == plan.parse_failure_at:
                # the agent's raw, unparsable reply
                add(
                    "finish",
                    current_app=current,
                    message="do(action=Tap, element=[",
                    **_PARSE_FLAGS,
                )
                return False
            if rng.random() < 0.25:
                action = _EXTRA[int(rng.integers(len(_EXTRA)))]
            else:
                action = template[k % len(template)]
            if action in ("Tap", "Double Tap", "Long Press"):
                add(action, current_app=current, element=point())
            elif action in ("Type", "Type_Name"):
                add(action, current_app=current, text="…")
            elif action == "Swipe":
                add(action, current_app=current, start=point(), end=point())
            elif action == "Wait":
                add(action, current_app=current, duration_s=float(rng.integers(1, 4)))
            else:
                add(action, current_app=current)
        return True

    home = F.NO_APP
    if plan.no_app:  # the agent answers at once
        finish(home, "……")
        return steps, None, "accepted"
    if plan.unlaunchable is not None:  # Open-AutoGLM does not know the name at all
        add("Launch", "failed", app=plan.unlaunchable, current_app=None)
        add("Home", current_app=home)
        add("Swipe", current_app=home, start=point(), end=point())
        add("Tap", current_app=home, element=point())
        for _ in range(plan.n_in_app):
            add("Tap", current_app=home, element=point())
        finish(home, "已在应用中完成")
        return steps, None, "failed"

    assert plan.agent_app is not None
    if plan.parse_failure_at == 0 and plan.named is None:
        # unparsable before anything happened
        add("finish", current_app=home, message='do(action="Launch", app=', **_PARSE_FLAGS)
        return steps, None, "failed"
    if plan.agent_first is not None and plan.agent_first != plan.agent_app:
        add("Launch", "failed", app=plan.agent_first, current_app=home)  # "App not found"
    add("Launch", app=plan.agent_app, current_app=home)
    current = plan.agent_app
    if plan.agent_app in device.missing:  # launched by name, but nothing came up
        current = None
    if current is None:  # Open-AutoGLM waits for an app that never comes up
        add("Wait", current_app=home, duration_s=2.0)
    if plan.override:
        if current is not None:  # the agent starts in its app; the user steps in
            add("Tap", current_app=_foreground(current, rng), element=point())
        steps.append(
            AgentStep(
                action="Launch",
                app=plan.habit,
                instruction=text,
                outcome="overridden",
                timestamp=t[0] + timedelta(seconds=3),
            )
        )
        t[0] = t[0] + timedelta(seconds=3)
        current = plan.habit
    if current is None:  # nothing came up and the user did not step in: the agent gives up
        add("Back", current_app=home)
        finish(home, "未能打开应用")
        return steps, None, "failed"
    shown = _foreground(current, rng)
    # an override is the user's own choice whatever follows; a hand-over otherwise means the
    # agent's launch was not what the user decided
    truth = "overridden" if plan.override else "handed_over" if plan.take_over else "accepted"
    if plan.take_over:
        add("Tap", current_app=shown, element=point())
        add("Take_over", _HANDED_OVER, current_app=shown, message="请登录")
        if in_app(shown, max(plan.n_in_app - 2, 1)):
            finish(shown)
        return steps, current, truth
    if in_app(shown, plan.n_in_app):
        finish(shown)
    return steps, current, truth


def round_half(x: float) -> float:
    """Round half away from zero (numpy's round is banker's rounding)."""
    return float(np.floor(x + 0.5))
