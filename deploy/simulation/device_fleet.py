"""Many simulated devices in one process, talking to a region over its real Kafka topics.

A :class:`DeviceFleet` holds one :class:`~edge_client.round_client.RoundParticipant` per
simulated device of one home region, one consumer of the region's rounds topic (reading
every partition from the end at start, no consumer group) and one shared outbox and
idempotent producer to the region's ingest topic. Each device still seals every payload to
the region's current HPKE key; sharing the producer only saves sockets.

Dropouts are injected: ``drop[stage]`` is the set of device ids that vanish instead of
answering ``stage`` (``advertise``, ``shares``, ``masked``, ``consistency``, ``unmask``, as
in :data:`privacy.secagg.simulate.STAGES`) and stay silent afterwards.

Enrollment is simulated too: the fleet holds the region's device-credential issuer and gives
each device a fresh one-round credential at every check-in (what an attested enrollment
service would hand a real device in batches).

Use it in a test loop with :meth:`DeviceFleet.pump`, or from a thread with :meth:`run`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from pydantic import ValidationError

from backend import keystore
from edge_client.outbox import Outbox
from edge_client.producer import OutboxProducer
from edge_client.round_client import STAGE_OF, KeptInput, OutboxTransport, RoundParticipant
from privacy.credential import CredentialIssuer, CredentialWallet, IssuerVerifier
from privacy.keys import KeyEntry
from privacy.policy import RegionPolicy
from privacy.rand import DEFAULT_RANDOMNESS, Randomness
from privacy.round_check import DEFAULT_FLOOR, PrivacyFloor
from privacy.round_wire import RoundClosed, RoundOpen, parse_rounds_message

log = logging.getLogger(__name__)

DeviceContribution = Callable[[str, RoundOpen], np.ndarray]


class DeviceFleet:
    """Simulated devices of one region. Parameters are stored under their own names.

    Parameters
    ----------
    policy
        The region policy (``settings.policy``).
    region
        The fleet's home region; it only ever touches that region's topics.
    devices
        ``device_id -> cohort``.
    contribution
        ``contribution(device_id, round_open) -> vector`` (the learner's builder, or test data).
    data_dir
        Where the shared outbox lives.
    drop
        ``stage -> device ids`` that vanish instead of answering that stage.
    keep_inputs
        Keep each device's quantized input and noise share (for tests' ground truth).
    issuer
        The device-credential issuer (default: the region's, from its key directory).
    """

    def __init__(
        self,
        policy: RegionPolicy,
        region: str,
        devices: Mapping[str, str],
        contribution: DeviceContribution,
        data_dir: str | Path,
        *,
        drop: Mapping[str, Iterable[str]] | None = None,
        keep_inputs: bool = True,
        layout: str = "",
        randomness: Randomness = DEFAULT_RANDOMNESS,
        timeout_s: float = 10.0,
        floor: PrivacyFloor = DEFAULT_FLOOR,
        issuer: CredentialIssuer | None = None,
    ) -> None:
        self.policy = policy
        self.region = region
        self.devices = dict(devices)
        self.contribution = contribution
        self.data_dir = Path(data_dir)
        self.drop = {stage: set(ids) for stage, ids in (drop or {}).items()}
        self.keep_inputs = keep_inputs
        self.layout = layout
        self.randomness = randomness
        self.timeout_s = timeout_s
        self.home = policy.region(region)
        self.gone: dict[str, set[str]] = {}  # round_id -> devices that vanished
        self.members: dict[str, dict[str, int]] = {}  # round_id -> device -> client id
        self._by_cid: dict[str, dict[int, str]] = {}  # round_id -> client id -> device
        self._key: KeyEntry | None = None
        self._outbox = Outbox(self.data_dir / f"fleet-{region}-outbox.db", keep_sent=100_000)
        self._producer = OutboxProducer(
            self._outbox,
            self.home.bootstrap_servers,
            timeout_s=timeout_s,
            topics=[self.home.t.ingest],
            client_id=f"sotto-fleet-{region}",
        )
        transport = OutboxTransport(self.home, self._outbox, self._producer, self._current_key)
        self.issuer = issuer or keystore.credential_issuer(self.home.keyset_dir, region)
        trust = keystore.credential_trust(self.home.keyset_dir, region)
        if issuer is not None:
            trust = IssuerVerifier(region, {issuer.key_id: issuer.public_key}, valid_at=0.0)
        self.participants: dict[str, RoundParticipant] = {
            dev: RoundParticipant(
                region,
                cohort,
                transport,
                (lambda announce, dev=dev: self.contribution(dev, announce)),
                layout=layout,
                randomness=randomness,
                keep_inputs=keep_inputs,
                floor=floor,
                wallet=CredentialWallet(),
                trust=trust,
            )
            for dev, cohort in self.devices.items()
        }
        self._consumer: KafkaConsumer | None = None

    def __repr__(self) -> str:
        return f"DeviceFleet(region={self.region!r}, devices={len(self.devices)})"

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> DeviceFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, wait_s: float = 30.0) -> None:
        """Attach to the end of the rounds topic (it must exist: ingestion creates it)."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.home.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            client_id=f"sotto-fleet-{self.region}",
        )
        topic, deadline = self.home.t.rounds, time.monotonic() + wait_s
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            consumer.close()
            raise RuntimeError(f"rounds topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        for tp in tps:
            consumer.position(tp)  # resolve "end" now, before any round is announced
        self._consumer = consumer

    def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close()
            self._consumer = None
        self._producer.close()
        self._outbox.close()

    def _current_key(self) -> KeyEntry:
        # Read once per pump (see :meth:`pump`): a rotation takes effect on the next pump.
        if self._key is None:
            self._key = keystore.load_keyset(self.home.keyset_dir).current()
        return self._key

    def _enroll(self, device_ids: Sequence[str]) -> None:
        """One fresh credential per device per check-in; expiry rounded to the day (coarse,
        so that it does not tell devices apart)."""
        day = 86_400
        not_after = (int(time.time()) // day + 8) * day
        for d in device_ids:
            wallet = self.participants[d].wallet
            if len(wallet) < 2:
                wallet.add(
                    self.issuer.issue(not_after=not_after, rng=self.randomness) for _ in range(2)
                )

    # -- the simulation -------------------------------------------------------------------
    def checkin(self, device_ids: Sequence[str] | None = None) -> dict[str, str]:
        """Every (or the given) device checks in; returns ``token -> device_id``."""
        self._key = None
        ids = device_ids or list(self.devices)
        self._enroll(ids)
        out = {self.participants[d].checkin(): d for d in ids}
        self._producer.flush_outbox()
        return out

    def pump(self, timeout_ms: int = 200) -> int:
        """Read the rounds topic once, let the devices answer, send; returns replies sent."""
        if self._consumer is None:
            raise RuntimeError("DeviceFleet is not started")
        self._key = None
        replies = 0
        for records in self._consumer.poll(timeout_ms=timeout_ms).values():
            for rec in records:
                try:
                    msg = parse_rounds_message(rec.value)
                except ValidationError:
                    log.warning("rounds topic: unreadable record at offset %d", rec.offset)
                    continue
                replies += self._dispatch(msg)
        if replies:
            self._producer.flush_outbox()
        return replies

    def caught_up(self) -> bool:
        """True when every message on the rounds topic has been read: a driver that moves a
        test clock past a stage deadline waits for this, or it drops devices whose request
        was still on its way to them."""
        if self._consumer is None:
            return False
        tps = list(self._consumer.assignment())
        ends = self._consumer.end_offsets(tps)
        return all(self._consumer.position(tp) >= ends[tp] for tp in tps)

    def _dispatch(self, msg) -> int:  # type: ignore[no-untyped-def]
        rid = msg.round_id
        stage = STAGE_OF.get(msg.type)
        gone = self.gone.setdefault(rid, set())
        if isinstance(msg, RoundOpen):
            targets = [d for d, c in self.devices.items() if c == msg.cohort]
        elif isinstance(msg, RoundClosed):
            targets = list(self.devices)
        else:  # one addressee: look it up (a scan of every device per message is O(n^2))
            owner = self._by_cid.get(rid, {}).get(msg.to)
            targets = [] if owner is None else [owner]
        sent = 0
        for dev in targets:
            if dev in gone:
                continue
            part = self.participants[dev]
            if stage and dev in self.drop.get(stage, ()):
                gone.add(dev)  # vanishes instead of answering this stage
                part.vanish(rid)
                continue
            replied = part.handle(msg)
            if replied and isinstance(msg, RoundOpen):
                cid = part.cid(rid)
                assert cid is not None
                self.members.setdefault(rid, {})[dev] = cid
                self._by_cid.setdefault(rid, {})[cid] = dev
            sent += replied
        return sent

    def run(self, stop: threading.Event, timeout_ms: int = 100) -> None:
        """Pump until ``stop`` is set (for a background thread)."""
        while not stop.is_set():
            self.pump(timeout_ms)

    # -- ground truth for tests -----------------------------------------------------------
    def cids(self, round_id: str) -> dict[str, int]:
        """``device_id -> client id`` of the devices that joined ``round_id``."""
        return dict(self.members.get(round_id, {}))

    def kept(self, round_id: str) -> dict[str, KeptInput]:
        """Inputs that devices fed into ``round_id`` (``keep_inputs``)."""
        return {d: p.kept[round_id] for d, p in self.participants.items() if round_id in p.kept}
