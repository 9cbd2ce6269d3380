"""The SecAgg+ transition table: (role, state, event) -> next state, as plain data.

Events are message ``type`` strings for received messages, plus local events ``start``
(client begins) and ``close`` (the caller ends a collection stage: everyone answered or its
deadline passed; the state machines never read a clock). Any pair not in the table is a
protocol error: :class:`~privacy.errors.RemoteProtocolError` when a peer's message caused it,
:class:`~privacy.errors.LocalProtocolError` when the caller did. ``abort`` moves any live
state to ABORTED (too many dropouts: nothing is released). Client-to-server message events
keep the server in its collecting state; ``close`` moves it on.

docs/privacy.md renders this table; tests walk it.
"""

from __future__ import annotations

from enum import StrEnum

from privacy.errors import LocalProtocolError, ProtocolReason, RemoteProtocolError


class Role(StrEnum):
    CLIENT = "client"
    SERVER = "server"


class ClientState(StrEnum):
    IDLE = "idle"
    ADVERTISED = "advertised"  # sent public keys, waits for neighbours
    SHARED = "shared"  # sent sealed shares, waits for forwarded shares
    MASKED = "masked"  # sent masked input, waits for the survivor set to sign
    SIGNED = "signed"  # signed one survivor set, waits for the unmask request
    DONE = "done"  # answered the unmask request; will answer nothing more
    ABORTED = "aborted"  # refused to continue (server misbehaved or round aborted)


class ServerState(StrEnum):
    COLLECT_KEYS = "collect_keys"
    COLLECT_SHARES = "collect_shares"
    COLLECT_MASKED = "collect_masked"
    COLLECT_SIGNATURES = "collect_sigs"
    COLLECT_UNMASK = "collect_unmask"
    DONE = "done"
    ABORTED = "aborted"


C, S = Role.CLIENT, Role.SERVER
CS, SS = ClientState, ServerState

TRANSITIONS: dict[tuple[Role, str, str], ClientState | ServerState] = {
    (C, CS.IDLE, "start"): CS.ADVERTISED,
    (C, CS.ADVERTISED, "secagg_neighbours"): CS.SHARED,
    (C, CS.SHARED, "secagg_forward"): CS.MASKED,
    (C, CS.MASKED, "secagg_consistency"): CS.SIGNED,
    (C, CS.SIGNED, "secagg_unmask"): CS.DONE,
    (S, SS.COLLECT_KEYS, "secagg_advertise"): SS.COLLECT_KEYS,
    (S, SS.COLLECT_KEYS, "close"): SS.COLLECT_SHARES,
    (S, SS.COLLECT_SHARES, "secagg_shares"): SS.COLLECT_SHARES,
    (S, SS.COLLECT_SHARES, "close"): SS.COLLECT_MASKED,
    (S, SS.COLLECT_MASKED, "masked_input"): SS.COLLECT_MASKED,
    (S, SS.COLLECT_MASKED, "close"): SS.COLLECT_SIGNATURES,
    (S, SS.COLLECT_SIGNATURES, "secagg_consistency_sig"): SS.COLLECT_SIGNATURES,
    (S, SS.COLLECT_SIGNATURES, "close"): SS.COLLECT_UNMASK,
    (S, SS.COLLECT_UNMASK, "secagg_unmask_shares"): SS.COLLECT_UNMASK,
    (S, SS.COLLECT_UNMASK, "close"): SS.DONE,
}
_s: ClientState | ServerState
for _s in (CS.IDLE, CS.ADVERTISED, CS.SHARED, CS.MASKED, CS.SIGNED):
    TRANSITIONS[(C, _s, "abort")] = CS.ABORTED
for _s in (
    SS.COLLECT_KEYS,
    SS.COLLECT_SHARES,
    SS.COLLECT_MASKED,
    SS.COLLECT_SIGNATURES,
    SS.COLLECT_UNMASK,
):
    TRANSITIONS[(S, _s, "abort")] = SS.ABORTED

LOCAL_EVENTS = frozenset({"start", "close", "abort"})


def next_state(role: Role, state: str, event: str, who: str) -> str:
    """Look up the transition or raise the typed error naming ``who`` and the stage."""
    try:
        return TRANSITIONS[(role, state, event)]
    except KeyError:
        if event in LOCAL_EVENTS:
            raise LocalProtocolError(f"{who}: cannot {event!r} in state {state!r}") from None
        raise RemoteProtocolError(
            ProtocolReason.OUT_OF_ORDER, f"{who}: {event!r} not accepted in state {state!r}"
        ) from None
