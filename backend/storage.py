"""The backend's storage engine and migration runner: one way to open and migrate a database.

Every backend service (ingestion, coordinator, learner) keeps its results and the consumer
offsets that produced them in one SQLAlchemy database, so engine setup (SQLite pragmas, the
write lock taken up front, pool pre-ping on servers) and migrations must behave the same for
all of them. Each schema owner keeps its tables and its Alembic folder; this module runs them.

On PostgreSQL, :func:`migrate` holds a transaction-scoped advisory lock while it upgrades, so
replicas that start together on a fresh database do not race in Alembic (one migrates, the
others wait and then find the schema current).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, event, text

READONLY = "sotto_readonly"


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL + full sync: a commit is on disk before we acknowledge offsets to anyone.

    pysqlite also opens transactions lazily (only before DML), so a read-then-write
    transaction could interleave with another writer. We take the write lock up front with
    ``BEGIN IMMEDIATE``: the audit chain head and the offset fence are read under it.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        readonly = conn.get_execution_options().get(READONLY, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


_INSERTS: dict[tuple[Table, tuple[str, ...]], tuple[str, tuple[str, ...]] | None] = {}


def insert_many(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """``conn.execute(table.insert(), rows)``, cheaper on SQLite's hot paths.

    Why: SQLAlchemy processes every row's parameters in Python before handing the batch to the
    driver (2-3 µs a row, about a tenth of ingestion's main process). On SQLite, a table whose
    columns need no bind conversion is written with the compiled statement and plain tuples
    through the driver's ``executemany``. Other dialects keep SQLAlchemy's path, whose bulk
    ``INSERT ... VALUES`` batching on PostgreSQL beats ``executemany``. The choice is made once
    per (table, columns) and cached (``None``: SQLAlchemy's path)."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(table.insert(), rows)
        return
    keys = tuple(rows[0])
    if (table, keys) not in _INSERTS:
        compiled = table.insert().compile(dialect=conn.dialect, column_keys=list(keys))
        order = tuple(compiled.positiontup or ())
        processors = compiled._bind_processors  # conversions the fast path would skip
        plain = set(order) == set(keys) and not any(processors.get(k) for k in order)
        _INSERTS[(table, keys)] = (compiled.string, order) if plain else None
    fast = _INSERTS[(table, keys)]
    if fast is None:
        conn.execute(table.insert(), rows)
        return
    sql, order = fast
    conn.exec_driver_sql(sql, [tuple(row[k] for k in order) for row in rows])


def reading(engine: Engine):  # type: ignore[no-untyped-def]
    """A connection for reads only: on SQLite it does not take the write lock."""
    return engine.connect().execution_options(**{READONLY: True})


def with_driver(url: str) -> str:
    """``url`` with psycopg (3) named as the driver when it names none for PostgreSQL.

    Why: ``postgresql://user@host/db`` (the form libpq and docs/configuration.md use) makes
    SQLAlchemy load psycopg2, which Sotto does not install (the server extra brings
    ``psycopg[binary]``), and ``postgres://`` is refused outright; both would stop a service
    at startup with an import error instead of connecting.

    >>> with_driver("postgresql://sotto@db-eu/sotto")
    'postgresql+psycopg://sotto@db-eu/sotto'
    >>> with_driver("sqlite:///eu.db")
    'sqlite:///eu.db'
    """
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    return url


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, full fsync and write-locking transactions."""
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        engine = create_engine(url, connect_args={"timeout": 30})
        _sqlite_pragmas(engine)
        return engine
    # a connect that hangs, or a server that vanished without a reset, must fail in bounded
    # time: a replica's rebalance listener reads offsets from here while heartbeats wait
    pg_args = {
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    return create_engine(with_driver(url), pool_pre_ping=True, connect_args=pg_args)


def _ensure_sqlite_dir(url: str) -> None:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def alembic_config(url: str, migrations_dir: Path) -> Any:
    """An Alembic config that finds the migrations by path, so it works from an installed
    package as well as from a checkout (no alembic.ini needed). Each schema owner (ingestion,
    learner) passes its own folder; their env.py files keep separate version tables."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _advisory_lock(conn: Connection, migrations_dir: Path) -> None:
    """Serialize concurrent upgrades of one schema owner on PostgreSQL (released at commit)."""
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(
            f"sotto-migrate:{migrations_dir.name}:{migrations_dir.parent.name}".encode()
        )
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def migrate(url: str, migrations_dir: Path, engine: Engine | None = None) -> None:
    """Upgrade the database at ``url`` to the newest schema of ``migrations_dir`` (idempotent)."""
    from alembic import command

    cfg = alembic_config(url, migrations_dir)
    owned = engine is None
    engine = engine or make_engine(url)
    try:
        with engine.begin() as conn:
            _advisory_lock(conn, migrations_dir)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        if owned:
            engine.dispose()


def run_alembic_env(target: MetaData, version_table: str = "alembic_version") -> None:
    """The body of every schema owner's Alembic ``env.py``: online migrations only, on the
    connection :func:`migrate` hands in, or on an engine built from ``sqlalchemy.url``.
    Each owner keeps its own ``version_table`` so several can share one region database."""
    from alembic import context

    if context.is_offline_mode():
        raise SystemExit("offline (SQL script) migrations are not supported; run them online")
    config = context.config

    def run(connection) -> None:  # type: ignore[no-untyped-def]
        context.configure(
            connection=connection,
            target_metadata=target,
            version_table=version_table,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()

    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as conn:
            run(conn)
    finally:
        engine.dispose()
