"""What every Sotto consumer service shares: offsets live in the database, not in Kafka.

:class:`IngestionApp` and :class:`learner.service.LearnerApp` differ in what one batch does;
they agree on everything around it, which lives here once:

- on (re)assignment each partition resumes at the next offset stored in the service's own
  offsets table (written in the same transaction as the results), or at the beginning;
- ``run`` loops until a stop event, ``stop()``, SIGTERM/SIGINT (which only set a flag, so the
  batch in hand is checkpointed first) or ``max_idle_s`` of assigned-but-nothing-to-read
  (a fault being retried is not idleness: a database outage does not end the run);
- ``close`` releases consumer, producer and engine, whatever state they are in;
- a failed batch (database or broker fault) is never skipped: :meth:`DurableConsumerApp.
  failed` rewinds the batch's partitions to the database's offsets and backs off
  (:mod:`backend.retry`); while the database cannot even be read for that rewind, nothing is
  polled (:meth:`DurableConsumerApp.ready` stays false) and the service reports itself not
  ready instead of exiting.

Subclasses set ``_consumer``, ``_producer``, ``_engine``, ``_log``, ``stats``, ``group_id``
and ``_offsets_table``, and implement :meth:`poll_once`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from sqlalchemy import Engine, Table, select

from backend.errors import ServiceError
from backend.retry import RetryPolicy
from backend.storage import reading

RETRY = RetryPolicy()  # infrastructure faults: back off with jitter, retry forever
CLOSE_TIMEOUT_S = 5.0  # the shutdown grace for flushing a producer (docs/deployment.md)


class SeekFromDatabase(ConsumerRebalanceListener):
    """On assignment, resume each partition where the database says, not where Kafka says."""

    def __init__(self, app: DurableConsumerApp) -> None:
        self._app = app

    def on_partitions_revoked(self, revoked: Any) -> None:
        # Until the new assignment arrives the app is rebalancing, not idle (see ``run``). An
        # eager rebalance revokes what is still assigned and always assigns after; a
        # cooperative one (KIP-429) revokes what the new assignment, already in place, left
        # out, and calls ``on_partitions_assigned`` only if something was added: there the
        # rebalance is over, and a flag set now would never be cleared.
        consumer = self._app._consumer
        self._app.rebalancing = consumer is None or bool(set(revoked) & consumer.assignment())
        self._app.on_revoked()
        self._app._log.info("partitions_revoked", n=len(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._app.rebalancing = False
        self._app.on_assigned()
        try:
            self._app.seek_to_durable(assigned)
        except Exception as exc:  # database away: do not read on from Kafka's positions
            self._app.rewind({*(self._app._rewind or ()), *assigned}, exc)
            return
        self._app.sought(assigned)


class DurableConsumerApp:
    name = "service"
    group_id: str
    stats: Any
    _log: Any
    _offsets_table: Table

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._engine: Engine | None = None
        self._producer: KafkaProducer | None = None
        self._consumer: KafkaConsumer | None = None
        self._rewind: list[Any] | None = None  # partitions to seek back before polling again
        self.consecutive_failures = 0
        self.last_failure: str | None = None  # exception type of the latest infrastructure fault
        self.rebalancing = False  # partitions revoked, new assignment not yet received
        self.last_loop_at = time.monotonic()  # the poll loop's heartbeat (liveness)
        self.last_progress_at = time.monotonic()  # last durable checkpoint, or caught up
        self.lag: int | None = None  # records behind the log end, measured by the loop thread
        self._lag_at = 0.0

    # -- lifecycle --------------------------------------------------------------------------
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def before_close(self) -> None:
        """Hook: last words while the producer and engine are still open (best effort)."""

    def close(self) -> None:
        if self._engine is not None and self._producer is not None:
            with contextlib.suppress(Exception):
                self.before_close()
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close(autocommit=False)
            self._consumer = None
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=CLOSE_TIMEOUT_S)
            self._producer = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        self._log.info(f"{self.name}_stopped", **self.stats.as_dict())

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError(f"{type(self).__name__} is not started; use it as a context manager")
        return self._engine

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, checkpoint it and return."""
        self._stop.set()

    def _await_topics(self, topics: list[str], timeout_s: float = 30.0) -> None:
        """Wait until the consumer sees every topic's partitions before joining the group.

        Why: a group joined while a just-created topic has no metadata yet is assigned
        nothing, and kafka-python may then sit in a rebalance that never completes."""
        assert self._consumer is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._consumer.partitions_for_topic(t) for t in topics):
                return
            time.sleep(0.1)
        self._log.warning("topics_without_metadata", topics=topics)

    # -- offsets ----------------------------------------------------------------------------
    def durable_offsets(self) -> dict[tuple[str, int], int]:
        c = self._offsets_table.c
        stmt = select(c.topic, c.partition, c.next_offset).where(c.group_id == self.group_id)
        with reading(self.engine) as conn:
            return {(r.topic, r.partition): int(r.next_offset) for r in conn.execute(stmt)}

    def on_revoked(self) -> None:
        """Hook: drop work in flight on the revoked partitions. Their next owner (perhaps
        this app again) re-reads it from the durable offsets; checkpointing it now would race
        that owner, and the loser of the race would judge the winner's records replays."""

    def on_assigned(self) -> None:
        """Hook: drop anything cached about partitions we may not have owned meanwhile."""

    def seek_to_durable(self, partitions: Any) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        stored = self.durable_offsets()
        for tp in partitions:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        self._log.info(
            "partitions_assigned",
            partitions={
                f"{tp.topic}[{tp.partition}]": stored.get((tp.topic, tp.partition), 0)
                for tp in partitions
            },
        )

    def sought(self, partitions: Any) -> None:
        """``partitions`` were just sought to the durable offsets: a rewind pending for them
        is done (what remains is for partitions kept through a cooperative rebalance)."""
        if self._rewind is None:
            return
        done = set(partitions)
        rest = [tp for tp in self._rewind if tp not in done]
        self._rewind = rest or None

    # -- infrastructure faults --------------------------------------------------------------
    def rewind(self, partitions: Any, exc: BaseException | None = None) -> None:
        """Seek ``partitions`` back to the durable offsets before the next poll."""
        self._rewind = list(partitions)
        if exc is not None:
            self.last_failure = type(exc).__name__
            self._log.warning("rewind_pending", error=type(exc).__name__)

    def failed(self, exc: BaseException, partitions: Any, event: str = "batch_failed") -> None:
        """A batch could not be made durable: report, rewind, back off. Nothing is skipped."""
        self.consecutive_failures += 1
        self.last_failure = type(exc).__name__
        self._log.warning(
            event,
            error=type(exc).__name__,
            detail=str(exc)[:300],
            consecutive=self.consecutive_failures,
        )
        self.rewind(partitions)
        RETRY.sleep(self.consecutive_failures, self._stop)

    def succeeded(self) -> None:
        self.consecutive_failures = 0
        self.last_failure = None
        self.last_progress_at = time.monotonic()

    def _observe(self) -> None:
        """Loop-thread bookkeeping for health: heartbeat, and lag every few seconds (the
        consumer is not thread-safe, so the health endpoint only reads these numbers)."""
        now = time.monotonic()
        self.last_loop_at = now
        if now - self._lag_at < 5.0 or self._consumer is None:
            return
        self._lag_at = now
        try:
            assigned = list(self._consumer.assignment())
            ends = self._consumer.end_offsets(assigned) if assigned else {}
            self.lag = sum(max(0, ends[tp] - self._consumer.position(tp)) for tp in assigned)
        except Exception:  # broker away: lag unknown, which readiness reports
            self.lag = None
        if self.lag == 0:
            self.last_progress_at = now

    def health(self, *, max_lag: int = 100_000, stall_s: float = 120.0) -> dict[str, Any]:
        """Liveness and readiness, truthfully: ``live`` is false when the loop stopped turning;
        ``ready`` is false while a fault is being retried, a checkpoint has not succeeded for
        ``stall_s`` with records waiting, the lag is unknown or above ``max_lag``."""
        now = time.monotonic()
        live = now - self.last_loop_at < stall_s
        problems: list[str] = []
        if not live:
            problems.append(f"loop stalled for {now - self.last_loop_at:.0f}s")
        if self.degraded:
            problems.append(self.degraded)
        if self.lag is None:
            problems.append("lag unknown")
        elif self.lag > max_lag:
            problems.append(f"lag {self.lag} > {max_lag}")
        if self.lag and now - self.last_progress_at > stall_s:
            problems.append(f"no checkpoint for {now - self.last_progress_at:.0f}s with lag")
        return {
            "ok": live and not problems,
            "live": live,
            "ready": not problems,
            "problems": problems,
            "lag": self.lag,
            "consecutive_failures": self.consecutive_failures,
        }

    def ready(self) -> bool:
        """True when the consumer may poll: no rewind is pending (or it just succeeded)."""
        self._observe()
        if self._rewind is None:
            return True
        # only what is still ours: a partition that moved away is sought by its next owner's
        # assignment (seeking it here would raise on every call and the loop would never poll)
        assigned = self._consumer.assignment() if self._consumer is not None else set()
        try:
            self.seek_to_durable([tp for tp in self._rewind if tp in assigned])
        except Exception as exc:
            self.consecutive_failures += 1
            self.last_failure = type(exc).__name__
            self._log.warning(
                "rewind_failed", error=type(exc).__name__, consecutive=self.consecutive_failures
            )
            RETRY.sleep(self.consecutive_failures, self._stop)
            return False
        self._rewind = None
        return True

    @property
    def degraded(self) -> str | None:
        """Why the service is not ready right now (``None`` when it is)."""
        if self._rewind is not None or self.consecutive_failures:
            return f"retrying after {self.last_failure or 'a failure'}"
        return None

    # -- the loop ---------------------------------------------------------------------------
    def poll_once(self, timeout_ms: int | None = None) -> int:
        raise NotImplementedError

    def on_idle(self) -> None:
        """Hook: work to retry while there is nothing to read."""

    def _assigned(self) -> bool:
        return self._consumer is not None and bool(self._consumer.assignment())

    def caught_up(self) -> bool:
        """True once partitions are assigned and every position has reached the log end."""
        consumer = self._consumer
        if consumer is None or self._rewind is not None:  # positions are not the truth yet
            return False
        assigned = consumer.assignment()
        if not assigned:
            return False
        ends = consumer.end_offsets(list(assigned))
        return all(consumer.position(tp) >= ends[tp] for tp in assigned)

    def process_available(self, timeout_s: float = 60.0) -> int:
        """Consume until caught up with the log end (or ``timeout_s``); for tests and benches."""
        deadline = time.monotonic() + timeout_s
        handled = 0
        while time.monotonic() < deadline:
            n = self.poll_once(timeout_ms=200)
            handled += n
            if n == 0 and self.caught_up():
                break
        self.on_idle()
        return handled

    def run(
        self, stop_event: threading.Event | None = None, max_idle_s: float | None = None
    ) -> Any:
        """Run until ``stop_event``/``stop()``/SIGTERM/SIGINT, or ``max_idle_s`` without records.

        A signal only sets a flag: the batch in hand is checkpointed before the loop returns.
        """
        stop = stop_event or self._stop
        with self._signals(stop):
            idle_since = time.monotonic()
            while not stop.is_set() and not self._stop.is_set():
                if self.poll_once() > 0 or not self._assigned():
                    # idle means "assigned and nothing to read": a rebalance that waits for a
                    # killed member's session to expire is not idleness
                    idle_since = time.monotonic()
                    continue
                if self.degraded or self.rebalancing:
                    # nor is a fault being retried (the database down, a checkpoint failing),
                    # nor a rebalance (kafka-python may still report the old assignment):
                    # the records are there, only not yet durable; exiting would leave them
                    idle_since = time.monotonic()
                self.on_idle()
                if max_idle_s is not None and time.monotonic() - idle_since >= max_idle_s:
                    break
        if self.consecutive_failures:
            # stopping while a batch could not be made durable: nothing is lost (it is re-read
            # from the durable offsets next start), but this run did not finish its work
            raise ServiceError(
                f"{self.name} stopped with its last batch not checkpointed "
                f"({self.last_failure}); it is re-read on the next start"
            )
        return self.stats

    @contextlib.contextmanager
    def _signals(self, stop: threading.Event) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def _handler(signum: int, _frame: FrameType | None) -> None:
            self._log.info("stopping", signal=signal.Signals(signum).name)
            stop.set()
            self._stop.set()

        previous = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
