"""Run one region's services from settings: what ``sotto ingest`` and ``sotto learn`` call.

The composition root's job: read the deployment's settings, hand each service only its own
section and its region (plus, for the learner, the base model built from simulated data),
set up logging and the metrics endpoint, then run until SIGTERM/SIGINT or ``max_idle_s``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from backend.observability import configure_logging, serve_service
from deploy.settings import SottoSettings
from ingestion.stats import IngestStats
from learner.host import LearnerFactory
from privacy.ledger import Budget


@contextmanager
def _metrics(
    port: int | None, service: str, region: str, stats: Any, gauges: Any, state: Any, host: str
) -> Iterator[None]:
    def all_gauges() -> list[tuple[str, str, dict[str, str], float]]:
        h = state()
        health = [
            ("sotto_ready", "1 when the service is ready", {"service": service}, float(h["ready"])),
            (
                "sotto_consecutive_failures",
                "infrastructure faults being retried (stalls)",
                {"service": service},
                float(h["consecutive_failures"]),
            ),
        ]
        if h.get("lag") is not None:
            health.append(
                ("sotto_lag", "records behind the log end", {"service": service}, h["lag"])
            )
        return [*health, *gauges()]

    server = serve_service(port, service, region, stats, all_gauges, state, host)
    try:
        yield
    finally:
        if server is not None:
            server.__exit__(None, None, None)


def run_ingest(
    settings: SottoSettings,
    region: str,
    max_idle_s: float | None = None,
    metrics_port: int | None = None,
) -> IngestStats:
    """Ingest ``region`` until SIGTERM/SIGINT, or until ``max_idle_s`` without records."""
    from ingestion.ledger_store import region_gauges
    from ingestion.service import IngestionApp

    configure_logging(settings.log_level, settings.log_json)
    with IngestionApp(settings.policy, region, settings.ingest) as app:
        gauges = lambda: region_gauges(app.engine, region)  # noqa: E731
        with _metrics(
            metrics_port,
            "ingest",
            region,
            app.stats.as_dict,
            gauges,
            app.health,
            settings.ingest.metrics_host,
        ):
            return app.run(max_idle_s=max_idle_s)


def run_round_service(
    settings: SottoSettings, region: str, budget: Budget, metrics_port: int | None = None
) -> IngestStats:
    """Ingestion plus the region's SecAgg+ round coordinator, until SIGTERM/SIGINT."""
    from ingestion.ledger_store import region_gauges
    from ingestion.round_service import RoundService

    configure_logging(settings.log_level, settings.log_json)
    stop = threading.Event()
    with RoundService(
        settings.policy, region, settings.ingest, budget=budget, rounds=settings.rounds
    ) as service:

        def gauges() -> list[tuple[str, str, dict[str, str], float]]:
            active = float(service.coordinator.lease.held)  # 0: standby
            help_text = "1 while this replica holds the region's coordinator lease"
            return [
                *region_gauges(service.app.engine, region),
                ("sotto_coordinator_active", help_text, {}, active),
            ]

        with _metrics(
            metrics_port,
            "ingest",
            region,
            service.app.stats.as_dict,
            gauges,
            service.health,
            settings.ingest.metrics_host,
        ):
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            service.run(stop)
        return service.app.stats


def run_learn(
    settings: SottoSettings,
    region: str,
    max_idle_s: float | None = None,
    learner_factory: LearnerFactory | None = None,
    group_id: str | None = None,
    metrics_port: int | None = None,
) -> Any:
    """Learn for ``region`` until SIGTERM/SIGINT, or until ``max_idle_s`` without records."""
    import torch

    from deploy.simulation.base_model import deployment_base
    from learner.registry import adapter_gauges
    from learner.service import LearnerApp

    configure_logging(settings.log_level, settings.log_json)
    torch.set_num_threads(1)  # one region's learner must not take every core of the host
    app = LearnerApp(
        settings.policy,
        region,
        settings.learner,
        base=lambda: deployment_base(settings.home),
        learner_factory=learner_factory,
        group_id=group_id,
    )
    with app:
        gauges = lambda: adapter_gauges(app.engine, region)  # noqa: E731
        with _metrics(
            metrics_port,
            "learn",
            region,
            app.stats.as_dict,
            gauges,
            app.health,
            settings.learner.metrics_host,
        ):
            return app.run(max_idle_s=max_idle_s)


def import_factory(spec: str) -> LearnerFactory:
    """``module:callable``; the callable is called with no arguments and returns the factory.
    Why: crash tests run the real process with a small deterministic learner."""
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)()
