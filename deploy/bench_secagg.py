"""Benchmark Sotto's SecAgg+ against Flower's SecAgg+ on the same workload, client and server.

Ours: a full in-memory round (``privacy.secagg.simulate.run_round``) with ``n`` clients,
``d``-dim DP-noised quantized vectors and a ``dropout`` fraction of the clients vanishing at
``drop_stage``: by default right after the share exchange, in place of their masked input,
which is the expensive case (the server recovers their pairwise keys and recomputes their
masks); ``drop_stage="unmask"`` drops them after their masked input instead. ``k`` and ``t``
are what the round planner chooses (collusion-aware, ``corrupt``/``risk`` of
:mod:`privacy.secagg.sizing`, sized for the bench's ``dropout``). We report every stage's
median client time (advertise, shares, masked, consistency, unmask), the server's time per
stage, the median client time to produce its masked input (``client_ms_median``), the
server's unmasking time (summing masked inputs as they arrive + taking the unmask shares +
reconstructing seeds/keys + removing masks), and the JSON bytes each client sends.

Signatures are timed where they happen, in the same round: the bench's credential issuer
hands out signing keys that time each Ed25519 ``sign`` (advertise, consistency), and its
verifier times each credential check and returns keys that time each ``verify`` (a client's
neighbours at the shares stage, the survivor-set signatures at unmask; the server's checks at
advertise and consistency), each attributed to the client or server method that called it.
The verifier checks every credential afresh, as each device's own verifier would (one shared
``IssuerVerifier`` would let clients hit the cache the server filled).

Previous protocol: the same ``_ours`` run at commit ``PREVIOUS_PROTOCOL`` (before device
credentials, the consistency round and collusion-aware sizing), extracted with ``git archive``
and run in a subprocess with this interpreter, gives ``client_vs_previous_protocol`` in the
same run; the current protocol is also run at the previous ``k``/``t`` (``corrupt=0``) for a
like-for-like ratio. Without git or that commit the fields are ``None`` with the reason.

Flower: its ``flwr.common.secure_aggregation`` primitives driven directly (no Flower server or
ClientApp), mirroring ``secaggplus_mod`` for each client (setup: two SECP384R1 key pairs;
share_keys: ``create_shares`` of the seed and of the PEM mask key, per neighbour
``generate_shared_key`` + Fernet ``encrypt``; collect_masked: ``decrypt`` of the forwarded
shares, ``pseudo_rand_gen`` self mask and per neighbour ``generate_shared_key`` +
``pseudo_rand_gen``, mod; unmask: the share lists) and ``SecAggPlusWorkflow.unmask_stage`` for
the server, with our ``k`` and ``t``. Up to ``flower_full_max_n`` clients the whole Flower round
runs for real (every client and the server's unmask timed in full, its sum checked exact).
Above it, Flower's pure-Python GF(2^128) Shamir (pycryptodome, ~0.1-1 s per secret) makes
that too slow, so the client is timed on ``flower_sample_clients`` clients with synthetic
neighbours, the server's per-client unmask work on a sample of survivors and dropped clients,
both extrapolated linearly; the sum of all masked vectors (``parameters_addition``) and the
final ``parameters_mod`` are timed in full. ``flower_method`` and ``flower_client_method``
say which.

Server scaling (``scale_ns``, default n = 250, 1,000, 2,000 and 5,000 from the CLI):
``server_ms_per_client`` per n, ``server_exponent`` (slope of log server time on log n) and
the per-stage split per n (``server_scale``), from rounds whose real client messages are
recorded once and replayed to a fresh server (:mod:`deploy.bench_secagg_scale`).
"""

from __future__ import annotations

import io
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519

from deploy.bench_secagg_scale import GOAL_MS_PER_CLIENT, run_scale
from privacy import quantize
from privacy.credential import CredentialIssuer, IssuerVerifier, SigningKey
from privacy.rand import Randomness, SystemRandomness
from privacy.round import client_input, plan_round
from privacy.secagg import crypto, sizing
from privacy.secagg.client import SecAggClient
from privacy.secagg.graph import neighbour_graph
from privacy.secagg.server import SecAggServer
from privacy.secagg.simulate import STAGES, RoundCost, run_round

DROP_STAGES = {
    "masked": "after share exchange, instead of sending the masked input (server recovers "
    "their pairwise keys and recomputes their masks with surviving neighbours)",
    "unmask": "after sending the masked input, before answering the unmask request (their "
    "inputs count; fewer share holders answer)",
}
# The commit before device credentials, the consistency round and collusion-aware k and t.
PREVIOUS_PROTOCOL = "ca76b0a"
FLOWER_FULL_MAX_N = 300
GOALS = {
    "client_vs_previous_protocol": ("<=", 2.0),
    "client_speedup_vs_flower": (">=", 10.0),
    "server_unmask_speedup_vs_flower": (">=", 100.0),
}

_ms = 1e3


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


# -- timing Ed25519 where the protocol does it -------------------------------------------------

# The client and server methods that sign or verify, and the stage each belongs to.
_CALLERS = {
    "start": "advertise",
    "_on_neighbours": "shares",
    "_on_consistency": "consistency",
    "_on_unmask": "unmask",
    "_on_advertise": "advertise",
    "_on_signature": "consistency",
}


