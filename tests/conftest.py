"""Session fixtures: one real Kafka broker and one real PostgreSQL server for the whole run.

If SOTTO_KAFKA_BOOTSTRAP is set, tests use that broker; otherwise a broker is started on a
free port in a temporary directory and stopped at the end. The PostgreSQL server is always
started here (tests stop and restart it), and only by the tests that ask for it; each such
test gets a database of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.kafka_local import LocalKafka, free_ports
from deploy.postgres_local import LocalPostgres


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("SOTTO_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    data_dir = tmp_path_factory.mktemp("kafka")
    port, controller_port = free_ports(2)
    broker = LocalKafka(data_dir=data_dir, port=port, controller_port=controller_port)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A PostgreSQL server for the session, started on first use. Its data dir is a fresh
    directory under /tmp, not pytest's tmp dir: when the suite runs as root the server runs
    as an unprivileged user, who cannot enter pytest's root-only (0700) directories, and the
    unix socket path must stay short. Missing binaries fail the tests, never skip them."""
    data_dir = Path(tempfile.mkdtemp(prefix="sotto-pg-"))
    server = LocalPostgres(data_dir=data_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres, unique: str) -> Iterator[str]:
    """The SQLAlchemy URL of a fresh, empty database on ``postgres_server`` (no schema: the
    services migrate it themselves). Dropped afterwards; the server is started again first
    if the test left it stopped."""
    name = f"t{unique}"
    url = postgres_server.create_database(name)
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):
            postgres_server.start()
            postgres_server.drop_database(name)


@pytest.fixture
def unique() -> str:
    """A short unique token so tests sharing one broker never share topics or groups."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def deployment(tmp_path: Path, kafka_bootstrap: str, unique: str):
    """A fresh two-region (eu, cn) deployment with its own topics, DBs and keys."""
    from deploy.bootstrap import init_deployment
    from deploy.settings import SottoSettings

    home = tmp_path / "sotto"
    text_path = init_deployment(home, ("eu", "cn"), kafka_bootstrap)
    # unique topic names per test: rewrite the prefix through explicit topics tables
    text = text_path.read_text()
    for region in ("eu", "cn"):
        p = f"t{unique}.{region}"
        text = text.replace(
            f"[regions.{region}]\n",
            f"[regions.{region}]\n",
        )
        text += (
            f"\n[regions.{region}.topics]\n"
            f'ingest = "{p}.ingest"\ndead_letter = "{p}.dlq"\naggregates = "{p}.aggregates"\n'
            f'rounds = "{p}.rounds"\nadapters = "{p}.adapters"\n'
        )
    text_path.write_text(text)
    return SottoSettings(home=home, kafka_bootstrap=kafka_bootstrap)
