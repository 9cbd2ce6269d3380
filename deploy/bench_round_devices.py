"""One OS process of simulated devices for `sotto bench round`.

Each process runs a :class:`~deploy.simulation.device_fleet.DeviceFleet` slice: many
:class:`~edge_client.round_client.RoundParticipant` devices, each with its own SecAgg+ client
state and its own one-round credential, sealing every payload to the region's HPKE key
through the fleet's durable outbox and idempotent producer, and reading the rounds topic with
one consumer. Why a separate module: the bench's parent process imports the coordinator; the
device processes must not share its CPU or its interpreter lock, and a spawned process only
imports what its target needs.

What comes back to the parent (one dict on the result queue): bytes each device sent and
received as Kafka record values, the process's CPU time split into reading the rounds topic,
parsing it, answering (SecAgg+ client work, sealing, outbox) and flushing to the broker, and
the ground truth for the exactness check: the sum of the encoded inputs of the devices that
sent a masked input.
"""

from __future__ import annotations

import contextlib
import cProfile
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from deploy.simulation.device_fleet import DeviceFleet
from edge_client.round_client import OutboxTransport
from privacy.envelope import seal
from privacy.round_wire import RoundClosed, RoundOpen, parse_rounds_message
from privacy.wire import Frozen

FLUSH_EVERY = 32  # replies a process batches before it sends them

# The addressee of a server message, read without parsing the whole record: a process skips
# the (many, large) records addressed to other processes' devices. A record without it is
# parsed in full (RoundOpen, RoundClosed, or a wire format this pattern does not know).
_TO = re.compile(rb'"to":(\d+)')


@dataclass
class Meter:
    """Wire bytes and CPU seconds of one device process."""

    up: Counter[str] = field(default_factory=Counter)  # device -> envelope bytes produced
    down: Counter[str] = field(default_factory=Counter)  # device -> rounds bytes meant for it
    sent_types: Counter[str] = field(default_factory=Counter)  # payload type -> count
    masked_senders: set[str] = field(default_factory=set)
    records: int = 0
    records_bytes: int = 0
    parsed: int = 0
    skipped: int = 0
    poll_s: float = 0.0
    parse_s: float = 0.0
    handle_s: float = 0.0
    flush_s: float = 0.0
    unflushed: int = 0
    reported: Counter[str] = field(default_factory=Counter)
    report: Any = None  # report(when, payload counts sent since the last report)


class MeteredTransport(OutboxTransport):
    """The device's real transport (seal to the region key, durable outbox, producer) that
    also counts the sealed bytes of each payload for its device."""

    def __init__(self, inner: OutboxTransport, device: str, meter: Meter) -> None:
        super().__init__(inner.home, inner.outbox, inner.producer, inner.key_source)
        self.device = device
        self.meter = meter

    def send(self, payload: Frozen, *, cohort: str, round: int, dedupe_key: str) -> None:
        key = self.key_source()
        if key.region != self.home.name:
            raise ValueError(f"key of {key.region!r} offered to a device of {self.home.name!r}")
        raw = seal(payload, key=key, cohort=cohort, round=round).to_bytes()
        self.outbox.put(raw, self.home.t.ingest, cohort.encode(), dedupe_key=dedupe_key)
        kind = str(getattr(payload, "type", ""))
        m = self.meter
        m.up[self.device] += len(raw)
        m.unflushed += 1
        if m.unflushed >= FLUSH_EVERY:  # a process answers hundreds of devices per record
            self.flush()  # batch: the first answers reach the coordinator while it works
        m.sent_types[kind] += 1
        if kind == "masked_input":
            m.masked_senders.add(self.device)

    def flush(self) -> int:
        """Send what is queued; then report it, stamped with when the send started (no
        record can reach the coordinator before that, so the stamps are causal)."""
        t0, started = time.process_time(), time.time()
        sent = super().flush()
        m = self.meter
        m.flush_s += time.process_time() - t0
        m.unflushed = 0
        if m.report is not None:
            m.report(started, dict(m.sent_types - m.reported))
            m.reported = Counter(m.sent_types)
        return sent


