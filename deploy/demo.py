"""`sotto demo`: the platform end to end on this machine, with a report people can read.

Uses SOTTO_KAFKA_BOOTSTRAP or starts a local broker; creates a fresh two-region deployment
under ``<home>/demo`` with its own topic set; then

1. *foundation*: real edge devices send HPKE round summaries, hostile records are mixed in,
   each region's ingestion validates, dead-letters, aggregates and audits;
2. *learning loop*: hundreds of simulated devices per region run SecAgg+ rounds with
   dropouts, DP-noised cohort sums are released, the learner fits, shadow-evaluates, canaries,
   promotes or rolls back, and signed adapters flow back to devices — all over Kafka.

Progress is shown live; ``report.json`` and ``index.html`` (with plots) are written to the
output folder after every round, so Ctrl-C leaves a partial report.

The report's ``status`` is ``complete`` only when every round was released (and, in a run
long enough for the learner to promote one, an adapter went live); ``degraded`` otherwise,
with the reasons counted under ``degraded``; ``interrupted`` after Ctrl-C.
"""

from __future__ import annotations

import re
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from backend.observability import configure_logging
from deploy.bootstrap import init_deployment
from deploy.demo_broker import broker
from deploy.demo_report import write_report
from deploy.settings import SottoSettings


def _foundation_table(outcomes: dict[str, Any]) -> Table:
    table = Table(title="Foundation: edge → Kafka → ingestion, per region")
    for col in (
        "region",
        "delivered",
        "accepted",
        "dead-lettered (reason: n)",
        "cohort/round aggregates",
        "audit chain",
    ):
        table.add_column(col)
    for region, out in outcomes.items():
        rejected = "\n".join(f"{k}: {v}" for k, v in sorted(out.rejected.items())) or "-"
        aggs = "\n".join(f"{a['cohort']} r{a['round']}: {a['count']}" for a in out.aggregates)
        chain = "verified" if out.audit_ok else f"BROKEN at seq {out.audit_first_bad}"
        table.add_row(region, str(out.sent), str(out.accepted), rejected, aggs, chain)
    return table


def _loop_table(summary: dict[str, Any]) -> Table:
    table = Table(title="Learning loop: final state per cohort")
    for col in (
        "cohort",
        "rounds released",
        "ε spent",
        "live adapter",
        "hit@1 base",
        "hit@1 live",
        "rollouts",
        "rollbacks",
    ):
        table.add_column(col)
    for key, c in sorted(summary["cohorts"].items()):
        table.add_row(
            key,
            str(c["released"]),
            f"{c['epsilon_spent']:.2f}",
            f"v{c['live_version']}",
            f"{c['hit1_base']:.3f}",
            f"{c['hit1_live']:.3f}",
            str(c["promotions"]),
            str(c["rollbacks"]),
        )
    return table


# the learner promotes a candidate at the earliest after shadow and canary rounds: a shorter run
# releasing every round without a live adapter is not degraded
LIVE_EXPECTED_FROM_ROUNDS = 6


def assess(report: dict[str, Any], expect_live: bool) -> dict[str, Any]:
    """What kept a run from ``complete``: ``{"reasons": {reason: rounds}, ...}``, empty
    reasons when there is nothing. A round that was not released counts under
    ``<status>: <its abort or refusal detail, numbers as N>``; no live adapter in any cohort
    counts as ``no_live_adapter`` when ``expect_live``."""
    loop = report.get("loop") or {}
    rounds = loop.get("rounds", [])
    reasons: Counter[str] = Counter()
    not_released = []
    for r in rounds:
        if r["status"] == "released":
            continue
        why = re.sub(r"\d+(\.\d+)?", "N", r.get("reason") or "") or (
            "unfinished" if r["status"] not in ("aborted", "refused") else "no detail"
        )
        reasons[f"{r['status']}: {why[:160]}"] += 1
        not_released.append(
            {k: r.get(k) for k in ("round", "region", "cohort", "status", "reason")}
        )
    cohorts = (loop.get("summary") or {}).get("cohorts", {})
    live = {k: c["live_version"] for k, c in cohorts.items() if c["live_version"]}
    if expect_live and not live:
        reasons["no_live_adapter"] += 1
    return {
        "rounds": len(rounds),
        "released": sum(1 for r in rounds if r["status"] == "released"),
        "reasons": dict(reasons.most_common()),
        "not_released": not_released,
        "live_adapters": live,
    }


