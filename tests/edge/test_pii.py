"""The PII masker: what it masks and what it leaves, in Chinese and English, measured.

``data/`` holds three labelled sets of phone-agent tasks (the header of ``pii_tasks.tsv`` says
what counts as personal data):

* ``pii_tasks.tsv`` (dev) — written with the patterns, so its scores are optimistic;
* ``pii_tasks_heldout.tsv`` — written after the masker was frozen; its misses then prompted
  fixes, so it is no longer clean either (docs/device-data.md gives the frozen scores too);
* ``pii_tasks_fresh.tsv`` — written after those fixes, never tuned against: the cleanest
  estimate.

:func:`scores` computes, per kind and overall:

* precision — of the spans the masker found, the share that overlap a labelled span of the
  same kind (a price masked as a phone number is a false positive);
* recall — of the labelled spans, the share that masked spans of the same kind cover
  entirely (a phone number masked but for its last digits is a miss: those digits leak);
* ``covered`` — recall ignoring the kind: what a thief can still read is what matters most.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_client.pii import Kind, Span, find, luhn, mask, valid_resident_id
from edge_client.steps import AgentStep

DATA = Path(__file__).parent / "data"
SETS = {"dev": "pii_tasks.tsv", "heldout": "pii_tasks_heldout.tsv", "fresh": "pii_tasks_fresh.tsv"}
_MARK = re.compile(r"\[\[([A-Z]+):(.+?)\]\]")

# (precision, recall) floors, a little under what the masker scores today (docs/device-data.md).
FLOORS = {"dev": (0.98, 0.98), "heldout": (0.97, 0.95), "fresh": (0.97, 0.93), "all": (0.97, 0.96)}
MIN_RECALL_BY_KIND = {
    Kind.PHONE: 0.94,
    Kind.ID: 1.0,
    Kind.CARD: 1.0,
    Kind.EMAIL: 1.0,
    Kind.URL: 0.9,
    Kind.ADDRESS: 0.95,
}


@dataclass(frozen=True)
class Task:
    lang: str
    text: str
    gold: tuple[Span, ...]


def parse(line: str) -> Task:
    lang, marked = line.rstrip("\n").split("\t", 1)
    text, gold, at = [], [], 0
    length = 0
    for m in _MARK.finditer(marked):
        before = marked[at : m.start()]
        text.append(before)
        length += len(before)
        gold.append(Span(length, length + len(m.group(2)), Kind(m.group(1))))
        text.append(m.group(2))
        length += len(m.group(2))
        at = m.end()
    text.append(marked[at:])
    return Task(lang, "".join(text), tuple(gold))


def load(name: str) -> list[Task]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [parse(line) for line in lines if line.strip() and not line.startswith("#")]


TASKS = {key: load(name) for key, name in SETS.items()}
ALL = [t for tasks in TASKS.values() for t in tasks]


def _covered(gold: Span, spans: list[Span]) -> bool:
    chars = set(range(gold.start, gold.end))
    for s in spans:
        chars -= set(range(s.start, s.end))
    return not chars


@dataclass
class Counts:
    found: int = 0
    correct: int = 0
    labelled: int = 0
    recalled: int = 0
    covered: int = 0

    @property
    def precision(self) -> float:
        return self.correct / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        return self.recalled / self.labelled if self.labelled else 1.0


def scores(tasks: list[Task]) -> tuple[Counts, dict[Kind, Counts], list[str]]:
    total, by_kind, errors = Counts(), {k: Counts() for k in Kind}, []
    for task in tasks:
        found = find(task.text)
        for s in found:
            ok = any(g.kind == s.kind and s.start < g.end and g.start < s.end for g in task.gold)
            for c in (total, by_kind[s.kind]):
                c.found += 1
                c.correct += ok
            if not ok:
                errors.append(f"FP {s.kind}: {task.text[s.start : s.end]!r} in {task.text!r}")
        for g in task.gold:
            same = [s for s in found if s.kind == g.kind]
            hit, any_kind = _covered(g, same), _covered(g, found)
            for c in (total, by_kind[g.kind]):
                c.labelled += 1
                c.recalled += hit
                c.covered += any_kind
            if not hit:
                errors.append(f"FN {g.kind}: {task.text[g.start : g.end]!r} in {task.text!r}")
    return total, by_kind, errors


def test_labelled_sets_are_large_and_bilingual() -> None:
    langs = [t.lang for t in ALL]
    assert len(ALL) >= 200 and len(TASKS["dev"]) >= 200
    assert langs.count("zh") >= 100 and langs.count("en") >= 100
    for tasks in TASKS.values():
        assert {g.kind for t in tasks for g in t.gold} == set(Kind)
    assert len([t for t in ALL if not t.gold]) >= 200  # tasks with numbers that must stay


def _report(name: str, tasks: list[Task]) -> tuple[Counts, dict[Kind, Counts], list[str]]:
    total, by_kind, errors = scores(tasks)
    lines = [
        f"{name}: P={total.precision:.3f} R={total.recall:.3f} "
        f"covered={total.covered / total.labelled:.3f} (tasks={len(tasks)}, spans={total.labelled})"
    ]
    lines += [
        f"  {k}: P={c.precision:.3f} R={c.recall:.3f} (n={c.labelled})" for k, c in by_kind.items()
    ]
    print("\n".join(lines + errors))
    return total, by_kind, lines + errors


@pytest.mark.parametrize("name", [*SETS, "all"])
def test_precision_and_recall_on_the_labelled_sets(name: str) -> None:
    tasks = ALL if name == "all" else TASKS[name]
    total, by_kind, report = _report(name, tasks)
    min_p, min_r = FLOORS[name]
    assert total.precision >= min_p, report
    assert total.recall >= min_r, report
    if name == "all":
        assert total.covered / total.labelled >= min_r, report
        for kind, floor in MIN_RECALL_BY_KIND.items():
            assert by_kind[kind].recall >= floor, (kind, report)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_each_language_meets_the_floors(lang: str) -> None:
    total, _, report = _report(lang, [t for t in ALL if t.lang == lang])
    min_p, min_r = FLOORS["all"]
    assert total.precision >= min_p - 0.02, report
    assert total.recall >= min_r - 0.03, report


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("给13812345678发消息说我晚点到", "给<PHONE>发消息说我晚点到"),
        ("身份证号11010519491231002X帮我订票", "身份证号<ID>帮我订票"),
        ("转账到6219 0937 8657 9754，金额500元", "转账到<CARD>，金额500元"),
        ("把照片发到zhang.san@qq.com", "把照片发到<EMAIL>"),
        ("导航到杭州市西湖区文三路259号", "导航到<ADDRESS>"),
        ("call +44 20 7946 0958 at 3pm", "call <PHONE> at 3pm"),
        ("pay with card 4111 1111 1111 1111", "pay with card <CARD>"),
        ("open https://bob:hunter2@git.example.com now", "open <URL> now"),
        ("ship to 221B Baker Street, London NW1 6XE", "ship to <ADDRESS>"),
    ],
)
def test_masks_by_typed_placeholder(text: str, masked: str) -> None:
    assert mask(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "这件衣服价格是1380元",
        "明天下午3点半提醒我",
        "2025年1月6日的机票",
        "买3斤苹果，订单2024112312345678",
        "更新到版本12.3.1",
        "验证码483920",
        "打10086查话费",
        "drive 3 km down the road",
        "it costs $1,299.99",
        "update to iOS 17.4.1",
        "order 2 large pizzas at 19:30 on 12/25/2025",
        "open https://github.com/openai",
        "my invoice number is 4532015112830366",
    ],
)
def test_leaves_numbers_that_are_not_personal(text: str) -> None:
    assert mask(text) == text


def test_checksums() -> None:
    assert valid_resident_id("11010519491231002X") and valid_resident_id("11010519491231002x")
    assert not valid_resident_id("110105194912310021")  # wrong check character
    assert not valid_resident_id("110105194902300024")  # 30 February
    assert luhn("4111111111111111") and not luhn("4111111111111121")
    assert mask("卡号4111111111111121") == "卡号4111111111111121"  # fails Luhn: not a card


def test_masked_text_still_means_messaging() -> None:
    """The embedding of the masked task is close to the same task about another number, so
    the habit ("message someone") is learned, not the number."""
    at = datetime(2025, 1, 6, 8, tzinfo=UTC)
    a = AgentStep(
        action="Launch",
        app="微信",
        instruction="给13812345678发消息说我晚点到",
        outcome="accepted",
        timestamp=at,
    ).redacted()
    b = AgentStep(
        action="Launch",
        app="微信",
        instruction="给13987654321发消息说我晚点到",
        outcome="accepted",
        timestamp=at,
    ).redacted()
    assert a.instruction == b.instruction == "给<PHONE>发消息说我晚点到"
    assert float(a.embedding() @ b.embedding()) == pytest.approx(1.0)


_ALPHABET = string.digits * 4 + string.ascii_letters + " +-.:/@()#，。号路栋给发消息１２３"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=80))
def test_never_raises_and_is_idempotent(text: str) -> None:
    once = mask(text)
    assert mask(once) == once
    for span in find(text):
        assert 0 <= span.start < span.end <= len(text)


def test_span_repr_carries_no_text() -> None:
    (span,) = find("给13812345678发消息")
    assert "13812345678" not in repr(span)
