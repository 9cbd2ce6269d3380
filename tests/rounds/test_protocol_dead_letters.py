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
from ingestion.round_open import RoundSpec
from ingestion.round_service import RoundService
from ingestion.rounds_db import round_messages
from privacy.envelope import seal
from privacy.ledger import Budget
from privacy.secagg.messages import AdvertiseKeys, MaskedInput
from privacy.wire import RejectReason
from tests.ingestion.helpers import dead_letters, produce
from tests.rounds.helpers import StepClock

pytestmark = pytest.mark.kafka


def _adv(rid: str, sender: int) -> AdvertiseKeys:
    return AdvertiseKeys(
        round_id=rid, sender=sender, mask_pk=secrets.token_bytes(32), enc_pk=secrets.token_bytes(32)
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
