"""Validation on all cores: a process pool that turns records into verdicts.

Why processes: HPKE open (``cryptography``) and pydantic hold the GIL, so threads add nothing;
decryption and validation are pure (bytes in, verdict out), so they move to worker processes
while the main process keeps everything stateful: consumption, ordering, the bulk replay
check, the one database transaction per batch and the commit. Exactly-once therefore does not
depend on the pool at all: a verdict is a pure function of the record's bytes, topic and the
keyring, so redoing a chunk (after a worker died) gives the same verdicts.

Each worker builds its own :class:`~ingestion.validator.Validator` from picklable inputs
(:class:`WorkerSpec`: region, policy, key set, raw private keys). Records travel in chunks
(``worker_chunk_records``) to amortize the IPC; verdicts come back in order.

Faults: a worker that dies, or that is stuck past ``worker_timeout_s`` (then all workers are
killed), breaks the pool (``BrokenProcessPool``); the pool is rebuilt and
every chunk that did not come back is redone *alone*, so a second crash is attributable. A
chunk that crashes a worker alone is halved until the record is found; a record that crashes
``max_crashes`` workers alone becomes ``Rejected(internal_error)`` (the caller dead-letters it
with its original bytes) and the rest of the batch is judged normally. Before blaming a
record, an empty chunk must pass through the fresh pool: workers that die whatever they are
given (cannot start, cannot build the validator) are an infrastructure fault, raised as
:class:`PoolUnavailable` so the batch is retried and reported, never dead-lettered.

``workers`` 0 or 1 judges in this process (no pool): the same verdicts, no IPC.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import structlog

from backend import gc_policy
from ingestion.validator import Keyring, Rejected, Validator, Verdict
from privacy.keys import KeySet, PrivateKey
from privacy.policy import RegionPolicy
from privacy.wire import RejectReason

log = structlog.get_logger(__name__)

Item = tuple[bytes, str, int, int]  # (raw, topic, partition, offset): what a worker judges
Task = Callable[[Sequence[Item]], list[Verdict]]


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build the region's validator; picklable.

    ``private`` holds raw X25519 keys (``PrivateKey`` wraps a ``cryptography`` object that
    does not pickle); ``repr`` leaves them out, so a spec in a log or traceback shows none."""

    region: str
    policy: RegionPolicy
    keyset: KeySet
    private: dict[str, bytes] = field(repr=False)
    owners: dict[str, str]
    max_bytes: int
    gc_gen0_threshold: int = 0  # see backend.gc_policy (0: the interpreter's defaults)

    @classmethod
    def of(
        cls,
        region: str,
        policy: RegionPolicy,
        keys: Keyring,
        max_bytes: int,
        gc_gen0_threshold: int = 0,
    ) -> WorkerSpec:
        return cls(
            region=region,
            policy=policy,
            keyset=keys.keyset,
            private={kid: k.raw_bytes() for kid, k in keys.private.items()},
            owners=dict(keys.owners),
            max_bytes=max_bytes,
            gc_gen0_threshold=gc_gen0_threshold,
        )

    def validator(self) -> Validator:
        private = {kid: PrivateKey(kid, raw) for kid, raw in self.private.items()}
        keys = Keyring(keyset=self.keyset, private=private, owners=self.owners)
        return Validator(self.region, self.policy, keys, max_bytes=self.max_bytes)


_validator: Validator | None = None  # the worker process's own validator


def _init_worker(spec: WorkerSpec) -> None:
    """Worker start: build the validator once; leave Ctrl-C to the main process (it stops
    the service and shuts the pool down in order)."""
    global _validator
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _validator = spec.validator()
    gc_policy.tune(spec.gc_gen0_threshold)


def judge_chunk(items: Sequence[Item]) -> list[Verdict]:
    """The worker's task: one verdict per record, in order. ``Validator.validate`` never
    raises, so only a dead process can keep a verdict from coming back."""
    validator = _validator
    assert validator is not None, "worker not initialized"
    return [
        validator.validate(raw, topic, partition, offset) for raw, topic, partition, offset in items
    ]


