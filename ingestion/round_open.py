"""Announcing a round: sample, plan, check the budget, persist, then (and only then) publish.

:func:`open_round` runs in one database transaction:

1. pick the participants: the caller's explicit token list, or a uniform sample (OS CSPRNG)
   of the cohort's unused, fresh check-ins, at most ``spec.max_clients``. With a ``goal``
   the sample over-selects (Bonawitz et al., "Towards Federated Learning at Scale", 2019):
   ``ceil(goal * (1 + overselect))`` when that many check-ins exist, so that stragglers and
   dropouts do not keep the round from its goal;
2. plan with :func:`privacy.round.plan_round`: ``k = O(log n)``, threshold ``t``, the
   modulus ``b`` with the no-wrap headroom check, per-client noise from the per-round
   (epsilon, delta). Any configuration that could wrap, or whose masked input would not fit
   in one ingest envelope, is refused;
3. ask the cohort's persisted ledger whether this release is affordable *counting the charges
   reserved by the cohort's rounds still in flight* (two concurrent rounds cannot together
   overspend);
4. write the ``rounds`` row (its graph seed, and in ``stage_log`` the round's
   :class:`~ingestion.round_state.CloseRule`: each stage's goal count and the grace after it),
   mark the sampled check-ins used, queue the :class:`RoundOpen` in the outbox and append the
   audit row.

A refused round still gets a ``rounds`` row (status ``refused``) and an audit row with the
reason, and nothing is queued: no device is ever contacted for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from ingestion import audit, ledger_store, round_outbox
from ingestion.audit import AuditEvent
from ingestion.round_state import RULE_KEY, CloseRule
from ingestion.rounds_db import ACTIVE, round_checkins, rounds
from privacy.adapter_plan import AdapterPlan
from privacy.errors import ConfigError
from privacy.ledger import Budget, ChargeEvent, Ledger
from privacy.rand import Randomness
from privacy.round import RoundPlan, plan_round
from privacy.round_wire import (
    NoiseSpec,
    RoundOpen,
    envelope_bytes_estimate,
    round_id_for,
    rounds_message_bytes,
)
from privacy.secagg import sizing
from privacy.secagg.graph import shuffled


@dataclass(frozen=True, slots=True)
class RoundSpec:
    """What a round computes and what it may cost. ``layout``/``dim``/``clip`` come from the
    learner's contribution layout; ``epsilon``/``delta`` are per round (``None``: no DP
    noise, accepted only by a coordinator built with ``allow_unnoised`` for tests).

    When stages close: a stage closes as soon as every expected client answered; else once
    its goal count answered and ``grace_s`` more seconds passed; else at its deadline,
    ``stage_timeout_s`` after it opened. ``goal`` is the first stage's goal count (unset: every
    sampled client), over-selected by ``overselect``; later stages' goal is what survives
    ``dropout`` of it. No goal is below the round's ``min_clients``."""

    layout: str
    dim: int
    clip: float
    epsilon: float | None
    delta: float | None
    scale: float = 1000.0
    max_clients: int = 1000
    min_participants: int = 3
    min_clients: int | None = None
    k: int | None = None
    t: int | None = None
    bits: int | None = None
    dropout: float | None = None  # expected share of vanishing devices: sizes the graph
    corrupt: float = sizing.DEFAULT_CORRUPT  # share of devices that may collude with the server
    risk: float = sizing.DEFAULT_RISK  # the round's allowed failure probability (abort + exposure)
    stage_timeout_s: float = 120.0  # the stage deadline: long enough for a loaded machine
    goal: int | None = None
    overselect: float = 0.3
    grace_s: float = 2.0
    checkin_ttl_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class OpenResult:
    round_id: str
    round: int
    status: str  # "open" | "refused"
    n: int
    reason: str = ""


def event(
    region: str,
    kind: str,
    cohort: str,
    rnd: int,
    now: datetime,
    reason: str | None,
    detail: dict[str, Any],
) -> AuditEvent:
    """An audit row for a round decision: ids, counts and parameters, never vectors or keys."""
    return AuditEvent(
        event=kind,
        ts=now.isoformat(),
        reason=reason,
        cohort=cohort,
        round=rnd,
        detail=json.dumps(detail, separators=(",", ":"), sort_keys=True),
    )


