"""Prometheus metrics, a health endpoint and structured logs for Sotto's services.

One registry for the process (not the global default, so tests can run several services
without "duplicated timeseries" errors). Services update the metrics; ``serve`` exposes
``/metrics`` (Prometheus text format), ``/livez`` (the loop turns), ``/readyz`` and
``/healthz`` (ready: no fault being retried, no stalled checkpoint, lag known and below the
threshold) on one port, JSON bodies, 503 when the answer is no. Degraded is reported as such.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

REGISTRY = CollectorRegistry()

HealthFn = Callable[[], dict[str, Any]]


def _handler(health: HealthFn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.startswith("/metrics"):
                body, ctype, code = generate_latest(REGISTRY), CONTENT_TYPE_LATEST, 200
            elif self.path.startswith(("/healthz", "/readyz", "/livez")):
                state = health()
                key = "live" if self.path.startswith("/livez") else "ready"
                code = 200 if state.get(key, state.get("ok", False)) else 503
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


def configure_logging(level: str = "INFO", as_json: bool = False) -> None:
    """Structured logs on stderr. Events carry ids and reasons, never ciphertext or keys."""
    logging.basicConfig(
        stream=sys.stderr, level=level.upper(), format="%(name)s %(levelname)s %(message)s"
    )
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


class StatsCollector:
    """Exposes a service's own counters at scrape time: no metric calls on the hot path.

    ``snapshot()`` returns the service's stats dict (``IngestStats.as_dict()`` and the like):
    numbers become ``sotto_<service>_<name>_total{region}``, ``{reason: n}`` dicts become
    ``sotto_<service>_<name>_total{region,reason}``. ``gauges()`` adds point-in-time values
    (ε spent per cohort, live adapter versions, lag) read from the region's database.
    """

    def __init__(
        self,
        service: str,
        region: str,
        snapshot: Callable[[], dict[str, Any]],
        gauges: Callable[[], list[tuple[str, str, dict[str, str], float]]] | None = None,
    ) -> None:
        self.service = service
        self.region = region
        self.snapshot = snapshot
        self.gauges = gauges

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, value in self.snapshot().items():
            metric = f"sotto_{self.service}_{name}"
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                fam = CounterMetricFamily(metric, f"{self.service} {name}", labels=["region"])
                fam.add_metric([self.region], float(value))
                yield fam
            elif isinstance(value, dict):
                fam = CounterMetricFamily(
                    metric, f"{self.service} {name}", labels=["region", "reason"]
                )
                for reason, n in value.items():
                    fam.add_metric([self.region, str(reason)], float(n))
                yield fam
        for name, help_text, labels, value in self.gauges() if self.gauges else []:
            fam = GaugeMetricFamily(name, help_text, labels=["region", *labels])
            fam.add_metric([self.region, *labels.values()], value)
            yield fam


def serve_service(
    port: int | None,
    service: str,
    region: str,
    snapshot: Callable[[], dict[str, Any]],
    gauges: Callable[[], list[tuple[str, str, dict[str, str], float]]] | None = None,
    state: HealthFn | None = None,
    host: str = "127.0.0.1",
) -> MetricsServer | None:
    """Start ``/metrics`` + the health endpoints for a service (None when ``port`` is None).

    ``state`` is the service's own truthful answer (``DurableConsumerApp.health``); without
    it the endpoints can only say the process is up, and say so (``ready`` unknown -> 503)."""
    if port is None:
        return None
    REGISTRY.register(StatsCollector(service, region, snapshot, gauges))
    started = time.time()

    def health() -> dict[str, Any]:
        answer = (
            state()
            if state is not None
            else {"ok": False, "live": True, "ready": False, "problems": ["no health source"]}
        )
        counters = {k: v for k, v in snapshot().items() if isinstance(v, int | float)}
        return {
            "service": service,
            "region": region,
            "uptime_s": round(time.time() - started, 1),
            **counters,
            **answer,
        }

    return MetricsServer(port, health, host).__enter__()