def _caller() -> tuple[int | None, str]:
    """(client id or None for the server, stage) of the protocol method up the stack."""
    f: FrameType | None = sys._getframe(2)  # the caller of the timed operation
    for _ in range(6):
        if f is None:
            break
        stage = _CALLERS.get(f.f_code.co_name)
        if stage is not None:
            me = f.f_locals.get("self")
            if isinstance(me, SecAggClient):
                return me.cid, stage
            if isinstance(me, SecAggServer):
                return None, stage
        f = f.f_back
    return None, "other"


class _SigClock:
    """Seconds and counts of Ed25519 work per client (or the server), per stage and kind."""

    def __init__(self) -> None:
        self.client_s: dict[int, dict[str, float]] = {}
        self.client_ops: dict[int, dict[str, int]] = {}
        self.server_s: dict[str, float] = {}
        self.server_ops: dict[str, int] = {}

    def add(self, who: int | None, key: str, dt: float) -> None:
        if who is None:
            secs, ops = self.server_s, self.server_ops
        else:
            secs = self.client_s.setdefault(who, {})
            ops = self.client_ops.setdefault(who, {})
        secs[key] = secs.get(key, 0.0) + dt
        ops[key] = ops.get(key, 0) + 1


@dataclass(frozen=True, slots=True, repr=False)
class _TimedSigningKey(SigningKey):
    clock: _SigClock | None = None

    def sign(self, data: bytes) -> bytes:
        who, stage = _caller()
        t0 = time.perf_counter()
        sig = self.private.sign(data)
        if self.clock is not None:
            self.clock.add(who, f"{stage}_sign", time.perf_counter() - t0)
        return sig


class _TimedIssuer(CredentialIssuer):
    clock: _SigClock | None = None

    @classmethod
    def timed(cls, clock: _SigClock, rng: Randomness) -> _TimedIssuer:
        out = cls(
            "sim", "bench-issuer", ed25519.Ed25519PrivateKey.from_private_bytes(rng.token_bytes(32))
        )
        out.clock = clock
        return out

    def issue(self, *, not_after: int, rng: Randomness) -> tuple[Any, SigningKey]:
        cred, key = super().issue(not_after=not_after, rng=rng)
        return cred, _TimedSigningKey(key.private, key.public, self.clock)


class _TimedPublicKey:
    """An Ed25519 public key whose ``verify`` is timed and attributed to its caller."""

    __slots__ = ("_clock", "_key")

    def __init__(self, key: Any, clock: _SigClock) -> None:
        self._key = key
        self._clock = clock

    def verify(self, signature: bytes, data: bytes) -> None:
        who, stage = _caller()
        t0 = time.perf_counter()
        try:
            self._key.verify(signature, data)
        finally:
            self._clock.add(who, f"{stage}_verify", time.perf_counter() - t0)


class _TimedVerifier:
    """Checks each credential afresh (as each device's own verifier would), timed."""

    def __init__(self, inner: IssuerVerifier, clock: _SigClock) -> None:
        self._inner = inner
        self._clock = clock

    def public_key(self, credential: Any) -> Any:
        fresh = self._inner.at(self._inner.valid_at)  # no cache shared between devices
        who, stage = _caller()
        t0 = time.perf_counter()
        key = fresh.public_key(credential)
        self._clock.add(who, f"{stage}_credential", time.perf_counter() - t0)
        return _TimedPublicKey(key, self._clock)


def _keygen_ms(rng: Randomness, reps: int = 50) -> float:
    """What a client's constructor draws (two X25519 keys, the seed) plus its one-round
    Ed25519 credential key (made at enrollment, counted here to be conservative)."""
    t0 = time.perf_counter()
    for _ in range(reps):
        crypto.new_keypair(rng)
        crypto.new_keypair(rng)
        rng.token_bytes(32)
        SigningKey.generate(rng)
    return (time.perf_counter() - t0) / reps * _ms


# -- ours ----------------------------------------------------------------------------------------


