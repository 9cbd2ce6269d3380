"""Errors of Sotto's backend services, under Sotto's one root (:class:`privacy.errors.SottoError`).

None of these is raised for bad *input*: a bad record becomes a dead letter or a refusal row
and the service moves on. These say the service itself could not make a result durable or
publish it, so the work is redone from the last durable offset (or the pending outbox rows are
retried); the service reports them and keeps going.
"""

from __future__ import annotations

from privacy.errors import SottoError


class ServiceError(SottoError):
    """A backend service could not make progress (a local or infrastructure fault)."""


class CheckpointError(ServiceError):
    """A checkpoint step failed; nothing after that step happened, so the work is redone."""


class OffsetFenceError(CheckpointError):
    """The work starts before the stored next offset: another consumer (a zombie or an earlier
    run) already made these records durable. Committing again would count them twice."""


class PublishError(ServiceError):
    """Kafka did not acknowledge every outbox record; the unacknowledged ones stay pending."""
