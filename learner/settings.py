"""The learner service's own settings section, ``[learner]``.

Why here and not in ``deploy/``: the learner receives only this section (and its region);
``deploy.settings`` composes it into the deployment's one file and environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from learner.cohort import LearnerConfig


class LearnerSettings(BaseModel):
    """The learner service (``sotto learn``): its consumer, its metrics endpoint and the
    cohort learning policy (window, margins, canary fraction, ...).

    The policy fields build the :class:`~learner.cohort.LearnerConfig` of a cohort the learner
    sees for the first time (:meth:`policy`); a cohort's config is checkpointed with its state,
    so changing a setting affects new cohorts, not ones already learning (a learner must not
    change its rules mid-window)."""

    group_prefix: str = Field(
        "sotto-learn",
        description="Consumer group prefix of `sotto learn`; the group is `<prefix>-<region>`.",
    )
    session_timeout_ms: Annotated[
        int,
        Field(
            ge=6000,
            description="Milliseconds a crashed learner keeps its partitions before the "
            "group reassigns them; the heartbeat is a quarter of it (at least 1 s).",
        ),
    ] = 10000
    max_poll_records: Annotated[
        int,
        Field(
            ge=1,
            description="Releases per poll. Each release is its own transaction, so this "
            "only bounds how long a poll's work delays a shutdown or a rebalance.",
        ),
    ] = 50
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address `/metrics` and the health endpoints (`/livez`, `/readyz`, "
        "`/healthz`) of `sotto learn` bind to; `0.0.0.0` in a container so probes reach them.",
    )
    metrics_port: Annotated[
        int | None,
        Field(
            ge=1,
            le=65535,
            description="Default port of `/metrics` and `/healthz` for `sotto learn` "
            "(its `--metrics-port` wins); unset: no HTTP server.",
        ),
    ] = None

    window: Annotated[
        int, Field(ge=1, description="Released rounds in a cohort's sliding window.")
    ] = 6
    max_age_s: Annotated[
        float | None,
        Field(gt=0, description="Oldest round (seconds) the window keeps; unset: no age limit."),
    ] = 14 * 86400.0
    decay: Annotated[
        float,
        Field(gt=0, le=1, description="Per-round weight decay of older rounds in the window."),
    ] = 0.6
    min_window: Annotated[
        int, Field(ge=1, description="Rounds in the window before the first candidate is fitted.")
    ] = 1
    shadow_margin: Annotated[
        float,
        Field(
            ge=0,
            description="hit@1 a candidate may lose against live in shadow evaluation and "
            "still go to canary (0.02 = two points), at `confidence`.",
        ),
    ] = 0.02
    canary_margin: Annotated[
        float,
        Field(
            ge=0,
            description="hit@1 a canary may lose against live before it is rolled back.",
        ),
    ] = 0.03
    confidence: Annotated[
        float,
        Field(gt=0.5, lt=1, description="One-sided confidence of the shadow and canary gates."),
    ] = 0.95
    min_devices: Annotated[
        float,
        Field(gt=0, description="Fewest (noised) devices of evidence a gate decision needs."),
    ] = 20.0
    canary_fraction: Annotated[
        float,
        Field(gt=0, le=1, description="Share of a cohort's devices that run a canary adapter."),
    ] = 0.5
    max_shadow_rounds: Annotated[
        int, Field(ge=1, description="Rounds a candidate may stay in shadow before rejection.")
    ] = 3
    max_canary_rounds: Annotated[
        int, Field(ge=1, description="Rounds a canary may last before it is promoted or not.")
    ] = 3
    cooldown_rounds: Annotated[
        int, Field(ge=0, description="Rounds without a new candidate after a rollback.")
    ] = 1

    def consumer_config(self) -> dict[str, int]:
        """Overrides for ``learner.service.CONSUMER_DEFAULTS``; equal to them by default."""
        return {
            "max_poll_records": self.max_poll_records,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": max(1000, self.session_timeout_ms // 4),
        }

    def policy(self) -> LearnerConfig:
        """The cohort policy these settings describe (the defaults equal ``LearnerConfig()``)."""
        from learner.cohort import LearnerConfig

        names = (
            "window",
            "max_age_s",
            "decay",
            "min_window",
            "shadow_margin",
            "canary_margin",
            "confidence",
            "min_devices",
            "canary_fraction",
            "max_shadow_rounds",
            "max_canary_rounds",
            "cooldown_rounds",
        )
        return LearnerConfig(**{n: getattr(self, n) for n in names})
