"""Drive one SecAgg+ round in memory: the reference wiring for tests, benchmarks and docs.

The Kafka round coordinator does the same thing with topics in between: start every client,
route each client message to ``server.receive``, call ``server.close_stage()`` when a stage
is done, deliver each returned message to the client it is addressed to, and so on.
``drop`` says which clients vanish before answering which stage.

Devices need credentials from an issuer the server and every client trust; without
``issuer``/``verifier`` the round makes a throwaway issuer from ``rng`` (a simulation: the
issuer's key never leaves this call).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from privacy.credential import CredentialIssuer, CredentialVerifier, IssuerVerifier
from privacy.rand import DEFAULT_RANDOMNESS, Randomness
from privacy.secagg.client import SecAggClient
from privacy.secagg.messages import RoundParams
from privacy.secagg.server import AggregateResult, SecAggServer

STAGES = ("advertise", "shares", "masked", "consistency", "unmask")
PREVIOUS = dict(zip(STAGES[1:], STAGES[:-1], strict=True))


@dataclass
class RoundCost:
    """Per-client work and bytes, and server time per stage (perf_counter seconds)."""

    client_seconds: dict[int, dict[str, float]] = field(default_factory=dict)
    client_bytes: dict[int, int] = field(default_factory=dict)
    server_seconds: dict[str, float] = field(default_factory=dict)


def run_round(
    params: RoundParams,
    vectors: Mapping[int, np.ndarray],
    *,
    drop: Mapping[str, set[int]] | None = None,
    rng: Randomness = DEFAULT_RANDOMNESS,
    client_rngs: Mapping[int, Randomness] | None = None,
    stats: RoundCost | None = None,
    issuer: CredentialIssuer | None = None,
    verifier: CredentialVerifier | None = None,
) -> AggregateResult:
    """Run a full round; raises :class:`~privacy.secagg.server.RoundAborted` if it aborts.

    ``drop[stage]`` is the set of clients that go silent instead of answering ``stage``
    (one of :data:`STAGES`), and stay gone afterwards.
    """
    drop = drop or {}
    st = stats if stats is not None else RoundCost()
    tick = time.perf_counter
    if issuer is None:
        issuer = CredentialIssuer.generate("sim", "sim-issuer", rng)
    if verifier is None:
        verifier = IssuerVerifier(issuer.region, {issuer.key_id: issuer.public_key}, valid_at=0)
    clients = {}
    for c, v in vectors.items():
        crng = (client_rngs or {}).get(c, rng)
        identity = issuer.issue(not_after=1 << 40, rng=crng)
        clients[c] = SecAggClient(params, c, v, crng, identity=identity, verifier=verifier)
    server = SecAggServer(params, rng, verifier=verifier)
    gone: set[int] = set()

    def client_step(c: int, stage: str, fn):  # type: ignore[no-untyped-def]
        t0 = tick()
        msg = fn()
        st.client_seconds.setdefault(c, {})[stage] = tick() - t0
        st.client_bytes[c] = st.client_bytes.get(c, 0) + len(msg.to_bytes())
        t1 = tick()
        server.receive(msg)
        st.server_seconds[stage] = st.server_seconds.get(stage, 0.0) + tick() - t1

    def closing(stage: str):  # type: ignore[no-untyped-def]
        t0 = tick()
        out = server.close_stage()
        st.server_seconds[stage + "_close"] = tick() - t0
        return out

    gone |= drop.get("advertise", set())
    for c, cl in clients.items():
        if c not in gone:
            client_step(c, "advertise", cl.start)
    for stage in STAGES[1:]:
        out = closing(PREVIOUS[stage])
        gone |= drop.get(stage, set())
        for m in out:
            if m.to not in gone:
                client_step(m.to, stage, lambda m=m: clients[m.to].receive(m))
    closing("unmask")
    return server.result()
