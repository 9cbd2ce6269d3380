"""The foundation scenario: two regions' devices → their own Kafka topics → their own ingestion.

Simulated users (``deploy.simulation.population``) drive real :class:`edge_client.device.EdgeDevice`
objects: every step of their agent episodes (Launch, Tap, Type... finish) is recorded in each
device's SQLite context store, round summaries are sealed
with HPKE to the home region's current key and produced through the durable outbox. A few
hostile records are mixed in (garbage, a replay, a tampered envelope, a misrouted envelope from
the other region) to show dead-lettering. Each region's :class:`ingestion.service.IngestionApp`
then validates, decrypts, dedupes, aggregates and audits.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from rich.console import Console
from rich.progress import Progress

from deploy.settings import SottoSettings
from deploy.simulation.population import Population
from edge_client.device import EdgeDevice
from ingestion.aggregates import aggregates
from ingestion.audit import verify_chain
from ingestion.service import IngestionApp
from ingestion.topics import ensure_region_topics
from privacy.wire import b64d, b64e


@dataclass
class RegionOutcome:
    region: str
    sent: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    aggregates: list[dict[str, Any]] = field(default_factory=list)
    audit_ok: bool = False
    audit_first_bad: int | None = None


def _hostile(settings: SottoSettings, sent: dict[str, list[bytes]]) -> dict[str, int]:
    """Produce bad records into each region's ingest topic; returns how many per region."""
    policy = settings.policy
    regions = list(policy.regions)
    counts: dict[str, int] = Counter()
    boot = next(iter(policy.regions.values())).bootstrap_servers
    producer = KafkaProducer(bootstrap_servers=boot, acks="all")
    try:
        for i, region in enumerate(regions):
            topic = policy.region(region).t.ingest
            bad: list[bytes] = [
                b"\x00garbage, not an envelope",
                b'{"v": 1, "region": "' + region.encode() + b'"}',
            ]
            if sent[region]:
                bad.append(sent[region][0])  # replay of a delivered envelope
                raw = bytearray(sent[region][1])
                if raw[:1] == b"{":  # a v1 (JSON) envelope
                    env = raw.decode()
                    # tamper: flip one byte inside the ciphertext
                    start = env.index('"ct":"') + 6
                    ct = bytearray(b64d(env[start : env.index('"', start)]))
                    ct[len(ct) // 2] ^= 0x01
                    bad.append(
                        (env[:start] + b64e(bytes(ct)) + env[env.index('"', start) :]).encode()
                    )
                else:  # v2 (binary): the ciphertext is the record's tail, raw
                    raw[len(raw) - 20] ^= 0x01
                    bad.append(bytes(raw))
            other = regions[(i + 1) % len(regions)]
            if other != region and sent[other]:
                bad.append(sent[other][-1])  # another region's envelope, misrouted here
            for value in bad:
                producer.send(topic, value=value)
            counts[region] += len(bad)
        producer.flush(30)
    finally:
        producer.close()
    return dict(counts)


def run_foundation(
    settings: SottoSettings,
    workdir: Path,
    *,
    rounds: int = 2,
    cohorts_per_region: int = 2,
    devices_per_cohort: int = 6,
    seed: int = 7,
    console: Console | None = None,
) -> dict[str, RegionOutcome]:
    console = console or Console(stderr=True)
    policy = settings.policy
    regions = tuple(policy.regions)
    pop = Population(
        seed=seed,
        regions=regions,
        cohorts_per_region=cohorts_per_region,
        devices_per_cohort=devices_per_cohort,
        steps_per_round=6,  # tasks per device and round, each a whole agent episode
    )
    for region in regions:
        ensure_region_topics(policy.region(region))
    sent: dict[str, list[bytes]] = {r: [] for r in regions}
    outcomes = {r: RegionOutcome(region=r) for r in regions}
    devices = [
        EdgeDevice(
            d.device_id, d.region, d.cohort, settings.policy, workdir / "devices" / d.device_id
        )
        for d in pop.devices
    ]
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("devices sending round summaries", total=rounds * len(devices))
            for rnd in range(rounds):
                for sim, dev in zip(pop.devices, devices, strict=True):
                    steps = [s for e in pop.episodes_for_round(sim, rnd) for s in e.steps]
                    for s in steps:
                        dev.record_step(s)  # every step of every task, as the observer would
                    receipt = dev.send_round(rnd, now=steps[-1].timestamp)
                    if receipt.delivered:
                        outcomes[sim.region].sent += 1
                    progress.advance(task)
        # the raw bytes each region received, for the hostile mix
        for region in regions:
            sent[region] = _read_some(
                policy.region(region).bootstrap_servers, policy.region(region).t.ingest
            )
    finally:
        for dev in devices:
            dev.close()
    bad = _hostile(settings, sent)
    for region in regions:
        with IngestionApp(settings.policy, region, settings.ingest) as app:
            app.process_available(timeout_s=60)
            out = outcomes[region]
            out.accepted = app.stats.accepted
            out.rejected = {str(k): v for k, v in app.stats.rejected.items()}
            for agg in aggregates(app.engine, region):
                out.aggregates.append(
                    {"cohort": agg.cohort, "round": agg.round, "count": agg.count}
                )
            out.audit_ok, out.audit_first_bad = verify_chain(app.engine, region)
        console.print(f"[dim]{region}: {bad.get(region, 0)} hostile records mixed in[/dim]")
    return outcomes


def _read_some(bootstrap: list[str], topic: str, limit: int = 4) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    try:
        out: list[bytes] = []
        for msg in consumer:
            out.append(msg.value)
            if len(out) >= limit:
                break
        return out
    finally:
        consumer.close()