def _ours(
    n: int,
    d: int,
    dropout: float,
    epsilon: float,
    delta: float,
    drop_stage: str,
    *,
    k: int | None = None,
    t: int | None = None,
    corrupt: float = sizing.DEFAULT_CORRUPT,
    risk: float = sizing.DEFAULT_RISK,
) -> dict[str, Any]:
    rng = SystemRandomness()
    plan = plan_round(
        "bench",
        n=n,
        dim=d,
        clip=1.0,
        scale=1024.0,
        epsilon=epsilon,
        delta=delta,
        k=k,
        t=t,
        dropout=dropout,
        corrupt=corrupt,
        risk=risk,
    )
    p = plan.params
    data = np.random.default_rng(7)  # public synthetic data, not a secret
    t0 = time.perf_counter()
    inputs = {}
    prep = []
    for c in range(n):
        x = data.normal(size=d) / math.sqrt(d)
        t1 = time.perf_counter()
        inputs[c] = client_input(x, plan, rng)
        prep.append(time.perf_counter() - t1)
    n_drop = int(round(dropout * n))
    dropped = set(data.choice(n, size=n_drop, replace=False).tolist())
    clock = _SigClock()
    issuer = _TimedIssuer.timed(clock, rng)
    verifier = _TimedVerifier(
        IssuerVerifier(issuer.region, {issuer.key_id: issuer.public_key}, valid_at=0), clock
    )
    stats = RoundCost()
    t2 = time.perf_counter()
    result = run_round(
        p,
        inputs,
        drop={drop_stage: dropped},
        rng=rng,
        stats=stats,
        issuer=issuer,
        verifier=verifier,
    )
    round_s = time.perf_counter() - t2
    survivors = result.survivors
    alive = set(survivors)
    expected = quantize.mod_sum([inputs[c] for c in survivors], plan.quant.bits)
    cs = stats.client_seconds
    masked_ms = [s["masked"] * _ms for s in cs.values() if "masked" in s]
    total_ms = [sum(s.values()) * _ms for c, s in cs.items() if c in alive]
    stage_ms = {st: round(_med([s[st] * _ms for s in cs.values() if st in s]), 3) for st in STAGES}
    sv = stats.server_seconds
    server_stage = {st: round(sv.get(st, 0.0) + sv.get(st + "_close", 0.0), 6) for st in STAGES}
    sig_keys = sorted({key for s in clock.client_s.values() for key in s})
    sig_ms = {
        key: round(_med([s[key] * _ms for s in clock.client_s.values() if key in s]), 3)
        for key in sig_keys
    }
    sig_total = [sum(clock.client_s.get(c, {}).values()) * _ms for c in survivors]
    sig_ms["total"] = round(_med(sig_total), 3)
    sig_ops = {
        key: int(_med([o[key] for o in clock.client_ops.values() if key in o])) for key in sig_keys
    }
    server_sig = {key: round(v, 4) for key, v in sorted(clock.server_s.items())}
    server_sig["total"] = round(sum(clock.server_s.values()), 4)
    fail = sizing.failure(n, p.k, p.t, dropout=dropout, corrupt=corrupt)
    keygen = _keygen_ms(rng)
    total_med = statistics.median(total_ms)
    return {
        "k": p.k,
        "t": p.t,
        "bits": p.bits,
        "min_clients": p.min_clients,
        "noise_multiplier": round(plan.noise.noise_multiplier, 4),
        "corrupt": corrupt,
        "risk": risk,
        "sizing_dropout": dropout,
        "sizing_failure_bound": float(f"{fail.failure:.3g}"),
        "exact": bool(np.array_equal(result.total, expected)),
        "survivors": len(survivors),
        "dropped": len(result.dropped),
        "client_ms_median": round(statistics.median(masked_ms), 3),
        "client_total_ms_median": round(total_med, 3),
        "client_prepare_ms_median": round(statistics.median(prep) * _ms, 3),
        "client_keygen_ms": round(keygen, 3),
        "client_round_ms_median": round(total_med + keygen, 3),
        "client_stage_ms_median": stage_ms,
        "client_signature_ms_median": sig_ms,
        "client_signature_ops_median": sig_ops,
        "client_signature_share": round(_med(sig_total) / total_med, 3),
        "server_unmask_s": round(sv["masked"] + sv["unmask"] + sv["unmask_close"], 4),
        "server_sum_s": round(sv["masked"], 4),
        "server_reconstruct_s": round(sv["unmask"] + sv["unmask_close"], 4),
        "server_total_s": round(sum(sv.values()), 4),
        "server_stage_s": server_stage,
        "server_signature_s": server_sig,
        "server_signature_ops": dict(sorted(clock.server_ops.items())),
        "bytes_per_client": int(statistics.median(stats.client_bytes[c] for c in survivors)),
        "masked_input_bytes": len(inputs[0]) * inputs[0].itemsize,
        "round_wall_s": round(round_s, 3),
        "setup_wall_s": round(t2 - t0, 3),
        "_survivors": survivors,
        "_dropped": result.dropped,
    }


# -- the previous protocol, from git -----------------------------------------------------------

_PREVIOUS_DRIVER = r"""
import json, sys
import privacy
from deploy.bench_secagg import _ours
a = json.loads(sys.argv[1])
r = _ours(a["n"], a["d"], a["dropout"], a["epsilon"], a["delta"], a["drop_stage"])
out = {k: v for k, v in r.items() if not k.startswith("_")}
print(json.dumps({"privacy_from": privacy.__file__, **out}))
"""


def _previous(
    n: int, d: int, dropout: float, epsilon: float, delta: float, drop_stage: str, commit: str
) -> dict[str, Any]:
    """``_ours`` as it was at ``commit``, run in a subprocess from a ``git archive`` of it."""
    root = Path(__file__).resolve().parents[1]
    try:
        tar = subprocess.run(
            ["git", "-C", str(root), "archive", "--format=tar", commit]
            + ["privacy", "deploy/__init__.py", "deploy/bench_secagg.py"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"cannot read commit {commit} with git: {type(exc).__name__}"}
    args: dict[str, Any] = {"n": n, "d": d, "dropout": dropout, "epsilon": epsilon}
    args.update(delta=delta, drop_stage=drop_stage)
    with tempfile.TemporaryDirectory(prefix="sotto-secagg-previous-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            archive.extractall(tmp, filter="data")
        env = {**os.environ, "PYTHONPATH": tmp}
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _PREVIOUS_DRIVER, json.dumps(args)],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"the bench at {commit} ran over 900 s"}
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return {"error": f"the bench at {commit} failed: {tail[:300]}"}
        try:
            out = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {"error": f"the bench at {commit} printed no JSON"}
        if not str(out.pop("privacy_from", "")).startswith(tmp):
            return {"error": f"the bench at {commit} did not import its own privacy/ package"}
    return out


