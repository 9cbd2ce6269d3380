"""SecAgg+ (Bell et al., CCS 2020; Bonawitz et al., CCS 2017) as sans-IO state machines.

* :mod:`.messages` -- the versioned wire models (pydantic, frozen).
* :mod:`.states` -- the transition table both machines obey (data, read by tests and docs).
* :mod:`.graph` -- the random k-regular neighbour graph.
* :mod:`.crypto` -- key agreement, share encryption and mask expansion.
* :mod:`.client`, :mod:`.server` -- the two roles.
"""

from privacy.secagg.client import SecAggClient
from privacy.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    RoundParams,
    UnmaskRequest,
    UnmaskResponse,
)
from privacy.secagg.server import AggregateResult, RoundAborted, SecAggServer
from privacy.secagg.states import TRANSITIONS, ClientState, Role, ServerState

__all__ = [
    "AdvertiseKeys",
    "AggregateResult",
    "ClientState",
    "EncryptedShares",
    "ForwardedShares",
    "MaskedInput",
    "NeighbourKeys",
    "Role",
    "RoundAborted",
    "RoundParams",
    "SecAggClient",
    "SecAggServer",
    "ServerState",
    "TRANSITIONS",
    "UnmaskRequest",
    "UnmaskResponse",
]
