"""Key rotation and retirement seen by a running service; audit chain and offset fence."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import delete, update

from backend import keystore
from backend.errors import OffsetFenceError
from deploy.settings import SottoSettings
from ingestion.aggregates import aggregates
from ingestion.audit import verify_chain
from ingestion.checkpoint import BatchCheckpoint
from ingestion.db import audit_log, open_database
from ingestion.keyring import load_keyring
from ingestion.service import IngestionApp
from ingestion.validator import Accepted, Rejected, Validator
from privacy.envelope import seal
from privacy.wire import RejectReason, utcnow
from tests.ingestion.helpers import dead_letters, produce, random_summary

pytestmark = pytest.mark.kafka


def test_rotate_then_retire_while_running(settings: SottoSettings) -> None:
    rng = np.random.default_rng(5)
    eu = settings.policy.region("eu")
    old_key = keystore.load_keyset(eu.keyset_dir).current()

    def sealed(key, rnd: int) -> bytes:  # type: ignore[no-untyped-def]
        return seal(random_summary(rng), key=key, cohort="k", round=rnd).to_bytes()

    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        produce(settings.kafka_bootstrap or "", eu.t.ingest, [sealed(old_key, 0)])
        app.process_available(timeout_s=60)
        assert app.stats.accepted == 1

        in_flight = sealed(old_key, 1)  # sealed before the rotation, delivered after it
        new_key = keystore.rotate(eu.keyset_dir, "eu").current()
        produce(settings.kafka_bootstrap or "", eu.t.ingest, [in_flight, sealed(new_key, 1)])
        app.process_available(timeout_s=60)
        assert app.stats.accepted == 3, app.stats.rejected  # decrypt_only still decrypts

        late = sealed(old_key, 2)
        keystore.retire(eu.keyset_dir, old_key.key_id)
        produce(settings.kafka_bootstrap or "", eu.t.ingest, [late, sealed(new_key, 2)])
        app.process_available(timeout_s=60)
        assert app.stats.accepted == 4
        assert app.stats.rejected == {RejectReason.RETIRED_KEY.value: 1}
        assert [a.count for a in aggregates(app.engine, "eu")] == [1, 2, 1]

        engine = app.engine
        assert verify_chain(engine, "eu") == (True, None)
        with engine.begin() as conn:  # an insider edits one decision
            conn.execute(update(audit_log).where(audit_log.c.seq == 3).values(cohort="forged"))
        assert verify_chain(engine, "eu") == (False, 3)

    dls = dead_letters(settings.kafka_bootstrap or "", eu.t.dead_letter)
    assert [(d.reason, d.original) for d in dls] == [(RejectReason.RETIRED_KEY, late)]


def test_deleted_audit_row_breaks_the_chain(settings: SottoSettings) -> None:
    rng = np.random.default_rng(6)
    eu = settings.policy.region("eu")
    key = keystore.load_keyset(eu.keyset_dir).current()
    values = [seal(random_summary(rng), key=key, cohort="a", round=0).to_bytes() for _ in range(5)]
    produce(settings.kafka_bootstrap or "", eu.t.ingest, [*values, b"junk"], partition=0)
    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        app.process_available(timeout_s=60)
        assert verify_chain(app.engine, "eu") == (True, None)
        with app.engine.begin() as conn:
            conn.execute(delete(audit_log).where(audit_log.c.seq == 4))
        assert verify_chain(app.engine, "eu") == (False, 5)


def test_checkpoint_refuses_offsets_that_go_backwards(settings: SottoSettings) -> None:
    rng = np.random.default_rng(8)
    policy = settings.policy
    eu = policy.region("eu")
    validator = Validator("eu", policy, load_keyring(policy, "eu"), max_bytes=65536)
    key = keystore.load_keyset(eu.keyset_dir).current()
    engine = open_database(eu.database_url)

    def checkpoint(offset: int) -> BatchCheckpoint:
        raw = seal(random_summary(rng), key=key, cohort="f", round=0).to_bytes()
        verdict = validator.validate(raw, eu.t.ingest, 0, offset)
        assert isinstance(verdict, Accepted)
        cp = BatchCheckpoint(
            region="eu", group_id="g", dead_letter_topic=eu.t.dead_letter, now=utcnow()
        )
        cp.accept(verdict, eu.t.ingest, 0, offset)
        return cp

    checkpoint(10).commit(producer=None, engine=engine)  # type: ignore[arg-type]
    stale = checkpoint(10)  # e.g. a zombie consumer re-committing the same record
    with pytest.raises(OffsetFenceError):
        stale.commit(producer=None, engine=engine)  # type: ignore[arg-type]
    assert stale.status.value == "failed"
    assert [a.count for a in aggregates(engine, "eu")] == [1]  # nothing of it was written
    checkpoint(11).commit(producer=None, engine=engine)  # type: ignore[arg-type]
    assert [a.count for a in aggregates(engine, "eu")] == [2]
    assert verify_chain(engine, "eu") == (True, None)
    assert isinstance(validator.validate(b"{}", "elsewhere"), Rejected)
    engine.dispose()


@pytest.mark.kafka
def test_a_fenced_batch_dead_letters_nothing(settings: SottoSettings) -> None:
    """A zombie's batch that another replica already made durable: its records look like
    replays to it. The fence is read before the dead letters go out, so none does (they
    would name valid, counted records as rejected)."""
    from kafka import KafkaProducer

    rng = np.random.default_rng(9)
    policy = settings.policy
    eu = policy.region("eu")
    key = keystore.load_keyset(eu.keyset_dir).current()
    engine = open_database(eu.database_url)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    raw = seal(random_summary(rng), key=key, cohort="f", round=0).to_bytes()
    validator = Validator("eu", policy, load_keyring(policy, "eu"), max_bytes=65536)
    verdict = validator.validate(raw, eu.t.ingest, 0, 4)
    assert isinstance(verdict, Accepted)
    won = BatchCheckpoint(
        region="eu", group_id="g", dead_letter_topic=eu.t.dead_letter, now=utcnow()
    )
    won.accept(verdict, eu.t.ingest, 0, 4)
    won.commit(producer=producer, engine=engine)
    zombie = BatchCheckpoint(
        region="eu", group_id="g", dead_letter_topic=eu.t.dead_letter, now=utcnow()
    )
    zombie.reject(
        Rejected(RejectReason.REPLAY, "msg_id already accepted", verdict.envelope),
        raw,
        eu.t.ingest,
        0,
        4,
    )
    with pytest.raises(OffsetFenceError):
        zombie.commit(producer=producer, engine=engine)
    producer.close()
    assert dead_letters(settings.kafka_bootstrap or "", eu.t.dead_letter) == []
    # a batch the fence admits still dead-letters first (at least once), then commits
    later = BatchCheckpoint(
        region="eu", group_id="g", dead_letter_topic=eu.t.dead_letter, now=utcnow()
    )
    later.reject(Rejected(RejectReason.MALFORMED, "junk"), b"junk", eu.t.ingest, 0, 5)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    later.commit(producer=producer, engine=engine)
    producer.close()
    assert [d.original for d in dead_letters(settings.kafka_bootstrap or "", eu.t.dead_letter)] == [
        b"junk"
    ]
    engine.dispose()


def test_audit_fails_when_sums_disagree_with_accepted_records(settings: SottoSettings) -> None:
    """A lost update (what unlocked replicas did on PostgreSQL) keeps offsets, replay ids and
    the chain consistent; only recounting the accepted summaries against the sums shows it."""
    from sqlalchemy import update

    from deploy.compliance import audit_region
    from ingestion.db import aggregates as aggregates_table

    rng = np.random.default_rng(11)
    eu = settings.policy.region("eu")
    key = keystore.load_keyset(eu.keyset_dir).current()
    values = [
        seal(random_summary(rng), key=key, cohort="k", round=r % 2).to_bytes() for r in range(6)
    ]
    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        produce(settings.kafka_bootstrap or "", eu.t.ingest, values)
        app.process_available(timeout_s=60)
        assert app.stats.accepted == 6
        engine = app.engine
        report = audit_region(settings, "eu")
        check = next(c for c in report.checks if c.name == "aggregates_match_accepts")
        assert check.ok, check
        with engine.begin() as conn:  # what a lost update leaves behind
            conn.execute(
                update(aggregates_table)
                .where(aggregates_table.c.cohort == "k", aggregates_table.c.round == 1)
                .values(count=aggregates_table.c.count - 1)
            )
    report = audit_region(settings, "eu")
    check = next(c for c in report.checks if c.name == "aggregates_match_accepts")
    assert not check.ok and not report.ok
    assert check.evidence["mismatches"] == {"k/1": {"accepted": 3, "aggregated": 2}}


def test_audit_notices_a_truncated_tail_through_the_signed_head(settings: SottoSettings) -> None:
    """Deleting the newest decisions leaves a chain that verifies from genesis; the signed head
    ingestion published to the compacted audit topic is what shows the tail is missing."""
    from sqlalchemy import delete

    from deploy.compliance import audit_region
    from ingestion.audit import verify_chain

    rng = np.random.default_rng(12)
    eu = settings.policy.region("eu")
    key = keystore.load_keyset(eu.keyset_dir).current()
    values = [seal(random_summary(rng), key=key, cohort="k", round=0).to_bytes() for _ in range(5)]
    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        produce(settings.kafka_bootstrap or "", eu.t.ingest, values)
        app.process_available(timeout_s=60)
        engine = app.engine
        assert app.stats.accepted == 5
    # closing published the signed head (seq 5)
    report = audit_region(settings, "eu")
    head = next(c for c in report.checks if c.name == "signed_head")
    assert head.ok, head
    assert head.evidence["signed_seq"] == 5
    engine = open_database(eu.database_url)
    with engine.begin() as conn:  # an insider removes the two newest decisions
        conn.execute(delete(audit_log).where(audit_log.c.region == "eu", audit_log.c.seq > 3))
    assert verify_chain(engine, "eu") == (True, None)  # the chain alone cannot tell
    report = audit_region(settings, "eu")
    head = next(c for c in report.checks if c.name == "signed_head")
    assert not head.ok and not report.ok
    assert "behind the signed head 5" in head.summary
    engine.dispose()


def test_audit_reports_an_undecided_backlog(settings: SottoSettings) -> None:
    """Records nobody decided on for longer than the threshold fail the audit (a wedged or
    stopped ingestion), even though every stored decision is consistent."""
    from deploy.compliance import check_backlog

    rng = np.random.default_rng(13)
    eu = settings.policy.region("eu")
    key = keystore.load_keyset(eu.keyset_dir).current()
    group = f"{settings.ingest.group_prefix}-eu"
    with IngestionApp(settings.policy, "eu", settings.ingest) as app:
        produce(
            settings.kafka_bootstrap or "",
            eu.t.ingest,
            [seal(random_summary(rng), key=key, cohort="k", round=0).to_bytes()],
        )
        app.process_available(timeout_s=60)
        engine = app.engine
        assert check_backlog(engine, eu, group, max_age_s=0.0).ok  # all decided
        produce(
            settings.kafka_bootstrap or "",
            eu.t.ingest,
            [seal(random_summary(rng), key=key, cohort="k", round=0).to_bytes()],
        )
        check = check_backlog(engine, eu, group, max_age_s=0.0)  # one record left undecided
        assert not check.ok and len(check.evidence["stale_partitions"]) == 1
        assert check_backlog(engine, eu, group, max_age_s=3600.0).ok  # young: not a backlog