# -- Flower --------------------------------------------------------------------------------------


def _flower_api() -> SimpleNamespace | str:
    try:
        from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
            decrypt,
            encrypt,
            generate_shared_key,
        )
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            get_parameters_shape,
            parameters_addition,
            parameters_mod,
            parameters_subtraction,
        )
        from flwr.common.secure_aggregation.secaggplus_utils import (
            pseudo_rand_gen,
            share_keys_plaintext_concat,
            share_keys_plaintext_separate,
        )
        from flwr.supercore.primitives.asymmetric import (
            bytes_to_private_key,
            bytes_to_public_key,
            generate_key_pairs,
            private_key_to_bytes,
            public_key_to_bytes,
        )
    except Exception as exc:  # noqa: BLE001 - any import failure means "unavailable"
        return f"{type(exc).__name__}: {exc}"
    return SimpleNamespace(
        combine_shares=combine_shares,
        create_shares=create_shares,
        decrypt=decrypt,
        encrypt=encrypt,
        generate_shared_key=generate_shared_key,
        get_parameters_shape=get_parameters_shape,
        parameters_addition=parameters_addition,
        parameters_mod=parameters_mod,
        parameters_subtraction=parameters_subtraction,
        pseudo_rand_gen=pseudo_rand_gen,
        share_keys_plaintext_concat=share_keys_plaintext_concat,
        share_keys_plaintext_separate=share_keys_plaintext_separate,
        bytes_to_private_key=bytes_to_private_key,
        bytes_to_public_key=bytes_to_public_key,
        generate_key_pairs=generate_key_pairs,
        private_key_to_bytes=private_key_to_bytes,
        public_key_to_bytes=public_key_to_bytes,
    )


