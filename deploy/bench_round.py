"""`sotto bench round`: full SecAgg+ rounds over a real Kafka broker, against the same round in
memory.

One run starts a local Kafka broker (or uses ``--bootstrap`` / ``SOTTO_KAFKA_BOOTSTRAP``), a
fresh one-region deployment, and in this process the region's :class:`RoundService`
(ingestion + the SecAgg+ coordinator, SQLite, as ``sotto ingest --coordinate`` runs it). The
``n`` simulated devices live in ``processes`` spawned OS processes
(:mod:`deploy.bench_round_devices`), each driving its share of devices, each device with its
own SecAgg+ client and one-round credential from the region's issuer, answering over HPKE
envelopes through a durable outbox. All devices check in; the coordinator opens one round
with the round planner's k and t for the bench's dropout (epsilon = 1 per round), and a
``dropout`` share of the devices vanish at ``drop_stage``: by default in place of their
masked input, after the share exchange (the expensive case: the server rebuilds their pairwise
keys and recomputes their masks).

Stage closing: the round's :class:`~ingestion.round_state.CloseRule` is the deployment one
(every expected client, or the goal count and then ``grace_s``, or the deadline). The shares
stage expects every device while its goal is already ``(1 - dropout) n``, so the grace must
stay non-zero there or a goal close would drop live devices still answering. The bench knows
which devices vanish: once every live device of a stage has sent its answer and ingestion has
caught up, it moves the coordinator's clock past the grace (as the round tests do), so the
stage closes the moment its goal is reached; wall time measures work, not waiting.
``grace_skipped_s`` reports how much waiting that removed. Deadlines are an hour away.

Measured: ``wall_s`` from ``open_round`` to the release commit (the coordinator's view);
each stage from its open to its close (``stage_wall_s``; a stage ends where the publish of its
outputs starts), with ``stage_timeline_s``: when the devices sent their first and last answer
of the stage, when it closed and how long publishing the next stage's messages took; bytes per
device up (its sealed envelopes) and down (rounds-topic records addressed to it plus the
broadcast open and close); the CPU seconds of the coordinator process, of the device
processes (split into polling, parsing, answering and flushing) and of the broker over the
round, their total and ``cpu_bound_wall_s``, the wall that much CPU needs on this machine's
cores if perfectly parallel.

Baseline, same run, after the broker round: ``protocol_compute_s``, the same round (same n, d,
k, t, dropout and dropped clients) in memory through :func:`privacy.secagg.simulate.run_round`
plus every client's input preparation, serially in one process. Every client there checks its
neighbours' credentials with a verifier of its own, as each device does over the broker
(``run_round``'s one shared verifier would let clients reuse the server's checks);
``protocol_compute_shared_verifier_s`` is that cheaper variant. ``wall_over_compute`` is
``wall_s / protocol_compute_s`` (goal <= 3). ``exact`` checks the released sum against the sum
of the encoded inputs of the devices that sent a masked input.
"""

from __future__ import annotations

import contextlib
import cProfile
import math
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from deploy.bench_ingest import _broker, _cpu_s, _deployment
from deploy.bench_round_devices import run_devices

STAGES = ("advertise", "shares", "masked", "consistency", "unmask")
DROP_STAGES = {
    "masked": "after the share exchange, instead of sending the masked input (the server "
    "rebuilds their pairwise keys and recomputes their masks)",
    "unmask": "after sending the masked input, before answering the unmask request",
}
GOAL_WALL_OVER_COMPUTE = 3.0
SCALE = 1024.0
GRACE_S = 5.0  # the deployment grace the bench skips once every live device answered


class _Clock:
    """The coordinator's clock: wall time plus the grace the bench skipped."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)


def _broker_pid(tmp: Path) -> int | None:
    pid_file = tmp / "kafka" / "kafka.pid"
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class _PerDevice:
    """A credential verifier with nothing cached between calls: what each device's own
    verifier costs. ``run_round`` hands one verifier to every client and the server, and a
    shared cache would let clients skip the checks the server already made; in the broker
    round every device judges its neighbours' credentials itself."""

    def __init__(self, trust: Any) -> None:
        self._trust = trust

    def public_key(self, credential: Any) -> Any:
        return self._trust.at(self._trust.valid_at).public_key(credential)


