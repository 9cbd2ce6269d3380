"""Errors of the learner service, under Sotto's one root exception.

None of these is raised for bad *input*: a bad record becomes a refusal row and the service
moves on. These say the service itself could not make a result durable, so the record is
re-read from the last durable offset and tried again.
"""

from __future__ import annotations

from privacy.errors import SottoError


class LearnerServiceError(SottoError):
    """The learner service could not make progress (a local fault, not bad input)."""


class CheckpointError(LearnerServiceError):
    """A checkpoint step failed; nothing of it is durable, so the record is redone."""


class OffsetFenceError(CheckpointError):
    """The record is before the stored next offset: it is already durable (a zombie consumer
    or a re-read). Committing it again would learn it twice, so we refuse."""


class StaleLearnerError(CheckpointError):
    """The cohort's stored state moved on since this process loaded it (another learner
    instance committed in between); the cached learner is dropped and reloaded."""


class PublishError(LearnerServiceError):
    """The adapters topic did not acknowledge every outbox record; they stay pending."""


class InvalidActionsError(LearnerServiceError):
    """The cohort learner returned actions the registry cannot record (wrong cohort, a
    rollback to a version it never registered, a release not newer than its parent...).
    A learner bug: the service refuses that release (``learner_error``) and moves on."""
