"""Per-region ingestion: validate, decrypt, dedupe, dead-letter, aggregate, audit; and the
region's SecAgg+ round coordinator."""

from __future__ import annotations

from privacy.lazy import exports

# name -> defining module; resolved on first use (PEP 562), so importing one submodule
# (say, the settings section) does not import the whole package (say, torch).
_EXPORTS = {
    "Accepted": "ingestion.validator",
    "BatchCheckpoint": "ingestion.checkpoint",
    "IngestSettings": "ingestion.settings",
    "IngestStats": "ingestion.stats",
    "IngestionApp": "ingestion.service",
    "Rejected": "ingestion.validator",
    "RoundCoordinator": "ingestion.coordinator",
    "RoundService": "ingestion.round_service",
    "RoundSpec": "ingestion.round_open",
    "RoundsSettings": "ingestion.settings",
    "Validator": "ingestion.validator",
    "open_database": "ingestion.db",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = exports(__name__, _EXPORTS)
