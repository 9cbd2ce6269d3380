"""One live round in the coordinator: a :class:`SecAggServer` plus who answered each stage.

The server state machine is the authority; this wrapper adds what the coordinator needs to
drive it over Kafka and to rebuild it after a crash:

* ``expected``: who should answer the current stage (everyone for ``advertise``, then the
  addressees of the previous stage's messages), so a stage can close early when all did;
* ``rule``: the round's :class:`CloseRule`, the goal count of each stage and the grace after
  it (Bonawitz et al., "Towards Federated Learning at Scale", 2019): :meth:`LiveRound.due`
  closes a stage when every expected client answered, or when its goal count answered and
  the grace passed, or at its deadline. ``goal_reached_at`` is memory only: after a restart
  the goal is seen again on the first tick, which costs at most one grace;
* ``accepted`` / ``rejected``: senders whose message the server took or refused this stage;
* ``stage_log``: for every closed stage, the accepted senders, and the rule under ``"rule"``.
  It is persisted with the open and with every close. Replaying exactly those stored messages, stage by stage, through a new server drawn
  with the round's graph seed reproduces the state bit for bit (the server is deterministic
  given its randomness, and its only randomness is the neighbour graph).

The graph seed comes from the OS CSPRNG when the round is created and is kept in the region
database; it draws nothing secret (the graph is published in the neighbour lists).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from privacy.credential import CredentialVerifier
from privacy.errors import ProtocolReason, RemoteProtocolError
from privacy.rand import SeededRandomness
from privacy.round_wire import RoundOpen
from privacy.secagg import SecAggServer
from privacy.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShares,
    MaskedInput,
    UnmaskResponse,
)
from privacy.secagg.server import ServerMessage
from privacy.secagg.states import ServerState

STAGES = ("advertise", "shares", "masked", "consistency", "unmask")
STAGE_TYPE = {
    "advertise": "secagg_advertise",
    "shares": "secagg_shares",
    "masked": "masked_input",
    "consistency": "secagg_consistency_sig",
    "unmask": "secagg_unmask_shares",
}
MODELS = {
    "secagg_advertise": AdvertiseKeys,
    "secagg_shares": EncryptedShares,
    "masked_input": MaskedInput,
    "secagg_consistency_sig": ConsistencySignature,
    "secagg_unmask_shares": UnmaskResponse,
}
STATE_STAGE = {
    ServerState.COLLECT_KEYS: "advertise",
    ServerState.COLLECT_SHARES: "shares",
    ServerState.COLLECT_MASKED: "masked",
    ServerState.COLLECT_SIGNATURES: "consistency",
    ServerState.COLLECT_UNMASK: "unmask",
}


RULE_KEY = "rule"  # the CloseRule's entry in stage_log (no stage has that name)


@dataclass(frozen=True, slots=True)
class CloseRule:
    """When a stage may close before its deadline: ``first`` valid answers for the first stage
    (``advertise``), ``then`` for every later one, each followed by ``grace_s`` seconds for the
    stragglers. Both counts are at least the round's ``min_clients`` (the release floor)."""

    first: int
    then: int
    grace_s: float = 0.0

    @classmethod
    def plan(
        cls, n: int, min_clients: int, *, goal: int | None, dropout: float | None, grace_s: float
    ) -> CloseRule:
        """The rule of a round of ``n`` announced clients: the first stage's goal is ``goal``
        (``n`` when unset, and never above ``n``); later stages expect ``dropout`` of it to
        vanish, so their goal is what survives, ``floor(first * (1 - dropout))``. Neither is
        below ``min_clients``: closing on a goal never leaves a round below its release floor."""
        first = max(min_clients, min(n, goal if goal is not None else n))
        then = math.floor(first * (1.0 - (dropout or 0.0)) + 1e-9)
        return cls(first=first, then=max(min_clients, min(first, then)), grace_s=grace_s)

    @classmethod
    def everyone(cls, n: int) -> CloseRule:
        """No early close: every expected client, or the deadline (rounds opened without a
        rule)."""
        return cls(first=n, then=n, grace_s=0.0)

    def goal(self, stage: str) -> int:
        return self.first if stage == STAGES[0] else self.then

    def to_json(self) -> dict[str, Any]:
        return {"first": self.first, "then": self.then, "grace_s": self.grace_s}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CloseRule:
        return cls(int(data["first"]), int(data["then"]), float(data["grace_s"]))


