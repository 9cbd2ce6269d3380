"""Run one region's learner from the command line (``sotto learn`` and ``python -m learner``):
logging setup, then :meth:`LearnerApp.run` until SIGTERM/SIGINT or ``--max-idle-s``."""

from __future__ import annotations

import argparse

import torch

from deploy.observability import configure_logging, serve_service
from deploy.settings import SottoSettings
from learner.host import LearnerFactory
from learner.service import LearnerApp, LearnerStats


def run_region(
    settings: SottoSettings,
    region: str,
    max_idle_s: float | None = None,
    learner_factory: LearnerFactory | None = None,
    group_id: str | None = None,
    metrics_port: int | None = None,
) -> LearnerStats:
    """Learn for ``region`` until SIGTERM/SIGINT, or until ``max_idle_s`` without records."""
    configure_logging(settings.log_level, settings.log_json)
    torch.set_num_threads(1)  # one region's learner must not take every core of the host
    with LearnerApp(settings, region, learner_factory=learner_factory, group_id=group_id) as app:
        server = serve_service(
            metrics_port, "learn", region, app.stats.as_dict, lambda: adapter_gauges(app, region)
        )
        try:
            return app.run(max_idle_s=max_idle_s)
        finally:
            if server is not None:
                server.__exit__(None, None, None)


def adapter_gauges(app: LearnerApp, region: str) -> list[tuple[str, str, dict[str, str], float]]:
    """The version of each cohort's adapter in each status (live, canary, shadow), at scrape time."""
    from learner.registry import list_adapters

    out: list[tuple[str, str, dict[str, str], float]] = []
    for rec in list_adapters(app.engine, region):
        if rec.status in ("live", "canary", "shadow"):
            labels = {"cohort": rec.cohort, "status": rec.status}
            out.append(("sotto_adapter_version", "adapter version by status", labels, rec.version))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m learner", description=__doc__)
    parser.add_argument("--region", required=True)
    parser.add_argument("--max-idle-s", type=float, default=None)
    parser.add_argument("--group-id", default=None, help="consumer group (default sotto-learn-R)")
    parser.add_argument(
        "--learner-factory",
        default=None,
        help="module:callable returning a LearnerFactory (default: learner.cohort.CohortLearner)",
    )
    args = parser.parse_args(argv)
    factory = _import_factory(args.learner_factory) if args.learner_factory else None
    stats = run_region(SottoSettings(), args.region, args.max_idle_s, factory, args.group_id)
    print(stats.as_dict())
    return 0


def _import_factory(spec: str) -> LearnerFactory:
    """``module:callable``; the callable is called with no arguments and returns the factory.
    Why: crash tests run the real process with a small deterministic learner."""
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)()
