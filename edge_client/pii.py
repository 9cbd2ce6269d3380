"""Mask personal data in a task before the device keeps, embeds or shows it.

A task such as "给13812345678发消息说我晚点到" must not land on disk as typed. :func:`mask`
replaces what it detects by a typed placeholder, so "给<PHONE>发消息说我晚点到" still reads
(and embeds, :mod:`privacy.embedding`) as "message someone", and the model and the memory
learn the habit, not the number:

========== ==============================================================================
``<PHONE>`` phone numbers: Chinese mobile and landline numbers, E.164 (``+44 20 7946 0958``)
            and US national numbers; validated against the numbering plans
``<ID>``    Chinese resident ID numbers (18 characters; the birth date and the ISO 7064
            MOD 11-2 check character must be right)
``<CARD>``  payment card numbers: 13 to 19 digits, optionally grouped, a plausible issuer
            prefix and a valid Luhn check digit
``<EMAIL>`` email addresses
``<URL>``   URLs that carry credentials: ``user:password@`` or a secret query parameter
            (``token=``, ``password=``, ``api_key=``...); other URLs stay
``<ADDRESS>`` street addresses down to the house number: "文三路259号", "3栋2单元501室",
            "221B Baker Street, Flat 2, London NW1 6XE"
========== ==============================================================================

What stays: numbers that are not personal data — prices, times, dates, counts, distances
("3 km"), version numbers, flight numbers, short codes (verification codes, hotlines such as
10086, ZIP codes on their own) and order or tracking numbers.

>>> mask("给13812345678发消息说我晚点到")
'给<PHONE>发消息说我晚点到'
>>> mask("email anna.k@example.com the 3 tickets for 19:30")
'email <EMAIL> the 3 tickets for 19:30'
>>> mask("导航到杭州市西湖区文三路259号")
'导航到<ADDRESS>'

Where it comes from. Phone numbers are found by ``phonenumbers`` (the Python port of Google's
libphonenumber, installed as ``phonenumberslite``: the same matcher and numbering plans
without the geocoder, carrier and time-zone data, 3 MB installed instead of 23 MB), which
knows every country's valid ranges: far better than any pattern we could write. Around it,
what is written here, and why:

* a fallback for Chinese mobile numbers (``1[3-9]`` and nine digits standing alone): the
  numbering plan data lags new allocations, and a missed mobile number is the costliest miss;
* the resident ID check (GB 11643: birth date and MOD 11-2 check character) and the Luhn
  check for cards: a few lines each, and no small maintained library finds (rather than
  validates) them in running text;
* email, credential-URL and address patterns: libraries that find these in free text
  (Presidio, spaCy pipelines) bring language models of hundreds of megabytes, far too much
  for a phone SDK; addresses in particular are matched only down to a house number or a
  building/unit/room number (an address without one, "人民路", "Baker Street", names a
  street, not a home), in Chinese and English;
* full-width digits and ASCII punctuation typed through a Chinese IME (``１３８…``, ``＠``)
  are read as their ASCII forms, one character for one, so offsets stay the same.

Measured on three labelled sets of Chinese and English tasks in ``tests/edge/data/``
(``tests/edge/test_pii.py`` computes precision and recall and asserts floors;
docs/device-data.md reports the numbers: on the set written after the last change to the
patterns, precision 1.000 and recall 0.961).
:func:`mask` is idempotent (placeholders contain nothing it detects) and never raises for
any string.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher


class Kind(StrEnum):
    """What a span is; the placeholder is ``<KIND>``."""

    PHONE = "PHONE"
    ID = "ID"
    CARD = "CARD"
    EMAIL = "EMAIL"
    URL = "URL"
    ADDRESS = "ADDRESS"

    @property
    def placeholder(self) -> str:
        return f"<{self.value}>"


@dataclass(frozen=True, slots=True)
class Span:
    """``text[start:end]`` is personal data of ``kind`` (the repr carries no text)."""

    start: int
    end: int
    kind: Kind


# Regions whose national formats are recognised without a "+" (E.164 works for every region).
DEFAULT_REGIONS: tuple[str, ...] = ("CN", "US")

# Earlier kinds win an overlap: a URL's credentials before an email inside it, an ID before
# the phone number the matcher may see in its digits, a card before a phone.
_PRIORITY = (Kind.URL, Kind.EMAIL, Kind.ID, Kind.CARD, Kind.PHONE, Kind.ADDRESS)

# Full-width forms (U+FF01..U+FF5E) -> ASCII, and the ideographic space: one char for one.
_FOLD = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
_TRIGGER = re.compile(r"[0-9@]|://")

_CJK = "\u3400-\u9fff\uf900-\ufaff"
# Where a URL or an email ends in running text: whitespace, CJK text or CJK punctuation.
_URL_CHAR = rf"[^\s{_CJK}\u3000-\u303f\uff00-\uffef<>\"'`]"

_URL_CREDENTIALS = re.compile(
    rf"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{{1,15}}://"
    rf"(?:[^\s/?#@{_CJK}]+@{_URL_CHAR}+"  # userinfo (user:password@ or user@)
    rf"|{_URL_CHAR}*?[?&;](?:access_?token|refresh_?token|token|api_?key|apikey|key|secret"
    rf"|client_secret|password|passwd|pwd|pass|auth|session|sid|sig|signature|code)=[^&\s]+"
    rf"{_URL_CHAR}*)"
)
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*"
    r"\.[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
_ID = re.compile(
    r"(?<![0-9A-Za-z])[1-9][0-9]{5}[ ]?(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])"
    r"(?:0[1-9]|[12][0-9]|3[01])[ ]?[0-9]{3}[0-9Xx](?![0-9A-Za-z])"
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_CARD = re.compile(
    r"(?<![0-9A-Za-z.-])(?:[0-9]{13,19}|[0-9]{4,6}(?:[ -][0-9]{3,7}){1,4})(?![0-9A-Za-z]|[.-][0-9])"
)
# Words right before a long number that say what it is when it is not a card.
_NOT_A_CARD = re.compile(
    r"(?i)(?:订单|单号|运单|快递|物流|工单|编号|流水号|发票|取件码|会员号|"
    r"order|tracking|invoice|ref|reference|booking|confirmation|parcel|shipment|isbn|imei)"
    r"[^0-9]{0,12}$"
)
_CN_MOBILE = re.compile(r"(?<![0-9A-Za-z])1[3-9][0-9]{9}(?![0-9A-Za-z])")
# "+" and 8 to 15 digits: an international number, even in a range the plan data lacks.
_E164 = re.compile(r"(?<![0-9A-Za-z+])\+[1-9](?:[ .()-]{0,2}[0-9]){7,14}(?![0-9])")

# --- addresses ------------------------------------------------------------------------------
_ZH_ROAD = r"(?:大街|大道|胡同|路|街|巷|弄|道|段)"
_ZH_UNIT = r"(?:号楼|号院|栋|幢|座|单元|楼|层|室|号|房)"
_ZH_ROAD_CORE = re.compile(
    rf"{_ZH_ROAD}[0-9]{{1,5}}(?:[-－][0-9]{{1,4}})?(?:弄[0-9]{{1,4}})?号(?!线)"
)
_ZH_BUILDING_CORE = re.compile(
    r"[0-9A-Za-z]{1,4}(?:号楼|栋|幢|座)(?:[0-9]{1,3}单元)?(?:[0-9]{1,5}(?:室|号|房)?)?"
)
# A building number names a home after a housing estate's name ("阳光花园3栋"), or with a unit
# or room ("3栋2单元501室"); "公司1号楼" (building 1 of a campus) is not masked.
_ZH_ESTATE = re.compile(
    r"(?:小区|花园|公寓|大厦|家园|新村|新城|苑|园|城|村|府|庭|湾|里|坊|居|阁|轩|广场|公馆|社区|期|区)$"
)
_ZH_TAIL = re.compile(
    rf"(?:[{_CJK}A-Za-z]{{0,8}}?[0-9A-Za-z]{{1,5}}{_ZH_UNIT}(?![线站门口]))*(?:[0-9]{{2,5}}(?![0-9]))?"
)
# A Chinese address starts after one of these (scanning back from the road name).
_ZH_STOP = set("到去在往至是从给址住于把、，,。；;：: \t\n的")
_ZH_NAME = re.compile(rf"[{_CJK}A-Za-z0-9]")
_ZH_MAX_BACK = 20

_EN_STOPWORDS = (
    "the|a|an|to|of|on|in|at|for|and|or|from|my|your|our|his|her|their|with|by|near|via|"
    "km|kms|mi|miles|meters|metres|minutes|mins|hours|hrs|days|items|times|songs|tracks|"
    "photos|pictures|people|tickets|is|are|be|me|us|it|this|that|these|those|next|last|"
    "every|each|more|less|than|up|down|off|over|into|onto|about|around|top|best|new"
)
_LATIN = "A-Za-zÀ-ÖØ-öø-ÿ"
_EN_WORD = rf"(?!(?i:{_EN_STOPWORDS})\b)(?:[0-9]{{1,3}}(?:st|nd|rd|th)|[{_LATIN}][{_LATIN}'.-]*)"
_EN_STRONG = (
    "street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|parkway|pkwy|terrace|"
    "crescent|highway|hwy|gardens|mews|strasse|straße"
)
_EN_WEAK = "way|place|pl|court|ct|close|square|sq|row|circle|cir|hill|walk|grove|plaza|alley|loop"
_EN_SUFFIX = rf"(?:(?i:{_EN_STRONG})|{'|'.join(w.capitalize() for w in _EN_WEAK.split('|'))})"
_EN_UNIT = r"(?i:apt|apartment|suite|ste|unit|flat|floor|fl|room|rm|#)\.?\s*#?[0-9A-Za-z-]{1,6}"
_EN_DIRECTION = r"(?:North|South|East|West|Central|Upper|Lower|NW|NE|SW|SE|N|S|E|W)"
_EN_POSTCODE = (
    r"(?:[A-Z]{1,2}[0-9][A-Z0-9]?\s?[0-9][A-Z]{2}"  # UK
    r"|(?:[A-Z]{2}\s+)?[0-9]{5}(?:-[0-9]{4})?)"  # US state + ZIP
)
_EN_NUMBER = r"[0-9]{1,5}[A-Za-z]?(?:-[0-9]{1,4})?"
_EN_CITY = rf"[A-Z][{_LATIN}]+(?![0-9])(?:\s[A-Z][{_LATIN}]+(?![0-9]))?"
# "221B Baker Street, Flat 2, London NW1 6XE": number, one to four words, the street's kind.
_EN_ADDRESS = re.compile(
    rf"(?<![\w.:/#-])(?:{_EN_UNIT},?\s+)?{_EN_NUMBER}(?:\s+{_EN_WORD}){{1,4}}?\s+{_EN_SUFFIX}\b\.?"
    rf"(?:\s+{_EN_DIRECTION}\b)?(?:,?\s+{_EN_UNIT})?"
    rf"(?:,\s*{_EN_CITY})?(?:,?\s+{_EN_POSTCODE}(?![0-9A-Za-z]))?"
)
# The street's kind first: "15 Rue de Rivoli", "7 via Roma".
_EN_ADDRESS_PREFIXED = re.compile(
    rf"(?<![\w.:/#-]){_EN_NUMBER},?\s+(?i:rue|via|viale|calle|rua|avenida|avinguda|strada|piazza)"
    rf"(?:\s+(?:d[eiu]|la|le|les|des|del|della|do|da|dos|das|[A-Z][{_LATIN}'-]*)){{1,4}}"
)
# The number last: "Hauptstraße 5, 10115 Berlin", "Baker Street 221B".
_EN_ADDRESS_NUMBER_LAST = re.compile(
    rf"(?<![\w-])(?:[A-Z][{_LATIN}]*(?:straße|strasse|weg|gasse|platz|allee|ring|damm|straat"
    rf"|laan|gracht|vej|gatan|gata)|(?:[A-Z][{_LATIN}'-]*\s+){{1,3}}(?:{_EN_STRONG.title()}))"
    rf"\s+{_EN_NUMBER}(?![0-9A-Za-z])(?:,?\s+[0-9]{{4,5}}(?:\s+{_EN_CITY})?)?"
)
_EN_WEAK_WORDS = re.compile(rf"\s+({_EN_WEAK})\b", re.IGNORECASE)


def find(text: str, regions: tuple[str, ...] = DEFAULT_REGIONS) -> list[Span]:
    """The personal data found in ``text``: non-overlapping spans, in order."""
    if not _TRIGGER.search(text.translate(_FOLD)):
        return []  # every kind needs a digit, an "@" or a scheme: most tasks stop here
    folded = text.translate(_FOLD)
    found: list[Span] = []
    for kind in _PRIORITY:
        for start, end in _DETECTORS[kind](folded, regions):
            if start < end and not any(start < s.end and s.start < end for s in found):
                found.append(Span(start, end, kind))
    return sorted(found, key=lambda s: s.start)


def mask(text: str, regions: tuple[str, ...] = DEFAULT_REGIONS) -> str:
    """``text`` with each span of :func:`find` replaced by its ``<KIND>`` placeholder."""
    spans = find(text, regions)
    if not spans:
        return text
    out, at = [], 0
    for span in spans:
        out += [text[at : span.start], span.kind.placeholder]
        at = span.end
    out.append(text[at:])
    return "".join(out)


# --- detectors: (folded text, regions) -> (start, end) candidates ------------------------------


def _urls(text: str, regions: tuple[str, ...]) -> Iterator[tuple[int, int]]:
    for m in _URL_CREDENTIALS.finditer(text):
        yield m.start(), m.start() + len(m.group().rstrip(".,;:!?)]}"))


def _emails(text: str, regions: tuple[str, ...]) -> Iterator[tuple[int, int]]:
    for m in _EMAIL.finditer(text):
        yield m.span()


def _ids(text: str, regions: tuple[str, ...]) -> Iterator[tuple[int, int]]:
    for m in _ID.finditer(text):
        if valid_resident_id(m.group().replace(" ", "")):
            yield m.span()


def valid_resident_id(value: str) -> bool:
    """Whether ``value`` is a well-formed 18-character Chinese resident ID number.

    >>> valid_resident_id("11010519491231002X"), valid_resident_id("110105194912310021")
    (True, False)
    """
    if len(value) != 18 or not value[:17].isdigit():
        return False
    try:
        _dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    total = sum(int(d) * w for d, w in zip(value[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == value[17].upper()


def _cards(text: str, regions: tuple[str, ...]) -> Iterator[tuple[int, int]]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        if not 13 <= len(digits) <= 19 or not _card_prefix(digits) or not luhn(digits):
            continue
        if _NOT_A_CARD.search(text[max(0, m.start() - 30) : m.start()]):
            continue
        yield m.span()


def _card_prefix(digits: str) -> bool:
    """Issuer ranges of the card networks in use: Visa, Mastercard, Amex, Diners, JCB,
    Discover, UnionPay (and the older Chinese 9558/9559 debit cards)."""
    if digits[0] in "3456":
        return True
    if digits[0] == "2":
        return 2221 <= int(digits[:4]) <= 2720
    return digits.startswith(("9558", "9559"))


def luhn(digits: str) -> bool:
    """The Luhn (mod 10) check.

    >>> luhn("4111111111111111"), luhn("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _phones(text: str, regions: tuple[str, ...]) -> Iterator[tuple[int, int]]:
    for region in regions:
        try:
            for match in PhoneNumberMatcher(text, region, leniency=Leniency.VALID):
                yield match.start, match.end
        except phonenumbers.NumberParseException:  # pragma: no cover - the matcher skips them
            continue
    for pattern in (_CN_MOBILE, _E164):
        for m in pattern.finditer(text):
            yield m.span()


def _addresses(text: str, regions: tuple[str, ...]) -> Iterator[tuple[int, int]]:
    last = 0  # a second address never reaches back into the first ("从A路1号和B路2号")
    for m in _ZH_ROAD_CORE.finditer(text):
        start, end = _zh_back(text, m.start(), last), _zh_tail(text, m.end())
        last = end
        yield start, end
    for m in _ZH_BUILDING_CORE.finditer(text):
        start, end = _zh_back(text, m.start(), 0), _zh_tail(text, m.end())
        if _ZH_ESTATE.search(text[start : m.start()]) or re.search(
            "单元|室", text[m.start() : end]
        ):
            yield start, end
    for m in _EN_ADDRESS.finditer(text):
        weak = _EN_WEAK_WORDS.search(m.group())
        if weak and not re.search(rf"(?i)\s(?:{_EN_STRONG})\b", m.group()):
            # a weak suffix ("Way", "Place") counts only after capitalised words: "42 Wallaby
            # Way", "7 Savile Row", "1 Infinite Loop", not "3 pizzas on the way"
            words = m.group()[: weak.start()].split()[1:]
            if not words or not all(w[0].isupper() or w[0].isdigit() for w in words):
                continue
        yield m.start(), m.start() + len(m.group().rstrip(".,"))
    for pattern in (_EN_ADDRESS_PREFIXED, _EN_ADDRESS_NUMBER_LAST):
        for m in pattern.finditer(text):
            yield m.span()


def _zh_back(text: str, start: int, floor: int) -> int:
    """Where the address whose road or building number is at ``start`` begins: back over CJK
    text (the street's, district's and city's names) to a word that introduces a place."""
    floor = max(floor, start - _ZH_MAX_BACK)
    while start > floor and text[start - 1] not in _ZH_STOP and _ZH_NAME.match(text[start - 1]):
        start -= 1
    return start


def _zh_tail(text: str, end: int) -> int:
    """Past building, unit, floor and room numbers after the house number."""
    tail = _ZH_TAIL.match(text, end)
    return tail.end() if tail else end


_DETECTORS = {
    Kind.URL: _urls,
    Kind.EMAIL: _emails,
    Kind.ID: _ids,
    Kind.CARD: _cards,
    Kind.PHONE: _phones,
    Kind.ADDRESS: _addresses,
}
