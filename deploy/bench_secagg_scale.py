"""How the SecAgg+ server scales with n: per-client server cost at several cohort sizes.

Why a replay: at n = 5,000 the clients' own work (about 20-30 ms each at k = 78) would take
minutes on a small machine, while the server's is what we measure. So every client runs once,
for real, and its messages are recorded as it sends them; then a fresh server, drawing the
same neighbour graph (its randomness is a DRBG seeded once per round, so the graph and hence
every client message stays valid), is fed exactly those messages stage by stage, and only
the server is timed. Each replay checks the sum it releases against the recorded round's
(both exact), so a replay that diverged would show up as an error, not as a fast figure.

Recording takes two shortcuts on the clients' side only, neither of which changes a byte they
send: the inputs are uniform residues mod 2**bits instead of DP-noised quantized vectors (the
server cannot tell them apart, and noise sampling would dominate recording), and the clients
skip checking each other's Ed25519 signatures (every signature in the round is genuine, made
by the bench; a client's check can only pass). Each server replay gets its own fresh
credential verifier and checks every credential and signature as a real server does.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from privacy.credential import CredentialIssuer, IssuerVerifier
from privacy.rand import SeededRandomness, SystemRandomness
from privacy.round import plan_round
from privacy.secagg import sizing
from privacy.secagg.client import SecAggClient
from privacy.secagg.messages import ClientToServer, RoundParams
from privacy.secagg.server import SecAggServer
from privacy.secagg.simulate import STAGES

DEFAULT_SCALE_NS = (250, 1000, 2000, 5000)
GOAL_MS_PER_CLIENT = 1.0


@dataclass
class Recording:
    """One real round's client messages, by stage, in the order the server received them."""

    params: RoundParams
    server_seed: bytes
    trust: tuple[str, str, bytes]  # the issuer's region, key id and public key
    messages: dict[str, list[ClientToServer]] = field(default_factory=dict)
    total: np.ndarray | None = None
    survivors: int = 0
    dropped: int = 0
    record_s: float = 0.0


class _Unchecked:
    """A neighbour's Ed25519 key whose ``verify`` trusts the bench's own genuine signatures
    (recording only; the server under test gets real keys)."""

    __slots__ = ()

    def verify(self, signature: bytes, data: bytes) -> None:
        return None


class _RecordingVerifier:
    """Accepts the bench issuer's credentials without the clients' signature checks."""

    def public_key(self, credential: Any) -> Any:
        return _Unchecked()


def _verifier(trust: tuple[str, str, bytes]) -> IssuerVerifier:
    region, key_id, public = trust
    return IssuerVerifier(region, {key_id: public}, valid_at=0)


def record(
    n: int,
    d: int,
    dropout: float,
    drop_stage: str,
    *,
    epsilon: float = 1.0,
    delta: float = 1e-6,
    corrupt: float = sizing.DEFAULT_CORRUPT,
    risk: float = sizing.DEFAULT_RISK,
) -> Recording:
    """Run one round with ``n`` real clients and keep every message they send."""
    t0 = time.perf_counter()
    rng = SystemRandomness()
    plan = plan_round(
        "bench",
        n=n,
        dim=d,
        clip=1.0,
        scale=1024.0,
        epsilon=epsilon,
        delta=delta,
        dropout=dropout,
        corrupt=corrupt,
        risk=risk,
    )
    p = plan.params
    data = np.random.default_rng(17)  # public synthetic data, not a secret
    issuer = CredentialIssuer.generate("sim", "bench-scale", rng)
    trust = (issuer.region, issuer.key_id, issuer.public_key)
    shared = _RecordingVerifier()
    clients = {}
    for c in range(n):
        x = data.integers(0, 1 << p.bits, d, dtype=np.int64)
        identity = issuer.issue(not_after=1 << 40, rng=rng)
        clients[c] = SecAggClient(p, c, x, rng, identity=identity, verifier=shared)
    gone = set(data.choice(n, size=int(round(dropout * n)), replace=False).tolist())
    rec = Recording(p, rng.token_bytes(32), trust)
    server = SecAggServer(p, SeededRandomness(rec.server_seed), verifier=_verifier(trust))
    sent: list[ClientToServer] = [clients[c].start() for c in range(n)]
    for stage in STAGES:
        rec.messages[stage] = sent
        for m in sent:
            server.receive(m)
        if stage == STAGES[-1]:
            break
        out = server.close_stage()
        nxt = STAGES[STAGES.index(stage) + 1]
        if nxt == drop_stage:
            out = [m for m in out if m.to not in gone]
        sent = [clients[m.to].receive(m) for m in out]
    server.close_stage()
    result = server.result()
    rec.total, rec.survivors, rec.dropped = result.total, len(result.survivors), len(result.dropped)
    rec.record_s = time.perf_counter() - t0
    return rec


