"""`sotto audit`: what a compliance reviewer checks, offline, from a region's own records.

Each check reads the region's database (and, for the "nothing of R elsewhere" check, the
other regions' databases named in the policy) and returns a :class:`Check` with its
evidence. Nothing here writes to a database; the report is a file the reviewer can archive.

What "no record of region R was produced, stored or learned from outside R" means here:

- *produced*: every accepted record of R arrived on one of R's topics (the audit log keeps
  the topic of every decision) and the chain of decisions is intact;
- *stored*: every row of R's database that names a region names R, and no other region's
  database holds a row naming R (a refusal that names R is evidence of a block, not storage);
- *learned from*: every release R's learner applied was released by R's own round
  coordinator (same cohort, round) and every adapter R shipped names R and verifies under
  R's signing key.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, Field
from sqlalchemy import Engine, MetaData, Table, func, inspect, select

from backend import keystore
from backend.storage import make_engine, reading
from deploy.settings import SottoSettings
from ingestion.audit import AuditHead, current_head, hash_at, verify_chain
from ingestion.db import audit_log
from privacy.errors import SottoError
from privacy.policy import RegionConfig, RegionPolicy
from privacy.wire import utcnow

# tables with a `region` column, by schema owner; a missing table is simply not there yet
REGION_TABLES = (
    "audit_log",
    "seen_messages",
    "aggregates",
    "rounds",
    "round_messages",
    "round_checkins",
    "round_releases",
    "privacy_ledgers",
    "adapter_versions",
    "adapter_events",
    "learner_state",
    "learner_releases",
)


class Check(BaseModel):
    name: str
    ok: bool
    summary: str
    evidence: dict[str, Any] = Field(default_factory=dict)


class AuditReport(BaseModel):
    region: str
    generated_at: datetime
    since: datetime | None
    ok: bool
    checks: list[Check]


def _table(engine: Engine, name: str) -> Table | None:
    if not inspect(engine).has_table(name):
        return None
    return Table(name, MetaData(), autoload_with=engine)


def _since(tbl: Table, since: datetime | None) -> Any:
    if since is None or "ts" not in tbl.c:
        return True
    return tbl.c.ts >= since.isoformat()


def check_chain(engine: Engine, region: str, expect_head: str | None) -> Check:
    ok, bad = verify_chain(engine, region)
    with reading(engine) as conn:
        head = conn.execute(
            select(audit_log.c.seq, audit_log.c.hash)
            .where(audit_log.c.region == region)
            .order_by(audit_log.c.seq.desc())
            .limit(1)
        ).first()
    evidence: dict[str, Any] = {
        "head_seq": int(head.seq) if head else 0,
        "head_hash": str(head.hash) if head else None,
    }
    if not ok:
        return Check(
            name="audit_chain",
            ok=False,
            summary=f"hash chain breaks at seq {bad}",
            evidence={**evidence, "first_bad_seq": bad},
        )
    if expect_head is not None and evidence["head_hash"] != expect_head:
        return Check(
            name="audit_chain",
            ok=False,
            summary="chain head differs from the archived head (rows removed or added at the end)",
            evidence=evidence,
        )
    return Check(
        name="audit_chain",
        ok=True,
        summary=f"{evidence['head_seq']} decisions, chain intact",
        evidence=evidence,
    )


def check_accepts_routed(
    engine: Engine, region: str, policy: RegionPolicy, since: datetime | None
) -> Check:
    stmt = (
        select(audit_log.c.topic, func.count())
        .where(
            audit_log.c.region == region,
            audit_log.c.event.in_(("accept", "late")),  # late: acknowledged, not rejected
            _since(audit_log, since),
        )
        .group_by(audit_log.c.topic)
    )
    with reading(engine) as conn:
        by_topic = {str(t): int(n) for t, n in conn.execute(stmt)}
    foreign = {t: n for t, n in by_topic.items() if policy.region_of_topic(t) != region}
    return Check(
        name="produced_in_region",
        ok=not foreign,
        summary=(
            "every accepted record arrived on the region's own topics"
            if not foreign
            else f"{sum(foreign.values())} accepted records arrived on topics of another region"
        ),
        evidence={"accepted_by_topic": by_topic, "foreign_topics": foreign},
    )


def _regions_in(engine: Engine) -> dict[str, dict[str, int]]:
    """{table: {region: rows}} over every region-bearing table that exists."""
    out: dict[str, dict[str, int]] = {}
    for name in REGION_TABLES:
        tbl = _table(engine, name)
        if tbl is None or "region" not in tbl.c:
            continue
        with reading(engine) as conn:
            rows = conn.execute(select(tbl.c.region, func.count()).group_by(tbl.c.region)).all()
        out[name] = {str(r): int(n) for r, n in rows}
    return out


def check_stored_in_region(region: str, policy: RegionPolicy, engines: dict[str, Engine]) -> Check:
    own = _regions_in(engines[region])
    shared = {
        r
        for r, cfg in policy.regions.items()
        if cfg.database_url == policy.region(region).database_url
    }
    foreign_here = {
        t: {r: n for r, n in counts.items() if r not in shared} for t, counts in own.items()
    }
    foreign_here = {t: c for t, c in foreign_here.items() if c}
    elsewhere: dict[str, dict[str, int]] = {}
    for other, engine in engines.items():
        if other == region or other in shared:
            continue
        counts = {t: c.get(region, 0) for t, c in _regions_in(engine).items()}
        counts = {t: n for t, n in counts.items() if n}
        if counts:
            elsewhere[other] = counts
    ok = not foreign_here and not elsewhere
    return Check(
        name="stored_in_region",
        ok=ok,
        summary=(
            "the region's database holds only its own rows and no other region's database holds any of its rows"
            if ok
            else "rows cross regions"
        ),
        evidence={
            "rows_by_table": own,
            "foreign_rows_here": foreign_here,
            "rows_of_region_elsewhere": elsewhere,
            "checked_regions": sorted(engines),
        },
    )


def check_learned_in_region(engine: Engine, region: str) -> Check:
    learned_tbl, released_tbl = _table(engine, "learner_releases"), _table(engine, "round_releases")
    if learned_tbl is None:
        return Check(
            name="learned_in_region", ok=True, summary="the learner has applied no release yet"
        )
    with reading(engine) as conn:
        learned = {
            (r.region, r.cohort, int(r.round))
            for r in conn.execute(
                select(learned_tbl.c.region, learned_tbl.c.cohort, learned_tbl.c.round)
            )
        }
        released = set()
        if released_tbl is not None:
            released = {
                (r.region, r.cohort, int(r.round))
                for r in conn.execute(
                    select(released_tbl.c.region, released_tbl.c.cohort, released_tbl.c.round)
                )
            }
    foreign = sorted(x for x in learned if x[0] != region)
    unknown = sorted(x for x in learned if x[0] == region and x not in released)
    ok = not foreign and not unknown
    return Check(
        name="learned_in_region",
        ok=ok,
        summary=(
            f"all {len(learned)} applied releases were released by the region's own coordinator"
            if ok
            else "the learner applied releases the region did not make"
        ),
        evidence={
            "applied": len(learned),
            "foreign": foreign[:20],
            "not_released_here": unknown[:20],
        },
    )


def check_adapters(engine: Engine, region: str, keyset_dir: str) -> Check:
    from backend.keystore import signing_public_key
    from privacy.adapter_manifest import AdapterManifest, signing_message

    tbl = _table(engine, "adapter_versions")
    if tbl is None:
        return Check(
            name="adapters", ok=True, summary="no adapter shipped yet", evidence={"adapters": []}
        )
    try:
        public = signing_public_key(keyset_dir)
    except SottoError:
        public = None
    listed: list[dict[str, Any]] = []
    bad: list[str] = []
    with reading(engine) as conn:
        rows = conn.execute(
            select(tbl).where(tbl.c.region == region).order_by(tbl.c.cohort, tbl.c.version)
        ).all()
    for row in rows:
        m = row._mapping
        entry = {
            "cohort": m["cohort"],
            "version": int(m["version"]),
            "parent": m["parent_version"],
            "status": m["status"],
            "rounds": m["rounds"],
            "epsilon_spent": m["epsilon_spent"],
            "artifact_sha256": m["artifact_sha256"],
            "signature": m["signature"],
            "signature_valid": None,
        }
        if m["manifest"] is not None and m["signature"] and m["adapter"] is not None:
            manifest = AdapterManifest.model_validate(m["manifest"])
            valid = public is not None
            if public is not None:
                try:
                    public.verify(
                        bytes.fromhex(m["signature"]), signing_message(manifest, m["adapter"])
                    )
                except (InvalidSignature, ValueError):
                    valid = False
            entry["signature_valid"] = valid
            if not valid or manifest.region != region:
                bad.append(f"{m['cohort']} v{m['version']}")
        listed.append(entry)
    return Check(
        name="adapters",
        ok=not bad,
        summary=(
            f"{len(listed)} adapter versions; every shipped one verifies under the region's key and names the region"
            if not bad
            else f"adapters failing verification: {', '.join(bad)}"
        ),
        evidence={"adapters": listed},
    )


def check_rejections(engine: Engine, region: str, since: datetime | None) -> Check:
    stmt = (
        select(audit_log.c.reason, func.count())
        .where(
            audit_log.c.region == region, audit_log.c.event == "reject", _since(audit_log, since)
        )
        .group_by(audit_log.c.reason)
    )
    with reading(engine) as conn:
        by_reason = {str(r): int(n) for r, n in conn.execute(stmt)}
    return Check(
        name="rejections",
        ok=True,
        summary=f"{sum(by_reason.values())} records rejected",
        evidence={"by_reason": by_reason},
    )


def check_budget(engine: Engine, region: str) -> Check:
    if _table(engine, "privacy_ledgers") is None:
        return Check(
            name="privacy_budget",
            ok=True,
            summary="no privacy ledger yet",
            evidence={"cohorts": []},
        )
    from ingestion.ledger_store import report

    rows = [r.as_dict() for r in report(engine, region)]
    over = [r["cohort"] for r in rows if r["epsilon_spent"] > r["budget_epsilon"] + 1e-9]
    return Check(
        name="privacy_budget",
        ok=not over,
        summary=(
            f"{len(rows)} cohorts within budget" if not over else f"cohorts over budget: {over}"
        ),
        evidence={"cohorts": rows},
    )


def check_aggregates_match_accepts(engine: Engine, region: str) -> Check:
    """Every accepted round summary is in the sums once: per (cohort, round), the count of
    ``accept`` decisions for ``summary`` payloads equals the aggregate row's ``count``. A lost
    update (replicas overwriting each other's sums) or a double count shows up here even when
    offsets, replay ids and the chain are all consistent."""
    aggs = _table(engine, "aggregates")
    stmt = (
        select(audit_log.c.cohort, audit_log.c.round, func.count())
        .where(
            audit_log.c.region == region,
            audit_log.c.event == "accept",
            audit_log.c.detail == "summary",
        )
        .group_by(audit_log.c.cohort, audit_log.c.round)
    )
    with reading(engine) as conn:
        accepted = {(str(c), int(r)): int(n) for c, r, n in conn.execute(stmt)}
        summed: dict[tuple[str, int], int] = {}
        if aggs is not None:
            rows = conn.execute(
                select(aggs.c.cohort, aggs.c.round, aggs.c.count).where(aggs.c.region == region)
            )
            summed = {(str(c), int(r)): int(n) for c, r, n in rows}
    keys = sorted(set(accepted) | set(summed))
    bad = {
        f"{c}/{r}": {"accepted": accepted.get((c, r), 0), "aggregated": summed.get((c, r), 0)}
        for c, r in keys
        if accepted.get((c, r), 0) != summed.get((c, r), 0)
    }
    return Check(
        name="aggregates_match_accepts",
        ok=not bad,
        summary=(
            f"{sum(accepted.values())} accepted summaries, all in the sums exactly once"
            if not bad
            else f"{len(bad)} (cohort, round) sums disagree with the accepted records"
        ),
        evidence={"mismatches": dict(list(bad.items())[:50]), "cells": len(keys)},
    )


def read_signed_heads(bootstrap: list[str], topic: str, timeout_s: float = 10.0) -> list[AuditHead]:
    """Every head on the region's compacted audit topic (newest last per key)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        if not parts:
            return []
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        heads: list[AuditHead] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in parts):
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    if r.value is not None:
                        with contextlib.suppress(ValueError):
                            heads.append(AuditHead.model_validate_json(r.value))
        return heads
    finally:
        consumer.close()