def crashed(times: int) -> Rejected:
    """The verdict of a record that killed ``times`` validation workers on its own."""
    return Rejected(
        RejectReason.INTERNAL_ERROR,
        f"record crashed or stalled the validation worker process {times} times; isolated",
    )


class Judging:
    """A batch handed to the pool; :meth:`result` waits for its verdicts (in order), redoing
    what a dead worker did not finish. Call it once."""

    def __init__(
        self,
        pool: ValidatorPool,
        items: Sequence[Item],
        futures: list[tuple[tuple[int, int], Future[list[Verdict]] | None]],
        verdicts: list[Verdict] | None,
    ) -> None:
        self._pool, self._items, self._futures, self._verdicts = pool, items, futures, verdicts

    def result(self) -> list[Verdict]:
        if self._verdicts is None:
            self._verdicts = self._pool._collect(self._items, self._futures)
        return self._verdicts


class PoolUnavailable(RuntimeError):
    """No working validation pool can be built right now (the batch is retried)."""


@dataclass
class PoolState:
    """What health and metrics report about the pool; updated only by the main process."""

    workers: int  # configured processes (0: judging in-process)
    alive: int = 0
    restarts: int = 0  # pools rebuilt after a worker died
    isolated: int = 0  # records dead-lettered because they crashed workers
    broken: str | None = None  # why the pool could not be (re)built, while it cannot


