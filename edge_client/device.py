"""The edge SDK's one facade: record steps, build the round summary, send it home.

A device belongs to exactly one home region. Everything it sends is sealed to that
region's *current* HPKE key and produced to that region's ingest topic on that region's
brokers, all three read from the region policy; there is no parameter that could point a
send at another region, and the producer refuses any topic but the home ingest topic.

``device_id`` labels the local installation only: it is never put in an envelope or a
Kafka record, so the backend cannot link a device's rounds by it. The Kafka record key is
the cohort, which the envelope header already names.

Usage (needs a deployment and a broker, so not a doctest)::

    with EdgeDevice("phone-1", "eu", "cohort-a", policy, data_dir) as device:
        device.record_step(AgentStep.from_autoglm(action, instruction=task,
                                                  outcome="accepted", timestamp=now))
        receipt = device.send_round(7)   # receipt.delivered is False while offline
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from edge_client.context_store import ContextStore
from edge_client.controls import SUMMARY_DEDUPE_PREFIX, DeviceControls
from edge_client.keys import KeySource, resolve
from edge_client.memory import PersonalMemory
from edge_client.outbox import Outbox
from edge_client.producer import OutboxProducer
from edge_client.retention import DEFAULT_RETENTION, RetentionPolicy
from edge_client.sealing import FileKeyProvider, KeyProvider
from edge_client.steps import AgentStep
from edge_client.summary import summarize
from privacy.envelope import parse, seal
from privacy.errors import ConfigError
from privacy.features import context_from_steps
from privacy.keys import KeyEntry, KeySet
from privacy.policy import RegionConfig, RegionPolicy
from privacy.wire import ID_PATTERN, RoundSummary, utcnow

if TYPE_CHECKING:
    from edge_client.round_client import OutboxTransport


class SendReceipt(NamedTuple):
    """What :meth:`EdgeDevice.send_round` did: which envelope, and whether it is acked yet."""

    round: int
    msg_id: str
    topic: str
    delivered: bool


class EdgeDevice:
    """One device of one cohort in one home region.

    Parameters
    ----------
    device_id
        Local label (files, logs); never sent.
    region
        The home region's name in the policy.
    cohort
        The cohort this device aggregates with.
    policy
        The region policy (:class:`privacy.policy.RegionPolicy`): where the home region's
        brokers and topics are.
    data_dir
        Where the context store, the personal memory, the user's controls and the outbox
        live (``context.db``, ``memory.db``, ``controls.db``, ``outbox.db``).
    keyset
        The home region's public key set, or a callable returning the current one (see
        :mod:`edge_client.keys`); default: the published ``keyset.json`` in the region's
        ``keyset_dir``, read at every send, so a key rotation takes effect on the next round.
    max_steps, half_life
        The context window (see :class:`ContextStore`).
    timeout_s
        Bound on each broker interaction (see :class:`OutboxProducer`).
    keys
        Where the master key that seals every store lives (:mod:`edge_client.sealing`);
        default: ``device.key`` (mode 0600) in ``data_dir``. On a phone, a Keystore- or
        Keychain-backed :class:`~edge_client.sealing.KeyProvider`.
    retention
        How long each store keeps what (:class:`~edge_client.retention.RetentionPolicy`).
    """

    def __init__(
        self,
        device_id: str,
        region: str,
        cohort: str,
        policy: RegionPolicy,
        data_dir: str | Path,
        *,
        keyset: KeySource | None = None,
        max_steps: int = 200,
        half_life: timedelta = timedelta(days=7),
        timeout_s: float = 5.0,
        keys: KeyProvider | None = None,
        retention: RetentionPolicy = DEFAULT_RETENTION,
    ) -> None:
        for name, value in (("device_id", device_id), ("cohort", cohort)):
            if not re.fullmatch(ID_PATTERN, value):
                raise ValueError(f"{name} {value!r} must match {ID_PATTERN}")
        self.device_id = device_id
        self.region = region
        self.cohort = cohort
        self.policy = policy
        self.data_dir = Path(data_dir)
        self.keyset = keyset
        self.max_steps = max_steps
        self.half_life = half_life
        self.timeout_s = timeout_s

        self._home: RegionConfig = policy.region(region)  # ConfigError for unknown regions
        if isinstance(keyset, KeySet) and keyset.region != region:
            raise ConfigError(f"key set of {keyset.region!r} given to a device of {region!r}")
        self.retention = retention
        self._keys = keys if keys is not None else FileKeyProvider(self.data_dir / "device.key")
        self._context = ContextStore(
            self.data_dir / "context.db", max_steps, half_life, keys=self._keys, retention=retention
        )
        self._memory = PersonalMemory(
            self.data_dir / "memory.db", keys=self._keys, retention=retention
        )
        self._outbox = Outbox(self.data_dir / "outbox.db", keys=self._keys, retention=retention)
        self.controls = DeviceControls(
            self.data_dir,
            context=self._context,
            memory=self._memory,
            outbox=self._outbox,
            keys=self._keys,
            retention=retention,
        )
        """The user's controls (:class:`~edge_client.controls.DeviceControls`): see, export,
        forget, pause, never record, hint settings. Every recorded step passes them."""
        self._producer = OutboxProducer(
            self._outbox,
            self._home.bootstrap_servers,
            timeout_s=timeout_s,
            topics=[self._home.t.ingest],
        )

    def __repr__(self) -> str:
        return (
            f"EdgeDevice(device_id={self.device_id!r}, region={self.region!r}, "
            f"cohort={self.cohort!r}, data_dir={str(self.data_dir)!r})"
        )

    @property
    def topic(self) -> str:
        """The one topic this device produces to: its home region's ingest topic."""
        return self._home.t.ingest

    @property
    def pending(self) -> int:
        """How many envelopes wait in the outbox for the broker's ack."""
        return len(self._outbox.pending())

    @property
    def memory(self) -> PersonalMemory:
        """This user's on-device launch preferences (never sent): what the hint asks first."""
        return self._memory

    def record_step(self, step: AgentStep) -> bool:
        """Add an agent step to the local context and the memory (typed text is dropped and
        personal data masked first, :meth:`AgentStep.redacted`), unless the user's controls
        refuse it (paused, a never-record app); returns whether it was stored."""
        return self.controls.record_step(step.redacted())  # masked before anything keeps it

    def context_embedding(self, now: datetime | None = None) -> np.ndarray:
        """The current 128-d context for the on-device model: the recent *tasks* of the
        window, one event each (what the user ended up using, what failed), as the model was
        trained (:func:`privacy.features.context_from_steps`), not the taps inside them."""
        now = now or utcnow()
        return context_from_steps((w.step for w in self._context.window(now)), now)

    def build_summary(self, round: int, *, now: datetime | None = None) -> RoundSummary:
        """The summary this device would send for ``round`` given its context at ``now``.

        The content depends on the window only; ``round`` travels in the envelope header.
        It is taken here so that later per-round stages (SecAgg+ masks) slot in unchanged.
        """
        if round < 0:
            raise ValueError("round must be >= 0")
        return summarize(self._context.window(now))

    def current_key(self) -> KeyEntry:
        """The home region's current HPKE key; a key of any other region is refused."""
        keyset = resolve(self.keyset, self._home.keyset_dir)
        key = keyset.current()
        if keyset.region != self.region or key.region != self.region:
            raise ConfigError(
                f"key set at {self._home.keyset_dir} belongs to {keyset.region!r}, "
                f"not the home region {self.region!r}"
            )
        return key

    def send_round(self, round: int, *, now: datetime | None = None) -> SendReceipt:
        """Build, seal, store and send this device's summary for ``round``.

        At most one summary per round: if the outbox already holds this round's envelope
        (say the app died before the broker acked it), that same envelope is sent again
        and no new one is sealed. If the broker is unreachable the envelope stays in the
        outbox and ``delivered`` is false; a later :meth:`flush` or ``send_round`` sends it.
        """
        now = now or utcnow()
        summary = self.build_summary(round, now=now)
        envelope = seal(
            summary, key=self.current_key(), cohort=self.cohort, round=round, sent_at=now
        )
        record_id = self._outbox.put(
            envelope.to_bytes(),
            self.topic,
            self.cohort.encode(),
            dedupe_key=f"{SUMMARY_DEDUPE_PREFIX}{self.region}|{self.cohort}|{round}",
        )
        self._producer.flush_outbox()
        item = self._outbox.get(record_id)
        msg_id = envelope.msg_id
        if item is not None:  # this round's earlier envelope, v1 if sealed before the update
            msg_id = parse(item.value, max_bytes=len(item.value)).msg_id
        return SendReceipt(round, msg_id, self.topic, item is None or item.sent)

    def round_transport(self) -> OutboxTransport:
        """Send SecAgg+ round payloads exactly like summaries: sealed to the home region's
        current key, through this device's outbox and producer, to its ingest topic only."""
        from edge_client.round_client import OutboxTransport

        return OutboxTransport(self._home, self._outbox, self._producer, self.current_key)

    def flush(self) -> int:
        """Retry pending envelopes; returns how many the broker acknowledged now."""
        return self._producer.flush_outbox()

    def close(self) -> None:
        self._producer.close()
        self.controls.close()
        self._outbox.close()
        self._memory.close()
        self._context.close()

    def __enter__(self) -> EdgeDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
