"""Alembic environment of the learner's tables: its own version table
(``learner_alembic_version``) so it shares the region database with ingestion's migrations
without either seeing the other's revisions (see :func:`backend.storage.run_alembic_env`)."""

from backend.storage import run_alembic_env
from learner.registry import VERSION_TABLE, metadata

run_alembic_env(metadata, VERSION_TABLE)
