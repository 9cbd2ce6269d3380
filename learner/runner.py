"""Run one region's learner from the command line (``sotto learn`` and ``python -m learner``):
logging setup, then :meth:`LearnerApp.run` until SIGTERM/SIGINT or ``--max-idle-s``."""

from __future__ import annotations

import argparse

import torch

from deploy.settings import SottoSettings
from ingestion.runner import configure_logging
from learner.host import LearnerFactory
from learner.service import LearnerApp, LearnerStats


def run_region(
    settings: SottoSettings,
    region: str,
    max_idle_s: float | None = None,
    learner_factory: LearnerFactory | None = None,
    group_id: str | None = None,
) -> LearnerStats:
    """Learn for ``region`` until SIGTERM/SIGINT, or until ``max_idle_s`` without records."""
    configure_logging(settings.log_level, settings.log_json)
    torch.set_num_threads(1)  # one region's learner must not take every core of the host
    with LearnerApp(settings, region, learner_factory=learner_factory, group_id=group_id) as app:
        return app.run(max_idle_s=max_idle_s)


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
