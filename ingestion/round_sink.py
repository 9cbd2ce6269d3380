"""Where ingestion hands SecAgg+ protocol payloads to the round coordinator, exactly once.

Ingestion validates, decrypts and dedupes every record the same way whatever its payload.
For payload types in :data:`ROUTED_TYPES` it then does not aggregate in the clear: the
validator returns a :class:`Routed` verdict, :func:`screen` refuses (dead-letters) the ones
that cannot belong to a live round, and :func:`stage` stores the rest into ``round_messages``
/ ``round_checkins`` *inside the checkpoint's transaction*, next to the Kafka offsets that
produced them. A crash either keeps both or neither; the coordinator reads only what is
durable. The coordinator never sees a record twice, and ingestion never sees a vector in the
clear (``masked_input`` is uniform without the masks).

:func:`screen` reads committed state (outside the transaction) and catches what is plainly
wrong: unknown or never announced round, round id not matching the envelope header, sender
outside the round, a stage not yet open, a second message from the same sender for the same
stage. Those are protocol violations and are dead-lettered.

A valid message whose stage (or whole round) closed before it arrived is not a violation: a
slow or loaded device answered after its stage's goal count and grace, or its deadline. It
becomes a :class:`Late` verdict: acknowledged (its offset stored, its msg_id kept against
replays), counted (``IngestStats.late``) and audited as a ``late`` row with reason
``late_for_stage``, never stored for the coordinator and never dead-lettered. A stage closing
between screen and commit is harmless: the coordinator ignores stored messages of closed
stages. Checks that need the SecAgg+ server's state (share lists, unmask sets) run in the
coordinator and are audited there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from backend.storage import reading
from ingestion.rounds_db import ACTIVE, round_checkins, round_messages, rounds
from ingestion.validator import Accepted, Rejected
from privacy.round_wire import CLIENT_PAYLOADS, STAGE_OF_TYPE, Checkin, round_id_for
from privacy.wire import Envelope, Frozen, RejectReason

ROUTED_TYPES = CLIENT_PAYLOADS | {"secagg_checkin"}
STAGE_ORDER = ("advertise", "shares", "masked", "consistency", "unmask")
STATUS_STAGE = dict(zip(ACTIVE, STAGE_ORDER, strict=True))
FINISHED = ("released", "aborted")  # announced rounds that are over
LATE = "late_for_stage"  # the audit reason of a valid message that came after its stage


@dataclass(frozen=True, slots=True)
class Routed(Accepted):
    """A valid, decrypted protocol payload for the round coordinator, not aggregated in the
    clear (``summary`` is None). It is an :class:`Accepted` so that replay protection,
    ``seen_messages`` and the audit ``accept`` row treat it exactly like a summary."""

    payload: Frozen | None = None

    @classmethod
    def of(cls, envelope: Envelope, payload: Frozen) -> Routed:
        return cls(envelope, None, payload)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Late(Accepted):
    """A valid protocol payload that arrived after its stage (or round) closed: acknowledged
    and counted, not stored for the coordinator, not dead-lettered. ``summary`` is None."""

    detail: str = ""

    @classmethod
    def of(cls, envelope: Envelope, detail: str) -> Late:
        return cls(envelope, None, detail)  # type: ignore[arg-type]


def routes(payload_type: str) -> bool:
    return payload_type in ROUTED_TYPES


@dataclass(frozen=True, slots=True)
class _RoundView:
    status: str
    n: int


def _round_views(engine: Engine, region: str, ids: set[str]) -> dict[str, _RoundView]:
    out: dict[str, _RoundView] = {}
    if not ids:
        return out
    c = rounds.c
    stmt = select(c.round_id, c.status, c.open_json).where(
        c.region == region, c.round_id.in_(sorted(ids))
    )
    with reading(engine) as conn:
        for row in conn.execute(stmt):
            n = json.loads(row.open_json)["params"]["n"] if row.open_json else 0
            out[row.round_id] = _RoundView(row.status, int(n))
    return out


def _stored(
    engine: Engine, region: str, keys: set[tuple[str, str, int]]
) -> set[tuple[str, str, int]]:
    """Which of ``keys`` (round, type, sender) are stored already. Only the batch's own keys
    are looked up (by the primary key): reading every stored sender of the round per batch
    made a round of n devices cost O(n^2 / batch) rows."""
    if not keys:
        return set()
    c = round_messages.c
    ids = sorted({k[0] for k in keys})
    types = sorted({k[1] for k in keys})
    senders = sorted({k[2] for k in keys})
    out: set[tuple[str, str, int]] = set()
    with reading(engine) as conn:
        for i in range(0, len(senders), 500):  # well under any database's bound-variable limit
            stmt = select(c.round_id, c.type, c.sender).where(
                c.region == region,
                c.round_id.in_(ids),
                c.type.in_(types),
                c.sender.in_(senders[i : i + 500]),
            )
            out.update((r.round_id, r.type, int(r.sender)) for r in conn.execute(stmt))
    return out & keys


def _stored_tokens(engine: Engine, region: str, tokens: set[str]) -> set[tuple[str, str]]:
    if not tokens:
        return set()
    c = round_checkins.c
    stmt = select(c.cohort, c.token).where(c.region == region, c.token.in_(sorted(tokens)))
    with reading(engine) as conn:
        return {(r.cohort, r.token) for r in conn.execute(stmt)}


INTERNAL = RejectReason.INTERNAL_ERROR.value


def screen(engine: Engine, region: str, items: Sequence[Routed]) -> list[str | None]:
    """For each item, ``None`` (store it), why it is late (starts with :data:`LATE`), or why
    it is a protocol violation (dead-letter it)."""
    protocol = [r for r in items if r.payload.type in CLIENT_PAYLOADS]  # type: ignore[attr-defined]
    ids = {p.payload.round_id for p in protocol}  # type: ignore[attr-defined]
    views = _round_views(engine, region, ids)
    stored = _stored(
        engine,
        region,
        {(p.payload.round_id, p.payload.type, p.payload.sender) for p in protocol},  # type: ignore[attr-defined]
    )
    tokens = _stored_tokens(
        engine, region, {r.payload.token for r in items if isinstance(r.payload, Checkin)}
    )
    seen: set[tuple[str, str, int]] = set()
    seen_tokens: set[tuple[str, str]] = set()
    out: list[str | None] = []
    for item in items:
        env, p = item.envelope, item.payload
        if isinstance(p, Checkin):
            key = (env.cohort, p.token)
            out.append(
                "replay: check-in token already used" if key in tokens | seen_tokens else None
            )
            seen_tokens.add(key)
            continue
        try:
            out.append(_screen_one(region, env, p, views, stored | seen))
        except Exception as exc:  # one record's content must not stop the batch
            out.append(f"{INTERNAL}: {type(exc).__name__} while screening")
            continue
        if out[-1] is None:
            seen.add((p.round_id, p.type, p.sender))  # type: ignore[attr-defined]
    return out


def screen_verdicts(
    engine: Engine, region: str, decided: list[tuple[Any, bytes, Any]], durable: set[str]
) -> list[tuple[Any, bytes, Any]]:
    """The processor's hook: ``(record, raw, verdict)`` triples with every :class:`Routed`
    verdict that :func:`screen` refuses turned into ``Rejected(protocol_violation)``, and
    every one that came after its stage into :class:`Late`. Replays (msg_id already durable)
    are left for the processor to name as such."""
    idx = [
        i
        for i, (_, _, v) in enumerate(decided)
        if isinstance(v, Routed) and v.envelope.msg_id not in durable
    ]
    if not idx:
        return decided
    reasons = screen(engine, region, [decided[i][2] for i in idx])
    out = list(decided)
    for i, reason in zip(idx, reasons, strict=True):
        if reason is not None and reason.startswith(LATE):
            rec, raw, v = out[i]
            out[i] = (rec, raw, Late.of(v.envelope, reason.removeprefix(f"{LATE}: ")))
        elif reason is not None:
            rec, raw, v = out[i]
            why = (
                RejectReason.INTERNAL_ERROR
                if reason.startswith(INTERNAL)
                else RejectReason.PROTOCOL
            )
            out[i] = (rec, raw, Rejected(why, reason, v.envelope))
    return out


def _screen_one(
    region: str,
    env: Envelope,
    p: Frozen,
    views: dict[str, _RoundView],
    stored: set[tuple[str, str, int]],
) -> str | None:
    rid, ptype, sender = p.round_id, p.type, p.sender  # type: ignore[attr-defined]
    if rid != round_id_for(region, env.cohort, env.round):
        return f"wrong_round: payload round {rid!r} does not match the envelope header"
    view = views.get(rid)
    if view is None:
        return f"unknown_round: no round {rid!r} in {region}"
    if view.status not in STATUS_STAGE and view.status not in FINISHED:
        return f"round_over: round {rid} is {view.status}"  # never announced: nobody is in it
    if not 0 <= sender < view.n:
        return f"unknown_client: sender {sender} outside 0..{view.n - 1}"
    if (rid, ptype, sender) in stored:
        return f"replay: second {ptype} from client {sender}"
    if view.status in FINISHED:
        return f"{LATE}: {ptype} from client {sender} after round {rid} was {view.status}"
    want, got = (
        STAGE_ORDER.index(STATUS_STAGE[view.status]),
        STAGE_ORDER.index(STAGE_OF_TYPE[ptype]),
    )
    if got < want:
        return f"{LATE}: {ptype} from client {sender} after its stage closed"
    if got > want:
        return f"out_of_order: {ptype} from {sender} before its stage opened"
    return None


def stage(conn: Connection, region: str, items: Iterable[Routed], now: datetime) -> None:
    """Store screened payloads in the checkpoint's transaction (same commit as the offsets)."""
    ts = now.timestamp()
    msgs, checkins = [], []
    for item in items:
        env, p = item.envelope, item.payload
        if isinstance(p, Checkin):
            checkins.append(
                {
                    "region": region,
                    "cohort": env.cohort,
                    "token": p.token,
                    "layout": p.layout,
                    "checked_in_at": ts,
                    "round_id": None,
                }
            )
        else:
            msgs.append(
                {
                    "region": region,
                    "round_id": p.round_id,
                    "type": p.type,  # type: ignore[attr-defined]
                    "sender": p.sender,
                    "msg_id": env.msg_id,  # type: ignore[attr-defined]
                    "body": p.model_dump_json().encode(),
                    "received_at": ts,
                }
            )
    if msgs:
        conn.execute(round_messages.insert(), msgs)
    if checkins:
        conn.execute(round_checkins.insert(), checkins)
