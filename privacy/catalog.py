"""The open app catalogue: every app Open-AutoGLM can launch, its spellings and what it is for.

Why open: the personalization model scores apps by *identity* (features of their names,
aliases and intent tags, :func:`privacy.embedding.embed_app`), not by a fixed output layer, so
any app a device can launch can be a candidate, including one this table does not list (it is
scored by its name alone). The table exists for three things:

* **launchability.** Open-AutoGLM's ``Launch`` only knows the names in its ``APP_PACKAGES``
  table (``phone_agent/config/apps.py``); a suggestion must use one of those exact spellings.
  Each :class:`App` is one Android package; ``name`` is the spelling we suggest (always one of
  Open-AutoGLM's), ``launch_names`` every spelling Open-AutoGLM accepts for that package;
* **aliases, both ways.** Users and the agent say "B站", "哔哩哔哩" or "bilibili";
  :func:`resolve` maps any of them to the canonical ``"bilibili"``, :func:`spellings` maps back.
  Named-app detection (``edge_client.hint``) and the features (:mod:`privacy.features`) both
  read this table;
* **intent tags**, which the app side of the model sees, so a new navigation app is already
  a navigation app before anyone has used it.

:data:`UNLAUNCHABLE` lists popular apps Open-AutoGLM cannot launch by name (支付宝, 钉钉,
Spotify...): a task that names one is still a task that names an app (the hint stays silent),
but they are never suggested. The data are names and package ids only, listed as facts about
Open-AutoGLM's table; no code of it is used.

>>> resolve("B站"), resolve("哔哩哔哩"), resolve("Bilibili"), resolve("google-maps")
('bilibili', 'bilibili', 'bilibili', 'Google Maps')
>>> resolve("支付宝") is None, is_launchable("高德地图"), is_launchable("腾讯地图")
(True, True, False)
>>> "哔哩哔哩" in spellings("bilibili"), app("微信").intents
(True, ('messaging', 'payments'))
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType

CATALOG_VERSION = 2
REGIONS: tuple[str, ...] = ("cn", "eu")


@dataclass(frozen=True)
class App:
    """One launchable app (one Android package).

    ``name`` is the spelling suggestions use (one of Open-AutoGLM's); ``launch_names`` all of
    Open-AutoGLM's spellings for the package (``name`` first); ``aliases`` other ways people
    write it, which Open-AutoGLM does not accept; ``regions`` the markets where it is common.
    """

    name: str
    package: str
    intents: tuple[str, ...]
    regions: tuple[str, ...]
    launch_names: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = (self.name, *(n for n in self.launch_names if n != self.name))
        object.__setattr__(self, "launch_names", names)

    @property
    def spellings(self) -> tuple[str, ...]:
        """Every name this app goes by: Open-AutoGLM's spellings, then the aliases."""
        return (*self.launch_names, *self.aliases)


_CN, _EU, _ALL = ("cn",), ("eu",), ("cn", "eu")


def _a(
    name: str,
    package: str,
    intents: tuple[str, ...] | str,
    regions: tuple[str, ...],
    launch: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
) -> App:
    tags = (intents,) if isinstance(intents, str) else intents
    return App(name, package, tags, regions, launch, aliases)


# One row per package of Open-AutoGLM's APP_PACKAGES (phone_agent/config/apps.py at 6b18d7b).
APPS: tuple[App, ...] = (
    # social & messaging
    _a(
        "微信",
        "com.tencent.mm",
        ("messaging", "payments"),
        _CN,
        ("WeChat", "wechat"),
        ("weixin", "微信支付"),
    ),
    _a("QQ", "com.tencent.mobileqq", "messaging", _CN, (), ("腾讯QQ", "手机QQ")),
    _a("微博", "com.sina.weibo", "social", _CN, (), ("新浪微博", "Weibo")),
    # shopping (淘宝闪购 and 京东秒送 are the same packages: their food-delivery sides)
    _a(
        "淘宝",
        "com.taobao.taobao",
        ("shopping", "food_delivery"),
        _CN,
        ("淘宝闪购",),
        ("手机淘宝", "Taobao"),
    ),
    _a(
        "京东",
        "com.jingdong.app.mall",
        ("shopping", "food_delivery"),
        _CN,
        ("京东秒送",),
        ("京东商城", "JD"),
    ),
    _a("拼多多", "com.xunmeng.pinduoduo", "shopping", _CN, (), ("PDD", "Pinduoduo")),
    # lifestyle
    _a("小红书", "com.xingin.xhs", "social", _CN, (), ("Xiaohongshu", "RED")),
    _a("豆瓣", "com.douban.frodo", ("social", "reviews"), _CN, (), ("Douban",)),
    _a("知乎", "com.zhihu.android", "social", _CN, (), ("Zhihu",)),
    # maps & navigation
    _a(
        "高德地图",
        "com.autonavi.minimap",
        ("navigation", "ride_hailing"),
        _CN,
        (),
        ("高德", "高德导航", "Amap", "AutoNavi"),
    ),
    _a("百度地图", "com.baidu.BaiduMap", "navigation", _CN, (), ("百度导航", "Baidu Maps")),
    # food & services
    _a(
        "美团",
        "com.sankuai.meituan",
        ("food_delivery", "reviews"),
        _CN,
        (),
        ("美团外卖", "Meituan"),
    ),
    _a("大众点评", "com.dianping.v1", ("reviews", "food_delivery"), _CN, (), ("点评", "Dianping")),
    _a("饿了么", "me.ele", "food_delivery", _CN, (), ("饿了吗", "Ele.me", "Eleme")),
    _a("肯德基", "com.yek.android.kfc.activitys", "food_delivery", _CN, (), ("KFC",)),
    # travel
    _a("携程", "ctrip.android.view", "travel", _CN, (), ("携程旅行", "Ctrip", "Trip.com")),
    _a("铁路12306", "com.MobileTicket", "travel", _CN, ("12306",), ("中国铁路",)),
    _a("去哪儿旅行", "com.Qunar", "travel", _CN, ("去哪儿",), ("去哪儿网", "Qunar")),
    _a("滴滴出行", "com.sdu.didi.psnger", "ride_hailing", _CN, (), ("滴滴", "滴滴打车", "DiDi")),
    # video & entertainment
    _a("bilibili", "tv.danmaku.bili", "video", _CN, (), ("哔哩哔哩", "B站", "Bilibili")),
    _a("抖音", "com.ss.android.ugc.aweme", "video", _CN, (), ("Douyin", "抖音短视频")),
    _a("快手", "com.smile.gifmaker", "video", _CN, (), ("Kuaishou",)),
    _a("腾讯视频", "com.tencent.qqlive", "video", _CN, (), ("Tencent Video",)),
    _a("爱奇艺", "com.qiyi.video", "video", _CN, (), ("iQIYI", "爱奇艺视频")),
    _a("优酷视频", "com.youku.phone", "video", _CN, (), ("优酷", "Youku")),
    _a("芒果TV", "com.hunantv.imgo.activity", "video", _CN, (), ("芒果", "Mango TV")),
    _a("红果短剧", "com.phoenix.read", "video", _CN, (), ("红果",)),
    # music & audio
    _a("网易云音乐", "com.netease.cloudmusic", "music", _CN, (), ("网易云", "NetEase Cloud Music")),
    _a("QQ音乐", "com.tencent.qqmusic", "music", _CN, (), ("QQ Music",)),
    _a("汽水音乐", "com.luna.music", "music", _CN, (), ("Soda Music",)),
    _a(
        "喜马拉雅",
        "com.ximalaya.ting.android",
        ("podcasts", "music"),
        _CN,
        (),
        ("Ximalaya", "喜马拉雅FM"),
    ),
    # reading
    _a("番茄免费小说", "com.dragon.read", "reading", _CN, ("番茄小说",), ()),
    _a("七猫免费小说", "com.kmxs.reader", "reading", _CN, (), ("七猫小说", "七猫")),
    # productivity
    _a("飞书", "com.ss.android.lark", ("messaging", "office"), _CN, (), ("Feishu", "Lark")),
    _a("QQ邮箱", "com.tencent.androidqqmail", "email", _CN, (), ("QQ Mail",)),
    _a("豆包", "com.larus.nova", "assistant", _CN, (), ("Doubao",)),
    # health, news, housing, finance, games
    _a("keep", "com.gotokeep.keep", "fitness", _CN, (), ("Keep",)),
    _a("美柚", "com.lingan.seeyou", "health", _CN, (), ("Meiyou",)),
    _a("腾讯新闻", "com.tencent.news", "news", _CN, (), ("Tencent News",)),
    _a("今日头条", "com.ss.android.article.news", "news", _CN, (), ("头条", "Toutiao")),
    _a("贝壳找房", "com.lianjia.beike", "housing", _CN, (), ("贝壳", "链家")),
    _a("安居客", "com.anjuke.android.app", "housing", _CN, (), ("Anjuke",)),
    _a("同花顺", "com.hexin.plat.android", "finance", _CN, (), ("Tonghuashun",)),
    _a("星穹铁道", "com.miHoYo.hkrpg", "games", _CN, ("崩坏：星穹铁道",), ("Honkai: Star Rail",)),
    _a("恋与深空", "com.papegames.lysk.cn", "games", _CN, (), ("Love and Deepspace",)),
    # system apps (every phone)
    _a(
        "Settings",
        "com.android.settings",
        "settings",
        _ALL,
        (
            "AndroidSystemSettings",
            "Android System Settings",
            "Android  System Settings",
            "Android-System-Settings",
        ),
        ("设置", "系统设置"),
    ),
    _a(
        "AudioRecorder",
        "com.android.soundrecorder",
        "recorder",
        _ALL,
        ("audiorecorder",),
        ("录音机", "Sound Recorder"),
    ),
    _a("Clock", "com.android.deskclock", "clock", _ALL, ("clock",), ("时钟", "闹钟")),
    _a("Contacts", "com.android.contacts", "contacts", _ALL, ("contacts",), ("联系人", "通讯录")),
    _a(
        "Files",
        "com.android.fileexplorer",
        "files",
        _ALL,
        ("files", "File Manager", "file manager"),
        ("文件管理",),
    ),
    _a(
        "Chrome", "com.android.chrome", "browser", _EU, ("chrome", "Google Chrome"), ("谷歌浏览器",)
    ),
    # international apps
    _a("Bluecoins", "com.rammigsoftware.bluecoins", "finance", _EU, ("bluecoins",)),
    _a("Broccoli", "com.flauschcode.broccoli", "recipes", _EU, ("broccoli",)),
    _a(
        "Booking.com",
        "com.booking",
        "travel",
        _EU,
        ("Booking", "booking.com", "booking", "BOOKING.COM"),
    ),
    _a("Duolingo", "com.duolingo", "learning", _EU, ("duolingo",), ("多邻国",)),
    _a("Expedia", "com.expedia.bookings", "travel", _EU, ("expedia",)),
    _a("Gmail", "com.google.android.gm", "email", _EU, ("gmail", "GoogleMail", "Google Mail")),
    _a(
        "GoogleFiles",
        "com.google.android.apps.nbu.files",
        "files",
        _EU,
        ("googlefiles", "FilesbyGoogle"),
        ("Files by Google", "Google Files"),
    ),
    _a(
        "Google Calendar",
        "com.google.android.calendar",
        "calendar",
        _EU,
        ("GoogleCalendar", "Google-Calendar", "google-calendar", "google calendar"),
    ),
    _a(
        "Google Chat",
        "com.google.android.apps.dynamite",
        "messaging",
        _EU,
        ("GoogleChat", "Google-Chat"),
    ),
    _a(
        "Google Clock",
        "com.google.android.deskclock",
        "clock",
        _EU,
        ("GoogleClock", "Google-Clock"),
    ),
    _a(
        "Google Contacts",
        "com.google.android.contacts",
        "contacts",
        _EU,
        ("GoogleContacts", "Google-Contacts", "google-contacts", "google contacts"),
    ),
    _a(
        "Google Docs",
        "com.google.android.apps.docs.editors.docs",
        "office",
        _EU,
        ("GoogleDocs", "googledocs", "google docs"),
    ),
    _a(
        "Google Drive",
        "com.google.android.apps.docs",
        "files",
        _EU,
        (
            "Google-Drive",
            "google drive",
            "google-drive",
            "GoogleDrive",
            "Googledrive",
            "googledrive",
        ),
    ),
    _a(
        "GoogleFit",
        "com.google.android.apps.fitness",
        "fitness",
        _EU,
        ("googlefit",),
        ("Google Fit",),
    ),
    _a(
        "GoogleKeep",
        "com.google.android.keep",
        "notes",
        _EU,
        ("googlekeep",),
        ("Google Keep", "Keep Notes"),
    ),
    _a(
        "Google Maps",
        "com.google.android.apps.maps",
        "navigation",
        _EU,
        ("GoogleMaps", "googlemaps", "google maps"),
        ("谷歌地图",),
    ),
    _a(
        "Google Play Books",
        "com.google.android.apps.books",
        "reading",
        _EU,
        (
            "Google-Play-Books",
            "google play books",
            "google-play-books",
            "GooglePlayBooks",
            "googleplaybooks",
        ),
    ),
    _a(
        "Google Play Store",
        "com.android.vending",
        "app_store",
        _EU,
        ("GooglePlayStore", "Google-Play-Store"),
        ("Play Store",),
    ),
    _a(
        "Google Slides",
        "com.google.android.apps.docs.editors.slides",
        "office",
        _EU,
        ("GoogleSlides", "Google-Slides"),
    ),
    _a(
        "Google Tasks",
        "com.google.android.apps.tasks",
        "notes",
        _EU,
        ("GoogleTasks", "Google-Tasks"),
    ),
    _a("Joplin", "net.cozic.joplin", "notes", _EU, ("joplin",)),
    _a(
        "McDonald",
        "com.mcdonalds.app",
        "food_delivery",
        _EU,
        ("mcdonald",),
        ("McDonald's", "麦当劳"),
    ),
    _a("Osmand", "net.osmand", "navigation", _EU, ("osmand",), ("OsmAnd", "OsmAnd Maps")),
    _a(
        "PiMusicPlayer",
        "com.Project100Pi.themusicplayer",
        "music",
        _EU,
        ("pimusicplayer",),
        ("Pi Music Player",),
    ),
    _a("Quora", "com.quora.android", "social", _EU, ("quora",)),
    _a("Reddit", "com.reddit.frontpage", "social", _EU, ("reddit",)),
    _a(
        "RetroMusic", "code.name.monkey.retromusic", "music", _EU, ("retromusic",), ("Retro Music",)
    ),
    _a(
        "SimpleCalendarPro",
        "com.scientificcalculatorplus.simplecalculator.basiccalculator.mathcalc",
        "calendar",
        _EU,
        (),
        ("Simple Calendar Pro",),
    ),
    _a(
        "SimpleSMSMessenger",
        "com.simplemobiletools.smsmessenger",
        "messaging",
        _EU,
        (),
        ("Simple SMS Messenger", "SMS Messenger"),
    ),
    _a("Telegram", "org.telegram.messenger", "messaging", _EU, (), ("电报",)),
    _a("Temu", "com.einnovation.temu", "shopping", _EU, ("temu",)),
    _a("Tiktok", "com.zhiliaoapp.musically", "video", _EU, ("tiktok",), ("TikTok",)),
    _a("Twitter", "com.twitter.android", ("social", "news"), _EU, ("twitter", "X"), ("推特",)),
    _a("VLC", "org.videolan.vlc", ("video", "music"), _EU, (), ("VLC media player",)),
    _a("WhatsApp", "com.whatsapp", "messaging", _EU, ("Whatsapp",), ()),
)

# Popular apps that Open-AutoGLM cannot launch by name: a task naming one names an app (the
# hint stays silent), but none is ever suggested.
UNLAUNCHABLE: tuple[str, ...] = (
    "支付宝",
    "Alipay",
    "腾讯地图",
    "钉钉",
    "DingTalk",
    "酷狗音乐",
    "云闪付",
    "曹操出行",
    "Spotify",
    "YouTube",
    "YouTube Music",
    "Netflix",
    "Uber",
    "Uber Eats",
    "Bolt",
    "FREE NOW",
    "Deliveroo",
    "Just Eat",
    "Amazon",
    "Zalando",
    "eBay",
    "PayPal",
    "Revolut",
    "Google Wallet",
    "Waze",
    "Citymapper",
    "Signal",
    "Deezer",
)

INTENTS: tuple[str, ...] = tuple(dict.fromkeys(i for a in APPS for i in a.intents))
APP_NAMES: tuple[str, ...] = tuple(a.name for a in APPS)
NUM_APPS = len(APPS)


@lru_cache(maxsize=16384)
def normalize(name: str) -> str:
    """The lookup key of a spelling: NFKC, case-folded, without spaces, hyphens, dots,
    apostrophes or colons ("Google-Maps", "google maps" and "GoogleMaps" are one key)."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return re.sub(r"[\s\-_.'’:：·]+", "", folded)


def _build_index() -> dict[str, App]:
    index: dict[str, App] = {}
    for a in APPS:
        for spelling in a.spellings:
            key = normalize(spelling)
            other = index.setdefault(key, a)
            if other is not a:
                raise ValueError(f"spelling {spelling!r} names both {other.name} and {a.name}")
    return index


_BY_KEY = _build_index()
_BY_NAME = MappingProxyType({a.name: a for a in APPS})
_LAUNCH_NAMES = frozenset(n for a in APPS for n in a.launch_names)
_UNLAUNCHABLE_KEYS = frozenset(normalize(n) for n in UNLAUNCHABLE)
if _UNLAUNCHABLE_KEYS & set(_BY_KEY):
    raise ValueError("an unlaunchable name is also a catalogue spelling")


def resolve(name: str | None) -> str | None:
    """The canonical (suggested, launchable) name of any spelling of a catalogue app, else
    None (unknown names, the unlaunchable ones, "System Home")."""
    if not name:
        return None
    found = _BY_KEY.get(normalize(name))
    return found.name if found else None


def app(name: str) -> App:
    """The :class:`App` of any spelling; KeyError if not in the catalogue."""
    found = _BY_KEY.get(normalize(name))
    if found is None:
        raise KeyError(name)
    return found


def spellings(name: str) -> tuple[str, ...]:
    """Every spelling of the app ``name`` (any spelling of it); ``(name,)`` if unknown."""
    found = _BY_KEY.get(normalize(name))
    return found.spellings if found else (name,)


def is_launchable(name: str) -> bool:
    """Whether Open-AutoGLM's ``Launch`` accepts ``name`` exactly as written."""
    return name in _LAUNCH_NAMES


def is_unlaunchable(name: str) -> bool:
    """Whether ``name`` is a known app Open-AutoGLM cannot launch (支付宝, Spotify...)."""
    return normalize(name) in _UNLAUNCHABLE_KEYS


def same_app(a: str | None, b: str | None) -> bool:
    """Whether two spellings name one app (one package); unknown names only equal themselves."""
    if not a or not b:
        return False
    ra, rb = resolve(a), resolve(b)
    return ra == rb if ra is not None or rb is not None else normalize(a) == normalize(b)


def apps_for_region(region: str) -> tuple[str, ...]:
    """Canonical names of the apps common in ``region`` (a phone there has them to launch)."""
    return tuple(a.name for a in APPS if region in a.regions)


def apps_with_intent(intent: str, region: str | None = None) -> tuple[str, ...]:
    """Canonical names of the apps tagged ``intent`` (in ``region``, if given)."""
    return tuple(
        a.name for a in APPS if intent in a.intents and (region is None or region in a.regions)
    )


def intents_of(name: str) -> tuple[str, ...]:
    """The intent tags of an app (any spelling); ``()`` if not in the catalogue."""
    found = _BY_KEY.get(normalize(name))
    return found.intents if found else ()


def _intent_apps() -> MappingProxyType[str, MappingProxyType[str, tuple[str, ...]]]:
    return MappingProxyType(
        {
            intent: MappingProxyType({r: apps_with_intent(intent, r) for r in REGIONS})
            for intent in INTENTS
        }
    )


INTENT_APPS = _intent_apps()
"""intent -> region -> the canonical names of the apps tagged with it there."""


def apps_for(intent: str, region: str) -> tuple[str, ...]:
    """The apps tagged ``intent`` in ``region`` (``INTENT_APPS[intent][region]``)."""
    return INTENT_APPS[intent][region]


def candidate_id(app_name: str, action: str = "launch") -> str:
    """The id of launching ``app_name`` (``"launch:高德地图"``), as suggestions name it."""
    return f"{action}:{app_name}"


def by_name() -> MappingProxyType[str, App]:
    """Canonical name -> :class:`App`."""
    return _BY_NAME
