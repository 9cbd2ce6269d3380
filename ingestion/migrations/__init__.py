"""Alembic migrations of the region database (run by :func:`ingestion.db.migrate`)."""
