"""Errors of the ingestion service, under Sotto's one root exception."""

from __future__ import annotations

from privacy.errors import SottoError


class IngestionError(SottoError):
    """The ingestion service could not make progress (local fault, not bad input)."""


class CheckpointError(IngestionError):
    """A checkpoint step failed; nothing after that step happened, so the batch is redone."""


class OffsetFenceError(CheckpointError):
    """The batch starts before the stored next offset: another consumer (or an earlier run)
    already made these records durable. Committing would count them twice, so we refuse."""
