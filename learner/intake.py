"""Is a record on ``<region>.aggregates`` something this region's learner may learn from?

Pure (no Kafka, no DB), like ingestion's validator: bytes and key in, a
:class:`ReleasedAggregate` or a :class:`Refusal` out. Only the region check is a privacy
rule; the rest protect the learner from garbage. A refusal is recorded (``learner_refusals``)
and logged with its reason, never learned from, and never stops the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError

from privacy.wire import ReleasedAggregate

MAX_RELEASE_BYTES = 8 * 1024 * 1024


class RefuseReason(StrEnum):
    """Why the learner refused a record. Stable strings: dashboards and audits key on them."""

    MALFORMED = "malformed"  # not a valid ReleasedAggregate (or oversized)
    WRONG_REGION = "wrong_region"  # a release of another region: never learned from
    KEY_MISMATCH = "key_mismatch"  # record key is not region|cohort|round of its value
    DUPLICATE = "duplicate"  # this (region, cohort, round) was already learned from
    LEARNER_ERROR = "learner_error"  # the cohort learner raised or returned invalid actions


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RefuseReason
    detail: str
    release: ReleasedAggregate | None = None


def check_release(
    key: bytes | None, value: bytes | None, region: str
) -> ReleasedAggregate | Refusal:
    """Parse and check one record of the aggregates topic for the learner of ``region``."""
    if value is None or len(value) > MAX_RELEASE_BYTES:
        return Refusal(RefuseReason.MALFORMED, "empty or oversized record")
    try:
        release = ReleasedAggregate.model_validate_json(value)
        release.vector()  # total must decode to dim finite-shaped values
    except (ValidationError, ValueError) as exc:
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        return Refusal(RefuseReason.MALFORMED, first[:200])
    if release.region != region:
        return Refusal(
            RefuseReason.WRONG_REGION, f"release of {release.region!r} on {region!r}", release
        )
    if key is not None and key != release.key():
        return Refusal(RefuseReason.KEY_MISMATCH, f"key {key[:80]!r} != {release.key()!r}", release)
    return release
