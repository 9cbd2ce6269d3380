"""The `sotto` command line. Commands import their implementation lazily so that
`sotto kafka status` does not pay for importing torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from privacy.errors import SottoError

app = typer.Typer(
    help="Sotto: privacy-preserving personalization for phone agents.", no_args_is_help=True
)
kafka_app = typer.Typer(help="Run a local Apache Kafka (KRaft) broker.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage a region's HPKE key set.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks; each prints one JSON object.", no_args_is_help=True)
privacy_app = typer.Typer(help="Privacy budget reports.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(keys_app, name="keys")
app.add_typer(bench_app, name="bench")
app.add_typer(privacy_app, name="privacy")

console = Console(stderr=True)


def _settings():
    from deploy.settings import SottoSettings

    return SottoSettings()


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)


@app.command()
def init(
    home: Annotated[Path | None, typer.Option(help="state folder (default: settings.home)")] = None,
    regions: Annotated[str, typer.Option(help="comma-separated region names")] = "eu,cn",
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers")] = None,
    overwrite: bool = False,
) -> None:
    """Create a region policy and one HPKE key set per region."""
    from deploy.bootstrap import init_deployment

    s = _settings()
    boot = bootstrap or s.kafka_bootstrap or f"127.0.0.1:{s.kafka.port}"
    path = init_deployment(
        home or s.home, tuple(r.strip() for r in regions.split(",")), boot, overwrite=overwrite
    )
    console.print(f"region policy: {path}")


@keys_app.command("rotate")
def keys_rotate(region: Annotated[str, typer.Option()]) -> None:
    """New current key; the previous one keeps decrypting until retired."""
    from backend import keystore

    try:
        ks = keystore.rotate(_settings().policy.region(region).keyset_dir, region)
    except SottoError as exc:
        _fail(exc)
    console.print(f"current key of {region}: {ks.current().key_id}")


@keys_app.command("retire")
def keys_retire(
    region: Annotated[str, typer.Option()], key_id: Annotated[str, typer.Option()]
) -> None:
    """Stop accepting envelopes sealed to KEY_ID and delete its private key."""
    from backend import keystore

    try:
        keystore.retire(_settings().policy.region(region).keyset_dir, key_id)
    except SottoError as exc:
        _fail(exc)
    console.print(f"retired {key_id}")


@keys_app.command("list")
def keys_list(region: Annotated[str, typer.Option()]) -> None:
    """Show key ids and their status (never key material beyond the public key)."""
    from backend import keystore

    ks = keystore.load_keyset(_settings().policy.region(region).keyset_dir)
    for k in ks.keys:
        print(f"{k.key_id}\t{k.status.value}\t{k.created_at.isoformat()}")


def _broker(port: int | None, data_dir: Path | None):
    from deploy.kafka_local import LocalKafka

    s = _settings()
    d = data_dir or s.kafka.data_dir
    if port is None:
        return LocalKafka.from_data_dir(d, lib_dir=s.kafka.lib_dir, heap=s.kafka.heap)
    return LocalKafka(data_dir=d, port=port, controller_port=s.kafka.controller_port,
                      lib_dir=s.kafka.lib_dir, heap=s.kafka.heap)  # fmt: skip


@kafka_app.command("fetch")
def kafka_fetch() -> None:
    """Download Apache Kafka's jars from Maven Central (deploy/kafka/pom.xml)."""
    from deploy.kafka_local import KafkaError, fetch

    try:
        console.print(f"Kafka classpath: {fetch(_settings().kafka.lib_dir)}")
    except KafkaError as exc:
        _fail(exc)


