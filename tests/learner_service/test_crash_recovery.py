"""Kill the learner process mid-stream (SIGKILL twice, SIGTERM once), restart it, and compare
everything it made durable with an uninterrupted run over the same releases."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from backend.storage import reading
from deploy.settings import SottoSettings
from deploy.simulation.base_model import deployment_base, models_dir
from learner import adapter_topic
from learner.registry import (
    adapter_events,
    adapter_outbox,
    learner_refusals,
    learner_releases,
    learner_state,
    list_adapters,
    open_registry,
)
from learner.service import LearnerApp
from tests.learner_service.helpers import counting_factory, produce_releases, read_topic, release

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
COHORTS = ("c0", "c1", "c2")
ROUNDS = 14
TOTAL = len(COHORTS) * ROUNDS


def _start(settings: SottoSettings, group: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SOTTO_HOME": str(settings.home),
        "SOTTO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "SOTTO_LOG_JSON": "true",
        "SOTTO_TEST_LEARN_DELAY_S": "0.15",
    }
    env.pop("SOTTO_CONFIG", None)
    cmd = [
        sys.executable,
        "-m",
        "deploy",
        "learn",
        "--region",
        "eu",
        "--group-id",
        group,
        "--learner-factory",
        "tests.learner_service.helpers:counting_factory",
        *extra,
    ]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def _applied(engine: Engine) -> int:
    with reading(engine) as conn:
        n = conn.execute(select(func.count()).select_from(learner_releases)).scalar()
    return int(n or 0)


def _reference_settings(settings: SottoSettings, tmp_path: Path) -> SottoSettings:
    """Same aggregates topic and signing key, its own database and adapters topic."""
    home = tmp_path / "reference"
    home.mkdir()
    eu = settings.policy.region("eu")
    text = settings.policy_path.read_text()
    text = text.replace(eu.database_url, f"sqlite:///{(home / 'eu.db').as_posix()}")
    text = text.replace(f'"{eu.t.adapters}"', f'"{eu.t.adapters}-ref"')
    (home / "regions.toml").write_text(text)
    ref = SottoSettings(home=home, kafka_bootstrap=settings.kafka_bootstrap)
    shutil.copytree(models_dir(settings.home), models_dir(ref.home))
    return ref


def _snapshot(engine: Engine) -> dict[str, object]:
    """What must be equal between the crashed and the uninterrupted run (no timestamps)."""
    with reading(engine) as conn:
        state = {
            r.cohort: (bytes(r.state), r.last_round, r.revision, r.plan)
            for r in conn.execute(select(learner_state))
        }
        releases = sorted(
            (r.cohort, r.round, r.actions) for r in conn.execute(select(learner_releases))
        )
        events: dict[str, list[tuple]] = defaultdict(list)
        for e in conn.execute(select(adapter_events).order_by(adapter_events.c.id)):
            events[e.cohort].append(
                (e.version, e.action, e.status, e.rollout_fraction, e.round, e.reason)
            )
        outbox: dict[str, list[tuple]] = defaultdict(list)
        for o in conn.execute(select(adapter_outbox).order_by(adapter_outbox.c.id)):
            outbox[o.cohort].append((o.kind, o.record_key, o.value))
        refusals = conn.execute(select(func.count()).select_from(learner_refusals)).scalar()
    registry = [a.lineage_fields() for a in list_adapters(engine, "eu")]
    return {
        "state": state,
        "releases": releases,
        "events": dict(events),
        "outbox": dict(outbox),
        "registry": registry,
        "refusals": refusals,
    }


def _topic_view(boot: str, topic: str) -> tuple[set[tuple], dict[bytes, bytes | None]]:
    """Distinct (key, value) records, and the newest value per key (what compaction keeps)."""
    records = read_topic(boot, topic)
    latest: dict[bytes, bytes | None] = {}
    by_partition: dict[int, list] = defaultdict(list)
    for p, _, key, value, _ in records:
        by_partition[p].append((key, value))
    for rows in by_partition.values():
        for key, value in rows:
            latest[key] = value
    return {(k, v) for _, _, k, v, _ in records}, latest


def test_sigkill_mid_stream_learns_every_release_exactly_once(
    settings: SottoSettings, group: str, tmp_path: Path
) -> None:
    eu = settings.policy.region("eu")
    boot = settings.kafka_bootstrap or ""
    # the service creates its topics; create them first so the releases can be produced
    adapter_topic.ensure_topics(eu)
    produce_releases(
        boot, eu.t.aggregates, [release("eu", c, r) for r in range(ROUNDS) for c in COHORTS]
    )

    engine = open_registry(eu.database_url)
    log = tmp_path / "learn.log"
    for fraction, sig in ((0.25, signal.SIGKILL), (0.55, signal.SIGKILL), (0.8, signal.SIGTERM)):
        proc = _start(settings, group, log)
        deadline = time.monotonic() + 180
        while _applied(engine) < fraction * TOTAL and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
        assert _applied(engine) < TOTAL, "the process finished before it could be stopped"
        if sig == signal.SIGTERM:
            assert rc == 0, log.read_text()[-3000:]  # graceful: finished its record, exited

    proc = _start(settings, group, log, "--max-idle-s", "3")
    assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    assert _applied(engine) == TOTAL
    assert adapter_topic.pending_count(engine, "eu") == 0

    ref_settings = _reference_settings(settings, tmp_path)
    with LearnerApp(
        ref_settings.policy,
        "eu",
        ref_settings.learner,
        base=lambda: deployment_base(ref_settings.home),
        learner_factory=counting_factory(0.0),
        group_id=f"{group}-ref",
    ) as ref:
        ref.process_available(timeout_s=120)
        ref_snapshot = _snapshot(ref.engine)

    crashed = _snapshot(engine)
    assert crashed["refusals"] == 0 and ref_snapshot["refusals"] == 0
    assert len(crashed["releases"]) == TOTAL  # type: ignore[arg-type]
    for part in ("releases", "state", "registry", "events", "outbox"):
        assert crashed[part] == ref_snapshot[part], part

    # the topic: same signed records as the uninterrupted run (republished copies are
    # byte-identical), and the same newest record under every key
    got_records, got_latest = _topic_view(boot, eu.t.adapters)
    want_records, want_latest = _topic_view(boot, f"{eu.t.adapters}-ref")
    assert got_records == want_records
    assert got_latest == want_latest
    engine.dispose()
