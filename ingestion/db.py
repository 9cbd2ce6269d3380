"""The region database: table definitions, engine setup and migrations on startup.

The database is ingestion's source of truth. Results (aggregates, replay ids, audit rows)
and the consumer offsets that produced them are written in one transaction, so after any
crash the service resumes exactly where its last durable result ends: nothing lost, nothing
counted twice. Kafka's own committed offsets are only a mirror for lag dashboards.

Schema changes go through Alembic (``ingestion/migrations``); :func:`migrate` runs them
programmatically with ``sqlalchemy.url`` set to the region's ``database_url``, so any
SQLAlchemy URL works (SQLite by default).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    create_engine,
    event,
)

READONLY = "sotto_readonly"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

metadata = MetaData()

consumer_offsets = Table(
    "consumer_offsets",
    metadata,
    Column("group_id", String(255), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("next_offset", BigInteger, nullable=False),
    PrimaryKeyConstraint("group_id", "topic", "partition"),
)

seen_messages = Table(
    "seen_messages",
    metadata,
    Column("region", String(32), nullable=False),
    Column("msg_id", String(32), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    PrimaryKeyConstraint("region", "msg_id"),
)

aggregates = Table(
    "aggregates",
    metadata,
    Column("region", String(32), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("round", BigInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("vector_sum", LargeBinary, nullable=False),  # little-endian float64[128]
    Column("steps_sum", BigInteger, nullable=False),
    Column("accepted_sum", BigInteger, nullable=False),
    Column("overridden_sum", BigInteger, nullable=False),
    Column("failed_sum", BigInteger, nullable=False),
    Column("action_hist", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("region", "cohort", "round"),
)

# One hash chain per region; (region, seq) is the key so several regions may share a database.
audit_log = Table(
    "audit_log",
    metadata,
    Column("region", String(32), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("ts", String(40), nullable=False),  # ISO-8601 UTC, stored as hashed
    Column("event", String(16), nullable=False),
    Column("reason", String(32)),
    Column("msg_id", String(32)),
    Column("cohort", String(64)),
    Column("round", BigInteger),
    Column("topic", String(255)),
    Column("partition", Integer),
    Column("offset", BigInteger),
    Column("detail", Text),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    PrimaryKeyConstraint("region", "seq"),
)


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


def reading(engine: Engine):  # type: ignore[no-untyped-def]
    """A connection for reads only: on SQLite it does not take the write lock."""
    return engine.connect().execution_options(**{READONLY: True})


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, full fsync and write-locking transactions."""
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        engine = create_engine(url, connect_args={"timeout": 30})
        _sqlite_pragmas(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _ensure_sqlite_dir(url: str) -> None:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def alembic_config(url: str, migrations_dir: Path = MIGRATIONS_DIR):  # type: ignore[no-untyped-def]
    """An Alembic config that finds the migrations by path, so it works from an installed
    package as well as from a checkout (no alembic.ini needed). Each schema owner (ingestion,
    learner) passes its own folder; their env.py files keep separate version tables."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str, engine: Engine | None = None, migrations_dir: Path = MIGRATIONS_DIR) -> None:
    """Upgrade the database at ``url`` to the newest schema of ``migrations_dir`` (idempotent)."""
    from alembic import command

    cfg = alembic_config(url, migrations_dir)
    engine = engine or make_engine(url)
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str) -> Engine:
    """Migrate, then return the engine: what the service calls on startup."""
    engine = make_engine(url)
    migrate(url, engine)
    return engine


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
