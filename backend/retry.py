"""The backend's one retry policy: exponential backoff with jitter, from tenacity.

Why jitter: replicas of a region that hit the same database or broker outage must not retry
in lockstep. Why one policy: a service that fails a checkpoint re-reads its batch from the
last durable offset and tries again after :meth:`RetryPolicy.delay`; every backend service
backs off the same way, and infrastructure faults are retried (and reported), never turned
into lost or dead-lettered records.

>>> policy = RetryPolicy(initial_s=0.2, max_s=5.0, jitter_s=0.0)
>>> [policy.delay(n) for n in (1, 2, 3)]
[0.2, 0.4, 0.8]
>>> policy.delay(50)
5.0
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from tenacity import RetryCallState, wait_exponential_jitter


@dataclass(frozen=True)
class RetryPolicy:
    """Delay ``min(max_s, initial_s * 2**(attempt-1)) + U(0, jitter_s)`` before attempt+1."""

    initial_s: float = 0.2
    max_s: float = 5.0
    jitter_s: float = 0.2

    def _wait(self) -> wait_exponential_jitter:
        return wait_exponential_jitter(
            multiplier=self.initial_s, max=self.max_s, jitter=self.jitter_s
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure (1-based)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, attempt)
        return min(self.max_s, float(self._wait()(state)))

    def sleep(self, attempt: int, stop: threading.Event | None = None) -> None:
        """Wait :meth:`delay` seconds, returning early when ``stop`` is set."""
        (stop or threading.Event()).wait(self.delay(attempt))
