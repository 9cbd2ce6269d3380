"""When the coordinator closes a stage (no broker: a :class:`LiveRound` fed in memory).

A stage closes when every expected client answered, or once its goal count answered and the
grace passed, or at its deadline; goals over-select, shrink with the expected dropout for
later stages, and never fall below the release floor. Time is passed in: no sleeps.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

import numpy as np
import pytest

from ingestion.round_open import RoundSpec, plan, sample_size
from ingestion.round_state import RULE_KEY, STAGES, CloseRule, LiveRound
from privacy.rand import SeededRandomness
from privacy.round import client_input, release
from privacy.round_wire import NoiseSpec, RoundOpen, round_id_for
from tests.privacy.helpers import VERIFIER, make_client

DIM = 4
T0 = 1_000_000.0


def _round(n: int, spec: RoundSpec, seed: bytes = b"\1" * 32) -> tuple[LiveRound, object]:
    rid = round_id_for("eu", "cd", 0)
    rp = plan(rid, n, spec, 1 << 20)
    announce = RoundOpen(
        region="eu",
        cohort="cd",
        round=0,
        params=rp.params,
        layout=spec.layout,
        clip=spec.clip,
        scale=spec.scale,
        noise=NoiseSpec.of(rp.noise),
        epsilon=spec.epsilon or 0.0,
        delta=spec.delta or 0.0,
        participants=tuple(secrets.token_hex(16) for _ in range(n)),
        stage_timeout_s=spec.stage_timeout_s,
    )
    rule = CloseRule.plan(
        n, rp.params.min_clients, goal=spec.goal, dropout=spec.dropout, grace_s=spec.grace_s
    )
    return LiveRound(announce, seed, rule, verifier=VERIFIER), rp


SPEC = RoundSpec(layout="t", dim=DIM, clip=1.0, scale=100.0, epsilon=None, delta=None)


def test_goals_over_select_shrink_with_dropout_and_keep_the_floor() -> None:
    assert sample_size(SPEC) == SPEC.max_clients  # no goal: every fresh check-in, up to the cap
    assert sample_size(replace(SPEC, goal=100)) == 130  # 30 % over
    assert sample_size(replace(SPEC, goal=100, max_clients=110)) == 110
    rule = CloseRule.plan(130, 40, goal=100, dropout=0.1, grace_s=2.0)
    assert (rule.first, rule.then) == (100, 90)  # later stages: what survives 10 % dropout
    assert rule.goal("advertise") == 100 and rule.goal("unmask") == 90
    assert CloseRule.plan(30, 40, goal=20, dropout=0.5, grace_s=1.0).then == 40  # the floor
    assert CloseRule.plan(10, 5, goal=None, dropout=0.1, grace_s=1.0).first == 10  # all sampled
    assert CloseRule.plan(10, 5, goal=50, dropout=None, grace_s=1.0).first == 10  # at most n
    assert CloseRule.from_json(rule.to_json()) == rule


def _answer(live: LiveRound, replies: dict[int, object]) -> None:
    for cid, msg in sorted(replies.items()):
        assert live.feed(cid, msg.to_bytes()) is None  # type: ignore[attr-defined]


def test_a_stage_closes_on_everyone_on_its_goal_after_the_grace_or_at_its_deadline() -> None:
    spec = replace(SPEC, goal=8, dropout=0.25, grace_s=2.0)
    live, rp = _round(10, spec)
    assert live.rule.first == 8 and live.rule.then >= rp.params.min_clients
    rng = SeededRandomness.from_int(7)
    clients = {
        c: make_client(rp.params, c, client_input(np.full(DIM, 0.1), rp, rng), rng)
        for c in range(10)
    }
    deadline = T0 + spec.stage_timeout_s
    _answer(live, {c: clients[c].start() for c in range(7)})
    assert live.due(T0, deadline) is None  # 7 < goal 8
    _answer(live, {7: clients[7].start()})
    assert live.due(T0 + 1, deadline) is None  # goal met: the grace starts now
    assert live.due(T0 + 2.9, deadline) is None
    assert live.due(T0 + 3, deadline, settled=False) is None  # ingestion has a backlog
    assert live.due(T0 + 3, deadline) == "goal"
    _answer(live, {c: clients[c].start() for c in (8, 9)})
    assert live.due(T0 + 3, deadline, settled=False) == "complete"  # nobody is dropped
    fresh, _ = _round(10, spec)
    assert fresh.due(deadline - 0.1, deadline) is None
    assert fresh.due(deadline, deadline, settled=False) is None
    assert fresh.due(deadline, deadline) == "deadline"  # and the server aborts it


def test_goal_closes_release_the_survivors_sum_after_a_restart_too() -> None:
    """A round whose stages close on their goals (two clients vanish) releases exactly the
    survivors' sum; the rule survives a rebuild from the stored stage log."""
    spec = replace(SPEC, goal=12, dropout=0.2, grace_s=1.0)
    live, rp = _round(12, spec)
    rng = SeededRandomness.from_int(3)
    vectors = {c: np.full(DIM, 0.01 * (c + 1)) for c in range(12)}
    clients = {
        c: make_client(rp.params, c, client_input(v, rp, rng), rng) for c, v in vectors.items()
    }
    gone = {"masked": {3}, "unmask": {5}}
    bodies: dict[tuple[str, int], bytes] = {}
    replies = {c: cl.start() for c, cl in clients.items()}
    now, closed = T0, []
    while live.stage is not None:
        stage, mtype = live.stage, live.message_type
        for cid, msg in replies.items():
            bodies[(mtype, cid)] = msg.to_bytes()  # type: ignore[index,attr-defined]
            assert live.feed(cid, msg.to_bytes()) is None  # type: ignore[attr-defined]
        why = live.due(now, now + 60)
        if why is None:
            assert live.goal_met() and live.goal_reached_at == now
            now += spec.grace_s
            why = live.due(now, now + 60)
        closed.append((stage, why))
        out = live.close()
        dropped = set().union(*(gone.get(s, set()) for s in gone if _after(s, live.stage)))
        replies = {m.to: clients[m.to].receive(m) for m in out if m.to not in dropped}
        now += 0.1
    assert [w for _, w in closed] == ["complete", "complete", "goal", "complete", "goal"]
    assert RULE_KEY in live.stage_log  # persisted with every close: a restart keeps the rule
    rebuilt = LiveRound.rebuild(
        live.announce, b"\1" * 32, dict(live.stage_log), bodies, verifier=VERIFIER
    )
    assert rebuilt.rule == live.rule and rebuilt.stage is None
    result = live.server.result()
    assert set(result.survivors) == set(range(12)) - {3}
    total = release(result, rp)
    expected = sum(v for c, v in vectors.items() if c != 3)
    assert np.allclose(total, expected, atol=0.1)


def _after(stage: str, current: str | None) -> bool:
    """Whether clients dropping at ``stage`` are silent in the stage now collecting."""
    order = STAGES
    return current is not None and order.index(stage) <= order.index(current)


@pytest.mark.parametrize("n", [3, 5])
def test_small_rounds_without_a_goal_wait_for_everyone(n: int) -> None:
    live, _ = _round(n, SPEC)
    assert live.rule.first == n and live.rule.then == n  # no dropout expected, no goal