def check_signed_head(engine: Engine, region: str, cfg: RegionConfig) -> Check:
    """The stored chain reaches the newest signed head ingestion published (a truncated tail
    still verifies from genesis; only a head held elsewhere shows it is missing)."""
    try:
        public = keystore.signing_public_key(cfg.keyset_dir, keystore.AUDIT_SIGNING)
        heads = read_signed_heads(cfg.bootstrap_servers, cfg.t.audit or "")
    except Exception as exc:  # no key yet, or no broker: unverified is not "fine"
        return Check(
            name="signed_head",
            ok=False,
            summary=f"could not read the signed audit heads ({type(exc).__name__})",
            evidence={"error": type(exc).__name__},
        )
    valid = [h for h in heads if h.region == region and h.verify(public)]
    forged = len([h for h in heads if h.region == region]) - len(valid)
    stored_seq, _ = current_head(engine, region)
    if not valid:
        return Check(
            name="signed_head",
            ok=stored_seq == 0 and not forged,
            summary="no signed head published yet"
            + (f"; {forged} with bad signatures" if forged else ""),
            evidence={"stored_seq": stored_seq, "bad_signatures": forged},
        )
    newest = max(valid, key=lambda h: h.seq)
    stored_hash = hash_at(engine, region, newest.seq)
    ok = stored_hash == newest.hash and not forged
    if stored_hash is None:
        summary = f"stored chain ends at {stored_seq}, behind the signed head {newest.seq}"
    elif stored_hash != newest.hash:
        summary = f"row {newest.seq} differs from the signed head"
    else:
        summary = f"chain reaches the newest signed head ({newest.seq}, signed {newest.at})"
    if forged:
        summary += f"; {forged} head(s) with bad signatures"
    return Check(
        name="signed_head",
        ok=ok,
        summary=summary,
        evidence={"signed_seq": newest.seq, "stored_seq": stored_seq, "bad_signatures": forged},
    )


