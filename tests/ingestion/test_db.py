"""Migrations run programmatically, are idempotent, and stamp the head revision."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from backend.storage import alembic_config
from ingestion.db import MIGRATIONS_DIR, open_database


def test_migrations_are_idempotent_and_found_by_path(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'r.db'}"
    open_database(url).dispose()
    engine = open_database(url)  # second run: no-op
    tables = set(inspect(engine).get_table_names())
    assert {"consumer_offsets", "seen_messages", "aggregates", "audit_log"} <= tables
    with engine.connect() as conn:
        head = ScriptDirectory.from_config(alembic_config(url, MIGRATIONS_DIR)).get_current_head()
        assert conn.execute(text("select version_num from alembic_version")).scalar() == head
    engine.dispose()
    # shipped inside the package: env.py, the template and the revisions are package files
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert (MIGRATIONS_DIR / "versions" / "__init__.py").is_file()
