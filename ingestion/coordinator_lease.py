"""The region coordinator lease: one coordinator per region drives its rounds at a time.

Every replica of a region's round service runs a coordinator; only the holder of the region's
``coordinator_leases`` row ticks rounds, the others stand by and take over once the holder
stops renewing (crashed, partitioned, paused, shut down). The row only changes by
compare-and-set, each in a transaction of its own:

* **acquire**: insert the row, or take one that expired (or that this holder id left behind,
  a restarted process) with ``UPDATE ... WHERE epoch = <epoch read> AND expires_at <= now``.
  The epoch goes up by one, so of several contenders at most one wins, and the epoch names
  the tenure;
* **renew**: ``UPDATE ... WHERE holder = me AND epoch = mine``, a third of a lease after the
  last renewal; 0 rows: it was taken over, and this coordinator stands by again;
* **step down** (shutdown): expire it at once, so a standby need not wait out a whole lease.

Times are the ``now`` the coordinator is given; nothing here reads a clock. ``expires_at`` is
by the holder's clock, so failover is prompt only while replicas' clocks agree to well within
``duration_s``. Safety does not rest on clocks: a holder can be paused past its lease in the
middle of a decision, so every stage transition calls :meth:`CoordinatorLease.fence` in its
own transaction (and compares the round's version, see :mod:`ingestion.coordinator`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError

from backend.errors import ServiceError
from backend.storage import reading
from ingestion.rounds_db import coordinator_leases

log = structlog.get_logger(__name__)

RENEW_AFTER = 1 / 3  # of a lease since the last renewal: two renewals may fail before it ends


class CoordinatorFenced(ServiceError):
    """A stage transition was refused: this coordinator no longer holds the region's lease,
    or the round moved on since its state was loaded (another coordinator decided first).
    Its transaction is rolled back and its cached round state is dropped."""


def default_holder() -> str:
    """``<hostname>:<pid>``: distinct per pod (hostname) and per process on one host."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


@dataclass
class CoordinatorLease:
    """One coordinator's view of its region's lease. ``epoch`` is the tenure it holds
    (``None``: standby); ``expires_at`` is when that tenure ends unless renewed."""

    region: str
    holder: str
    duration_s: float
    epoch: int | None = None
    expires_at: float = 0.0
    _ever_held: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.duration_s <= 0:
            raise ValueError(f"lease duration must be positive, not {self.duration_s}")
        self._log = log.bind(region=self.region, holder=self.holder)

    @property
    def held(self) -> bool:
        return self.epoch is not None

    def hold(self, engine: Engine, now: datetime) -> bool:
        """Whether this coordinator may tick at ``now``: renews or acquires the lease when
        due. False: another coordinator holds it (stand by)."""
        ts = now.timestamp()
        if self.epoch is not None:
            if ts < self.expires_at - self.duration_s * (1 - RENEW_AFTER):
                return True
            if self._renew(engine, ts):
                return True
            self.lost("taken over")
        row = self._read(engine)
        if row is not None and row.expires_at > ts and not self._adoptable(row):
            return False
        return self._acquire(engine, row, ts)

    def fence(self, conn: Connection) -> None:
        """In the caller's transaction: raise :class:`CoordinatorFenced` unless this
        coordinator still holds the epoch it ticks under. The no-op update also locks the row
        on servers, so a takeover waits until the caller's decision has committed."""
        c = coordinator_leases.c
        ok = self.epoch is not None and (
            conn.execute(
                coordinator_leases.update()
                .where(c.region == self.region, c.holder == self.holder, c.epoch == self.epoch)
                .values(epoch=c.epoch)
            ).rowcount
            == 1
        )
        if not ok:
            self.lost("fenced")
            raise CoordinatorFenced(f"{self.holder} no longer holds the {self.region} lease")

    def step_down(self, engine: Engine) -> None:
        """Give the lease up now (on shutdown), so a standby takes over at its next tick."""
        if self.epoch is None:
            return
        c = coordinator_leases.c
        with engine.begin() as conn:
            conn.execute(
                coordinator_leases.update()
                .where(c.region == self.region, c.holder == self.holder, c.epoch == self.epoch)
                .values(expires_at=0.0)
            )
        self.lost("stepped down")

    def lost(self, why: str) -> None:
        """Forget the tenure (a renewal or a fence found it taken); stand by from now on."""
        if self.epoch is not None:
            self._log.info("coordinator_lease_lost", epoch=self.epoch, why=why)
        self.epoch, self.expires_at = None, 0.0

    def state(self) -> dict[str, Any]:
        """For health reports: ``active`` (holds the lease) or ``standby``."""
        return {
            "role": "active" if self.held else "standby",
            "holder": self.holder,
            "epoch": self.epoch,
            "lease_expires_at": self.expires_at if self.held else None,
        }

    # -- compare-and-set ------------------------------------------------------------------
    def _read(self, engine: Engine) -> Any:
        c = coordinator_leases.c
        with reading(engine) as conn:
            return conn.execute(select(coordinator_leases).where(c.region == self.region)).first()

    def _adoptable(self, row: Any) -> bool:
        """A live lease under this holder id that this process never held: the id's previous
        process (a restarted container keeps its hostname and pid 1) is gone, so take it now.
        Only on a first acquisition: two live processes misconfigured with one id would
        otherwise take it from each other forever."""
        return row.holder == self.holder and not self._ever_held

    def _renew(self, engine: Engine, ts: float) -> bool:
        c = coordinator_leases.c
        with engine.begin() as conn:
            n = conn.execute(
                coordinator_leases.update()
                .where(c.region == self.region, c.holder == self.holder, c.epoch == self.epoch)
                .values(expires_at=ts + self.duration_s)
            ).rowcount
        if n == 1:
            self.expires_at = ts + self.duration_s
        return n == 1

    def _acquire(self, engine: Engine, row: Any, ts: float) -> bool:
        c = coordinator_leases.c
        epoch = 1 if row is None else int(row.epoch) + 1
        values = {
            "holder": self.holder,
            "epoch": epoch,
            "expires_at": ts + self.duration_s,
            "acquired_at": ts,
        }
        try:
            with engine.begin() as conn:
                if row is None:
                    conn.execute(coordinator_leases.insert().values(region=self.region, **values))
                    won = True
                else:  # still what was read: nobody renewed or took it in between
                    taken = c.expires_at <= ts
                    if self._adoptable(row):
                        taken = taken | (c.holder == self.holder)
                    won = (
                        conn.execute(
                            coordinator_leases.update()
                            .where(c.region == self.region, c.epoch == row.epoch, taken)
                            .values(**values)
                        ).rowcount
                        == 1
                    )
        except IntegrityError:  # another coordinator inserted the first row at the same time
            return False
        if won:
            self.epoch, self.expires_at, self._ever_held = epoch, ts + self.duration_s, True
            self._log.info(
                "coordinator_lease_acquired",
                epoch=epoch,
                previous=None if row is None else row.holder,
            )
        return won
