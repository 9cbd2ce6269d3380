"""Device side of the adapters topic: read it, verify, install or stage, roll back.

Two halves, so a simulation can feed many devices from one consumer:

* :class:`AdapterFeed` reads the region's compacted adapters topic from the beginning (no
  consumer group: every device wants every record) and turns records into items —
  :class:`~privacy.adapter_manifest.SignedAdapter`, :class:`~privacy.adapter_plan.AdapterPlan`, or
  :class:`Withdrawn` (a tombstone). Records that parse as none of these are counted in
  ``feed.stats`` and skipped; the feed never raises for bad records.
* :func:`apply` hands one item to one :class:`~edge_client.runtime.DeviceModel`. Trust comes
  only from the signature, which ``DeviceModel`` checks before anything else; the record key
  and headers are never trusted. What a signed release does depends on its *signed*
  ``rollout_fraction``: ``0`` is a shadow candidate (every device stages it, none runs it),
  anything else is offered (canary by stable device hash, ``1`` is everyone). A signed
  rollback applies to devices on its parent version. Plans and tombstones are unsigned, so
  they can only make a device discard its staged candidate, never run something new.

A refusal is an outcome, not an exception: forged, tampered or foreign records are counted
(``SyncStats``) and the device keeps running what it had.

>>> Outcome.INSTALLED.value
'installed'
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from pydantic import ValidationError

from edge_client.runtime import DeviceModel
from privacy.adapter_manifest import (
    ALL_COHORTS,
    AdapterRejected,
    AdapterRejectReason,
    SignedAdapter,
    verify,
)
from privacy.adapter_plan import AdapterPlan


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """A tombstone for ``cohort|version``: the publisher withdrew that version."""

    cohort: str
    version: int


FeedItem = SignedAdapter | AdapterPlan | Withdrawn


class Outcome(StrEnum):
    """What :func:`apply` did. Stable strings: device metrics key on them."""

    INSTALLED = "installed"  # now live (release in this device's rollout, or a rollback)
    STAGED = "staged"  # held as the shadow candidate
    NOT_IN_ROLLOUT = "not_in_rollout"  # a canary this device is not part of
    ALREADY = "already"  # this version is already live / staged here
    SUPERSEDED = "superseded"  # signed, but older than what the device has had
    NOT_APPLICABLE = "not_applicable"  # a rollback from a version this device is not on
    OTHER_COHORT = "other_cohort"  # for another cohort: ignored
    DISCARDED = "discarded"  # staged candidate dropped (withdrawn, or not in the plan)
    NOTED = "noted"  # a plan or tombstone that changes nothing here
    REJECTED = "rejected"  # refused: forged, tampered, wrong region/base, unusable


@dataclass(frozen=True, slots=True)
class Applied:
    outcome: Outcome
    version: int | None = None
    reason: str = ""  # AdapterRejectReason value when REJECTED


@dataclass
class SyncStats:
    """Counts of feed records and apply outcomes (never raised, always counted)."""

    records: int = 0
    malformed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)


def parse_record(key: bytes | None, value: bytes | None) -> FeedItem | None:
    """One adapters-topic record as a feed item, or None if it is none of them."""
    if value is None:
        return _tombstone(key)
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    try:
        if "manifest" in obj:
            return SignedAdapter.model_validate(obj)
        return AdapterPlan.model_validate(obj)
    except ValidationError:
        return None


def _tombstone(key: bytes | None) -> Withdrawn | None:
    try:
        cohort, version = (key or b"").decode().rsplit("|", 1)
        return Withdrawn(cohort, int(version))
    except (ValueError, UnicodeDecodeError):
        return None


class AdapterFeed:
    """Reads a region's adapters topic from the beginning, for any number of devices."""

    def __init__(self, bootstrap: str | list[str], topic: str, **consumer_config: Any) -> None:
        self.topic = topic
        self.stats = SyncStats()
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="sotto-device-adapters",
            **consumer_config,
        )
        self._assigned: list[TopicPartition] = []

    def _assign(self) -> bool:
        if self._assigned:
            return True
        partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            return False
        self._assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._assigned)
        self._consumer.seek_to_beginning(*self._assigned)
        return True

    def poll(self, timeout_ms: int = 500) -> list[FeedItem]:
        """Items that arrived since the last poll, in each partition's order."""
        if not self._assign():
            return []
        batch = self._consumer.poll(timeout_ms=timeout_ms)
        items: list[FeedItem] = []
        for tp in sorted(batch, key=lambda t: t.partition):
            for record in batch[tp]:
                self.stats.records += 1
                item = parse_record(record.key, record.value)
                if item is None:
                    self.stats.malformed += 1
                else:
                    items.append(item)
        return items

    def caught_up(self) -> bool:
        if not self._assign():
            return False
        ends = self._consumer.end_offsets(self._assigned)
        return all(self._consumer.position(tp) >= ends[tp] for tp in self._assigned)

    def poll_all(self, timeout_s: float = 10.0) -> list[FeedItem]:
        """Everything up to the current end of the topic (for simulations and tests)."""
        deadline = time.monotonic() + timeout_s
        items: list[FeedItem] = []
        while time.monotonic() < deadline:
            items += self.poll(timeout_ms=200)
            if self.caught_up():
                break
        return items

    def close(self) -> None:
        self._consumer.close(autocommit=False)

    def __enter__(self) -> AdapterFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def apply(device: DeviceModel, item: FeedItem, stats: SyncStats | None = None) -> Applied:
    """Apply one feed item to ``device``; never raises for anything the topic carries."""
    if isinstance(item, SignedAdapter):
        result = _apply_signed(device, item)
    elif isinstance(item, AdapterPlan):
        result = _apply_plan(device, item)
    else:
        result = _apply_withdrawn(device, item)
    if stats is not None:
        stats.outcomes[result.outcome.value] += 1
        if result.outcome is Outcome.REJECTED:
            stats.rejected[result.reason] += 1
    return result


