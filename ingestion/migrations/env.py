"""Alembic environment of ingestion's tables (see :func:`ingestion.db.run_alembic_env`)."""

from ingestion.db import metadata, run_alembic_env

run_alembic_env(metadata)