def _in_memory(
    params: Any, plan: Any, n: int, dropped: set[int], drop_stage: str, *, own_verifier: bool
) -> dict:
    """The same round in memory: every client and the server in this process, serially."""
    from privacy.credential import CredentialIssuer, IssuerVerifier
    from privacy.rand import SystemRandomness
    from privacy.round import client_input
    from privacy.secagg.simulate import RoundCost, run_round

    rng = SystemRandomness()
    issuer = CredentialIssuer.generate("sim", "bench-issuer", rng)
    trust = IssuerVerifier(issuer.region, {issuer.key_id: issuer.public_key}, valid_at=0)
    data = np.random.default_rng(7)  # public synthetic data
    t0 = time.perf_counter()
    inputs = {
        c: client_input(data.normal(size=params.dim) / math.sqrt(params.dim), plan, rng)
        for c in range(n)
    }
    prep_s = time.perf_counter() - t0
    stats = RoundCost()
    t1 = time.perf_counter()
    result = run_round(
        params,
        inputs,
        drop={drop_stage: dropped},
        rng=rng,
        stats=stats,
        issuer=issuer,
        verifier=_PerDevice(trust) if own_verifier else trust,
    )
    round_s = time.perf_counter() - t1
    from privacy import quantize

    expected = quantize.mod_sum([inputs[c] for c in result.survivors], params.bits)
    client_s = sum(sum(s.values()) for s in stats.client_seconds.values())
    return {
        "protocol_compute_s": round(prep_s + round_s, 3),
        "protocol_round_s": round(round_s, 3),
        "protocol_prepare_s": round(prep_s, 3),
        "protocol_client_s": round(client_s, 3),
        "protocol_server_s": round(sum(stats.server_seconds.values()), 3),
        "protocol_exact": bool(np.array_equal(result.total, expected)),
        "protocol_survivors": len(result.survivors),
    }


def _split(n: int, processes: int, dropout: float, drop_stage: str, seed: int):
    """Device ids per process and which vanish (a seeded sample, spread over processes)."""
    ids = [f"dev{i:05d}" for i in range(n)]
    rng = np.random.default_rng(seed)
    gone = {ids[i] for i in rng.choice(n, size=int(round(dropout * n)), replace=False)}
    chunks = [ids[p::processes] for p in range(processes)]
    drops = [{drop_stage: sorted(gone & set(chunk))} for chunk in chunks]
    return chunks, drops, gone


def _live(n: int, gone: int, drop_stage: str) -> dict[str, int]:
    """Answers each stage gets from devices that stay."""
    at = STAGES.index(drop_stage)
    return {s: n - gone if i >= at else n for i, s in enumerate(STAGES)}


def _stage_of(status: str | None) -> str | None:
    from ingestion.round_state import STATE_STAGE
    from privacy.secagg.states import ServerState

    try:
        return STATE_STAGE.get(ServerState(status))  # type: ignore[call-overload]
    except ValueError:
        return None


def _med(values: list[int]) -> int:
    return int(statistics.median(values)) if values else 0


def run_round_bench(
    n: int = 1000,
    d: int = 10000,
    dropout: float = 0.1,
    *,
    processes: int = 2,
    drop_stage: str = "masked",
    epsilon: float = 1.0,
    delta: float = 1e-6,
    bootstrap: str | None = None,
    in_memory: bool = True,
    progress: bool = True,
    profile: Path | None = None,
    timeout_s: float = 1800.0,
    seed: int = 11,
) -> dict[str, Any]:
    """Run one round over the broker (and the same round in memory); one dict out."""
    if n < 4:
        raise ValueError("n must be at least 4")
    if not 0 <= dropout < 0.5:
        raise ValueError("dropout must be in [0, 0.5)")
    if processes < 1 or processes > n:
        raise ValueError("processes must be in [1, n]")
    if drop_stage not in DROP_STAGES:
        raise ValueError(f"drop_stage must be one of {sorted(DROP_STAGES)}")
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    load_start = os.getloadavg()[0]
    t_bench = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="sotto-bench-round-") as tmp,
        _broker(bootstrap, Path(tmp)) as (boot, _),
    ):
        out = _run(
            Path(tmp),
            boot,
            n,
            d,
            dropout,
            processes,
            drop_stage,
            epsilon,
            delta,
            in_memory,
            console,
            profile,
            timeout_s,
            seed,
        )
    out["cpus"] = os.cpu_count()
    out["loadavg_1min"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}
    out["bench_wall_s"] = round(time.perf_counter() - t_bench, 2)
    return out


