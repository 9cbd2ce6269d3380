"""How long the device keeps what: one typed policy for every on-device store.

========================= ========== ==========================================================
store / field             default    what goes
========================= ========== ==========================================================
context (``context.db``)  30 days    steps recorded longer ago (the window also keeps only the
                                     newest ``max_steps``, and older steps weigh little: a
                                     7-day half-life)
memory (``memory.db``)    90 days    launch evidence recorded longer ago (the memory also
                                     keeps only its newest ``max_events``)
outbox sent               7 days     envelopes the broker acknowledged (kept only so a resent
                                     round is recognised; also bounded by ``keep_sent``)
outbox pending            30 days    envelopes never acknowledged: a round that old has
                                     closed, its payload can no longer count
========================= ========== ==========================================================

Enforced when a store opens and then every ``check_every`` writes: expired rows are deleted
with ``secure_delete`` on, the data keys no row uses any more are shredded, and the WAL is
truncated (:meth:`edge_client.sealing.Vault.purge`). Ages are measured on the device's clock
from when a row was *stored*, not from the step's own timestamp (a replayed or simulated
step stamped in the past is kept as long as one recorded now).

Round state and adapters are not stored at all: a SecAgg+ round lives in the participant's
memory for the round's duration, and adapters are re-read from the region's adapters topic at
start (docs/device-data.md).

>>> RetentionPolicy().context.days, RetentionPolicy(context=timedelta(days=7)).context.days
(30, 7)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each on-device store keeps a row (see the module docstring)."""

    context: timedelta = timedelta(days=30)
    memory: timedelta = timedelta(days=90)
    outbox_sent: timedelta = timedelta(days=7)
    outbox_pending: timedelta = timedelta(days=30)
    check_every: int = 50

    def __post_init__(self) -> None:
        for name in ("context", "memory", "outbox_sent", "outbox_pending"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"retention {name} must be positive")
        if self.check_every < 1:
            raise ValueError("check_every must be >= 1")

    def describe(self) -> dict[str, Any]:
        """The policy as plain values (days; ``check_every`` in writes), for CLIs and docs."""
        doc = asdict(self)
        return {
            k: (v.total_seconds() / 86400 if isinstance(v, timedelta) else v)
            for k, v in doc.items()
        }


DEFAULT_RETENTION = RetentionPolicy()