def summarize_loop(loops: list[Any], rounds_done: int) -> dict[str, Any]:
    cohorts: dict[str, Any] = {}
    for loop in loops:
        for c in loop.cohorts:
            recs = [r for r in loop.records if r.cohort == c]
            last = recs[-1] if recs else None
            tail = recs[-2:] if len(recs) >= 2 else recs
            evs = [e for e in loop.events if e["cohort"] == c]
            cohorts[f"{loop.region}/{c}"] = {
                "released": sum(1 for r in recs if r.status == "released"),
                "epsilon_spent": last.epsilon_spent if last else 0.0,
                "live_version": last.live_version if last else 0,
                "hit1_base": sum(r.hit1_base for r in tail) / max(1, len(tail)),
                "hit1_live": sum(r.hit1_live for r in tail) / max(1, len(tail)),
                "promotions": sum(
                    1 for e in evs if e["kind"] == "release" and e["rollout_fraction"] >= 1.0
                ),
                "rollbacks": sum(1 for e in evs if e["kind"] == "rollback"),
            }
    return {"rounds_done": rounds_done, "cohorts": cohorts}


def run_demo(
    *,
    rounds: int = 8,
    devices: int = 80,
    cohorts: int = 2,
    regions: tuple[str, ...] = ("eu", "cn"),
    out_dir: Path = Path("sotto-report"),
    home: Path | None = None,
    bootstrap: str | None = None,
    epsilon_per_round: float = 2.0,
    budget_epsilon: float = 16.0,
    seed: int = 3,
    console: Console | None = None,
    loop_config: dict[str, Any] | None = None,
    expect_live: bool | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the report (also written to ``out_dir``).

    ``loop_config`` overrides :class:`~deploy.demo_loop.LoopConfig` fields (``dropout``,
    ``grace_s``, ``stage_timeout_s``, ...). ``expect_live``: whether a run without a live
    adapter is degraded (default: runs of at least ``LIVE_EXPECTED_FROM_ROUNDS`` rounds)."""
    from deploy.demo_foundation import run_foundation
    from deploy.demo_loop import LoopConfig, RegionLoop, run_rounds
    from deploy.simulation.cohort_channel import StepCache
    from deploy.simulation.population import Population

    console = console or Console(stderr=True)
    # Ctrl-C: remember it as well as raising, so a KeyboardInterrupt that some library code
    # swallows still ends the run as "interrupted" at the next round boundary
    interrupted = threading.Event()

    def _on_sigint(signum: int, frame: Any) -> None:
        interrupted.set()
        signal.default_int_handler(signum, frame)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, _on_sigint)
    base = SottoSettings()
    configure_logging("ERROR", base.log_json)
    home = (home or base.home / "demo").resolve()
    if home.exists():
        shutil.rmtree(home)
    report: dict[str, Any] = {
        "status": "running",
        "regions": list(regions),
        "config": {
            "rounds": rounds,
            "devices_per_cohort": devices,
            "cohorts_per_region": cohorts,
            "epsilon_per_round": epsilon_per_round,
            "budget_epsilon": budget_epsilon,
            "seed": seed,
        },
    }
    t0 = time.perf_counter()
    loops: list[Any] = []
    closed: set[int] = set()
    try:
        with broker(home / "kafka", bootstrap) as boot:
            console.print(f"Kafka: {boot}")
            # a fresh topic set per run: an external broker may hold earlier runs' records
            init_deployment(home, regions, boot, topic_prefix=f"sotto-demo-{int(time.time())}")
            settings = SottoSettings(home=home, kafka_bootstrap=boot)
            outcomes = run_foundation(
                settings,
                home,
                rounds=1,
                cohorts_per_region=cohorts,
                devices_per_cohort=3,
                console=console,
            )
            report["foundation"] = {r: asdict(o) for r, o in outcomes.items()}
            console.print(_foundation_table(outcomes))

            cfg = LoopConfig(
                **{
                    "rounds": rounds,
                    "epsilon_per_round": epsilon_per_round,
                    "budget_epsilon": budget_epsilon,
                    **(loop_config or {}),
                }
            )
            report["config"]["loop"] = asdict(cfg)
            pop = Population(
                seed=seed,
                regions=regions,
                cohorts_per_region=cohorts,
                devices_per_cohort=devices,
                drift_rounds=(max(1, rounds // 2),),
            )
            cache = StepCache(pop)
            with console.status("building the base model and starting each region's services"):
                for region in regions:
                    loop = RegionLoop(settings, region, cache, cfg, home)
                    loops.append(loop.__enter__())
            report["loop"] = {
                "budget_epsilon": budget_epsilon,
                "drift_rounds": [d.round for d in pop.drifts],
                "devices": len(pop.devices),
            }
            columns = [
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
            ]
            with Progress(*columns, console=console) as progress:
                task = progress.add_task(f"rounds ({len(pop.devices)} devices)", total=rounds)

                def on_round(r: int) -> None:
                    if interrupted.is_set():  # a Ctrl-C that a library swallowed still counts
                        raise KeyboardInterrupt
                    parts = []
                    for loop in loops:
                        recs = loop.records[-len(loop.cohorts) :]
                        eps = max((x.epsilon_spent for x in recs), default=0.0)
                        versions = ",".join(f"v{x.live_version}" for x in recs)
                        parts.append(f"{loop.region}: ε={eps:.2f} live {versions}")
                    progress.update(
                        task, advance=1, description=f"round {r + 1}: " + " · ".join(parts)
                    )
                    _fill_loop(report, loops, r + 1)
                    report["elapsed_s"] = round(time.perf_counter() - t0, 2)
                    write_report(report, out_dir)

                try:
                    run_rounds(loops, cfg, on_round)
                finally:
                    _close(loops, closed)  # while the broker is still up
            console.print(_loop_table(report["loop"]["summary"]))
        if interrupted.is_set():
            raise KeyboardInterrupt
        if expect_live is None:
            expect_live = rounds >= LIVE_EXPECTED_FROM_ROUNDS
        health = assess(report, expect_live)
        if health["reasons"]:
            report["status"] = "degraded"
            report["degraded"] = health
            lines = "; ".join(f"{k} ({n})" for k, n in health["reasons"].items())
            console.print(
                f"[yellow]degraded: {health['released']} of {health['rounds']} rounds "
                f"released; {lines}[/yellow]"
            )
        else:
            report["status"] = "complete"
        report["summary"] = {
            "rounds released": f"{health['released']} / {health['rounds']}",
            **report.get("summary", {}),
            **({"degraded": health["reasons"]} if health["reasons"] else {}),
        }
    except KeyboardInterrupt:
        report["status"] = "interrupted"
        console.print("[yellow]interrupted: writing a partial report[/yellow]")
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        _close(loops, closed)
        report["elapsed_s"] = round(time.perf_counter() - t0, 2)
        page = write_report(report, out_dir)
        console.print(
            f"report: {page} (numbers in {out_dir / 'report.json'}) in {report['elapsed_s']} s"
        )
    return report


def _close(loops: list[Any], closed: set[int]) -> None:
    for loop in loops:
        if id(loop) not in closed:
            closed.add(id(loop))
            loop.__exit__(None, None, None)


def _fill_loop(report: dict[str, Any], loops: list[Any], rounds_done: int) -> None:
    loop_part = report["loop"]
    loop_part["rounds"] = [asdict(r) for loop in loops for r in loop.records]
    loop_part["events"] = [e for loop in loops for e in loop.events]
    loop_part["refusals"] = [dict(region=loop.region, **x) for loop in loops for x in loop.refusals]
    loop_part["device_sync"] = {loop.region: dict(loop.sync) for loop in loops}
    foundation = report.get("foundation", {})
    messages = {}
    for loop in loops:
        stats = loop.ingest_stats()
        f = foundation.get(loop.region, {})
        rejected = dict(stats.get("rejected", {}))
        for k, v in f.get("rejected", {}).items():
            rejected[k] = rejected.get(k, 0) + v
        messages[loop.region] = {
            "accepted": stats["accepted"] + f.get("accepted", 0),
            "late": stats.get("late", 0),  # valid, after their stage closed: not dead-lettered
            "rejected": rejected,
        }
    loop_part["messages"] = messages
    loop_part["summary"] = summarize_loop(loops, rounds_done)
    report["summary"] = {
        "rounds_done": rounds_done,
        **{
            f"{k} hit@1 base→live": f"{v['hit1_base']:.3f} → {v['hit1_live']:.3f}"
            for k, v in loop_part["summary"]["cohorts"].items()
        },
        **{
            f"{k} ε spent": round(v["epsilon_spent"], 3)
            for k, v in loop_part["summary"]["cohorts"].items()
        },
        **{
            f"{r} messages accepted / late / dead-lettered": (
                f"{m['accepted']} / {m['late']} / {sum(m['rejected'].values())}"
            )
            for r, m in messages.items()
        },
    }
