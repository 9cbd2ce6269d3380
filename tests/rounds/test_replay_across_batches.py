"""A second message of a sender for a stage is a replay even when the first was stored by an
earlier batch: ingestion looks up the batch's own (round, type, sender) keys in what is stored
(not only within the batch), so the coordinator never sees two answers of one client."""

from __future__ import annotations

import secrets

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
from tests.ingestion.helpers import dead_letters, produce
from tests.rounds.helpers import StepClock
from tests.rounds.test_protocol_dead_letters import _adv

pytestmark = pytest.mark.kafka


def test_replay_of_a_stored_message_is_dead_lettered(settings: SottoSettings) -> None:
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
        first = [seal(_adv(rid, s), key=key, cohort="cd", round=0).to_bytes() for s in (0, 1)]
        produce(settings.kafka_bootstrap, eu.t.ingest, first, partition=0)
        svc.app.process_available(timeout_s=30)
        # a later batch: a fresh advertisement of client 0 (new msg_id), and client 2's first
        later = [seal(_adv(rid, s), key=key, cohort="cd", round=0).to_bytes() for s in (0, 2)]
        produce(settings.kafka_bootstrap, eu.t.ingest, later, partition=0)
        svc.app.process_available(timeout_s=30)
        with reading(svc.app.engine) as conn:
            stored = sorted((r.type, r.sender) for r in conn.execute(select(round_messages)))
        assert stored == [("secagg_advertise", 0), ("secagg_advertise", 1), ("secagg_advertise", 2)]
    dls = dead_letters(settings.kafka_bootstrap, eu.t.dead_letter)
    assert [d.detail.split(":")[0] for d in dls] == ["replay"]
