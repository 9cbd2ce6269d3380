"""Alembic environment of ingestion's tables (see :func:`backend.storage.run_alembic_env`)."""

from backend.storage import run_alembic_env
from ingestion.db import metadata

run_alembic_env(metadata)
