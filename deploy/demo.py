"""`sotto demo`: the platform end to end on this machine, with a report people can read.

Uses SOTTO_KAFKA_BOOTSTRAP or starts a local broker; creates a fresh two-region deployment
under ``<home>/demo``; runs the scenario; prints what happened and writes ``report.json``
(and the HTML report) to the output folder. Ctrl-C stops cleanly and leaves a partial report.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deploy.bootstrap import init_deployment
from deploy.demo_broker import broker
from deploy.observability import configure_logging
from deploy.settings import SottoSettings


def _table(outcomes: dict[str, Any]) -> Table:
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


def run_demo(
    *,
    rounds: int = 2,
    devices: int = 6,
    cohorts: int = 2,
    regions: tuple[str, ...] = ("eu", "cn"),
    out_dir: Path = Path("sotto-report"),
    home: Path | None = None,
    bootstrap: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    from deploy.demo_foundation import run_foundation

    console = console or Console(stderr=True)
    base = SottoSettings()
    configure_logging("WARNING", base.log_json)
    home = (home or base.home / "demo").resolve()
    if home.exists():
        shutil.rmtree(home)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"status": "running", "started": time.time(), "regions": list(regions)}
    t0 = time.perf_counter()
    try:
        with broker(home / "kafka", bootstrap) as boot:
            console.print(f"Kafka: {boot}")
            # a fresh topic set per run: an external broker may hold earlier runs' records
            init_deployment(home, regions, boot, topic_prefix=f"sotto-demo-{int(time.time())}")
            settings = SottoSettings(home=home, kafka_bootstrap=boot)
            outcomes = run_foundation(
                settings, home, rounds=rounds, cohorts_per_region=cohorts,
                devices_per_cohort=devices, console=console,
            )  # fmt: skip
            report["foundation"] = {r: asdict(o) for r, o in outcomes.items()}
            console.print(_table(outcomes))
        report["status"] = "complete"
    except KeyboardInterrupt:
        report["status"] = "interrupted"
        console.print("[yellow]interrupted: writing a partial report[/yellow]")
    finally:
        report["elapsed_s"] = round(time.perf_counter() - t0, 2)
        (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
        console.print(f"report: {out_dir / 'report.json'}")
    return report
