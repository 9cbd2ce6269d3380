"""Run one region's ingestion from the command line (``sotto ingest`` and
``python -m ingestion``): logging setup, then :meth:`IngestionApp.run` until stopped."""

from __future__ import annotations

import argparse

from sqlalchemy import Engine

from deploy.observability import configure_logging, serve_service
from deploy.settings import SottoSettings
from ingestion.service import IngestionApp
from ingestion.stats import IngestStats


def region_gauges(engine: Engine, region: str) -> list[tuple[str, str, dict[str, str], float]]:
    """ε spent per cohort, read at scrape time (nothing if rounds never ran)."""
    from sqlalchemy import inspect

    if not inspect(engine).has_table("privacy_ledgers"):
        return []
    from ingestion.ledger_store import report

    return [
        ("sotto_epsilon_spent", "privacy budget spent", {"cohort": r.cohort}, r.epsilon_spent)
        for r in report(engine, region)
    ]


def run_region(
    settings: SottoSettings,
    region: str,
    max_idle_s: float | None = None,
    metrics_port: int | None = None,
) -> IngestStats:
    """Ingest ``region`` until SIGTERM/SIGINT, or until ``max_idle_s`` without records."""
    configure_logging(settings.log_level, settings.log_json)
    with IngestionApp(settings, region) as app:
        server = serve_service(
            metrics_port, "ingest", region, app.stats.as_dict,
            lambda: region_gauges(app.engine, region),
        )  # fmt: skip
        try:
            return app.run(max_idle_s=max_idle_s)
        finally:
            if server is not None:
                server.__exit__(None, None, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingestion", description=__doc__)
    parser.add_argument("--region", required=True)
    parser.add_argument("--max-idle-s", type=float, default=None)
    args = parser.parse_args(argv)
    stats = run_region(SottoSettings(), args.region, args.max_idle_s)
    print(stats.as_dict())
    return 0