class MeteredFleet(DeviceFleet):
    """A device fleet whose pump counts bytes and time and skips others' records unparsed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meter = Meter()
        self.closed: set[str] = set()
        self._cid_owner: dict[str, dict[int, str]] = {}  # round_id -> client id -> device
        for dev, part in self.participants.items():
            assert isinstance(part.transport, OutboxTransport)
            part.transport = MeteredTransport(part.transport, dev, self.meter)

    def pump(self, timeout_ms: int = 200) -> int:
        if self._consumer is None:
            raise RuntimeError("DeviceFleet is not started")
        m, tick = self.meter, time.process_time
        self._key = None
        replies = 0
        t0 = tick()
        batches = self._consumer.poll(timeout_ms=timeout_ms)
        m.poll_s += tick() - t0
        for records in batches.values():
            for rec in records:
                m.records += 1
                m.records_bytes += len(rec.value)
                replies += self._record(rec.value, rec.offset)
        if replies and m.unflushed:
            next(iter(self.participants.values())).transport.flush()
        return replies

    def _record(self, value: bytes, offset: int) -> int:
        m, tick = self.meter, time.process_time
        hit = _TO.search(value, 0, 512)
        mine = None
        if hit is not None:
            owners = self._cid_owner
            cid = int(hit.group(1))
            mine = next((o[cid] for o in owners.values() if cid in o), None)
            if mine is None:
                m.skipped += 1
                return 0
        t0 = tick()
        try:
            msg = parse_rounds_message(value)
        except ValidationError:
            logging.getLogger(__name__).warning("unreadable rounds record at offset %d", offset)
            return 0
        m.parsed += 1
        t1 = tick()
        m.parse_s += t1 - t0
        if isinstance(msg, RoundOpen | RoundClosed):
            for dev in self.devices:
                m.down[dev] += len(value)
        elif mine is not None:
            m.down[mine] += len(value)
        sent = self._dispatch(msg)
        if isinstance(msg, RoundOpen):
            self._cid_owner[msg.round_id] = {c: d for d, c in self.cids(msg.round_id).items()}
        elif isinstance(msg, RoundClosed):
            self.closed.add(msg.round_id)
            self._cid_owner.pop(msg.round_id, None)
        m.handle_s += tick() - t1
        return sent


def run_devices(
    home: str,
    bootstrap: str,
    devices: dict[str, str],
    drop: dict[str, list[str]],
    dim: int,
    seed: int,
    control: Any,
    results: Any,
    timeout_s: float,
    profile: str | None = None,
) -> None:
    """The body of one device process: enroll and check in, say ready, answer until the round
    closes (or ``control`` says stop), then put one result dict on ``results``. With
    ``profile``, the answering loop's cProfile goes to ``<profile>.devices-<pid>``."""
    from deploy.settings import SottoSettings

    logging.basicConfig(level=logging.WARNING)
    settings = SottoSettings(home=Path(home), kafka_bootstrap=bootstrap)
    rng = np.random.default_rng([seed, os.getpid()])  # public synthetic data, not secret
    vectors: dict[str, np.ndarray] = {}

    def contribution(device: str, announce: RoundOpen) -> np.ndarray:
        if device not in vectors:
            vectors[device] = rng.standard_normal(announce.dim) / np.sqrt(announce.dim)
        return vectors[device]

    assert dim > 0
    data_dir = Path(home) / f"devices-{os.getpid()}"
    fleet = MeteredFleet(
        settings.policy, "eu", devices, contribution, data_dir, drop=drop, keep_inputs=True
    )
    out: dict[str, Any] = {"pid": os.getpid(), "devices": len(devices)}
    try:
        fleet.start()
        tokens = fleet.checkin()
        results.put(("ready", os.getpid(), len(tokens)))
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        deadline = time.monotonic() + timeout_s
        fleet.meter.reported = Counter(fleet.meter.sent_types)  # the check-ins
        fleet.meter.report = lambda ts, counts: results.put(("sent", ts, counts))
        while time.monotonic() < deadline and control.empty():
            fleet.pump(50)
            if fleet.closed:
                break
        if profiler:
            profiler.disable()
            profiler.dump_stats(f"{profile}.devices-{os.getpid()}")
        out.update(_summary(fleet, cpu0, wall0))
    except Exception as exc:  # the parent reports it; a traceback here would be lost
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            fleet.close()
        results.put(("done", os.getpid(), out))


def _summary(fleet: MeteredFleet, cpu0: float, wall0: float) -> dict[str, Any]:
    m = fleet.meter
    rid = next(iter(fleet.closed), None) or next(iter(fleet.members), None)
    total = None
    cids: dict[str, int] = {}
    if rid is not None:
        cids = fleet.cids(rid)
        kept = fleet.kept(rid)
        ints = [kept[d].quantized + kept[d].noise for d in sorted(m.masked_senders) if d in kept]
        if ints:
            total = np.sum(np.stack(ints).astype(np.int64), axis=0)
    return {
        "round_id": rid,
        "closed": bool(fleet.closed),
        "cids": cids,
        "survivors": sorted(cids[d] for d in m.masked_senders if d in cids),
        "input_sum": total,
        "up": dict(m.up),
        "down": dict(m.down),
        "sent_types": dict(m.sent_types),
        "records": m.records,
        "records_bytes": m.records_bytes,
        "parsed": m.parsed,
        "skipped": m.skipped,
        "cpu_s": time.process_time() - cpu0,
        "wall_s": time.perf_counter() - wall0,
        "poll_s": m.poll_s,
        "parse_s": m.parse_s,
        "handle_s": m.handle_s,
        "flush_s": m.flush_s,
    }