def _apply_signed(device: DeviceModel, signed: SignedAdapter) -> Applied:
    m = signed.manifest
    if m.cohort not in (device.cohort, ALL_COHORTS):
        return Applied(Outcome.OTHER_COHORT, m.version)
    try:
        if m.kind == "rollback":
            device.install(signed)
            return Applied(Outcome.INSTALLED, m.version)
        if m.version == device.live_version:
            return _verified(device, signed, Outcome.ALREADY)
        if m.rollout_fraction == 0.0:
            if m.version == device.candidate_version:
                return _verified(device, signed, Outcome.ALREADY)
            device.stage(signed)
            return Applied(Outcome.STAGED, m.version)
        if device.device_id is None:  # no stable id: only full rollouts reach it
            if m.rollout_fraction < 1.0:
                return Applied(Outcome.NOT_IN_ROLLOUT, m.version)
            device.install(signed)
            return Applied(Outcome.INSTALLED, m.version)
        installed = device.offer(signed)
        return Applied(Outcome.INSTALLED if installed else Outcome.NOT_IN_ROLLOUT, m.version)
    except AdapterRejected as exc:
        if exc.reason is AdapterRejectReason.DOWNGRADE:
            return Applied(Outcome.SUPERSEDED, m.version, exc.reason.value)
        if exc.reason is AdapterRejectReason.ROLLBACK_NOT_APPLICABLE:
            return Applied(Outcome.NOT_APPLICABLE, m.version, exc.reason.value)
        return Applied(Outcome.REJECTED, m.version, exc.reason.value)


def _verified(device: DeviceModel, signed: SignedAdapter, outcome: Outcome) -> Applied:
    """A no-op answer still needs a valid signature, or a forgery would read as 'already'."""
    try:
        # the device's trust anchor; DeviceModel has no public accessor for it yet
        verify(signed, device._key)
    except AdapterRejected as exc:
        return Applied(Outcome.REJECTED, signed.manifest.version, exc.reason.value)
    return Applied(outcome, signed.manifest.version)


def _apply_plan(device: DeviceModel, plan: AdapterPlan) -> Applied:
    if plan.cohort != device.cohort:
        return Applied(Outcome.OTHER_COHORT)
    staged = device.candidate_version
    if staged is not None and plan.shadow_version != staged:
        device.discard_candidate()
        return Applied(Outcome.DISCARDED, staged)
    return Applied(Outcome.NOTED, plan.shadow_version)


def _apply_withdrawn(device: DeviceModel, item: Withdrawn) -> Applied:
    if item.cohort != device.cohort:
        return Applied(Outcome.OTHER_COHORT, item.version)
    if device.candidate_version == item.version:
        device.discard_candidate()
        return Applied(Outcome.DISCARDED, item.version)
    return Applied(Outcome.NOTED, item.version)
