"""Prometheus metrics, a health endpoint and structured logs for Sotto's services.

One registry for the process (not the global default, so tests can run several services
without "duplicated timeseries" errors). Services update the metrics; ``serve`` exposes
``/metrics`` (Prometheus text format) and ``/healthz`` (JSON from a callback; 503 when the
callback says unhealthy) on one port.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

REGISTRY = CollectorRegistry()

INGEST_RECORDS = Counter(
    "sotto_ingest_records_total",
    "Records ingested, by outcome",
    ["region", "outcome"],
    registry=REGISTRY,
)
INGEST_REJECTED = Counter(
    "sotto_ingest_rejected_total",
    "Records dead-lettered, by reason",
    ["region", "reason"],
    registry=REGISTRY,
)
INGEST_LAG = Gauge(
    "sotto_ingest_lag_records", "Consumer lag of ingestion", ["region"], registry=REGISTRY
)
ROUNDS = Counter(
    "sotto_rounds_total",
    "SecAgg+ rounds, by outcome",
    ["region", "cohort", "outcome"],
    registry=REGISTRY,
)
EPSILON_SPENT = Gauge(
    "sotto_epsilon_spent",
    "Privacy budget spent per cohort",
    ["region", "cohort"],
    registry=REGISTRY,
)
ADAPTER_VERSION = Gauge(
    "sotto_adapter_version",
    "Adapter version per cohort and status",
    ["region", "cohort", "status"],
    registry=REGISTRY,
)
LEARNER_RELEASES = Counter(
    "sotto_learner_releases_total",
    "Released aggregates applied by the learner",
    ["region"],
    registry=REGISTRY,
)

HealthFn = Callable[[], dict[str, Any]]


def _handler(health: HealthFn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.startswith("/metrics"):
                body, ctype, code = generate_latest(REGISTRY), CONTENT_TYPE_LATEST, 200
            elif self.path.startswith("/healthz"):
                state = health()
                code = 200 if state.get("ok", False) else 503
                body, ctype = json.dumps(state, default=str).encode(), "application/json"
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # keep access logs out of stderr
            return

    return Handler


class MetricsServer:
    """``/metrics`` and ``/healthz`` on 127.0.0.1:``port`` (0 picks a free port)."""

    def __init__(self, port: int, health: HealthFn, host: str = "127.0.0.1") -> None:
        self._server = ThreadingHTTPServer((host, port), _handler(health))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> MetricsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def configure_logging(level: str = "INFO", json_logs: bool = False) -> None:
    """structlog to stderr: key=value for people, JSON lines for log shippers."""
    logging.basicConfig(
        stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO), format="%(message)s"
    )
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
