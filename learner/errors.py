"""Errors only the learner service raises, under the backend's service errors."""

from __future__ import annotations

from backend.errors import CheckpointError, ServiceError


class StaleLearnerError(CheckpointError):
    """The cohort's stored state moved on since this process loaded it (another learner
    instance committed in between); the cached learner is dropped and reloaded."""


class InvalidActionsError(ServiceError):
    """The cohort learner returned actions the registry cannot record (wrong cohort, a
    rollback to a version it never registered, a release not newer than its parent...).
    A learner bug: the service refuses that release (``learner_error``) and moves on."""
