"""A real single-node Apache Kafka (KRaft: broker + controller in one JVM), run by Sotto.

The broker's jars come from Maven Central through ``deploy/kafka/pom.xml`` (``make kafka``
or :func:`fetch`). :class:`LocalKafka` formats KRaft storage once, starts the JVM in its own
process group, and waits until the broker answers metadata requests, so callers can produce
the moment ``start`` returns. State (pid, port, logs) lives in ``data_dir``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from privacy.errors import SottoError

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"


class KafkaError(SottoError):
    """The local broker could not be fetched, started or stopped."""


def fetch(lib_dir: Path = KAFKA_DIR / "lib", *, quiet: bool = True) -> Path:
    """Copy Kafka's runtime classpath from Maven Central into ``lib_dir`` (once)."""
    if any(lib_dir.glob("kafka_2.13-*.jar")):
        return lib_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaError("Maven (mvn) is not on PATH; install Maven and Java 17+ to fetch Kafka")
    cmd = [mvn, "-B", "-f", str(KAFKA_DIR / "pom.xml"), "package"]
    if quiet:
        cmd.insert(1, "-q")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise KafkaError(
            f"mvn failed fetching Kafka:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    if lib_dir != KAFKA_DIR / "lib":
        shutil.copytree(KAFKA_DIR / "lib", lib_dir, dirs_exist_ok=True)
    return lib_dir


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all sockets held open together, so no repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still "exists"; treat it as dead
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding, never starting
    with "-" (as Kafka's own ``Uuid.randomUuid``): one in 64 did, and the storage tool's
    argument parser read it as a flag ("--cluster-id expected one argument").

    >>> all(not new_cluster_id().startswith("-") for _ in range(1000))
    True
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


@dataclass
class LocalKafka:
    """One broker+controller. ``port`` is the client port; the controller takes ``port + 1``
    unless ``controller_port`` is given."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 0
    lib_dir: Path = KAFKA_DIR / "lib"
    heap: str = "512m"

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if not self.controller_port:
            self.controller_port = self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.log"

    def _properties(self) -> str:
        logs = self.data_dir / "logs"
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={logs}",
                "num.partitions=3",
                "auto.create.topics.enable=true",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=6",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=24",
                "log.cleaner.backoff.ms=2000",
                "message.max.bytes=10485760",
                "",
            ]
        )

    def _java(self, main: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise KafkaError("java is not on PATH; Kafka needs Java 17+")
        return [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{min(256, int(self.heap.rstrip('m')) if self.heap.endswith('m') else 256)}m",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            "-cp",
            f"{self.lib_dir}/*",
            main,
            *args,
        ]

    def _format(self, props: Path) -> None:
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        result = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise KafkaError(f"formatting KRaft storage failed:\n{result.stdout}{result.stderr}")

    def running_pid(self) -> int | None:
        if not self.pid_file.exists():
            return None
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def start(self, timeout_s: float = 90.0) -> LocalKafka:
        """Start (or find already running) and block until the broker serves metadata."""
        if self.running_pid() is not None:
            self.wait_ready(timeout_s)
            return self
        if not any(self.lib_dir.glob("kafka_2.13-*.jar")):
            fetch(self.lib_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(self._properties())
        self._format(props)
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen(
            self._java("kafka.Kafka", str(props)),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.pid_file.write_text(f"{proc.pid} {self.port}\n")
        try:
            self.wait_ready(timeout_s, proc=proc)
        except KafkaError:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float = 90.0, proc: subprocess.Popen | None = None) -> None:
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = (
                    self.log_file.read_text(errors="replace")[-3000:]
                    if self.log_file.exists()
                    else ""
                )
                raise KafkaError(f"Kafka exited with code {proc.returncode}:\n{tail}")
            if _port_open(self.port):
                try:
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.bootstrap, request_timeout_ms=5000
                    )
                    try:
                        admin.list_topics()
                    finally:
                        admin.close()
                    return
                except Exception as exc:  # broker still electing its controller
                    last = exc
            time.sleep(0.3)
        raise KafkaError(f"Kafka on {self.bootstrap} not ready after {timeout_s}s: {last}")

    def status(self) -> dict[str, object]:
        pid = self.running_pid()
        return {
            "running": pid is not None and _port_open(self.port),
            "pid": pid,
            "bootstrap": self.bootstrap,
            "data_dir": str(self.data_dir),
        }

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM the broker's process group, SIGKILL after ``timeout_s``. True if it was running."""
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _pid_alive(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    @classmethod
    def from_data_dir(cls, data_dir: Path, **kwargs: object) -> LocalKafka:
        """Rebuild the handle of a broker started earlier (``status``/``down`` in a new process)."""
        pid_file = Path(data_dir) / "kafka.pid"
        if pid_file.exists() and "port" not in kwargs:
            parts = pid_file.read_text().split()
            if len(parts) >= 2:
                kwargs["port"] = int(parts[1])
        return cls(data_dir=Path(data_dir), **kwargs)  # type: ignore[arg-type]
