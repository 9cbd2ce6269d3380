"""Persist :class:`privacy.ledger.Ledger` per (region, cohort), and report on it.

The ledger itself is pure (:mod:`privacy.ledger`): it decides. This module only moves it in
and out of ``privacy_ledgers`` inside the caller's transaction, so a charge is durable
together with the release it pays for (see :mod:`ingestion.coordinator`).

:func:`report` is what ``sotto privacy report`` prints; it opens a read-only connection and
writes nothing (it does not even create a ledger row for a cohort it has never seen).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, inspect, select
from sqlalchemy.engine import make_url

from backend.storage import make_engine, reading
from ingestion.rounds_db import privacy_ledgers
from privacy.ledger import Budget, Ledger
from privacy.policy import RegionPolicy


def _key(region: str, cohort: str):  # type: ignore[no-untyped-def]
    c = privacy_ledgers.c
    return (c.region == region) & (c.cohort == cohort)


def load(conn: Connection, region: str, cohort: str, default: Budget) -> Ledger:
    """The cohort's ledger; a cohort never charged gets an empty ledger with ``default``."""
    stmt = select(privacy_ledgers).where(_key(region, cohort))
    if conn.dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None:
        return Ledger(region, cohort, default)
    budget = Budget(epsilon=row.budget_epsilon, delta=row.budget_delta)
    return Ledger.from_json(row.events, budget, region=region, cohort=cohort)


def save(conn: Connection, ledger: Ledger, now: float) -> None:
    """Upsert ``ledger`` (budget and events) in the caller's transaction."""
    values = {
        "budget_epsilon": ledger.budget.epsilon,
        "budget_delta": ledger.budget.delta,
        "events": ledger.events_json(),
        "updated_at": now,
    }
    done = conn.execute(
        privacy_ledgers.update().where(_key(ledger.region, ledger.cohort)).values(**values)
    )
    if done.rowcount == 0:
        conn.execute(
            privacy_ledgers.insert().values(region=ledger.region, cohort=ledger.cohort, **values)
        )


def set_budget(engine: Engine, region: str, cohort: str, budget: Budget, now: float) -> Ledger:
    """Give a cohort its (epsilon, delta) budget, keeping the events already charged."""
    with engine.begin() as conn:
        ledger = load(conn, region, cohort, budget)
        ledger = Ledger(region, cohort, budget, ledger.events)
        save(conn, ledger, now)
    return ledger


@dataclass(frozen=True, slots=True)
class CohortBudget:
    """One line of ``sotto privacy report``."""

    region: str
    cohort: str
    rounds: int
    epsilon_spent: float
    epsilon_left: float
    budget_epsilon: float
    budget_delta: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def report(engine: Engine, region: str | None = None) -> list[CohortBudget]:
    """Epsilon spent and left per cohort (read-only)."""
    stmt = select(privacy_ledgers).order_by(privacy_ledgers.c.region, privacy_ledgers.c.cohort)
    if region is not None:
        stmt = stmt.where(privacy_ledgers.c.region == region)
    out: list[CohortBudget] = []
    with reading(engine) as conn:
        for row in conn.execute(stmt):
            budget = Budget(epsilon=row.budget_epsilon, delta=row.budget_delta)
            ledger = Ledger.from_json(row.events, budget, region=row.region, cohort=row.cohort)
            out.append(
                CohortBudget(
                    region=row.region,
                    cohort=row.cohort,
                    rounds=len(ledger.events),
                    epsilon_spent=ledger.spent(),
                    epsilon_left=ledger.remaining(),
                    budget_epsilon=budget.epsilon,
                    budget_delta=budget.delta,
                )
            )
    return out


def report_policy(policy: RegionPolicy, region: str | None = None) -> list[CohortBudget]:
    """:func:`report` over every region of a policy (or one), without migrating or creating
    anything: a region whose database or ledger table does not exist yet reports nothing."""
    names = [region] if region is not None else sorted(policy.regions)
    out: list[CohortBudget] = []
    for name in names:
        url = policy.region(name).database_url
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            path = parsed.database or ""
            if path in ("", ":memory:") or not Path(path).expanduser().is_file():
                continue
            engine = create_engine(url)  # plain engine: no pragmas, no directory creation
        else:
            engine = make_engine(url)
        try:
            if inspect(engine).has_table(privacy_ledgers.name):
                out.extend(report(engine, name))
        finally:
            engine.dispose()
    return out


def region_gauges(engine: Engine, region: str) -> list[tuple[str, str, dict[str, str], float]]:
    """ε spent per cohort, read at scrape time (nothing if rounds never ran)."""
    from sqlalchemy import inspect

    if not inspect(engine).has_table("privacy_ledgers"):
        return []
    return [
        ("sotto_epsilon_spent", "privacy budget spent", {"cohort": r.cohort}, r.epsilon_spent)
        for r in report(engine, region)
    ]
