"""Drains the outbox into Kafka with an idempotent producer, and never crashes on an outage.

The producer runs with ``acks="all"`` and ``enable_idempotence=True`` (kafka-python 3 supports
the idempotent producer: the broker drops duplicates of a batch the producer retried, so the
client's own retries add no copies). That covers retries *within* a session; copies made by
resending after a crash are caught by ingestion, which dedupes by ``msg_id``.

A record is marked sent only after its future resolved, i.e. after every in-sync replica
has it. When the broker is unreachable, connecting, sending and waiting are all bounded by
``timeout_s``; the records stay pending and the next :meth:`OutboxProducer.flush_outbox`
tries again with a fresh connection.

Topics are the region's: this producer only ever writes the topics stored in the outbox,
which the device fills with its home region's ingest topic and nothing else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError

from edge_client.outbox import Outbox, OutboxItem

log = logging.getLogger(__name__)


class OutboxProducer:
    """Send an :class:`Outbox`'s pending records to ``bootstrap_servers``.

    Parameters
    ----------
    outbox
        Where the records wait.
    bootstrap_servers
        The home region's brokers.
    timeout_s
        Upper bound for connecting, for blocking in ``send`` and for waiting on acks.
    batch
        At most this many records per :meth:`flush_outbox` call.
    client_id
        Kafka client id; it names no device, only the SDK.
    topics
        If given, the only topics this producer writes; records for any other topic stay
        pending (and are logged), so an outbox reused under another region cannot leak.
    """

    def __init__(
        self,
        outbox: Outbox,
        bootstrap_servers: Sequence[str],
        timeout_s: float = 5.0,
        batch: int = 500,
        client_id: str = "sotto-edge",
        topics: Iterable[str] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.outbox = outbox
        self.bootstrap_servers = list(bootstrap_servers)
        self.timeout_s = timeout_s
        self.batch = batch
        self.client_id = client_id
        self.topics = None if topics is None else frozenset(topics)
        self._producer: KafkaProducer | None = None

    def __repr__(self) -> str:
        return (
            f"OutboxProducer(bootstrap_servers={self.bootstrap_servers!r}, "
            f"timeout_s={self.timeout_s}, batch={self.batch})"
        )

    def _connect(self) -> KafkaProducer:
        if self._producer is None:
            ms = int(self.timeout_s * 1000)
            self._producer = KafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self.client_id,
                acks="all",
                enable_idempotence=True,
                bootstrap_timeout_ms=ms,
                max_block_ms=ms,
                request_timeout_ms=ms,
                delivery_timeout_ms=2 * ms,
                retry_backoff_ms=100,
                reconnect_backoff_max_ms=ms,
                linger_ms=0,
            )
        return self._producer

    def _drop(self) -> None:
        """Forget a producer that failed; records it still buffers may arrive (dedupe by id)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception:  # closing a broken client must not mask the outage
                log.debug("closing a failed producer raised", exc_info=True)

    def flush_outbox(self) -> int:
        """Send pending records; return how many the broker acknowledged now.

        Records not acknowledged within ``timeout_s`` (broker down, topic missing, network
        gone) stay pending. Never raises for a broker-side problem.
        """
        delivered = 0
        while True:
            items = self.outbox.pending(limit=self.batch, topics=self.topics)
            if not items:
                break
            acked = self._send(items)
            self.outbox.mark_sent(acked)
            delivered += len(acked)
            if len(acked) < len(items) or len(items) < self.batch:
                break
        if self.topics is not None:
            stray = [i for i in self.outbox.pending() if i.topic not in self.topics]
            if stray:
                log.warning(
                    "outbox: %d record(s) for topics other than %s left unsent",
                    len(stray),
                    sorted(self.topics),
                )
        return delivered

    def _send(self, items: list[OutboxItem]) -> list[int]:
        self.outbox.note_attempt(item.id for item in items)
        try:
            producer = self._connect()
        except KafkaError as exc:
            log.info("outbox: broker unreachable (%s); %d record(s) stay pending", exc, len(items))
            self._drop()
            return []
        deadline = time.monotonic() + self.timeout_s
        futures = []
        failed = False
        for item in items:
            try:
                futures.append((item.id, producer.send(item.topic, key=item.key, value=item.value)))
            except KafkaError as exc:
                log.info("outbox: send to %s failed (%s)", item.topic, exc)
                failed = True
                break
        acked: list[int] = []
        for record_id, future in futures:
            try:
                future.get(timeout=max(deadline - time.monotonic(), 0.05))
                acked.append(record_id)
            except KafkaError as exc:
                log.info("outbox: record %d not acknowledged (%s)", record_id, exc)
                failed = True
        if failed:
            self._drop()
        return acked

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=self.timeout_s)

    def __enter__(self) -> OutboxProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
