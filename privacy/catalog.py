"""The fixed candidate set the personalization model scores, grouped by intent.

Why a fixed catalogue: the model's output layer has one logit per candidate, so the list and
its order are part of the base model's contract. Adding or reordering candidates means a new
base model (and a new base hash), which every adapter is bound to. Keep this module free of
heavy imports: the device imports it too.

A candidate id is ``"<action>:<app>"``; today every action is ``launch``. An app may serve
several intents (微信 for messaging and payments) but is one candidate.

>>> CANDIDATES[:2]
('launch:高德地图', 'launch:百度地图')
>>> candidate_index("launch:Google Maps") == CANDIDATES.index("launch:Google Maps")
True
>>> REGION_DEFAULTS["cn"]["navigation"], REGION_DEFAULTS["eu"]["navigation"]
('高德地图', 'Google Maps')
"""

from __future__ import annotations

from types import MappingProxyType

CATALOG_VERSION = 1

INTENTS: tuple[str, ...] = (
    "navigation",
    "messaging",
    "music",
    "food_delivery",
    "shopping",
    "ride_hailing",
    "video",
    "payments",
)

# Per intent, per region: the apps users there plausibly pick. The first app of each region
# list is that region's most popular choice (the population default).
_APPS: dict[str, dict[str, tuple[str, ...]]] = {
    "navigation": {
        "cn": ("高德地图", "百度地图", "腾讯地图"),
        "eu": ("Google Maps", "Waze", "Citymapper"),
    },
    "messaging": {"cn": ("微信", "QQ", "钉钉"), "eu": ("WhatsApp", "Telegram", "Signal")},
    "music": {
        "cn": ("QQ音乐", "网易云音乐", "酷狗音乐"),
        "eu": ("Spotify", "YouTube Music", "Deezer"),
    },
    "food_delivery": {"cn": ("美团", "饿了么"), "eu": ("Deliveroo", "Uber Eats", "Just Eat")},
    "shopping": {"cn": ("淘宝", "京东", "拼多多"), "eu": ("Amazon", "Zalando", "eBay")},
    "ride_hailing": {"cn": ("滴滴出行", "曹操出行"), "eu": ("Uber", "Bolt", "FREE NOW")},
    "video": {"cn": ("抖音", "哔哩哔哩", "爱奇艺"), "eu": ("YouTube", "Netflix", "TikTok")},
    "payments": {"cn": ("支付宝", "微信", "云闪付"), "eu": ("PayPal", "Revolut", "Google Wallet")},
}

REGIONS: tuple[str, ...] = ("cn", "eu")

INTENT_APPS: MappingProxyType[str, MappingProxyType[str, tuple[str, ...]]] = MappingProxyType(
    {intent: MappingProxyType(dict(by_region)) for intent, by_region in _APPS.items()}
)

REGION_DEFAULTS: MappingProxyType[str, MappingProxyType[str, str]] = MappingProxyType(
    {
        region: MappingProxyType({intent: _APPS[intent][region][0] for intent in INTENTS})
        for region in REGIONS
    }
)


def candidate_id(app: str, action: str = "launch") -> str:
    """The catalogue id of launching ``app``."""
    return f"{action}:{app}"


def _build_candidates() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for intent in INTENTS:
        for region in REGIONS:
            for app in _APPS[intent][region]:
                seen.setdefault(candidate_id(app), None)
    return tuple(seen)


CANDIDATES: tuple[str, ...] = _build_candidates()
NUM_CANDIDATES = len(CANDIDATES)
_INDEX = {c: i for i, c in enumerate(CANDIDATES)}


def candidate_index(candidate: str) -> int:
    """Position of ``candidate`` in the model's output; KeyError if not in the catalogue."""
    return _INDEX[candidate]


def apps_for(intent: str, region: str) -> tuple[str, ...]:
    """The apps a user in ``region`` may pick for ``intent`` (most popular first)."""
    return INTENT_APPS[intent][region]
