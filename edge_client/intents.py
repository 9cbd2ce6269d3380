"""Which catalogue intent a task is about: "打开导航去公司" -> ``navigation``.

The on-device memory (:mod:`edge_client.memory`) keys what it learns by intent, so the same
habit is found whatever the words: "导航回家" and "打开导航去公司" are both navigation, and
the app the user accepted for one is the hint for the other. The intents are
those of :mod:`privacy.catalog`; what decides between them is one function,
:func:`intent_of`, so that the matcher can switch to the catalogue's own alias table when it
has one without anything else changing.

How it decides: every keyword or catalogue app name found in the text votes for its intents;
the longest match wins (more specific: "order food" beats "order"), ties go to the intent
with more matches, then to the catalogue's order. An app that serves several intents (微信:
messaging and payments) votes for each, so a keyword breaks the tie ("用微信付款" is
payments). Latin keywords match whole words, case-insensitively; CJK ones as substrings.

>>> intent_of("打开导航去公司"), intent_of("navigate home"), intent_of("给妈妈发微信")
('navigation', 'navigation', 'messaging')
>>> intent_of("帮我点外卖"), intent_of("用微信付款"), intent_of("你好")
('food_delivery', 'payments', None)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType

from privacy import catalog

# Words that name an intent without naming an app, in the two catalogue languages.
_KEYWORDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "navigation": (
            "导航",
            "地图",
            "路线",
            "怎么走",
            "怎么去",
            "navigate",
            "navigation",
            "directions",
            "route",
            "map",
            "maps",
            "带我去",
            "how do i get to",
            "take me to",
        ),
        "messaging": (
            "发消息",
            "发信息",
            "消息",
            "聊天",
            "发微信",
            "回复",
            "message",
            "messages",
            "text",
            "chat",
            "reply",
            "告诉",
        ),
        "music": (
            "音乐",
            "听歌",
            "放歌",
            "歌曲",
            "播放歌",
            "music",
            "song",
            "songs",
            "playlist",
            "listen",
            "的歌",
            "来一首",
            "想听",
            "play some",
            "put on",
        ),
        "food_delivery": (
            "外卖",
            "点餐",
            "订餐",
            "点一份",
            "点一杯",
            "food delivery",
            "order food",
            "takeaway",
            "takeout",
            "deliver food",
            "送到家",
            "我饿了",
            "delivery",
            "delivered",
            "hungry",
        ),
        "shopping": (
            "购物",
            "网购",
            "买一",
            "下单",
            "shopping",
            "shop",
            "buy",
            "帮我买",
            "多少钱",
            "how much is",
            "order a new",
        ),
        "ride_hailing": (
            "打车",
            "叫车",
            "网约车",
            "叫辆车",
            "taxi",
            "cab",
            "ride",
            "book a car",
            "打个车",
            "叫一辆车",
            "call a car",
        ),
        "video": (
            "视频",
            "看剧",
            "短视频",
            "电影",
            "追剧",
            "video",
            "videos",
            "movie",
            "film",
            "watch",
        ),
        "travel": (
            "酒店",
            "机票",
            "火车票",
            "车票",
            "的票",
            "订票",
            "旅行",
            "hotel",
            "flight",
            "flights",
            "trip",
            "a room",
        ),
        "social": (
            "帖子",
            "笔记",
            "动态",
            "发帖",
            "post",
            "posts",
            "thread",
            "people saying",
        ),
        "payments": (
            "付款",
            "支付",
            "转账",
            "付钱",
            "收款码",
            "扫码付",
            "pay",
            "payment",
            "transfer money",
            "send money",
            "还钱",
        ),
    }
)


# App names that are also everyday English words.
_EVERYDAY = frozenset({"signal", "bolt", "keep", "files", "clock", "contacts", "booking"})


def _pattern(word: str, *, fold_case: bool) -> re.Pattern[str]:
    if re.search(r"[A-Za-z0-9]", word):
        flags = re.IGNORECASE if fold_case else 0
        return re.compile(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", flags)
    return re.compile(re.escape(word))


@lru_cache(maxsize=1)
def _table() -> tuple[tuple[re.Pattern[str], int, frozenset[str]], ...]:
    """(pattern, length, intents) for every keyword and every catalogue app spelling.

    Keywords match in any case, Latin app names too ("spotify") unless they are short or
    everyday words, which match only as the app writes itself ("Signal", not "the signal");
    one-letter names ("X") do not match at all."""
    keywords: dict[str, set[str]] = {}
    for intent, words in _KEYWORDS.items():
        for word in words:
            keywords.setdefault(word, set()).add(intent)
    names: dict[str, set[str]] = {}
    for name, intents in _app_intents():
        if len(name) > 1 or not name.isascii():
            names.setdefault(name, set()).update(intents)
    table = [(_pattern(w, fold_case=True), len(w), frozenset(i)) for w, i in keywords.items()]
    table += [
        (_pattern(w, fold_case=len(w) > 3 and w.casefold() not in _EVERYDAY), len(w), frozenset(i))
        for w, i in names.items()
    ]
    return tuple(table)


def _app_intents() -> list[tuple[str, tuple[str, ...]]]:
    """Every catalogue spelling with the intents of its app (the open catalogue's ``APPS``,
    or the per-intent table of the closed one)."""
    apps = getattr(catalog, "APPS", None)
    if apps is not None:
        return [(s, a.intents) for a in apps for s in a.spellings]
    table = catalog.INTENT_APPS  # type: ignore[attr-defined]
    return [
        (app, (intent,))
        for intent, by_region in table.items()
        for names in by_region.values()
        for app in names
    ]


def intent_of(text: str) -> str | None:
    """The catalogue intent ``text`` is about, or None when nothing in it names one."""
    best: dict[str, tuple[int, int]] = {}  # intent -> (longest match, number of matches)
    for pattern, length, intents in _table():
        if pattern.search(text):
            for intent in intents:
                longest, n = best.get(intent, (0, 0))
                best[intent] = (max(longest, length), n + 1)
    if not best:
        return None
    order = {intent: i for i, intent in enumerate(catalog.INTENTS)}
    return min(best, key=lambda i: (-best[i][0], -best[i][1], order.get(i, len(order))))