def check_backlog(
    engine: Engine, cfg: RegionConfig, group_id: str, max_age_s: float = 900.0
) -> Check:
    """Nothing on the region's ingest topic older than ``max_age_s`` is still undecided: per
    partition, the first record past the durable offset (if any) must be younger. Old records
    without a decision mean ingestion is stuck or was stopped (a wedge the chain cannot show)."""
    from kafka import KafkaConsumer, TopicPartition

    offsets = _table(engine, "consumer_offsets")
    durable: dict[int, int] = {}
    if offsets is not None:
        with reading(engine) as conn:
            rows = conn.execute(
                select(offsets.c.partition, offsets.c.next_offset).where(
                    offsets.c.group_id == group_id, offsets.c.topic == cfg.t.ingest
                )
            )
            durable = {int(p): int(n) for p, n in rows}
    try:
        consumer = KafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, enable_auto_commit=False)
    except Exception as exc:
        return Check(
            name="no_backlog",
            ok=False,
            summary=f"could not read the ingest topic ({type(exc).__name__})",
        )
    stale: dict[str, float] = {}
    try:
        parts = [
            TopicPartition(cfg.t.ingest, p)
            for p in sorted(consumer.partitions_for_topic(cfg.t.ingest) or [])
        ]
        if parts:
            consumer.assign(parts)
            begins, ends = consumer.beginning_offsets(parts), consumer.end_offsets(parts)
            now = time.time()
            for tp in parts:
                start = max(durable.get(tp.partition, 0), begins[tp])
                if start >= ends[tp]:
                    continue
                consumer.seek(tp, start)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    got = consumer.poll(timeout_ms=500, max_records=1).get(tp)
                    if got:
                        age = now - got[0].timestamp / 1000.0
                        if age > max_age_s:
                            stale[f"{tp.topic}[{tp.partition}]@{start}"] = round(age, 1)
                        break
                consumer.pause(tp)
    finally:
        consumer.close()
    return Check(
        name="no_backlog",
        ok=not stale,
        summary=(
            f"no undecided record older than {max_age_s:.0f}s on the ingest topic"
            if not stale
            else f"{len(stale)} partition(s) hold undecided records older than {max_age_s:.0f}s"
        ),
        evidence={"stale_partitions": stale, "durable": {str(k): v for k, v in durable.items()}},
    )