class _FlowerClient:
    """One client of Flower's SecAgg+, stage by stage as ``secaggplus_mod`` does it (without
    its ConfigRecord state round trip and without the fit/quantize step, like ours)."""

    def __init__(
        self, fl: SimpleNamespace, nid: int, vector: list[np.ndarray], t: int, mod_range: int
    ) -> None:
        self.fl = fl
        self.nid = nid
        self.vector = vector
        self.threshold = t
        self.mod_range = mod_range
        self.rd_seed_share_dict: dict[int, bytes] = {}
        self.sk1_share_dict: dict[int, bytes] = {}
        self.ss2_dict: dict[int, bytes] = {}

    def setup(self) -> tuple[bytes, bytes]:  # _setup
        fl = self.fl
        sk1, pk1 = fl.generate_key_pairs()
        sk2, pk2 = fl.generate_key_pairs()
        self.sk1, self.pk1 = fl.private_key_to_bytes(sk1), fl.public_key_to_bytes(pk1)
        self.sk2, self.pk2 = fl.private_key_to_bytes(sk2), fl.public_key_to_bytes(pk2)
        return self.pk1, self.pk2

    def share_keys(self, keys: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:  # _share_keys
        fl = self.fl
        self.public_keys_dict = keys
        if len(keys) < self.threshold:
            raise ValueError("Available neighbours number smaller than threshold")
        pk_list = [pk for pair in keys.values() for pk in pair]
        if len(set(pk_list)) != len(pk_list):
            raise ValueError("Some public keys are identical")
        if keys[self.nid] != (self.pk1, self.pk2):
            raise ValueError("Own public keys are displayed in dict incorrectly")
        self.rd_seed = os.urandom(32)
        b_shares = fl.create_shares(self.rd_seed, self.threshold, len(keys))
        sk1_shares = fl.create_shares(self.sk1, self.threshold, len(keys))
        out = {}
        for idx, (nid, (_, pk2)) in enumerate(keys.items()):
            if nid == self.nid:
                self.rd_seed_share_dict[nid] = b_shares[idx]
                self.sk1_share_dict[nid] = sk1_shares[idx]
            else:
                shared_key = fl.generate_shared_key(
                    fl.bytes_to_private_key(self.sk2), fl.bytes_to_public_key(pk2)
                )
                self.ss2_dict[nid] = shared_key
                plaintext = fl.share_keys_plaintext_concat(
                    self.nid, nid, b_shares[idx], sk1_shares[idx]
                )
                out[nid] = fl.encrypt(shared_key, plaintext)
        return out

    def collect_masked(self, received: list[tuple[int, bytes]]) -> list[np.ndarray]:
        fl = self.fl
        if len(received) + 1 < self.threshold:
            raise ValueError("Not enough available neighbour clients.")
        available = []
        for src, ct in received:
            actual_src, dst, rd_share, sk1_share = fl.share_keys_plaintext_separate(
                fl.decrypt(self.ss2_dict[src], ct)
            )
            available.append(src)
            if src != actual_src or dst != self.nid:
                raise ValueError("misrouted share")
            self.rd_seed_share_dict[src] = rd_share
            self.sk1_share_dict[src] = sk1_share
        shapes = [a.shape for a in self.vector]
        vec = fl.parameters_addition(
            self.vector, fl.pseudo_rand_gen(self.rd_seed, self.mod_range, shapes)
        )
        for node in available:
            shared_key = fl.generate_shared_key(
                fl.bytes_to_private_key(self.sk1),
                fl.bytes_to_public_key(self.public_keys_dict[node][0]),
            )
            mask = fl.pseudo_rand_gen(shared_key, self.mod_range, shapes)
            if self.nid > node:
                vec = fl.parameters_addition(vec, mask)
            else:
                vec = fl.parameters_subtraction(vec, mask)
        return fl.parameters_mod(vec, self.mod_range)

    def unmask(self, active: list[int], dead: list[int]) -> tuple[list[int], list[bytes]]:
        if len(active) < self.threshold:
            raise ValueError("Available neighbours number smaller than threshold")
        shares = [self.rd_seed_share_dict[i] for i in active]
        shares += [self.sk1_share_dict[i] for i in dead]
        return active + dead, shares


FLOWER_CLIENT_STAGES = ("setup", "share_keys", "collect_masked", "unmask")


def _flower_client_summary(times: list[dict[str, float]]) -> dict[str, Any]:
    stage_ms = {
        st: round(_med([x[st] * _ms for x in times if st in x]), 3) for st in FLOWER_CLIENT_STAGES
    }
    total = [sum(x.values()) * _ms for x in times if "unmask" in x]
    return {
        "flower_client_stage_ms_median": stage_ms,
        "flower_client_ms_median": stage_ms["collect_masked"],
        "flower_client_total_ms_median": round(_med(total), 3),
    }


def _flower_full(
    fl: SimpleNamespace,
    n: int,
    d: int,
    k: int,
    t: int,
    mod_range: int,
    dropped: set[int],
    drop_stage: str,
) -> dict[str, Any]:
    """A whole Flower SecAgg+ round: every client and the server's unmask timed in full."""
    rng = SystemRandomness()
    data = np.random.default_rng(11)
    graph = neighbour_graph(range(n), k, rng)  # k-regular, like Flower's random graph
    nbrs = {c: sorted(graph[c] | {c}) for c in range(n)}  # Flower counts a client as its own
    vectors = {c: [data.integers(0, mod_range, d, dtype=np.int64)] for c in range(n)}
    clients = {c: _FlowerClient(fl, c, vectors[c], t, mod_range) for c in range(n)}
    times: dict[int, dict[str, float]] = {c: {} for c in range(n)}

    def timed(c: int, stage: str, fn: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args)
        times[c][stage] = time.perf_counter() - t0
        return out

    pks = {c: timed(c, "setup", clients[c].setup) for c in range(n)}
    inbox: dict[int, list[tuple[int, bytes]]] = {c: [] for c in range(n)}
    for c in range(n):
        sent = timed(c, "share_keys", clients[c].share_keys, {j: pks[j] for j in nbrs[c]})
        for dst, ct in sent.items():
            inbox[dst].append((c, ct))
    gone_masked = dropped if drop_stage == "masked" else set()
    gone_unmask = dropped if drop_stage == "unmask" else set()
    sum_s = 0.0
    masked = None
    active = set()
    for c in range(n):
        if c in gone_masked:
            continue
        vec = timed(c, "collect_masked", clients[c].collect_masked, inbox[c])
        active.add(c)
        t0 = time.perf_counter()
        masked = vec if masked is None else fl.parameters_addition(masked, vec)
        sum_s += time.perf_counter() - t0
    dead = set(range(n)) - active
    replies = {}
    for c in sorted(active - gone_unmask):
        act = [j for j in nbrs[c] if j in active]
        replies[c] = timed(c, "unmask", clients[c].unmask, act, [j for j in nbrs[c] if j in dead])
    # SecAggPlusWorkflow.unmask_stage, from collecting the shares to the final mod.
    t0 = time.perf_counter()
    collected: dict[int, list[bytes]] = {c: [] for c in range(n)}
    for owners, shares in replies.values():
        for owner, share in zip(owners, shares, strict=True):
            collected[owner].append(share)
    per_survivor, per_dropped = [], []
    shapes = fl.get_parameters_shape(masked)
    for nid, share_list in collected.items():
        t1 = time.perf_counter()
        if len(share_list) < t:
            raise RuntimeError(f"Flower round: client {nid} has {len(share_list)} shares < t")
        secret = fl.combine_shares(share_list)
        if nid in active:
            masked = fl.parameters_subtraction(
                masked, fl.pseudo_rand_gen(secret, mod_range, shapes)
            )
            per_survivor.append(time.perf_counter() - t1)
        else:
            for j in nbrs[nid]:
                if j == nid:
                    continue
                shared = fl.generate_shared_key(
                    fl.bytes_to_private_key(secret), fl.bytes_to_public_key(pks[j][0])
                )
                mask = fl.pseudo_rand_gen(shared, mod_range, shapes)
                if nid > j:
                    masked = fl.parameters_addition(masked, mask)
                else:
                    masked = fl.parameters_subtraction(masked, mask)
            per_dropped.append(time.perf_counter() - t1)
    total = fl.parameters_mod(masked, mod_range)
    unmask_s = time.perf_counter() - t0
    expected = np.sum([vectors[c][0] for c in active], axis=0) % mod_range
    holders = _med([len(v) for c, v in collected.items() if c in active])
    return {
        "flower_full_round": True,
        "flower_exact": bool(np.array_equal(total[0], expected)),
        "flower_server_unmask_s": round(sum_s + unmask_s, 3),
        "flower_per_survivor_s": round(statistics.mean(per_survivor), 5) if per_survivor else 0,
        "flower_per_dropped_s": round(statistics.mean(per_dropped), 5) if per_dropped else 0,
        "flower_sum_s": round(sum_s, 4),
        **_flower_client_summary(list(times.values())),
        "flower_method": (
            f"a whole round with flwr.common.secure_aggregation primitives, server side as in "
            f"SecAggPlusWorkflow.unmask_stage: sum of {len(active)} masked int64 vectors "
            f"(parameters_addition) as they arrive, then for every client combine_shares of "
            f"the shares returned (median {holders:g} per survivor), pseudo_rand_gen and "
            f"subtraction, for each of {len(dead)} dropped clients also k={k} x "
            "generate_shared_key+pseudo_rand_gen; all timed in full, no extrapolation"
        ),
        "flower_client_method": (
            f"every one of {n} clients timed in full, stages as in secaggplus_mod: setup (2 "
            f"SECP384R1 key pairs), share_keys (create_shares t={t} of {k + 1} for the seed and "
            f"the PEM key, {k} x generate_shared_key+Fernet encrypt), collect_masked ({k} x "
            f"decrypt, self mask and {k} x generate_shared_key+pseudo_rand_gen, mod; no "
            "fit/quantize), unmask (share lists); total = median over clients that unmasked"
        ),
    }


def _flower_client_sampled(
    fl: SimpleNamespace, d: int, k: int, t: int, mod_range: int, alive_frac: float, samples: int
) -> dict[str, Any]:
    """Flower's client work, every stage, on ``samples`` clients with synthetic neighbours
    (their keys and the shares they forward are made untimed)."""
    data = np.random.default_rng(13)
    times = []
    n_alive = max(t - 1, int(round(k * alive_frac)))  # surviving neighbours
    for _ in range(samples):
        peers = {}
        for j in range(1, k + 1):
            s1, p1 = fl.generate_key_pairs()
            s2, p2 = fl.generate_key_pairs()
            peers[j] = (fl.public_key_to_bytes(p1), fl.public_key_to_bytes(p2), s2)
        me = _FlowerClient(fl, 0, [data.integers(0, mod_range, d, dtype=np.int64)], t, mod_range)
        x: dict[str, float] = {}
        t0 = time.perf_counter()
        own = me.setup()
        x["setup"] = time.perf_counter() - t0
        keys = {0: own, **{j: (p1, p2) for j, (p1, p2, _) in peers.items()}}
        t0 = time.perf_counter()
        me.share_keys(keys)
        x["share_keys"] = time.perf_counter() - t0
        b_len, sk_len = len(me.rd_seed_share_dict[0]), len(me.sk1_share_dict[0])
        received = []
        for j, (_, _, s2) in peers.items():
            key = fl.generate_shared_key(s2, fl.bytes_to_public_key(me.pk2))
            plain = fl.share_keys_plaintext_concat(j, 0, os.urandom(b_len), os.urandom(sk_len))
            received.append((j, fl.encrypt(key, plain)))
        t0 = time.perf_counter()
        me.collect_masked(received)
        x["collect_masked"] = time.perf_counter() - t0
        ids = [0, *peers]
        t0 = time.perf_counter()
        me.unmask(ids[: n_alive + 1], ids[n_alive + 1 :])
        x["unmask"] = time.perf_counter() - t0
        times.append(x)
    return {
        **_flower_client_summary(times),
        "flower_client_method": (
            f"{samples} clients timed in full with {k} synthetic neighbours each (their keys "
            "and forwarded shares made untimed), stages as in secaggplus_mod: setup (2 "
            f"SECP384R1 key pairs), share_keys (create_shares t={t} of {k + 1} for the seed and "
            f"the PEM key, {k} x generate_shared_key+Fernet encrypt), collect_masked ({k} x "
            f"decrypt, self mask and {k} x generate_shared_key+pseudo_rand_gen, mod; no "
            f"fit/quantize), unmask ({n_alive + 1} seed + {k - n_alive} key shares); the "
            "per-client cost does not depend on n"
        ),
    }


def _flower_server_sampled(
    fl: SimpleNamespace,
    n: int,
    d: int,
    k: int,
    t: int,
    mod_range: int,
    survivors: tuple[int, ...],
    dropped: tuple[int, ...],
    sample_survivors: int,
    sample_dropped: int,
) -> dict[str, Any]:
    data = np.random.default_rng(11)
    shapes = fl.get_parameters_shape([np.zeros(d, dtype=np.int64)])
    # Sum of all survivors' masked vectors: timed in full.
    vectors = [[data.integers(0, mod_range, d, dtype=np.int64)] for _ in survivors]
    t0 = time.perf_counter()
    masked = vectors[0]
    for v in vectors[1:]:
        masked = fl.parameters_addition(masked, v)
    masked = fl.parameters_mod(masked, mod_range)
    sum_s = time.perf_counter() - t0
    del vectors
    n_alive = len(survivors)
    alive_frac = n_alive / n
    holders = max(t, int(round((k + 1) * alive_frac)))  # shares a client gets back, as in Flower

    def one_survivor() -> float:
        nonlocal masked
        shares = fl.create_shares(os.urandom(32), t, k + 1)[:holders]
        t1 = time.perf_counter()
        secret = fl.combine_shares(shares)
        masked = fl.parameters_subtraction(masked, fl.pseudo_rand_gen(secret, mod_range, shapes))
        return time.perf_counter() - t1

    def one_dropped() -> float:
        nonlocal masked
        sk, _ = fl.generate_key_pairs()
        shares = fl.create_shares(fl.private_key_to_bytes(sk), t, k + 1)[:holders]
        peers = [fl.public_key_to_bytes(fl.generate_key_pairs()[1]) for _ in range(k)]
        t1 = time.perf_counter()
        secret = fl.combine_shares(shares)
        for idx, pk in enumerate(peers):
            shared = fl.generate_shared_key(
                fl.bytes_to_private_key(secret), fl.bytes_to_public_key(pk)
            )
            mask = fl.pseudo_rand_gen(shared, mod_range, shapes)
            if idx % 2:
                masked = fl.parameters_addition(masked, mask)
            else:
                masked = fl.parameters_subtraction(masked, mask)
        return time.perf_counter() - t1

    s_times = [one_survivor() for _ in range(min(sample_survivors, len(survivors)))]
    d_times = [one_dropped() for _ in range(min(sample_dropped, len(dropped)))] if dropped else []
    t2 = time.perf_counter()
    fl.parameters_mod(masked, mod_range)
    mod_s = time.perf_counter() - t2
    per_s = statistics.mean(s_times) if s_times else 0.0
    per_d = statistics.mean(d_times) if d_times else 0.0
    total = sum_s + per_s * len(survivors) + per_d * len(dropped) + mod_s
    return {
        "flower_full_round": False,
        "flower_exact": None,
        "flower_server_unmask_s": round(total, 3),
        "flower_per_survivor_s": round(per_s, 5),
        "flower_per_dropped_s": round(per_d, 5),
        "flower_sum_s": round(sum_s, 4),
        "flower_method": (
            f"flwr.common.secure_aggregation primitives as in SecAggPlusWorkflow.unmask_stage; "
            f"sum of {n_alive} masked int64 vectors (parameters_addition) timed in full; "
            f"per-client unmask work (combine_shares of {holders} shares, pseudo_rand_gen, "
            f"subtraction; for dropped clients also {k} x generate_shared_key+pseudo_rand_gen) "
            f"timed on {len(s_times)} survivors and {len(d_times)} dropped clients and "
            f"extrapolated linearly to {n_alive} survivors and {len(dropped)} dropped"
        ),
    }


def _flower(
    n: int,
    d: int,
    k: int,
    t: int,
    bits: int,
    survivors: tuple[int, ...],
    dropped: tuple[int, ...],
    drop_stage: str,
    *,
    full_max_n: int,
    sample_clients: int,
    sample_survivors: int,
    sample_dropped: int,
) -> dict[str, Any]:
    fl = _flower_api()
    if isinstance(fl, str):
        return {"flower_available": False, "flower_error": fl}
    mod_range = 1 << bits
    out: dict[str, Any] = {"flower_available": True, "flower_mod_range_bits": bits}
    if n <= full_max_n:
        out.update(_flower_full(fl, n, d, k, t, mod_range, set(dropped), drop_stage))
    else:
        out.update(
            _flower_server_sampled(
                fl, n, d, k, t, mod_range, survivors, dropped, sample_survivors, sample_dropped
            )
        )
        out.update(
            _flower_client_sampled(fl, d, k, t, mod_range, len(survivors) / n, sample_clients)
        )
    return out


def _goals(out: dict[str, Any]) -> dict[str, bool | None]:
    met: dict[str, bool | None] = {}
    for key, (op, bound) in GOALS.items():
        v = out.get(key)
        met[key] = None if v is None else (v <= bound if op == "<=" else v >= bound)
    return met


def run_secagg_bench(
    n: int = 1000,
    d: int = 10000,
    dropout: float = 0.1,
    *,
    epsilon: float = 1.0,
    delta: float = 1e-6,
    drop_stage: str = "masked",
    corrupt: float = sizing.DEFAULT_CORRUPT,
    risk: float = sizing.DEFAULT_RISK,
    flower: bool = True,
    previous: bool = True,
    previous_commit: str = PREVIOUS_PROTOCOL,
    flower_full_max_n: int = FLOWER_FULL_MAX_N,
    flower_sample_clients: int = 3,
    flower_sample_survivors: int = 10,
    flower_sample_dropped: int = 3,
    scale_ns: tuple[int, ...] | None = None,
    scale_repeats: int = 3,
) -> dict[str, Any]:
    """Run both and return one dict (see module docstring for what is measured).

    ``scale_ns`` adds the server's per-client cost at each of those n (replayed rounds, see
    :mod:`deploy.bench_secagg_scale`; the CLI's default is
    :data:`~deploy.bench_secagg_scale.DEFAULT_SCALE_NS`)."""
    if not 0 <= dropout < 1:
        raise ValueError("dropout must be in [0, 1)")
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    if drop_stage not in DROP_STAGES:
        raise ValueError(f"drop_stage must be one of {sorted(DROP_STAGES)}")
    ours = _ours(n, d, dropout, epsilon, delta, drop_stage, corrupt=corrupt, risk=risk)
    out: dict[str, Any] = {
        "n": n,
        "d": d,
        "dropout": dropout,
        "drop_stage": f"{drop_stage}: {DROP_STAGES[drop_stage]}",
        "epsilon": epsilon,
        "delta": delta,
    }
    out.update({k: v for k, v in ours.items() if not k.startswith("_")})
    out["ours_method"] = (
        "full in-memory Sotto SecAgg+ round (X25519, HKDF, AES-GCM shares, AES-CTR masks, "
        "Shamir over GF(2^256+297), Ed25519 device credentials and signatures, a consistency "
        f"round); k and t from privacy.secagg.sizing.choose (corrupt={corrupt}, "
        f"dropout={dropout}, risk={risk:g}); {int(round(dropout * n))} clients drop "
        f"({drop_stage} stage); client_ms_median = median time to decrypt forwarded shares and "
        "build the masked input; client_total_ms_median = median over survivors of the sum of "
        f"all stages ({', '.join(STAGES)}); client_round_ms_median adds client_keygen_ms (two "
        "X25519 keys, the seed, the Ed25519 credential key); client_signature_ms_median = the "
        "Ed25519 sign/verify and credential checks inside those stages, timed as they run; "
        "server_unmask_s = summing masked inputs + taking unmask shares + reconstruct + unmask"
    )
    if previous:
        prev = _previous(n, d, dropout, epsilon, delta, drop_stage, previous_commit)
        if "error" in prev:
            out["previous_protocol"] = {"commit": previous_commit, "error": prev["error"]}
            out["client_vs_previous_protocol"] = None
            out["client_vs_previous_protocol_same_kt"] = None
        else:
            keep = ("k", "t", "client_ms_median", "client_total_ms_median", "server_unmask_s")
            out["previous_protocol"] = {"commit": previous_commit}
            out["previous_protocol"].update({key: prev[key] for key in keep})
            out["client_vs_previous_protocol"] = round(
                out["client_total_ms_median"] / prev["client_total_ms_median"], 2
            )
            same = _ours(
                n, d, dropout, epsilon, delta, drop_stage, k=prev["k"], t=prev["t"], corrupt=0.0
            )
            out["client_at_previous_kt"] = {
                "k": same["k"],
                "t": same["t"],
                "corrupt": 0.0,
                "client_ms_median": same["client_ms_median"],
                "client_total_ms_median": same["client_total_ms_median"],
                "client_stage_ms_median": same["client_stage_ms_median"],
                "client_signature_ms_median": same["client_signature_ms_median"],
                "server_unmask_s": same["server_unmask_s"],
            }
            out["client_vs_previous_protocol_same_kt"] = round(
                same["client_total_ms_median"] / prev["client_total_ms_median"], 2
            )
    if flower:
        fl = _flower(
            n,
            d,
            ours["k"],
            ours["t"],
            ours["bits"],
            ours["_survivors"],
            ours["_dropped"],
            drop_stage,
            full_max_n=flower_full_max_n,
            sample_clients=flower_sample_clients,
            sample_survivors=flower_sample_survivors,
            sample_dropped=flower_sample_dropped,
        )
        out.update(fl)
        if fl.get("flower_available"):
            out["speedup_vs_flower"] = round(
                fl["flower_server_unmask_s"] / out["server_unmask_s"], 1
            )
            out["server_unmask_speedup_vs_flower"] = out["speedup_vs_flower"]
            out["client_speedup_vs_flower"] = round(
                fl["flower_client_total_ms_median"] / out["client_round_ms_median"], 1
            )
            out["client_masked_speedup_vs_flower"] = round(
                fl["flower_client_ms_median"] / out["client_ms_median"], 1
            )
        else:
            out["flower_server_unmask_s"] = None
            out["speedup_vs_flower"] = None
            out["server_unmask_speedup_vs_flower"] = None
            out["client_speedup_vs_flower"] = None
            out["flower_method"] = (
                "flwr not installed: run `make bench` (installs it without its pins)"
            )
    if scale_ns:
        out.update(
            run_scale(
                scale_ns,
                d,
                dropout,
                drop_stage,
                repeats=scale_repeats,
                corrupt=corrupt,
                risk=risk,
            )
        )
    out["goals"] = {key: f"{op} {bound:g}" for key, (op, bound) in GOALS.items()}
    out["goals_met"] = _goals(out)
    for n_key, ms in out.get("server_ms_per_client", {}).items():
        if int(n_key) >= 2000:
            out["goals"][f"server_ms_per_client_{n_key}"] = f"<= {GOAL_MS_PER_CLIENT:g}"
            out["goals_met"][f"server_ms_per_client_{n_key}"] = ms <= GOAL_MS_PER_CLIENT
    out["cpus"] = os.cpu_count()
    out["loadavg_1min"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}
    out["bench_wall_s"] = round(time.perf_counter() - t0, 2)
    return out