@kafka_app.command("up")
def kafka_up(
    port: Annotated[int | None, typer.Option(help="client port (default 9092)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="KRaft storage and logs")] = None,
) -> None:
    """Format KRaft storage if new, start a broker+controller, wait until it serves."""
    from deploy.kafka_local import KafkaError

    s = _settings()
    broker = _broker(port or s.kafka.port, data_dir)
    try:
        with console.status(f"starting Kafka on {broker.bootstrap}"):
            broker.start(timeout_s=s.kafka.start_timeout_s)
    except KafkaError as exc:
        _fail(exc)
    console.print(f"[green]Kafka up[/green] at {broker.bootstrap} (data: {broker.data_dir})")
    print(broker.bootstrap)


@kafka_app.command("status")
def kafka_status(
    data_dir: Annotated[Path | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Is the local broker running? Exit code 1 when it is not."""
    st = _broker(None, data_dir).status()
    _emit(st, as_json)
    raise typer.Exit(0 if st["running"] else 1)


@kafka_app.command("down")
def kafka_down(data_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """Stop the local broker (SIGTERM, then SIGKILL after 30 s)."""
    stopped = _broker(None, data_dir).stop()
    console.print("Kafka stopped" if stopped else "Kafka was not running")


@app.command()
def ingest(
    region: Annotated[str, typer.Option(help="region to ingest")],
    max_idle_s: Annotated[
        float | None, typer.Option(help="exit after this long without records")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="serve /metrics and /healthz on this port")
    ] = None,
    coordinate: Annotated[
        bool, typer.Option(help="also coordinate SecAgg+ rounds (the region's round service)")
    ] = False,
    budget_epsilon: Annotated[
        float | None, typer.Option(help="per-cohort ε budget (default: rounds.budget_epsilon)")
    ] = None,
    budget_delta: Annotated[
        float | None, typer.Option(help="per-cohort δ budget (default: rounds.budget_delta)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the final stats as JSON")] = False,
) -> None:
    """Run REGION's ingestion service until SIGTERM/SIGINT (or --max-idle-s without records).

    With --coordinate it is the region's round service: ingestion plus the SecAgg+ round
    coordinator on the same database (rounds are opened through its API or the demo)."""
    s = _settings()
    metrics_port = s.ingest.metrics_port if metrics_port is None else metrics_port
    if coordinate:
        from deploy.services import run_round_service
        from privacy.ledger import Budget

        eps = s.rounds.budget_epsilon if budget_epsilon is None else budget_epsilon
        delta = s.rounds.budget_delta if budget_delta is None else budget_delta
        stats = run_round_service(s, region, Budget(epsilon=eps, delta=delta), metrics_port)
    else:
        from deploy.services import run_ingest

        stats = run_ingest(s, region, max_idle_s, metrics_port)
    _emit(stats.as_dict(), json_out)


@app.command()
def learn(
    region: Annotated[str, typer.Option(help="region to learn for")],
    max_idle_s: Annotated[
        float | None, typer.Option(help="exit after this long without records")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="serve /metrics and /healthz on this port")
    ] = None,
    group_id: Annotated[
        str | None, typer.Option(help="consumer group (default: <learner.group_prefix>-REGION)")
    ] = None,
    learner_factory: Annotated[
        str | None,
        typer.Option(
            help="module:callable returning a LearnerFactory (default: the cohort learner)",
            hidden=True,
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the final stats as JSON")] = False,
) -> None:
    """Run REGION's learner: released aggregates in, signed adapters out (until SIGTERM)."""
    from deploy.services import import_factory, run_learn

    s = _settings()
    factory = import_factory(learner_factory) if learner_factory else None
    stats = run_learn(
        s, region, max_idle_s, factory, group_id=group_id or f"{s.learner.group_prefix}-{region}",
        metrics_port=s.learner.metrics_port if metrics_port is None else metrics_port,
    )  # fmt: skip
    _emit(stats.as_dict(), json_out)


@app.command()
def demo(
    rounds: Annotated[int, typer.Option(help="rounds to run")] = 8,
    devices: Annotated[int, typer.Option(help="devices per cohort")] = 80,
    cohorts: Annotated[int, typer.Option(help="cohorts per region")] = 2,
    regions: Annotated[str, typer.Option(help="comma-separated regions")] = "eu,cn",
    out: Annotated[Path, typer.Option(help="report folder")] = Path("sotto-report"),
    bootstrap: Annotated[str | None, typer.Option(help="use this broker")] = None,
) -> None:
    """Run the platform end to end on this machine and write a report."""
    from deploy.demo import run_demo

    report = run_demo(
        rounds=rounds, devices=devices, cohorts=cohorts,
        regions=tuple(r.strip() for r in regions.split(",")), out_dir=out, bootstrap=bootstrap,
    )  # fmt: skip
    raise typer.Exit(0 if report["status"] == "complete" else 130)


@app.command()
def audit(
    region: Annotated[str, typer.Option(help="the region to audit")],
    since: Annotated[str | None, typer.Option(help="ISO time: only decisions from then on")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    out: Annotated[
        Path | None, typer.Option(help="report file (default sotto-audit-<region>.json)")
    ] = None,
    expect_head: Annotated[
        str | None, typer.Option(help="archived chain head hash to compare")
    ] = None,
) -> None:
    """Verify a region's audit chain, routing, storage, learning, budget and adapters.

    Exit code 1 when any check fails; the report file is written either way."""
    from datetime import datetime

    from rich.table import Table

    from deploy.compliance import audit_region, write_report

    try:
        when = datetime.fromisoformat(since) if since else None
        report = audit_region(_settings(), region, since=when, expect_head=expect_head)
    except (SottoError, ValueError) as exc:
        _fail(exc)
    path = write_report(report, out or Path(f"sotto-audit-{region}.json"))
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        out_console = Console()
        table = Table(title=f"Compliance audit of region {region}")
        table.add_column("check")
        table.add_column("result")
        table.add_column("finding")
        for c in report.checks:
            table.add_row(c.name, "[green]pass[/green]" if c.ok else "[red]FAIL[/red]", c.summary)
        out_console.print(table)
        for c in report.checks:
            if c.name == "rejections" and c.evidence["by_reason"]:
                out_console.print(
                    "rejections: "
                    + ", ".join(f"{k}={v}" for k, v in sorted(c.evidence["by_reason"].items()))
                )
            if c.name == "privacy_budget":
                for row in c.evidence["cohorts"]:
                    out_console.print(
                        f"budget {row['cohort']}: eps spent {row['epsilon_spent']:.3f} of {row['budget_epsilon']:.3f}"
                    )
            if c.name == "adapters":
                for a in c.evidence["adapters"]:
                    out_console.print(
                        f"adapter {a['cohort']} v{a['version']} ({a['status']}, parent {a['parent']}) sha256 {str(a['artifact_sha256'])[:12]} signature {'valid' if a['signature_valid'] else a['signature_valid']}"
                    )
        out_console.print(f"report written to {path}; overall: {'PASS' if report.ok else 'FAIL'}")
    raise typer.Exit(0 if report.ok else 1)


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


@bench_app.command("secagg")
def bench_secagg(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    n: Annotated[int, typer.Option("--n", help="clients")] = 1000,
    d: Annotated[int, typer.Option("--d", help="vector dimension")] = 10000,
    dropout: Annotated[
        float, typer.Option("--dropout", help="fraction of clients that drop")
    ] = 0.1,
    drop_stage: Annotated[str, typer.Option(help="masked (default) or unmask")] = "masked",
    flower: Annotated[bool, typer.Option(help="also time Flower's SecAgg+ primitives")] = True,
) -> None:
    """SecAgg+ client/server cost at n clients x d dims, and the speedup over Flower's."""
    from deploy.bench_secagg import run_secagg_bench

    try:
        result = run_secagg_bench(n=n, d=d, dropout=dropout, drop_stage=drop_stage, flower=flower)
    except (SottoError, ValueError) as exc:
        _fail(exc)
    _emit(result, as_json)


@bench_app.command("ingest")
def bench_ingest(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    n: Annotated[int, typer.Option("--n", help="envelopes to produce and ingest")] = 20000,
    bootstrap: Annotated[
        str | None,
        typer.Option(help="Kafka bootstrap (default: $SOTTO_KAFKA_BOOTSTRAP or a local broker)"),
    ] = None,
    profile: Annotated[
        Path | None, typer.Option(help="write a cProfile of the pipeline here")
    ] = None,
) -> None:
    """Ingestion pipeline throughput vs a bare Kafka consumer on the same N envelopes."""
    from backend.observability import configure_logging
    from deploy.bench_ingest import run_ingest_bench

    configure_logging("WARNING")  # stdout carries only the result
    try:
        result = run_ingest_bench(bootstrap, n=n, profile=profile)
    except (SottoError, ValueError, RuntimeError) as exc:
        _fail(exc)
    _emit(result, as_json)


@privacy_app.command("report")
def privacy_report(
    region: Annotated[str | None, typer.Option(help="only this region")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Epsilon spent and left per cohort, from each region's ledger (read-only)."""
    from ingestion.ledger_store import report_policy

    try:
        rows = [r.as_dict() for r in report_policy(_settings().policy, region)]
    except SottoError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({"cohorts": rows}, indent=2, sort_keys=True))
        return
    print("region\tcohort\trounds\tepsilon_spent\tepsilon_left\tbudget_epsilon\tbudget_delta")
    for r in rows:
        print(
            f"{r['region']}\t{r['cohort']}\t{r['rounds']}\t{r['epsilon_spent']:.6g}\t"
            f"{r['epsilon_left']:.6g}\t{r['budget_epsilon']:g}\t{r['budget_delta']:g}"
        )


@bench_app.command("learner")
def bench_learner(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    history: Annotated[int, typer.Option(help="rounds of history for the 1x learner")] = 20,
    updates: Annotated[int, typer.Option(help="timed updates per learner")] = 15,
) -> None:
    """Learner update cost with a 1x and a 10x longer stream history (must not grow)."""
    from deploy.bench_learner import run_learner_bench

    _emit(run_learner_bench(history=history, updates=updates), as_json)


@bench_app.command("edge")
def bench_edge(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    calls: Annotated[int, typer.Option(help="suggest calls timed")] = 2000,
    neighbours: Annotated[int, typer.Option(help="SecAgg+ neighbours per client")] = 30,
) -> None:
    """On-device cost: suggest latency, one round's contribution build, adapter size and swap."""
    from deploy.bench_edge import run_edge_bench

    _emit(run_edge_bench(calls=calls, neighbours=neighbours), as_json)


@bench_app.command("quality")
def bench_quality(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    devices: Annotated[int, typer.Option(help="devices per cohort")] = 200,
    rounds: Annotated[int, typer.Option(help="rounds per cohort")] = 12,
    epsilon: Annotated[float, typer.Option(help="privacy budget per cohort (whole run)")] = 8.0,
) -> None:
    """Private personalization vs base and vs a central (non-private) oracle, and drift recovery."""
    from deploy.bench_quality import run_quality_bench

    _emit(run_quality_bench(devices_per_cohort=devices, rounds=rounds, epsilon=epsilon), as_json)


config_app = typer.Typer(help="Inspect and document the settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Print the effective settings (defaults < sotto.toml < SOTTO_* env) and each one's source.

    The text form is a valid sotto.toml. Keys that name no setting are warned about on
    stderr, because the settings ignore them and a typo would silently keep a default."""
    from deploy import settings as st

    try:
        s, sources, path = _settings(), st.value_sources(), st.config_file()
    except SottoError as exc:
        _fail(exc)
    for key in st.unknown_keys():
        console.print(f"[yellow]warning:[/yellow] not a setting, ignored: {key}")
    if as_json:
        doc = {"config_file": str(path) if path else None,
               "settings": s.model_dump(mode="json"), "sources": sources}  # fmt: skip
        print(json.dumps(doc, indent=2, sort_keys=True))
        return
    print(f"# config file: {path or '(none)'}; sources: default, file, env")
    print(st.render_toml(s, sources), end="")


@config_app.command("doc")
def config_doc(
    update: Annotated[
        Path | None, typer.Option(help="rewrite the generated section of this Markdown file")
    ] = None,
) -> None:
    """Print every setting as Markdown tables (name, env var, type, default, description)."""
    from deploy import settings as st

    table = st.render_markdown()
    if update is None:
        print(table, end="")
        return
    try:
        update.write_text(st.replace_generated(update.read_text(), table))
    except (SottoError, OSError) as exc:
        _fail(exc)
    console.print(f"updated {update}")


def main() -> None:  # pragma: no cover - console entry point shim
    try:
        app()
    except SottoError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