def audit_region(
    settings: SottoSettings,
    region: str,
    *,
    since: datetime | None = None,
    expect_head: str | None = None,
) -> AuditReport:
    policy = settings.policy
    cfg = policy.region(region)
    engines: dict[str, Engine] = {}
    for name, other in policy.regions.items():
        url = other.database_url
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
            continue  # a region that never ran has no database (and so none of R's rows)
        engines[name] = make_engine(url)
    if region not in engines:
        raise SottoError(f"region {region!r} has no database at {cfg.database_url}")
    engine = engines[region]
    try:
        checks = [
            check_chain(engine, region, expect_head),
            check_accepts_routed(engine, region, policy, since),
            check_aggregates_match_accepts(engine, region),
            check_signed_head(engine, region, cfg),
            check_backlog(engine, cfg, f"{settings.ingest.group_prefix}-{region}"),
            check_stored_in_region(region, policy, engines),
            check_learned_in_region(engine, region),
            check_rejections(engine, region, since),
            check_budget(engine, region),
            check_adapters(engine, region, cfg.keyset_dir),
        ]
    finally:
        for e in engines.values():
            e.dispose()
    return AuditReport(
        region=region,
        generated_at=utcnow(),
        since=since,
        ok=all(c.ok for c in checks),
        checks=checks,
    )


def write_report(report: AuditReport, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False))
    return path
