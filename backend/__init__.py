"""Sotto's backend kernel: what every backend service shares, once.

Storage engine and migration runner, the durable consumer application, the checkpoint, the
transactional outbox, the key store, observability and the retry policy. Imports :mod:`privacy`
only; ingestion/ and learner/ build on it."""

from __future__ import annotations

from privacy.lazy import exports

# name -> defining module; resolved on first use (PEP 562), so importing one submodule
# (say, the settings section) does not import the whole package (say, torch).
_EXPORTS = {
    "Checkpoint": "backend.checkpoint",
    "CheckpointError": "backend.errors",
    "CheckpointStatus": "backend.checkpoint",
    "DurableConsumerApp": "backend.consumer_app",
    "OffsetFenceError": "backend.errors",
    "OutboundRecord": "backend.outbox",
    "TransactionalOutbox": "backend.outbox",
    "PublishError": "backend.errors",
    "RetryPolicy": "backend.retry",
    "SeekFromDatabase": "backend.consumer_app",
    "ServiceError": "backend.errors",
    "configure_logging": "backend.observability",
    "make_engine": "backend.storage",
    "migrate": "backend.storage",
    "offsets_table": "backend.checkpoint",
    "reading": "backend.storage",
    "run_alembic_env": "backend.storage",
    "serve_service": "backend.observability",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = exports(__name__, _EXPORTS)