def replay(rec: Recording) -> dict[str, float]:
    """Seconds a fresh server spends per stage on the recorded messages (receive + close).

    The recording (every client message of the round, millions of objects at n = 5,000) is
    moved out of the garbage collector's sight while the server runs (``gc.freeze``): a
    server process would not hold the simulated clients' objects, and the collector's
    passes over them would otherwise be charged to the server."""
    tick = time.perf_counter
    server = SecAggServer(
        rec.params, SeededRandomness(rec.server_seed), verifier=_verifier(rec.trust)
    )
    out: dict[str, float] = {}
    gc.collect()
    gc.freeze()
    try:
        for stage in STAGES:
            t0 = tick()
            for m in rec.messages[stage]:
                server.receive(m)
            server.close_stage()
            out[stage] = tick() - t0
    finally:
        gc.unfreeze()
    if rec.total is None or not np.array_equal(server.result().total, rec.total):
        raise RuntimeError("the replayed server released another sum than the recorded round")
    return out


def _fit_exponent(ns: Sequence[int], seconds: Sequence[float]) -> float | None:
    """Least-squares slope of log(server seconds) against log(n): 1.0 is linear."""
    if len(ns) < 2:
        return None
    slope = np.polyfit(np.log(np.asarray(ns, float)), np.log(np.asarray(seconds, float)), 1)[0]
    return round(float(slope), 3)


def run_scale(
    ns: Sequence[int] = DEFAULT_SCALE_NS,
    d: int = 10000,
    dropout: float = 0.1,
    drop_stage: str = "masked",
    *,
    repeats: int = 3,
    corrupt: float = sizing.DEFAULT_CORRUPT,
    risk: float = sizing.DEFAULT_RISK,
) -> dict[str, Any]:
    """Per-client server cost at each ``n`` (median of ``repeats`` replays), and its fit."""
    per_n: dict[str, dict[str, Any]] = {}
    totals = []
    t_start = time.perf_counter()
    for n in ns:
        rec = record(n, d, dropout, drop_stage, corrupt=corrupt, risk=risk)
        runs = [replay(rec) for _ in range(repeats)]
        stage_s = {st: statistics.median(r[st] for r in runs) for st in STAGES}
        total = statistics.median(sum(r.values()) for r in runs)
        totals.append(total)
        per_n[str(n)] = {
            "k": rec.params.k,
            "t": rec.params.t,
            "survivors": rec.survivors,
            "dropped": rec.dropped,
            "server_total_s": round(total, 4),
            "server_ms_per_client": round(total / n * 1e3, 4),
            "server_ms_per_client_min": round(min(sum(r.values()) for r in runs) / n * 1e3, 4),
            "server_stage_s": {st: round(v, 6) for st, v in stage_s.items()},  # µs: a stage is > 0
            "server_stage_ms_per_client": {st: round(v / n * 1e3, 4) for st, v in stage_s.items()},
            "record_wall_s": round(rec.record_s, 2),
        }
        del rec
    return {
        "scale_ns": list(ns),
        "server_ms_per_client": {str(n): per_n[str(n)]["server_ms_per_client"] for n in ns},
        "server_exponent": _fit_exponent(list(ns), totals),
        "server_scale_wall_s": round(time.perf_counter() - t_start, 2),
        "server_scale": per_n,
        "server_scale_goal_ms_per_client": GOAL_MS_PER_CLIENT,
        "server_scale_method": (
            f"per n: one round with n real clients (d={d}, {dropout:.0%} dropping at the "
            f"{drop_stage} stage, k and t from the planner) whose messages are recorded, then "
            f"a fresh server replays exactly those messages {repeats} times (same seeded "
            "neighbour graph, its own credential verifier, its sum checked against the "
            "round's, the recording frozen out of the garbage collector's passes) and only "
            "the server is timed, every stage's receive + close; recording skips the "
            "clients' checks of each other's (genuine) signatures and uses uniform inputs, "
            "neither changes a byte the server sees; "
            "server_ms_per_client = median total / n; server_exponent = slope of log(total) "
            "on log(n)"
        ),
    }
