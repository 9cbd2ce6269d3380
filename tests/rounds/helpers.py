"""Drive round services and device fleets together on the real broker, with a test clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from deploy.simulation.device_fleet import DeviceFleet
from ingestion.round_service import RoundService
from privacy.round_wire import RoundOpen


@dataclass
class StepClock:
    """Wall time plus an offset the test moves forward to expire stage deadlines."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def drive(
    services: Sequence[RoundService],
    fleets: Sequence[DeviceFleet],
    done: Callable[[], bool],
    *,
    clock: StepClock | None = None,
    skip_s: float = 60.0,
    quiet_s: float = 1.5,
    timeout_s: float = 120.0,
) -> float:
    """Pump fleets and step services until ``done()``; when nothing moved for ``quiet_s``
    and every fleet and service has read all there is to read, jump the clock by ``skip_s``
    so a stage waiting on dropouts hits its deadline (a quiet spell alone may be a slow
    broker on a busy machine, with requests still on their way to live devices).
    Returns the seconds it took."""
    start = last = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("rounds did not finish")
        moved = sum(f.pump(50) for f in fleets)
        moved += sum(s.step(50) for s in services)
        if moved:
            last = time.monotonic()
        elif (
            clock is not None
            and time.monotonic() - last > quiet_s
            and all(f.caught_up() for f in fleets)
            and all(s.app.caught_up() for s in services)
        ):
            clock.advance(skip_s)
            last = time.monotonic()
    return time.monotonic() - start


def contribution(seed: int, dim: int, scale: float = 1.0) -> Callable[[str, RoundOpen], np.ndarray]:
    """Each device's vector: deterministic per (seed, device id), some above the clip norm."""

    def build(device: str, announce: RoundOpen) -> np.ndarray:
        h = int.from_bytes(device.encode()[-4:].rjust(4, b"\0"), "big")
        rng = np.random.default_rng([seed, h, announce.round])
        return rng.standard_normal(announce.dim) * scale

    assert dim > 0
    return build
