"""One process per region that ingests and coordinates rounds: ``sotto ingest --coordinate``.

:class:`RoundService` runs the region's :class:`~ingestion.service.IngestionApp` (which stores
SecAgg+ payloads into ``round_messages`` in its exactly-once checkpoint) and a
:class:`~ingestion.coordinator.RoundCoordinator` on the same database, alternating::

    poll one ingest batch and checkpoint it  ->  coordinator.tick(now)

On start it republishes whatever the outbox still holds (a crash between a decision's commit
and its publish). Deadline closes wait until ingestion has caught up with the ingest topic,
so a restarted service first stores what devices sent while it was down.

Several replicas may run per region: all of them ingest (one consumer group), and the one
holding the region's coordinator lease coordinates while the others stand by
(:mod:`ingestion.coordinator_lease`); :meth:`RoundService.health` says which. On shutdown a
replica gives the lease up, so a standby takes over at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any

from kafka import KafkaProducer

from backend import keystore
from ingestion.coordinator import RoundCoordinator
from ingestion.service import IngestionApp
from ingestion.settings import IngestSettings, RoundsSettings
from privacy.ledger import Budget
from privacy.policy import RegionPolicy
from privacy.wire import utcnow


class RoundService:
    """Ingestion plus the round coordinator of one region, as one context manager."""

    def __init__(
        self,
        policy: RegionPolicy,
        region: str,
        settings: IngestSettings | None = None,
        *,
        budget: Budget,
        clock: Callable[[], datetime] = utcnow,
        allow_unnoised: bool = False,
        group_id: str | None = None,
        rounds: RoundsSettings | None = None,
    ) -> None:
        self.settings = settings = settings or IngestSettings()
        self.rounds = rounds or RoundsSettings()
        self.region = region
        self.budget = budget
        self.clock = clock
        self.allow_unnoised = allow_unnoised
        self.app = IngestionApp(policy, region, settings, group_id=group_id)
        self._producer: KafkaProducer | None = None
        self._coordinator: RoundCoordinator | None = None

    def __enter__(self) -> RoundService:
        self.app.__enter__()
        self._producer = KafkaProducer(
            bootstrap_servers=self.app.config.bootstrap_servers,
            acks="all",
            linger_ms=2,
            max_request_size=8 * 1024 * 1024,
            client_id=f"sotto-rounds-{self.region}",
        )
        self._coordinator = RoundCoordinator(
            self.app.engine,
            self._producer,
            self.app.config,
            budget=self.budget,
            allow_unnoised=self.allow_unnoised,
            max_envelope_bytes=self.settings.max_envelope_bytes,
            credentials=keystore.credential_trust(self.app.config.keyset_dir, self.region),
            lease_s=self.rounds.lease_s,
            holder=self.rounds.coordinator_id,
        )
        self._coordinator.publish()  # finish what a previous run decided but did not publish
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._coordinator is not None:
            with contextlib.suppress(Exception):  # else a standby takes over when it expires
                self._coordinator.step_down()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=10)
            self._producer = None
        self.app.__exit__(exc_type, exc, tb)

    @property
    def coordinator(self) -> RoundCoordinator:
        if self._coordinator is None:
            raise RuntimeError("RoundService is not started; use it as a context manager")
        return self._coordinator

    def health(self) -> dict[str, Any]:
        """Ingestion's health plus the coordinator's role: ``active`` (holds the region's
        lease) or ``standby``. A standby is as ready as its ingestion: it ingests, and it is
        ready to take over."""
        h = self.app.health()
        if self._coordinator is not None:
            h["coordinator"] = self._coordinator.lease.state()
        return h

    def step(self, timeout_ms: int = 100) -> int:
        """One ingest batch and one coordinator tick; returns stages closed."""
        handled = self.app.poll_once(timeout_ms=timeout_ms)
        caught_up = handled == 0 and self.app.caught_up()
        return self.coordinator.tick(self.clock(), allow_deadline=caught_up)

    def run(self, stop: threading.Event, timeout_ms: int = 100) -> None:
        while not stop.is_set():
            self.step(timeout_ms)