def next_round(conn: Connection, region: str, cohort: str) -> int:
    c = rounds.c
    top = conn.execute(
        select(func.max(c.round)).where(c.region == region, c.cohort == cohort)
    ).scalar()
    return 0 if top is None else int(top) + 1


def reserved_charges(conn: Connection, region: str, cohort: str) -> list[ChargeEvent]:
    """Charges of the cohort's rounds in flight: announced, not yet released or aborted."""
    c = rounds.c
    stmt = select(c.open_json).where(c.region == region, c.cohort == cohort, c.status.in_(ACTIVE))
    out = []
    for (text,) in conn.execute(stmt):
        announce = RoundOpen.model_validate_json(text)
        if announce.epsilon > 0:
            out.append(announce.plan().charge_event(region, cohort))
    return out


def sample_checkins(
    conn: Connection, region: str, cohort: str, spec: RoundSpec, now: float, rng: Randomness
) -> list[str]:
    c = round_checkins.c
    stmt = (
        select(c.token)
        .where(
            c.region == region,
            c.cohort == cohort,
            c.round_id.is_(None),
            c.checked_in_at >= now - spec.checkin_ttl_s,
            (c.layout == spec.layout) | (c.layout == ""),
        )
        .order_by(c.token)
    )
    tokens = list(conn.execute(stmt).scalars())
    return shuffled(tokens, rng)[: sample_size(spec)]


def sample_size(spec: RoundSpec) -> int:
    """How many check-ins a round asks for: ``max_clients``, or with a ``goal`` the goal
    over-selected by ``overselect`` (never more than ``max_clients``)."""
    if spec.goal is None:
        return spec.max_clients
    return min(spec.max_clients, math.ceil(spec.goal * (1.0 + spec.overselect) - 1e-9))


def plan(round_id: str, n: int, spec: RoundSpec, max_envelope_bytes: int) -> RoundPlan:
    """``plan_round`` plus the transport limit (raises :class:`ConfigError`)."""
    if n < 2:
        raise ConfigError(f"{n} participant(s): SecAgg+ needs at least 2")
    p = plan_round(
        round_id,
        n=n,
        dim=spec.dim,
        clip=spec.clip,
        scale=spec.scale,
        epsilon=spec.epsilon,
        delta=spec.delta,
        k=spec.k,
        t=spec.t,
        min_clients=spec.min_clients,
        bits=spec.bits,
        dropout=spec.dropout,
        corrupt=spec.corrupt,
        risk=spec.risk,
    )
    size = envelope_bytes_estimate(spec.dim, p.params.bits)
    if size > max_envelope_bytes:
        raise ConfigError(
            f"a masked input of dim {spec.dim} at {p.params.bits} bits needs ~{size} bytes per "
            f"envelope > ingest limit {max_envelope_bytes}; raise SOTTO_INGEST__MAX_ENVELOPE_BYTES"
        )
    return p