class ValidatorPool:
    """Judges a batch of records on ``workers`` processes (in-process for 0 or 1).

    ``task`` is the function the workers run (:func:`judge_chunk`; tests pass one that
    crashes on purpose; it must be importable by the worker)."""

    def __init__(
        self,
        spec: WorkerSpec,
        workers: int,
        *,
        chunk_records: int = 250,
        max_crashes: int = 2,
        timeout_s: float = 60.0,
        task: Task = judge_chunk,
    ) -> None:
        self._spec = spec
        self._timeout = timeout_s
        self._chunk = max(1, chunk_records)
        self._max_crashes = max(1, max_crashes)
        self._task = task
        self.state = PoolState(workers=workers if workers > 1 else 0)
        self._local: Validator | None = spec.validator() if workers <= 1 else None
        self._executor: ProcessPoolExecutor | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def _start(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.state.workers,
                mp_context=_context(),
                initializer=_init_worker,
                initargs=(self._spec,),
            )
        return self._executor

    def _discard(self) -> None:
        """Drop the executor (a broken one, or one built on an old keyring)."""
        old, self._executor = self._executor, None
        if old is not None:
            old.shutdown(wait=True, cancel_futures=True)

    def warm(self) -> None:
        """Start every worker now (they start lazily otherwise, inside the first batch).
        Best effort: a pool that cannot start is reported by the first batch."""
        if self._local is not None:
            return
        try:
            futures = [self._submit([], (0, 0)) for _ in range(self.state.workers)]
            for fut in futures:
                fut.result()
        except Exception as exc:
            self.state.broken = type(exc).__name__
            self._discard()
        self._observe()

    def update(self, spec: WorkerSpec) -> None:
        """New key material (rotation, retirement): the next batch is judged by workers
        built from ``spec``; no chunk is ever judged with a mix of old and new keys."""
        self._spec = spec
        if self._local is not None:
            self._local = spec.validator()
        else:
            self._discard()
            self.warm()

    def close(self) -> None:
        self._discard()
        self.state.alive = 0

    def pids(self) -> list[int]:
        """Process ids of the live workers (for health, and for tests that kill one)."""
        procs = getattr(self._executor, "_processes", None) or {}
        return [pid for pid, p in procs.items() if p.is_alive()]

    # -- judging -----------------------------------------------------------------------------
    def judge(self, items: Sequence[Item]) -> list[Verdict]:
        """One verdict per item, in order. Raises only when no pool can be built at all
        (an infrastructure fault: the caller retries the batch)."""
        return self.submit(items).result()

    def submit(self, items: Sequence[Item]) -> Judging:
        """Hand ``items`` to the workers and return at once (in-process: judge them now), so
        that the caller can checkpoint the previous batch meanwhile."""
        if self._local is not None:
            v = self._local
            return Judging(self, items, [], [v.validate(raw, t, p, o) for raw, t, p, o in items])
        spans = [(i, min(i + self._chunk, len(items))) for i in range(0, len(items), self._chunk)]
        futures: list[tuple[tuple[int, int], Future[list[Verdict]] | None]] = []
        for span in spans:
            try:
                futures.append((span, self._submit(items, span)))
            except BrokenProcessPool:  # a worker died before this batch: none of it was judged
                futures.append((span, None))
        return Judging(self, items, futures, None)

    def _submit(self, items: Sequence[Item], span: tuple[int, int]) -> Future[list[Verdict]]:
        try:
            executor = self._start()
        except Exception as exc:  # cannot start processes (resources): reported, retried
            self.state.broken = type(exc).__name__
            raise
        return executor.submit(self._task, items[span[0] : span[1]])

    def _collect(
        self,
        items: Sequence[Item],
        futures: list[tuple[tuple[int, int], Future[list[Verdict]] | None]],
    ) -> list[Verdict]:
        out: list[Verdict | None] = [None] * len(items)
        failed: list[tuple[int, int]] = []
        for (a, b), fut in futures:
            try:
                if fut is None:
                    raise BrokenProcessPool("broken before submit")
                out[a:b] = fut.result(timeout=self._timeout)
            except BrokenProcessPool:
                failed.append((a, b))
            except TimeoutError:  # a worker stuck on a record: kill it, as if it had crashed
                self._kill()
                failed.append((a, b))
        if failed:
            self._rebuilt("worker died")
            self._run_alone(items, failed, out)
        self._observe()
        self.state.broken = None
        assert all(v is not None for v in out)
        return out  # type: ignore[return-value]

    def _run_alone(
        self, items: Sequence[Item], suspects: list[tuple[int, int]], out: list[Verdict | None]
    ) -> None:
        """Each suspect chunk alone in a fresh pool: a crash now is that chunk's doing."""
        queue = deque((s, 0) for s in suspects)
        while queue:
            (a, b), strikes = queue.popleft()
            try:
                out[a:b] = self._submit(items, (a, b)).result(timeout=self._timeout)
                continue
            except BrokenProcessPool:
                self._rebuilt("worker died judging a chunk alone")
            except TimeoutError:
                self._kill()
                self._rebuilt("worker stuck judging a chunk alone")
            self._probe()  # blame the chunk only if a fresh worker can judge nothing at all
            if b - a > 1:  # halve until the record is found; the halves start clean
                mid = (a + b) // 2
                queue.extendleft([((mid, b), 0), ((a, mid), 0)])
            elif strikes + 1 >= self._max_crashes:
                out[a] = crashed(strikes + 1)
                self.state.isolated += 1
                _, topic, partition, offset = items[a]
                log.warning(
                    "record_isolated",
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    crashes=strikes + 1,
                )
            else:
                queue.appendleft(((a, b), strikes + 1))

    def _probe(self) -> None:
        """An empty chunk through a fresh pool. If even that fails, workers cannot start or
        initialize (an infrastructure fault, not a record's doing): raise, so the batch is
        retried later and no valid record is dead-lettered for it."""
        try:
            self._submit([], (0, 0)).result()
        except BrokenProcessPool as exc:
            self._rebuilt("worker died before judging anything")
            self.state.broken = "workers die on start"
            raise PoolUnavailable("validation workers die before judging any record") from exc

    def _kill(self) -> None:
        """SIGKILL every worker (one is stuck past ``timeout_s``): the pool breaks, and what
        it had not returned is redone like after a crash."""
        procs = getattr(self._executor, "_processes", None) or {}
        for proc in list(procs.values()):
            proc.kill()

    def _rebuilt(self, why: str) -> None:
        self._discard()
        self.state.restarts += 1
        log.warning("validation_pool_rebuilt", reason=why, restarts=self.state.restarts)

    def _observe(self) -> None:
        self.state.alive = len(self.pids())


def _context() -> Any:
    """``forkserver`` on Linux: the main process runs Kafka client threads, which ``fork``
    must not copy; the server forks workers from a clean, preloaded interpreter."""
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["ingestion.pool"])
        return ctx
    return multiprocessing.get_context("spawn")
