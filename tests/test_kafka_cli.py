"""`sotto kafka up/status/down` manage a real broker end to end."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from deploy.kafka_local import free_ports

SOTTO = [sys.executable, "-m", "deploy"]


def _sotto(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SOTTO, *args], capture_output=True, text=True, timeout=timeout)


def _port_with_free_successor() -> int:
    for port in free_ports(16):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def test_kafka_up_status_down(tmp_path: Path) -> None:
    data = tmp_path / "k"
    port = _port_with_free_successor()  # the CLI's controller listens on port + 1
    up = _sotto("kafka", "up", "--port", str(port), "--data-dir", str(data))
    assert up.returncode == 0, up.stderr
    try:
        assert up.stdout.strip().endswith(f"127.0.0.1:{port}")
        st = _sotto("kafka", "status", "--data-dir", str(data), "--json")
        assert st.returncode == 0 and '"running": true' in st.stdout
        # the broker is real: a record round-trips
        prod = KafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", acks="all")
        prod.send("cli-smoke", b"hello").get(timeout=30)
        prod.close()
        cons = KafkaConsumer(
            "cli-smoke",
            bootstrap_servers=f"127.0.0.1:{port}",
            auto_offset_reset="earliest",
            consumer_timeout_ms=10000,
        )
        assert [m.value for m in cons] == [b"hello"]
        cons.close()
    finally:
        down = _sotto("kafka", "down", "--data-dir", str(data))
    assert down.returncode == 0
    st = _sotto("kafka", "status", "--data-dir", str(data))
    assert st.returncode == 1
