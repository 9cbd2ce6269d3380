"""Benchmark Sotto's SecAgg+ against Flower's SecAgg+ primitives on the same workload.

Ours: a full in-memory round (``privacy.secagg.simulate.run_round``) with ``n`` clients,
``d``-dim DP-noised quantized vectors and a ``dropout`` fraction of the clients vanishing at
``drop_stage``: by default right after the share exchange, in place of their masked input,
which is the expensive case (the server recovers their pairwise keys and recomputes their
masks); ``drop_stage="unmask"`` drops them after their masked input instead. We report the median
client time to produce its masked input, the server's unmasking time (summing masked inputs
as they arrive + taking the unmask shares + reconstructing seeds/keys + removing masks), and
the JSON bytes each client sends.

Flower: its ``flwr.common.secure_aggregation`` primitives driven directly (no Flower server),
repeating what ``SecAggPlusWorkflow.unmask_stage`` does per client: ``combine_shares`` of the
shares returned by surviving neighbours; ``pseudo_rand_gen`` + subtraction of the self mask for
a survivor; for a dropped client, ``bytes_to_private_key`` + per neighbour
``generate_shared_key`` + ``pseudo_rand_gen`` + add/subtract. Flower's pure-Python GF(2^128)
Shamir (pycryptodome) takes ~0.1-0.5 s per secret, so we time that per-client work on a random
sample of survivors and dropped clients and extrapolate linearly to all of them; the sum of
all masked vectors (``parameters_addition``) and the final ``parameters_mod`` are timed in
full. ``flower_method`` in the output says exactly that, with the sample sizes.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from typing import Any

import numpy as np

from privacy import quantize
from privacy.rand import SystemRandomness
from privacy.round import client_input, plan_round
from privacy.secagg.simulate import RoundCost, run_round

DROP_STAGES = {
    "masked": "after share exchange, instead of sending the masked input (server recovers "
    "their pairwise keys and recomputes their masks with surviving neighbours)",
    "unmask": "after sending the masked input, before answering the unmask request (their "
    "inputs count; fewer share holders answer)",
}


def _ours(
    n: int, d: int, dropout: float, epsilon: float, delta: float, drop_stage: str
) -> dict[str, Any]:
    rng = SystemRandomness()
    plan = plan_round("bench", n=n, dim=d, clip=1.0, scale=1024.0, epsilon=epsilon, delta=delta)
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
    stats = RoundCost()
    t2 = time.perf_counter()
    result = run_round(plan.params, inputs, drop={drop_stage: dropped}, rng=rng, stats=stats)
    round_s = time.perf_counter() - t2
    survivors = result.survivors
    expected = quantize.mod_sum([inputs[c] for c in survivors], plan.quant.bits)
    masked_ms = [s["masked"] * 1e3 for s in stats.client_seconds.values() if "masked" in s]
    total_ms = [sum(s.values()) * 1e3 for c, s in stats.client_seconds.items() if c in survivors]
    sv = stats.server_seconds
    return {
        "k": plan.params.k,
        "t": plan.params.t,
        "bits": plan.params.bits,
        "min_clients": plan.params.min_clients,
        "noise_multiplier": round(plan.noise.noise_multiplier, 4),
        "exact": bool(np.array_equal(result.total, expected)),
        "survivors": len(survivors),
        "dropped": len(result.dropped),
        "client_ms_median": round(statistics.median(masked_ms), 3),
        "client_total_ms_median": round(statistics.median(total_ms), 3),
        "client_prepare_ms_median": round(statistics.median(prep) * 1e3, 3),
        "server_unmask_s": round(sv["masked"] + sv["unmask"] + sv["unmask_close"], 4),
        "server_sum_s": round(sv["masked"], 4),
        "server_reconstruct_s": round(sv["unmask"] + sv["unmask_close"], 4),
        "server_total_s": round(sum(sv.values()), 4),
        "bytes_per_client": int(statistics.median(stats.client_bytes[c] for c in survivors)),
        "masked_input_bytes": len(inputs[0]) * inputs[0].itemsize,
        "round_wall_s": round(round_s, 3),
        "setup_wall_s": round(t2 - t0, 3),
        "_k": plan.params.k,
        "_t": plan.params.t,
        "_survivors": survivors,
        "_dropped": result.dropped,
    }


def _flower(
    n: int,
    d: int,
    k: int,
    t: int,
    survivors: tuple[int, ...],
    dropped: tuple[int, ...],
    sample_survivors: int,
    sample_dropped: int,
) -> dict[str, Any]:
    try:
        from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            get_parameters_shape,
            parameters_addition,
            parameters_mod,
            parameters_subtraction,
        )
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
        from flwr.supercore.primitives.asymmetric import (
            bytes_to_private_key,
            bytes_to_public_key,
            generate_key_pairs,
            private_key_to_bytes,
            public_key_to_bytes,
        )
    except Exception as exc:  # noqa: BLE001 - any import failure means "unavailable"
        return {"flower_available": False, "flower_error": f"{type(exc).__name__}: {exc}"}

    mod_range = 1 << 24
    data = np.random.default_rng(11)
    shape_src = [np.zeros(d, dtype=np.int64)]
    shapes = get_parameters_shape(shape_src)
    # Sum of all survivors' masked vectors: timed in full.
    vectors = [[data.integers(0, mod_range, d, dtype=np.int64)] for _ in survivors]
    t0 = time.perf_counter()
    masked = vectors[0]
    for v in vectors[1:]:
        masked = parameters_addition(masked, v)
    masked = parameters_mod(masked, mod_range)
    sum_s = time.perf_counter() - t0
    del vectors
    n_alive = len(survivors)
    alive_frac = n_alive / n
    holders = max(t, int(round((k + 1) * alive_frac)))  # shares a client gets back, as in Flower

    def one_survivor() -> float:
        seed = os.urandom(32)
        shares = create_shares(seed, t, k + 1)[:holders]
        nonlocal masked
        t1 = time.perf_counter()
        secret = combine_shares(shares)
        mask = pseudo_rand_gen(secret, mod_range, shapes)
        masked = parameters_subtraction(masked, mask)
        return time.perf_counter() - t1

    def one_dropped() -> float:
        sk, _ = generate_key_pairs()
        shares = create_shares(private_key_to_bytes(sk), t, k + 1)[:holders]
        peers = [public_key_to_bytes(generate_key_pairs()[1]) for _ in range(k)]
        nonlocal masked
        t1 = time.perf_counter()
        secret = combine_shares(shares)
        for idx, pk in enumerate(peers):
            shared = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(pk))
            mask = pseudo_rand_gen(shared, mod_range, shapes)
            if idx % 2:
                masked = parameters_addition(masked, mask)
            else:
                masked = parameters_subtraction(masked, mask)
        return time.perf_counter() - t1

    s_times = [one_survivor() for _ in range(min(sample_survivors, len(survivors)))]
    d_times = [one_dropped() for _ in range(min(sample_dropped, len(dropped)))] if dropped else []
    t2 = time.perf_counter()
    parameters_mod(masked, mod_range)
    mod_s = time.perf_counter() - t2
    per_s = statistics.mean(s_times) if s_times else 0.0
    per_d = statistics.mean(d_times) if d_times else 0.0
    total = sum_s + per_s * len(survivors) + per_d * len(dropped) + mod_s
    return {
        "flower_available": True,
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


def run_secagg_bench(
    n: int = 1000,
    d: int = 10000,
    dropout: float = 0.1,
    *,
    epsilon: float = 1.0,
    delta: float = 1e-6,
    drop_stage: str = "masked",
    flower: bool = True,
    flower_sample_survivors: int = 20,
    flower_sample_dropped: int = 5,
) -> dict[str, Any]:
    """Run both and return one flat dict (see module docstring for what is measured)."""
    if not 0 <= dropout < 1:
        raise ValueError("dropout must be in [0, 1)")
    t0 = time.perf_counter()
    if drop_stage not in DROP_STAGES:
        raise ValueError(f"drop_stage must be one of {sorted(DROP_STAGES)}")
    ours = _ours(n, d, dropout, epsilon, delta, drop_stage)
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
        f"Shamir over GF(2^256+297)); {int(round(dropout * n))} clients drop ({drop_stage} stage); "
        "client_ms_median = median time to decrypt forwarded shares and build the masked input; "
        "server_unmask_s = summing masked inputs + taking unmask shares + reconstruct + unmask"
    )
    if flower:
        fl = _flower(
            n,
            d,
            ours["_k"],
            ours["_t"],
            ours["_survivors"],
            ours["_dropped"],
            flower_sample_survivors,
            flower_sample_dropped,
        )
        out.update(fl)
        if fl.get("flower_available"):
            out["speedup_vs_flower"] = round(
                fl["flower_server_unmask_s"] / out["server_unmask_s"], 1
            )
        else:
            out["flower_server_unmask_s"] = None
            out["speedup_vs_flower"] = None
            out["flower_method"] = (
                "flwr not installed: run `make bench` (installs it without its pins)"
            )
    out["bench_wall_s"] = round(time.perf_counter() - t0, 2)
    return out
