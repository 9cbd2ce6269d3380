"""Find or start the Kafka broker a demo or benchmark runs against."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deploy.kafka_local import LocalKafka, free_ports


@contextmanager
def broker(data_dir: Path, bootstrap: str | None = None) -> Iterator[str]:
    """Yield a bootstrap address: ``bootstrap``, else ``SOTTO_KAFKA_BOOTSTRAP``, else a broker
    started here on a free port in ``data_dir`` (and stopped on exit)."""
    external = bootstrap or os.environ.get("SOTTO_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    port, controller_port = free_ports(2)
    local = LocalKafka(data_dir=data_dir, port=port, controller_port=controller_port)
    local.start()
    try:
        yield local.bootstrap
    finally:
        local.stop()
