"""A real PostgreSQL server, run by Sotto for its tests: the twin of :mod:`deploy.kafka_local`.

Why a real server: ingestion's exactly-once rests on what PostgreSQL does and SQLite does not
(row locks ``FOR UPDATE``, advisory locks around migrations, several replicas writing at
once, connections that die when the server restarts). Those paths are only tested if a
server runs. :class:`LocalPostgres` makes one from the PostgreSQL server binaries (``initdb``,
``pg_ctl``, ``postgres``; found on ``PATH`` or under ``/usr/lib/postgresql/*/bin``), in a data
dir of its own, on a free port, with trust authentication on 127.0.0.1 and its unix socket
inside the data dir, so it never touches a system cluster.

PostgreSQL refuses to run as root. When this process is root, the server binaries run as an
unprivileged user instead (``run_as``, else ``$SOTTO_POSTGRES_USER``, else ``postgres`` or
``nobody``, whichever exists) and the data dir is handed to that user.

``python -m deploy.postgres_local --check`` exits 0 when the binaries are there (what
``make test`` asks before it installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from deploy.kafka_local import _pid_alive, free_port
from privacy.errors import SottoError

SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
FALLBACK_USERS = ("postgres", "nobody")
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# A test server: fsync off because the tests simulate server restarts and kills (which lose
# no committed transaction: the data is in the OS page cache), never a machine crash.
TEST_SETTINGS: dict[str, str] = {"fsync": "off", "max_connections": "200"}


class PostgresError(SottoError):
    """The local PostgreSQL server could not be found, initialized, started or stopped."""


def find_bin_dir() -> Path | None:
    """The directory holding all of ``initdb``, ``pg_ctl`` and ``postgres``, or ``None``.

    ``PATH`` first (symlinks resolved, so ``/usr/local/bin/initdb`` leads to the versioned
    directory that also holds ``postgres``), then ``/usr/lib/postgresql/<newest>/bin``."""
    candidates: list[Path] = []
    for name in SERVER_BINARIES:
        found = shutil.which(name)
        if found:
            candidates.append(Path(found).resolve().parent)
            candidates.append(Path(found).parent)
    versioned = Path("/usr/lib/postgresql").glob("*/bin")

    def version(p: Path) -> tuple[int, str]:
        name = p.parent.name
        return (int(name), name) if name.isdigit() else (-1, name)

    candidates.extend(sorted(versioned, key=version, reverse=True))
    for d in candidates:
        if all(os.access(d / b, os.X_OK) for b in SERVER_BINARIES):
            return d
    return None


def _server_user(run_as: str | None) -> pwd.struct_passwd | None:
    """Who runs the server binaries: ``None`` (this process's user) unless we are root."""
    if os.geteuid() != 0:
        return None
    names = [n for n in (run_as, os.environ.get("SOTTO_POSTGRES_USER")) if n] or list(
        FALLBACK_USERS
    )
    for name in names:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            if entry.pw_uid != 0:
                return entry
    raise PostgresError(
        f"running as root, and none of the users {names} exists to run PostgreSQL as "
        "(PostgreSQL refuses root); create one (useradd) or set SOTTO_POSTGRES_USER"
    )


@dataclass
class LocalPostgres:
    """One PostgreSQL server in ``data_dir`` (``pgdata/`` the cluster, ``run/`` its unix
    socket, ``postgres.log`` its log). ``port`` 0 picks a free one, kept across restarts so
    clients' URLs stay valid."""

    data_dir: Path
    port: int = 0
    database: str = "sotto"
    superuser: str = "sotto"
    bin_dir: Path | None = None
    run_as: str | None = None
    settings: dict[str, str] = field(default_factory=lambda: dict(TEST_SETTINGS))

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if not self.port:
            self.port = free_port()
        if not _DB_NAME.match(self.database):
            raise PostgresError(f"invalid database name {self.database!r}")

    # -- where things are ---------------------------------------------------------------------
    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of :attr:`database` (psycopg 3)."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def _conninfo(self, database: str) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={self.superuser} dbname={database} "
            "connect_timeout=3"
        )

    # -- running the binaries ------------------------------------------------------------------
    def _bin(self, name: str) -> str:
        if self.bin_dir is None:
            self.bin_dir = find_bin_dir()
            if self.bin_dir is None:
                raise PostgresError(
                    "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH "
                    "or under /usr/lib/postgresql/*/bin; install them (apt-get install "
                    "postgresql) or run `make test`, which does"
                )
        return str(self.bin_dir / name)

    def _run(self, *cmd: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the server user, from inside the data dir, without the
        caller's ``PG*`` variables (a stray ``PGDATA`` or ``PGPORT`` must not redirect it)."""
        user = _server_user(self.run_as)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            env["HOME"] = str(self.data_dir)
        return subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            env=env,
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            timeout=timeout_s,
            **kwargs,
        )

    def _prepare_dir(self) -> None:
        """Create the data dir and, when root, hand it to the server user (and check that user
        can reach it: a data dir under a root-only 0700 directory would fail later, obscurely)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        user = _server_user(self.run_as)
        if user is None:
            return
        for p in (self.data_dir, self.socket_dir):
            os.chown(p, user.pw_uid, user.pw_gid)
        if self._run("test", "-w", str(self.data_dir), "-a", "-w", str(self.socket_dir)).returncode:
            raise PostgresError(
                f"user {user.pw_name} cannot write {self.data_dir}: one of its parent "
                "directories is closed to it; put the data dir somewhere it can reach (e.g. /tmp)"
            )

    def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        result = self._run(
            self._bin("initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            self.superuser,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        if result.returncode != 0:
            raise PostgresError(f"initdb failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        # only local connections, all trusted: a throwaway server on the loopback interface
        (self.pgdata / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        )
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write("\ninclude 'sotto.conf'\n")

    def _write_conf(self) -> None:
        """Listen address, port, socket dir and settings, rewritten at every start."""
        lines = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            **{
                k: v if v.replace(".", "").isdigit() else f"'{v}'" for k, v in self.settings.items()
            },
        }
        conf = self.pgdata / "sotto.conf"
        conf.write_text("".join(f"{k} = {v}\n" for k, v in lines.items()))
        user = _server_user(self.run_as)
        if user is not None:
            for p in (conf, self.pgdata / "pg_hba.conf"):
                os.chown(p, user.pw_uid, user.pw_gid)

    # -- lifecycle ----------------------------------------------------------------------------
    def running_pid(self) -> int | None:
        """The postmaster's pid if it is alive (from ``postmaster.pid``)."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def start(self, timeout_s: float = 60.0) -> LocalPostgres:
        """Initialize once, start (or find running) and block until it accepts connections
        and :attr:`database` exists."""
        if self.running_pid() is None:
            self._prepare_dir()
            self._initdb()
            self._write_conf()
            result = self._run(
                self._bin("pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(timeout_s)),
                "start",
                timeout_s=timeout_s + 10,
            )
            if result.returncode != 0:
                raise PostgresError(
                    f"pg_ctl start failed:\n{result.stdout[-1000:]}{result.stderr[-1000:]}\n"
                    f"{self._log_tail()}"
                )
        self.wait_ready(timeout_s)
        self._ensure_database(self.database)
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until a connection over TCP succeeds (``pg_ctl -w`` only proves the socket)."""
        import psycopg

        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self._conninfo("postgres")) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as exc:  # starting up, or recovering after a kill
                last = exc
            time.sleep(0.2)
        raise PostgresError(
            f"PostgreSQL on port {self.port} not ready after {timeout_s}s: {last}\n"
            f"{self._log_tail()}"
        )

    def stop(self, timeout_s: float = 30.0, mode: str = "fast") -> bool:
        """Stop the server (``fast``: roll back open transactions and disconnect clients;
        ``immediate``: a crash, recovered at the next start). True if it was running."""
        pid = self.running_pid()
        if pid is None:
            return False
        result = self._run(
            self._bin("pg_ctl"),
            "-D",
            str(self.pgdata),
            "-m",
            mode,
            "-w",
            "-t",
            str(int(timeout_s)),
            "stop",
            timeout_s=timeout_s + 10,
        )
        if result.returncode != 0 and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        return True

    def restart(self, timeout_s: float = 60.0) -> LocalPostgres:
        self.stop(timeout_s)
        return self.start(timeout_s)

    def status(self) -> dict[str, object]:
        pid = self.running_pid()
        return {
            "running": pid is not None,
            "pid": pid,
            "url": self.url,
            "data_dir": str(self.data_dir),
        }

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases ----------------------------------------------------------------------------
    def _admin(self, statement: str, name: str) -> None:
        import psycopg
        from psycopg import sql

        if not _DB_NAME.match(name):
            raise PostgresError(f"invalid database name {name!r}")
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL(statement).format(sql.Identifier(name)))

    def _ensure_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self._conninfo("postgres")) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
        if not exists:
            self._admin("CREATE DATABASE {}", name)

    def create_database(self, name: str) -> str:
        """Create an empty database ``name``; returns its SQLAlchemy URL."""
        self._admin("CREATE DATABASE {}", name)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting whoever is still connected to it."""
        self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    def _log_tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text(errors="replace")[-n:]
        return ""


def main(argv: list[str] | None = None) -> int:
    """``--check``: exit 0 if the server binaries are found (their directory is printed)."""
    parser = argparse.ArgumentParser(prog="python -m deploy.postgres_local")
    parser.add_argument("--check", action="store_true", help="find the server binaries")
    parser.parse_args(argv)
    found = find_bin_dir()
    if found is None:
        print("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found", file=sys.stderr)
        return 1
    print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
