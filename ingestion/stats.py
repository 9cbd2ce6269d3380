"""Counters of one ingestion app, updated only after a checkpoint is durable.

Plain integers (no Prometheus dependency here) so the metrics exporter can read them later;
``rejected`` is keyed by :class:`privacy.wire.RejectReason` value.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class IngestStats:
    records: int = 0
    accepted: int = 0
    late: int = 0  # valid round messages that came after their stage closed (not rejected)
    rejected: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    batches: int = 0
    checkpoint_failures: int = 0
    worker_restarts: int = 0  # validation pools rebuilt after a worker process died
    worker_crash_isolations: int = 0  # records judged internal_error for crashing workers
    first_record_at: float | None = None  # time.perf_counter() of the first polled record
    last_commit_at: float | None = None  # time.perf_counter() after the last checkpoint

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "records": self.records,
            "accepted": self.accepted,
            "late": self.late,
            "rejected": dict(sorted(self.rejected.items())),
            "dead_letters": self.dead_letters,
            "batches": self.batches,
            "checkpoint_failures": self.checkpoint_failures,
            "worker_restarts": self.worker_restarts,
            "worker_crash_isolations": self.worker_crash_isolations,
        }