def _run(
    tmp: Path,
    boot: str,
    n: int,
    d: int,
    dropout: float,
    processes: int,
    drop_stage: str,
    epsilon: float,
    delta: float,
    in_memory: bool,
    console: Any,
    profile: Path | None,
    timeout_s: float,
    seed: int,
) -> dict[str, Any]:
    from deploy.settings import SottoSettings
    from ingestion.coordinator import released_total
    from ingestion.round_open import RoundSpec
    from ingestion.round_service import RoundService
    from privacy import quantize
    from privacy.ledger import Budget

    token = uuid.uuid4().hex[:8]
    base = _deployment(tmp / "home", boot, token)
    ingest = base.ingest.model_copy(
        update={"max_envelope_bytes": 4 * 1024 * 1024, "poll_timeout_ms": 20}
    )
    settings = SottoSettings(home=base.home, kafka_bootstrap=boot, ingest=ingest)
    chunks, drops, gone = _split(n, processes, dropout, drop_stage, seed)
    live = _live(n, len(gone), drop_stage)
    spec = RoundSpec(
        layout="bench.v1",
        dim=d,
        clip=1.0,
        scale=SCALE,
        epsilon=epsilon,
        delta=delta,
        max_clients=n,
        dropout=dropout or None,
        stage_timeout_s=3600.0,
        grace_s=GRACE_S,
    )
    clock = _Clock()
    ctx = mp.get_context("spawn")
    control, results = ctx.Queue(), ctx.Queue()
    procs: list[Any] = []
    out: dict[str, Any] = {
        "n": n,
        "d": d,
        "dropout": dropout,
        "drop_stage": f"{drop_stage}: {DROP_STAGES[drop_stage]}",
        "dropped_devices": len(gone),
        "processes": processes,
        "epsilon": epsilon,
        "delta": delta,
    }
    budget = Budget(epsilon=max(10.0, 2 * epsilon), delta=1e-5)
    with RoundService(settings.policy, "eu", settings.ingest, budget=budget, clock=clock) as svc:
        console.log(f"starting {processes} device processes for {n} devices")
        for p in range(processes):
            proc = ctx.Process(
                target=run_devices,
                args=(
                    str(settings.home),
                    boot,
                    {dev: "c1" for dev in chunks[p]},
                    drops[p],
                    d,
                    seed + p,
                    control,
                    results,
                    timeout_s,
                    None if profile is None else str(profile),
                ),
                daemon=True,
            )
            proc.start()
            procs.append(proc)
        try:
            ready = 0
            deadline = time.monotonic() + 300
            while ready < processes:
                try:
                    kind, pid, body = results.get(timeout=max(1.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise RuntimeError(
                        f"{processes - ready} device processes never got ready"
                    ) from None
                if kind == "done":
                    raise RuntimeError(f"device process {pid} ended early: {body.get('error')}")
                ready += kind == "ready"
            while svc.app.stats.accepted < n or not svc.app.caught_up():
                svc.step(50)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {svc.app.stats.accepted} of {n} check-ins stored")
            console.log(f"{n} devices checked in; opening the round")
            broker_pid = _broker_pid(tmp)
            broker0 = _cpu_s(broker_pid)
            got = _drive(svc, spec, clock, results, live, n, console, profile, timeout_s)
            broker1 = _cpu_s(broker_pid)
            out.update({k: v for k, v in got.items() if not k.startswith("_") and k != "status"})
            reports = _collect(results, processes, got["round_id"])
        finally:
            control.put("stop")
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
        total = released_total(svc.app.engine, "eu", "c1", 0)
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"device process failed: {errors[0]}")
    announce = got.pop("_announce")
    survivors = sorted(c for r in reports for c in r["survivors"])
    sums = [r["input_sum"] for r in reports if r["input_sum"] is not None]
    expected = quantize.dequantize(np.sum(np.stack(sums), axis=0), announce.plan().quant)
    out["released"] = got.pop("status") == "released"
    out["survivors"] = len(survivors)
    out["exact"] = bool(total is not None and out["released"] and np.array_equal(total, expected))
    out.update(_bytes(reports))
    cpu = _cpu(reports, got.pop("_cpu"))
    if broker0 is not None and broker1 is not None:
        cpu["broker"] = round(broker1 - broker0, 3)
    cpu["total"] = round(cpu["coordinator"] + cpu["devices"]["cpu"] + cpu.get("broker", 0.0), 3)
    # the wall a perfectly parallel run of that much CPU would need on this machine's cores
    out["cpu_bound_wall_s"] = round(cpu["total"] / (os.cpu_count() or 1), 3)
    out["wall_over_cpu_bound"] = round(out["wall_s"] / out["cpu_bound_wall_s"], 2)
    out["cpu_s"] = cpu
    p = announce.params
    out.update({"k": p.k, "t": p.t, "bits": p.bits, "min_clients": p.min_clients})
    if in_memory:
        console.log("the same round in memory")
        cids = {dev: c for r in reports for dev, c in r["cids"].items()}
        gone_cids = {cids[dev] for dev in gone if dev in cids}
        mem = _in_memory(p, announce.plan(), n, gone_cids, drop_stage, own_verifier=True)
        out.update(mem)
        shared = _in_memory(p, announce.plan(), n, gone_cids, drop_stage, own_verifier=False)
        out["protocol_compute_shared_verifier_s"] = shared["protocol_compute_s"]
        out["wall_over_compute"] = round(out["wall_s"] / mem["protocol_compute_s"], 2)
    else:
        out["protocol_compute_s"] = out["wall_over_compute"] = None
    out["goal"] = f"wall_over_compute <= {GOAL_WALL_OVER_COMPUTE:g}"
    woc = out["wall_over_compute"]
    out["goal_met"] = None if woc is None else woc <= GOAL_WALL_OVER_COMPUTE
    out["method"] = _method(out, drop_stage)
    return out


def _drive(
    svc: Any,
    spec: Any,
    clock: _Clock,
    results: Any,
    live: dict[str, int],
    n: int,
    console: Any,
    profile: Path | None,
    timeout_s: float,
) -> dict[str, Any]:
    """Open the round and step the service until it is released or aborted."""
    from ingestion.round_state import STAGE_TYPE
    from privacy.round_wire import RoundOpen

    profiler = cProfile.Profile() if profile else None
    cpu0 = time.process_time()
    sent: dict[str, int] = {}
    first: dict[str, float] = {}  # payload type -> when devices sent the first / last one
    last: dict[str, float] = {}
    publishes: list[tuple[float, float]] = []  # (start, end) of each publish that sent rows
    coordinator = svc.coordinator
    publish = coordinator.publish

    def timed_publish() -> int:
        """The coordinator's publish, timed: a stage closes in the transaction just before
        the publish that sends its messages, so that publish's start is the stage's end."""
        t = time.perf_counter()
        sent_rows = publish()
        if sent_rows:
            publishes.append((t, time.perf_counter()))
        return sent_rows

    coordinator.publish = timed_publish  # type: ignore[method-assign]
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    epoch = time.time() - time.perf_counter()  # perf_counter time of a time.time() stamp
    res = coordinator.open_round("c1", spec, now=clock())
    if res.status != "open":
        raise RuntimeError(f"round refused: {res.reason}")
    stage, since = "advertise", publishes[-1][0]
    timeline: dict[str, dict[str, float]] = {}
    skipped = 0.0
    deadline = time.monotonic() + timeout_s
    status = None
    while True:
        svc.step(20)
        with contextlib.suppress(queue.Empty):
            while True:
                kind, ts, body = results.get_nowait()
                if kind == "sent":
                    t = ts - epoch  # the device process's clock: same machine
                    for typ, cnt in body.items():  # several processes report out of order
                        sent[typ] = sent.get(typ, 0) + cnt
                        first[typ] = min(first.get(typ, t), t)
                        last[typ] = max(last.get(typ, t), t)
                elif kind == "done":
                    if "error" in body:
                        raise RuntimeError(f"a device process failed: {body['error']}")
                    results.put((kind, ts, body))  # for _collect
                    break
        status = coordinator.status(res.round_id)
        now_stage = _stage_of(status)
        if now_stage != stage:
            closed, published = publishes[-1]
            typ = STAGE_TYPE[stage]
            timeline[stage] = {
                "first_answer_s": round(first.get(typ, closed) - since, 3),
                "last_answer_s": round(last.get(typ, closed) - since, 3),
                "closed_s": round(closed - since, 3),
                "publish_s": round(published - closed, 3),
            }
            console.log(f"{stage} closed after {closed - since:.2f} s")
            stage, since = now_stage, closed
            if stage is None:
                break
            continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"round stuck at {stage} after {timeout_s} s")
        if (
            sent.get(STAGE_TYPE[stage], 0) >= live[stage]
            and live[stage] < n
            and svc.app.caught_up()
        ):
            clock.offset += spec.grace_s  # every live device answered: the grace is moot
            skipped += spec.grace_s
    coordinator.publish = publish  # type: ignore[method-assign]
    wall = publishes[-1][0] - t0  # the release committed; the publish after it is not work
    if profiler:
        profiler.disable()
        profiler.dump_stats(str(profile))
    with svc.app.engine.connect() as conn:
        from sqlalchemy import select

        from ingestion.rounds_db import rounds

        text = conn.execute(
            select(rounds.c.open_json).where(rounds.c.round_id == res.round_id)
        ).scalar_one()
    return {
        "round_id": res.round_id,
        "status": status,
        "wall_s": round(wall, 3),
        "open_s": round(publishes[0][0] - t0, 3),
        "stage_wall_s": {k: v["closed_s"] for k, v in timeline.items()},
        "stage_timeline_s": timeline,
        "grace_skipped_s": skipped,
        "_announce": RoundOpen.model_validate_json(text),
        "_cpu": {"coordinator": time.process_time() - cpu0},
    }


