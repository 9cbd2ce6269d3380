"""One live round in the coordinator: a :class:`SecAggServer` plus who answered each stage.

The server state machine is the authority; this wrapper adds what the coordinator needs to
drive it over Kafka and to rebuild it after a crash:

* ``expected``: who should answer the current stage (everyone for ``advertise``, then the
  addressees of the previous stage's messages), so a stage can close early when all did;
* ``accepted`` / ``rejected``: senders whose message the server took or refused this stage;
* ``stage_log``: for every closed stage, the accepted senders. It is persisted with the
  close. Replaying exactly those stored messages, stage by stage, through a new server drawn
  with the round's graph seed reproduces the state bit for bit (the server is deterministic
  given its randomness, and its only randomness is the neighbour graph).

The graph seed comes from the OS CSPRNG when the round is created and is kept in the region
database; it draws nothing secret (the graph is published in the neighbour lists).
"""

from __future__ import annotations

from collections.abc import Mapping

from privacy.errors import ProtocolReason, RemoteProtocolError
from privacy.rand import SeededRandomness
from privacy.round_wire import RoundOpen
from privacy.secagg import SecAggServer
from privacy.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from privacy.secagg.states import ServerState

STAGES = ("advertise", "shares", "masked", "unmask")
STAGE_TYPE = {
    "advertise": "secagg_advertise",
    "shares": "secagg_shares",
    "masked": "masked_input",
    "unmask": "secagg_unmask_shares",
}
MODELS = {
    "secagg_advertise": AdvertiseKeys,
    "secagg_shares": EncryptedShares,
    "masked_input": MaskedInput,
    "secagg_unmask_shares": UnmaskResponse,
}
STATE_STAGE = {
    ServerState.COLLECT_KEYS: "advertise",
    ServerState.COLLECT_SHARES: "shares",
    ServerState.COLLECT_MASKED: "masked",
    ServerState.COLLECT_UNMASK: "unmask",
}


class LiveRound:
    """The coordinator's in-memory view of one round (rebuildable from the database)."""

    def __init__(self, announce: RoundOpen, graph_seed: bytes) -> None:
        self.announce = announce
        self.server = SecAggServer(announce.params, SeededRandomness(graph_seed))
        self.expected: frozenset[int] = frozenset(range(announce.params.n))
        self.accepted: set[int] = set()
        self.rejected: dict[int, str] = {}
        self.stage_log: dict[str, list[int]] = {}

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

    def close(self) -> list[NeighbourKeys | ForwardedShares | UnmaskRequest]:
        """Close the stage (raises :class:`RoundAborted` below threshold); returns messages."""
        stage = self.stage
        assert stage is not None
        out = self.server.close_stage()
        self.stage_log[stage] = sorted(self.accepted)
        self.expected = frozenset(m.to for m in out)
        self.accepted = set()
        self.rejected = {}
        return out

    @classmethod
    def rebuild(
        cls,
        announce: RoundOpen,
        graph_seed: bytes,
        stage_log: Mapping[str, list[int]],
        bodies: Mapping[tuple[str, int], bytes],
    ) -> LiveRound:
        """Replay the closed stages of ``stage_log`` from stored ``bodies[(type, sender)]``."""
        live = cls(announce, graph_seed)
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
