"""Protocol payloads that cannot belong to the live stage of a live round are dead-lettered
with a reason (never crash the service, never reach the coordinator); good ones are stored in
the same transaction as their offsets."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from sqlalchemy import select

from backend import keystore
from backend.storage import reading
from deploy.settings import SottoSettings
from ingestion.db import audit_log
from ingestion.round_open import RoundSpec
from ingestion.round_service import RoundService
from ingestion.rounds_db import round_messages
from privacy.credential import CredentialIssuer
from privacy.envelope import seal
from privacy.ledger import Budget
from privacy.rand import SystemRandomness
from privacy.secagg import crypto
from privacy.secagg.messages import AdvertiseKeys, MaskedInput
from privacy.wire import RejectReason
from tests.ingestion.helpers import dead_letters, produce
from tests.rounds.helpers import StepClock

pytestmark = pytest.mark.kafka


def _adv(rid: str, sender: int, issuer: CredentialIssuer | None = None) -> AdvertiseKeys:
    """A well-formed, signed advertisement (with a throwaway issuer unless one is given)."""
    rng = SystemRandomness()
    issuer = issuer or CredentialIssuer.generate("eu", "throwaway", rng)
    cred, key = issuer.issue(not_after=1 << 40, rng=rng)
    mask_pk = crypto.public_bytes(crypto.new_keypair(rng)[0])
    enc_pk = crypto.public_bytes(crypto.new_keypair(rng)[0])
    commit = secrets.token_bytes(32)
    return AdvertiseKeys(
        round_id=rid,
        sender=sender,
        mask_pk=mask_pk,
        enc_pk=enc_pk,
        seed_commit=commit,
        credential=cred,
        signature=key.sign(crypto.advertise_bytes(rid, sender, mask_pk, enc_pk, commit)),
    )


def test_bad_protocol_messages_are_dead_lettered(settings: SottoSettings, tmp_path: Path) -> None:
    eu = settings.policy.region("eu")
    key = keystore.load_keyset(eu.keyset_dir).current()
    spec = RoundSpec(layout="t", dim=4, clip=1.0, scale=100.0, epsilon=1.0, delta=1e-6)
    with RoundService(
        settings.policy,
        "eu",
        settings.ingest,
        budget=Budget(epsilon=5, delta=1e-5),
        clock=StepClock(),
    ) as svc:
        res = svc.coordinator.open_round(
            "cd", spec, participants=[secrets.token_hex(16) for _ in range(4)]
        )
        rid = res.round_id
        masked = MaskedInput(round_id=rid, sender=1, bits=16, dim=4, data=bytes(4 * 4))
        cases = [
            (_adv(rid, 0), "cd", 0, None),  # good
            (_adv(rid, 0), "cd", 0, "replay"),  # second advertisement of client 0
            (_adv(rid, 9), "cd", 0, "unknown_client"),
            (_adv("eu:cd:7", 1), "cd", 7, "unknown_round"),
            (_adv(rid, 2), "cd", 3, "wrong_round"),  # header says another round
            (masked, "cd", 0, "out_of_order"),  # masked input before its stage
        ]
        values = [seal(p, key=key, cohort=c, round=r).to_bytes() for p, c, r, _ in cases]
        produce(settings.kafka_bootstrap, eu.t.ingest, values, partition=0)
        svc.app.process_available(timeout_s=30)
        with reading(svc.app.engine) as conn:
            stored = [(r.type, r.sender) for r in conn.execute(select(round_messages))]
        assert stored == [("secagg_advertise", 0)]
    dls = dead_letters(settings.kafka_bootstrap, eu.t.dead_letter)
    assert {d.reason for d in dls} == {RejectReason.PROTOCOL}
    assert sorted(d.detail.split(":")[0] for d in dls) == sorted(
        c[3] for c in cases if c[3] is not None
    )


def test_a_message_after_its_stage_closed_is_late_not_a_violation(
    settings: SottoSettings,
) -> None:
    """A device that answers after its stage closed (a loaded phone, a slow network) did
    nothing wrong: its message is acknowledged, counted as late and audited, never stored for
    the coordinator and never dead-lettered as a protocol violation."""
    eu = settings.policy.region("eu")
    key = keystore.load_keyset(eu.keyset_dir).current()
    spec = RoundSpec(layout="t", dim=4, clip=1.0, scale=100.0, epsilon=1.0, delta=1e-6)
    clock = StepClock()
    with RoundService(
        settings.policy,
        "eu",
        settings.ingest,
        budget=Budget(epsilon=5, delta=1e-5),
        clock=clock,
    ) as svc:
        res = svc.coordinator.open_round(
            "cd", spec, participants=[secrets.token_hex(16) for _ in range(4)]
        )
        rid = res.round_id

        issuer = keystore.credential_issuer(eu.keyset_dir, "eu")

        def send(*senders: int) -> None:
            values = [
                seal(_adv(rid, c, issuer), key=key, cohort="cd", round=0).to_bytes()
                for c in senders
            ]
            produce(settings.kafka_bootstrap, eu.t.ingest, values, partition=0)
            svc.app.process_available(timeout_s=30)

        send(0, 1, 2)
        clock.advance(spec.stage_timeout_s + 1)  # client 3 misses the advertise deadline
        assert svc.coordinator.tick(clock()) == 1
        assert svc.coordinator.status(rid) != "collect_keys"
        send(3)  # ... and answers after all
        assert svc.app.stats.late == 1 and svc.app.stats.rejected_total == 0
        with reading(svc.app.engine) as conn:
            stored = sorted(r.sender for r in conn.execute(select(round_messages)))
            late = list(
                conn.execute(
                    select(audit_log.c.reason, audit_log.c.detail).where(
                        audit_log.c.event == "late"
                    )
                )
            )
        assert stored == [0, 1, 2]
        assert [r.reason for r in late] == ["late_for_stage"]
        assert "secagg_advertise from client 3" in late[0].detail
    assert dead_letters(settings.kafka_bootstrap, eu.t.dead_letter) == []
