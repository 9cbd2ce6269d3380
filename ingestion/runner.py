"""Run one region's ingestion from the command line (``sotto ingest`` and
``python -m ingestion``): logging setup, then :meth:`IngestionApp.run` until stopped."""

from __future__ import annotations

import argparse
import logging
import sys

import structlog

from deploy.settings import SottoSettings
from ingestion.service import IngestionApp
from ingestion.stats import IngestStats


def configure_logging(level: str = "INFO", as_json: bool = False) -> None:
    """Structured logs on stderr. Events carry ids and reasons, never ciphertext or keys."""
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
    logging.getLogger("alembic").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer()
            if as_json
            else structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def run_region(settings: SottoSettings, region: str, max_idle_s: float | None = None) -> IngestStats:
    """Ingest ``region`` until SIGTERM/SIGINT, or until ``max_idle_s`` without records."""
    configure_logging(settings.log_level, settings.log_json)
    with IngestionApp(settings, region) as app:
        return app.run(max_idle_s=max_idle_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingestion", description=__doc__)
    parser.add_argument("--region", required=True)
    parser.add_argument("--max-idle-s", type=float, default=None)
    args = parser.parse_args(argv)
    stats = run_region(SottoSettings(), args.region, args.max_idle_s)
    print(stats.as_dict())
    return 0