def _collect(results: Any, processes: int, round_id: str) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while len(reports) < processes:
        try:
            kind, _pid, body = results.get(timeout=max(1.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(
                f"{processes - len(reports)} device processes sent no result"
            ) from None
        if kind == "done":
            reports.append(body)
    return reports


def _bytes(reports: list[dict[str, Any]]) -> dict[str, Any]:
    up = [v for r in reports for v in r["up"].values()]
    down = [v for r in reports for v in r["down"].values()]
    return {
        "bytes_per_device": {"up_median": _med(up), "down_median": _med(down)},
        "bytes_total": {
            "up": sum(up),
            "down_addressed": sum(down),
            "rounds_topic_read_per_process": _med([r["records_bytes"] for r in reports]),
        },
    }


def _cpu(reports: list[dict[str, Any]], main: dict[str, Any]) -> dict[str, Any]:
    keys = ("cpu_s", "poll_s", "parse_s", "handle_s", "flush_s")
    devices = {k.removesuffix("_s"): round(sum(r[k] for r in reports), 3) for k in keys}
    return {
        "coordinator": round(main["coordinator"], 3),
        "devices": devices,
        "device_processes_wall_s": [round(r["wall_s"], 3) for r in reports],
    }


def _method(out: dict[str, Any], drop_stage: str) -> str:
    return (
        f"one SecAgg+ round over a real Kafka broker: {out['n']} devices in "
        f"{out['processes']} processes, ingestion + coordinator (SQLite) in one process; "
        f"{out['dropped_devices']} devices vanish at {drop_stage}; wall_s from open_round to "
        "release; protocol_compute_s = the same round in memory (run_round + client input "
        "preparation), in this process"
    )


if __name__ == "__main__":  # pragma: no cover - `sotto bench round` is the entry point
    import json

    from backend.observability import configure_logging

    configure_logging("WARNING")
    print(json.dumps(run_round_bench(n=int(sys.argv[1]) if len(sys.argv) > 1 else 30)))