class LiveRound:
    """The coordinator's in-memory view of one round (rebuildable from the database)."""

    def __init__(
        self,
        announce: RoundOpen,
        graph_seed: bytes,
        rule: CloseRule | None = None,
        *,
        verifier: CredentialVerifier,
    ) -> None:
        self.announce = announce
        self.server = SecAggServer(announce.params, SeededRandomness(graph_seed), verifier=verifier)
        self.expected: frozenset[int] = frozenset(range(announce.params.n))
        self.accepted: set[int] = set()
        self.rejected: dict[int, str] = {}
        self.rule = rule or CloseRule.everyone(announce.params.n)
        self.stage_log: dict[str, Any] = {RULE_KEY: self.rule.to_json()}
        self.goal_reached_at: float | None = None  # when this stage's goal was first seen met

    def __repr__(self) -> str:
        return f"LiveRound(round_id={self.announce.round_id!r}, state={self.server.state!r})"

    @property
    def stage(self) -> str | None:
        """The collecting stage (``advertise`` .. ``unmask``), or None when finished."""
        return STATE_STAGE.get(self.server.state)  # type: ignore[call-overload]

    @property
    def message_type(self) -> str | None:
        stage = self.stage
        return STAGE_TYPE[stage] if stage else None

    @property
    def answered(self) -> set[int]:
        return self.accepted | set(self.rejected)

    def complete(self) -> bool:
        """Every expected client answered (or was refused): no reason to wait longer."""
        return self.expected <= self.answered

    @property
    def goal(self) -> int:
        """Valid answers the current stage wants before its grace starts."""
        stage = self.stage
        return self.rule.goal(stage) if stage else 0

    def goal_met(self) -> bool:
        """The goal count answered validly and the stage can close with them: closing now
        leaves every client the ``t`` share holders that unmasking will need."""
        if self.stage is None or len(self.accepted) < self.goal:
            return False
        return self._closable()

    def due(self, now: float, deadline: float | None, *, settled: bool = True) -> str | None:
        """Why the current stage closes at ``now`` (unix seconds): ``"complete"`` (every
        expected client answered), ``"goal"`` (the goal count answered at least ``grace_s``
        ago) or ``"deadline"``; None: keep collecting. ``settled=False`` (ingestion has a
        backlog) holds back the closes that would count someone as dropped."""
        if self.stage is None:
            return None
        if self.complete():
            return "complete"
        if self.goal_met():
            if self.goal_reached_at is None:
                self.goal_reached_at = now
            if settled and now - self.goal_reached_at >= self.rule.grace_s:
                return "goal"
        if settled and deadline is not None and now >= deadline:
            return "deadline"
        return None

    def _closable(self) -> bool:
        """Necessary conditions for the next steps to succeed with exactly the clients that
        answered so far (the server aborts otherwise); unknown stages: none."""
        p, acc, stage = self.announce.params, self.accepted, self.stage
        if stage == "advertise":  # the neighbour degree the server can draw (even, < m)
            m = len(acc)
            k = min(p.k, m - 1)
            if k < m - 1 and k % 2:
                k -= 1
            return k >= p.t
        graph = self.server.graph
        if stage == "shares":  # every sender keeps t share holders among the senders
            return all(len(graph[c] & acc) >= p.t for c in acc)
        if stage in ("masked", "consistency", "unmask") and "shares" in self.stage_log:
            # every client that shared (survivor or dropped) can be unmasked by t neighbours
            # among those who sent a masked input, then among those who answer the unmask
            return all(len(graph[i] & acc) >= p.t for i in self.stage_log["shares"])
        return True

    def feed(self, sender: int, body: bytes) -> str | None:
        """Give the server one stored message of the current stage; the refusal reason or None."""
        mtype = self.message_type
        if mtype is None or sender in self.answered:
            return None
        try:
            msg = MODELS[mtype].model_validate_json(body)
            if msg.sender != sender:  # type: ignore[attr-defined]
                raise RemoteProtocolError(
                    ProtocolReason.BAD_SENDER, "stored sender does not match payload"
                )
            self.server.receive(msg)  # type: ignore[arg-type]
        except RemoteProtocolError as exc:
            self.rejected[sender] = exc.reason
            return exc.reason
        except ValueError as exc:  # pydantic ValidationError
            self.rejected[sender] = "payload_invalid"
            return f"payload_invalid: {exc.__class__.__name__}"
        self.accepted.add(sender)
        return None

    def close(self) -> list[ServerMessage]:
        """Close the stage (raises :class:`RoundAborted` below threshold); returns messages."""
        stage = self.stage
        assert stage is not None
        out = self.server.close_stage()
        self.stage_log[stage] = sorted(self.accepted)
        self.expected = frozenset(m.to for m in out)
        self.accepted = set()
        self.rejected = {}
        self.goal_reached_at = None
        return out

    @classmethod
    def rebuild(
        cls,
        announce: RoundOpen,
        graph_seed: bytes,
        stage_log: Mapping[str, Any],
        bodies: Mapping[tuple[str, int], bytes],
        *,
        verifier: CredentialVerifier,
    ) -> LiveRound:
        """Replay the closed stages of ``stage_log`` from stored ``bodies[(type, sender)]``
        (and take its rule; a log without one closes on everyone or the deadline)."""
        rule = stage_log.get(RULE_KEY)
        live = cls(
            announce, graph_seed, CloseRule.from_json(rule) if rule else None, verifier=verifier
        )
        for stage in STAGES:
            if stage not in stage_log:
                break
            for sender in stage_log[stage]:
                reason = live.feed(sender, bodies[(STAGE_TYPE[stage], sender)])
                if reason is not None:
                    raise RuntimeError(
                        f"replay of {announce.round_id} diverged at {stage}: {reason}"
                    )
            live.close()
        return live
