"""The ingestion service's own settings sections: ``[ingest]`` and ``[rounds]``.

Why here and not in ``deploy/``: each service receives only its own section (and its region),
so the section's type belongs to the service; ``deploy.settings`` composes the sections into
the one file and environment a deployment reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from ingestion.round_open import RoundSpec
    from privacy.ledger import Budget


class IngestSettings(BaseModel):
    """Ingestion service tuning. Batches bound both latency and the size of one DB transaction."""

    max_envelope_bytes: Annotated[
        int,
        Field(
            ge=256,
            description="Largest ingest record accepted, in bytes; bigger ones are "
            "dead-lettered before decryption. Also caps a round's masked input: a round "
            "whose sealed input would not fit is refused when it is opened.",
        ),
    ] = 64 * 1024
    dead_letter_max_bytes: Annotated[
        int,
        Field(
            ge=1024,
            description="Most bytes of a rejected record's value kept in its dead letter; "
            "longer ones are cut, flagged `truncated` and carry the SHA-256 and length of the "
            "whole. Keep it below the DLQ topic's `max.message.bytes` (1 MiB by default).",
        ),
    ] = 256 * 1024
    audit_head_interval_s: Annotated[
        float,
        Field(
            gt=0,
            description="Seconds between publications of the signed audit chain head to the "
            "region's compacted audit topic (also published at shutdown); `sotto audit` fails "
            "when the stored chain is behind the newest signed head.",
        ),
    ] = 30.0
    batch_max_records: Annotated[
        int,
        Field(
            ge=1,
            description="Records per poll, and so per database transaction (Kafka "
            "`max_poll_records`): larger batches raise throughput and latency.",
        ),
    ] = 2000
    poll_timeout_ms: Annotated[
        int,
        Field(
            ge=10,
            description="Milliseconds one poll waits for records; bounds how late a "
            "shutdown or a round deadline is noticed.",
        ),
    ] = 500
    workers: Annotated[
        int | None,
        Field(
            ge=0,
            description="Processes that decrypt and validate records (HPKE and pydantic hold "
            "the GIL, so threads would not help); the main process keeps consumption, the "
            "replay check and the database. 0 or 1 (the default): validate in the main "
            "process; N: N worker processes (None, from code: the usable cores). Opt-in: one "
            "replica of three once hung under a rebalance with a batch in flight; the race "
            "found with it (a revoked batch was still checkpointed) is fixed and 25 runs of "
            "the replica tests with 2 workers and CPU burners passed, but the hang itself "
            "was never reproduced, so it is not proven gone (docs/benchmarks.md).",
        ),
    ] = 0
    worker_chunk_records: Annotated[
        int,
        Field(
            ge=1,
            description="Records sent to a validation worker at once: larger chunks cost "
            "less IPC per record, smaller ones spread a batch more evenly over the workers.",
        ),
    ] = 250
    worker_max_crashes: Annotated[
        int,
        Field(
            ge=1,
            description="Times a record may kill a validation worker on its own before it "
            "is dead-lettered as `internal_error` (the pool is rebuilt after every crash and "
            "the unfinished records are redone, so nothing is lost or counted twice).",
        ),
    ] = 2
    worker_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            description="Seconds a validation chunk may take before its workers are killed "
            "and it is redone like after a crash (a record that stalls a worker is isolated "
            "and dead-lettered as `internal_error`, like one that crashes it).",
        ),
    ] = 60.0
    gc_gen0_threshold: Annotated[
        int,
        Field(
            ge=0,
            description="Allocations between two collections of the garbage collector's "
            "youngest generation in the ingestion process and its validation workers; the "
            "heap built at start-up is frozen first (0: Python's defaults; measured in "
            "docs/benchmarks.md, the default cuts the main process's CPU per envelope by a "
            "third).",
        ),
    ] = 20000
    group_prefix: str = Field(
        "sotto-ingest",
        description="Consumer group prefix; the group is `<prefix>-<region>`. Replicas of "
        "one region share it, which is how ingestion scales out.",
    )
    session_timeout_ms: Annotated[
        int,
        Field(
            ge=6000,
            description="Milliseconds a crashed consumer keeps its partitions before the "
            "group reassigns them; the heartbeat is a quarter of it (at least 1 s).",
        ),
    ] = 10000
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address `/metrics` and the health endpoints (`/livez`, `/readyz`, "
        "`/healthz`) of `sotto ingest` bind to; `0.0.0.0` in a container so probes reach them.",
    )
    metrics_port: Annotated[
        int | None,
        Field(
            ge=1,
            le=65535,
            description="Default port of `/metrics` and `/healthz` for `sotto ingest` "
            "(its `--metrics-port` wins); unset: no HTTP server.",
        ),
    ] = None

    def worker_count(self) -> int:
        """Validation processes to start: ``workers``, or the usable cores when unset
        (measured on 2 quiet cores: 2 workers 8.8k envelopes/s, in-process 6.5k)."""
        if self.workers is not None:
            return self.workers
        from ingestion.pool import usable_cpus

        return usable_cpus()


class RoundsSettings(BaseModel):
    """SecAgg+ round defaults of a region's round service (``sotto ingest --coordinate``).

    The budget is what the coordinator gives a cohort without a ledger row; the per-round
    fields build the :class:`~ingestion.round_open.RoundSpec` of callers that open rounds
    (:meth:`spec`). Their defaults equal ``RoundSpec``'s (a test checks it). ``lease_s`` and
    ``coordinator_id`` are the region's coordinator lease (one replica active at a time)."""

    epsilon: Annotated[
        float,
        Field(
            gt=0,
            description="ε of one round's release (at `delta`); the DP noise is calibrated "
            "to it. Smaller: more noise per round, more rounds per budget.",
        ),
    ] = 1.0
    delta: Annotated[
        float,
        Field(gt=0, lt=1, description="δ of one round's release; keep it far below 1/devices."),
    ] = 1e-6
    budget_epsilon: Annotated[
        float,
        Field(
            gt=0,
            description="Total ε a cohort may spend (RDP composition at `budget_delta`); a "
            "round that would exceed it is refused before any device is contacted. "
            "Default of `sotto ingest --coordinate --budget-epsilon`.",
        ),
    ] = 10.0
    budget_delta: Annotated[
        float,
        Field(
            gt=0,
            lt=1,
            description="δ at which a cohort's total ε is accounted. Default of "
            "`sotto ingest --coordinate --budget-delta`.",
        ),
    ] = 1e-5
    scale: Annotated[
        float,
        Field(
            gt=0,
            description="Integer units per input unit when quantizing (resolution "
            "1/scale); keep `clip * scale` well above sqrt(dim).",
        ),
    ] = 1000.0
    stage_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            description="The stage deadline: seconds after a SecAgg+ stage opened at which "
            "it closes with whoever answered (the rest count as dropped), when neither all "
            "expected devices nor the goal count answered before. Long, so that a loaded "
            "machine or network does not abort rounds.",
        ),
    ] = 120.0
    goal: Annotated[
        int | None,
        Field(
            ge=2,
            description="Goal count of a round's first stage: the devices it wants. With a "
            "goal a round samples `goal * (1 + overselect)` check-ins when that many exist, "
            "and a stage closes once its goal answered and `grace_s` passed; later stages' "
            "goal is what survives `expected_dropout` of it, never below the round's release "
            "floor (`min_clients`). Unset: every sampled device.",
        ),
    ] = None
    overselect: Annotated[
        float,
        Field(
            ge=0,
            description="Share of extra devices sampled above `goal` (0.3: 130 % of the "
            "goal), so that stragglers and dropouts do not keep a round from its goal.",
        ),
    ] = 0.3
    grace_s: Annotated[
        float,
        Field(
            ge=0,
            description="Seconds a stage keeps collecting after its goal count answered, for "
            "the stragglers; then it closes without waiting for its deadline (a stage that "
            "every expected device answered closes at once).",
        ),
    ] = 2.0
    min_participants: Annotated[
        int,
        Field(
            ge=2,
            description="Fewest fresh check-ins a round needs to be opened; fewer and the "
            "round is refused (nothing is announced).",
        ),
    ] = 3
    max_clients: Annotated[
        int,
        Field(
            ge=2,
            description="Most devices sampled into one round; bounds the server's "
            "unmasking work and the size of the announcement.",
        ),
    ] = 1000
    checkin_ttl_s: Annotated[
        float,
        Field(
            gt=0,
            description="Seconds a device's check-in stays eligible for sampling; older "
            "ones are likely offline and would only drop out.",
        ),
    ] = 3600.0
    expected_dropout: Annotated[
        float | None,
        Field(
            ge=0,
            lt=0.5,
            description="Share of sampled devices expected to vanish mid-round; the SecAgg+ "
            "neighbour graph is sized so that a round survives it (unset: 10 %).",
        ),
    ] = None
    corrupt_fraction: Annotated[
        float,
        Field(
            ge=0,
            lt=0.5,
            description="Share of devices assumed to collude with a malicious coordinator; "
            "k and t are chosen so that no honest device is exposed (2t - k colluding "
            "neighbours) except with probability `failure_risk`.",
        ),
    ] = 0.05
    failure_risk: Annotated[
        float,
        Field(
            gt=0,
            lt=1e-2,
            description="Allowed probability per round that some device is exposed or keeps "
            "fewer than t surviving neighbours (union bound, Bell et al.).",
        ),
    ] = 1e-6
    lease_s: Annotated[
        float,
        Field(
            gt=0,
            description="Seconds the region's coordinator lease lasts unless renewed (the "
            "holder renews it every third of that). Only the holder ticks rounds; another "
            "replica of `sotto ingest --coordinate` stands by and takes over this long after "
            "the holder stopped. Keep it well above clock skew between replicas.",
        ),
    ] = 20.0
    coordinator_id: str | None = Field(
        None,
        description="This replica's name in the coordinator lease; must differ between "
        "replicas. Unset: `<hostname>:<pid>`.",
        max_length=128,
    )

    def budget(self) -> Budget:
        """The default per-cohort budget, as the ledger wants it."""
        from privacy.ledger import Budget

        return Budget(epsilon=self.budget_epsilon, delta=self.budget_delta)

    def spec(self, layout: str, dim: int, clip: float, **overrides: Any) -> RoundSpec:
        """A ``RoundSpec`` for ``layout`` with these defaults; ``overrides`` win."""
        from ingestion.round_open import RoundSpec

        fields = {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "scale": self.scale,
            "stage_timeout_s": self.stage_timeout_s,
            "goal": self.goal,
            "overselect": self.overselect,
            "grace_s": self.grace_s,
            "min_participants": self.min_participants,
            "max_clients": self.max_clients,
            "checkin_ttl_s": self.checkin_ttl_s,
            "dropout": self.expected_dropout,
            "corrupt": self.corrupt_fraction,
            "risk": self.failure_risk,
        }
        return RoundSpec(layout=layout, dim=dim, clip=clip, **{**fields, **overrides})