def open_round(
    conn: Connection,
    *,
    region: str,
    cohort: str,
    spec: RoundSpec,
    rounds_topic: str,
    budget: Budget,
    now: datetime,
    rng: Randomness,
    allow_unnoised: bool,
    max_envelope_bytes: int,
    participants: Sequence[str] | None = None,
    adapter_plan: AdapterPlan | None = None,
) -> OpenResult:
    """Decide and persist one round in the caller's transaction (see module docs)."""
    ts = now.timestamp()
    # The cohort's ledger row first, FOR UPDATE on PostgreSQL: a concurrent open of the same
    # cohort waits here and then numbers its round after ours (and sees our charge).
    ledger = ledger_store.load(conn, region, cohort, budget)
    rnd = next_round(conn, region, cohort)
    rid = round_id_for(region, cohort, rnd)
    tokens = (
        list(participants)
        if participants is not None
        else sample_checkins(conn, region, cohort, spec, ts, rng)
    )
    base = {
        "n": len(tokens),
        "layout": spec.layout,
        "dim": spec.dim,
        "clip": spec.clip,
        "epsilon": spec.epsilon,
        "delta": spec.delta,
    }

    def refuse(reason: str, detail: str) -> OpenResult:
        conn.execute(
            rounds.insert().values(
                region=region,
                round_id=rid,
                cohort=cohort,
                round=rnd,
                status="refused",
                stage_log={},
                opened_at=ts,
                closed_at=ts,
                detail=detail[:1000],
            )
        )
        audit.append(
            conn,
            region,
            [
                event(
                    region, "round_refused", cohort, rnd, now, reason, {**base, "why": detail[:300]}
                )
            ],
        )
        return OpenResult(rid, rnd, "refused", len(tokens), f"{reason}: {detail}")

    bad = _bad_close_rule(spec)
    if bad:
        return refuse("bad_config", bad)
    if spec.epsilon is None and not allow_unnoised:
        return refuse("no_dp", "a round without DP noise is for tests only")
    if len(tokens) < max(spec.min_participants, 2):
        return refuse("too_few_checkins", f"{len(tokens)} < {spec.min_participants}")
    try:
        rp = plan(rid, len(tokens), spec, max_envelope_bytes)
    except ConfigError as exc:
        return refuse("bad_config", str(exc))
    if spec.epsilon is not None:
        charge = rp.charge_event(region, cohort)
        held = Ledger(
            region, cohort, ledger.budget, [*ledger.events, *reserved_charges(conn, region, cohort)]
        )
        if not held.can_afford(charge):
            return refuse(
                "budget_exceeded",
                f"epsilon would reach {held.epsilon_after(charge):.4g} > budget "
                f"{ledger.budget.epsilon:g} (spent {ledger.spent():.4g}, in flight "
                f"{len(held.events) - len(ledger.events)})",
            )
    announce = RoundOpen(
        region=region,
        cohort=cohort,
        round=rnd,
        params=rp.params,
        layout=spec.layout,
        clip=spec.clip,
        scale=spec.scale,
        noise=NoiseSpec.of(rp.noise),
        epsilon=spec.epsilon or 0.0,
        delta=spec.delta or 0.0,
        participants=tuple(tokens),
        stage_timeout_s=spec.stage_timeout_s,
        adapter_plan=adapter_plan,
    )
    rule = CloseRule.plan(
        rp.params.n,
        rp.params.min_clients,
        goal=spec.goal,
        dropout=spec.dropout,
        grace_s=spec.grace_s,
    )
    conn.execute(
        rounds.insert().values(
            region=region,
            round_id=rid,
            cohort=cohort,
            round=rnd,
            status="collect_keys",
            open_json=announce.model_dump_json(),
            graph_seed=rng.token_bytes(32),
            stage_deadline=ts + spec.stage_timeout_s,
            stage_log={RULE_KEY: rule.to_json()},
            opened_at=ts,
        )
    )
    if participants is None and tokens:
        c = round_checkins.c
        conn.execute(
            round_checkins.update()
            .where(c.region == region, c.cohort == cohort, c.token.in_(tokens))
            .values(round_id=rid)
        )
    round_outbox.put(conn, region, rounds_topic, rid.encode(), rounds_message_bytes(announce), ts)
    p = rp.params
    audit.append(
        conn,
        region,
        [
            event(
                region,
                "round_open",
                cohort,
                rnd,
                now,
                None,
                {
                    **base,
                    "round_id": rid,
                    "k": p.k,
                    "t": p.t,
                    "min_clients": p.min_clients,
                    "bits": p.bits,
                    "scale": spec.scale,
                    "z": round(rp.noise.noise_multiplier, 6),
                    "timeout_s": spec.stage_timeout_s,
                    "goal": rule.first,
                    "goal_then": rule.then,
                    "grace_s": rule.grace_s,
                },
            )
        ],
    )
    return OpenResult(rid, rnd, "open", len(tokens))


def _bad_close_rule(spec: RoundSpec) -> str:
    """Why the spec's stage-closing numbers are unusable ('' when they are fine)."""
    if spec.goal is not None and spec.goal < 2:
        return f"goal {spec.goal} < 2"
    if spec.overselect < 0 or spec.grace_s < 0 or spec.stage_timeout_s <= 0:
        return (
            f"overselect {spec.overselect:g} and grace_s {spec.grace_s:g} must be >= 0, "
            f"stage_timeout_s {spec.stage_timeout_s:g} > 0"
        )
    return ""
