"""Round summaries: deterministic, fixed shape, unit-norm embedding, no raw text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from edge_client.context_store import ContextStore
from edge_client.steps import ACTIONS, AgentStep
from edge_client.summary import summarize
from privacy.embedding import EMBED_VERSION
from privacy.wire import EMBEDDING_DIM, RoundSummary

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=2)


def history() -> list[AgentStep]:
    kw = {"instruction": "帮我在美团点一杯拿铁", "timestamp": T0}
    return [
        AgentStep(action="Launch", app="美团", outcome="accepted", **kw),
        AgentStep(action="Tap", element=(500, 300), current_app="美团", outcome="accepted", **kw),
        AgentStep(
            action="Type", text="拿铁 加燕麦奶", current_app="美团", outcome="overridden", **kw
        ),
        AgentStep(action="Swipe", start=(500, 900), end=(500, 100), outcome="failed", **kw),
        AgentStep(action="finish", message="已下单", outcome="accepted", **kw),
    ]


def fill(path: Path) -> ContextStore:
    store = ContextStore(path)
    for i, s in enumerate(history()):
        store.record(s.model_copy(update={"timestamp": T0 + timedelta(minutes=i)}))
    return store


def test_summary_shape_counts_and_norm(tmp_path: Path) -> None:
    with fill(tmp_path / "ctx.db") as store:
        summary = summarize(store.window(NOW))
    assert summary.embed_version == EMBED_VERSION
    vec = summary.vector()
    assert vec.shape == (EMBEDDING_DIM,)
    assert float(np.linalg.norm(vec)) == pytest.approx(1.0, abs=1e-6)
    assert summary.counts.model_dump() == {"steps": 5, "accepted": 3, "overridden": 1, "failed": 1}
    assert list(summary.action_hist) == list(ACTIONS)  # fixed shape, zeros included
    assert summary.action_hist["Tap"] == 1 and summary.action_hist["Back"] == 0


def test_summary_is_deterministic_across_stores_and_restarts(tmp_path: Path) -> None:
    with fill(tmp_path / "a.db") as a, fill(tmp_path / "b.db") as b:
        first = summarize(a.window(NOW)).model_dump_json()
        assert summarize(b.window(NOW)).model_dump_json() == first
    with ContextStore(tmp_path / "a.db") as reopened:
        assert summarize(reopened.window(NOW)).model_dump_json() == first


def test_summary_carries_no_raw_text(tmp_path: Path) -> None:
    with fill(tmp_path / "ctx.db") as store:
        raw = summarize(store.window(NOW)).model_dump_json()
    for secret in ("拿铁", "燕麦", "美团", "已下单"):  # non-ASCII: cannot occur in base64
        assert secret not in raw
    RoundSummary.model_validate_json(raw)  # and it is a valid wire payload


def test_empty_window_gives_a_valid_zero_summary() -> None:
    summary = summarize([])
    assert summary.counts.steps == 0
    assert not summary.vector().any()
