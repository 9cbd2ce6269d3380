"""The `sotto` command line. Commands import their implementation lazily so that
`sotto kafka status` does not pay for importing torch.

:func:`main` is the entry point (`sotto`, `python -m deploy`): it turns Sotto's errors into one
line on stderr and an :class:`ExitCode`, never a traceback (unless `--debug`/`SOTTO_DEBUG=1`)."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from privacy.errors import ConfigError, SottoError


class ExitCode(IntEnum):
    """What `sotto` exits with; README.md ("The command line") documents the table."""

    OK = 0
    CHECK_FAILED = 1  # the command ran and found a problem: an audit check failed, no broker
    USAGE = 2  # bad command line: unknown option, missing or invalid value (click's own code)
    CONFIG = 3  # the configuration, region policy or key set is missing or invalid
    SERVICE_FAILURE = 4  # the operation itself failed (Kafka, a database, an unexpected error)
    INTERRUPTED = 130  # SIGINT / Ctrl-C (128 + 2, as shells report it)


# click's ClickException, whichever click typer uses (recent typers vendor it as typer._click)
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
DEBUG_ENV = "SOTTO_DEBUG"
_debug = False  # set by the root `--debug` option


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sotto")
    except PackageNotFoundError:
        return "0+unknown"


def _show_version(value: bool) -> None:
    if value:
        print(f"sotto {_version()}")
        raise typer.Exit(ExitCode.OK)


app = typer.Typer(
    help="Sotto: privacy-preserving personalization for phone agents.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold key bytes
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help=f"show tracebacks on errors (or {DEBUG_ENV}=1)")
    ] = False,
) -> None:
    """Sotto: privacy-preserving personalization for phone agents."""
    global _debug
    _debug = debug


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
    from pydantic import ValidationError

    from deploy.settings import SottoSettings

    try:
        return SottoSettings()
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc)) from exc


def _validation_message(exc) -> str:  # pydantic.ValidationError
    """Where each error is and what is wrong, without the offending input (it may be a secret)."""
    errors = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
    )
    return f"invalid {exc.title}: {errors}"


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _error(message: str) -> None:
    """One plain line on stderr (not rich: it would wrap long lines and read [brackets])."""
    print(f"sotto: error: {_one_line(message)}", file=sys.stderr, flush=True)


def _fail(exc: Exception, code: ExitCode) -> NoReturn:
    _error(str(exc))
    raise typer.Exit(code)


def _print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


@app.command()
def init(
    home: Annotated[Path | None, typer.Option(help="state folder (default: settings.home)")] = None,
    regions: Annotated[str, typer.Option(help="comma-separated region names")] = "eu,cn",
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers")] = None,
    overwrite: bool = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Create a region policy and one HPKE key set per region."""
    from backend import keystore
    from deploy.bootstrap import init_deployment
    from privacy.policy import RegionPolicy

    s = _settings()
    boot = bootstrap or s.kafka_bootstrap or f"127.0.0.1:{s.kafka.port}"
    target = Path(home or s.home).resolve() / "regions.toml"
    created = overwrite or not target.exists()
    path = init_deployment(
        home or s.home, tuple(r.strip() for r in regions.split(",")), boot, overwrite=overwrite
    )
    if not as_json:
        console.print(f"region policy: {path}")
        return
    policy = RegionPolicy.from_toml(path.read_text())
    _print_json(
        {
            "policy": str(path),
            "created": created,
            "regions": {
                name: {
                    "keyset_dir": str(r.keyset_dir),
                    "current_key": keystore.load_keyset(r.keyset_dir).current().key_id,
                }
                for name, r in policy.regions.items()
            },
        }
    )


JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON object")]


@keys_app.command("rotate")
def keys_rotate(region: Annotated[str, typer.Option()], as_json: JsonFlag = False) -> None:
    """New current key; the previous one keeps decrypting until retired."""
    from backend import keystore

    ks = keystore.rotate(_settings().policy.region(region).keyset_dir, region)
    if as_json:
        _print_json({"region": region, "current_key": ks.current().key_id})
    else:
        console.print(f"current key of {region}: {ks.current().key_id}")


@keys_app.command("retire")
def keys_retire(
    region: Annotated[str, typer.Option()],
    key_id: Annotated[str, typer.Option()],
    as_json: JsonFlag = False,
) -> None:
    """Stop accepting envelopes sealed to KEY_ID and delete its private key."""
    from backend import keystore

    keystore.retire(_settings().policy.region(region).keyset_dir, key_id)
    if as_json:
        _print_json({"region": region, "retired": key_id})
    else:
        console.print(f"retired {key_id}")


@keys_app.command("list")
def keys_list(region: Annotated[str, typer.Option()], as_json: JsonFlag = False) -> None:
    """Show key ids and their status (never key material beyond the public key)."""
    from backend import keystore

    ks = keystore.load_keyset(_settings().policy.region(region).keyset_dir)
    if as_json:
        keys = [
            {"key_id": k.key_id, "status": k.status.value, "created_at": k.created_at.isoformat()}
            for k in ks.keys
        ]
        _print_json({"region": region, "keys": keys})
        return
    for k in ks.keys:
        print(f"{k.key_id}\t{k.status.value}\t{k.created_at.isoformat()}")


def _broker(port: int | None, data_dir: Path | None):
    from deploy.kafka_local import LocalKafka

    s = _settings()
    d = data_dir or s.kafka.data_dir
    if port is None:
        return LocalKafka.from_data_dir(d, lib_dir=s.kafka.lib_dir, heap=s.kafka.heap)
    return LocalKafka(
        data_dir=d,
        port=port,
        controller_port=s.kafka.controller_port,
        lib_dir=s.kafka.lib_dir,
        heap=s.kafka.heap,
    )


@kafka_app.command("fetch")
def kafka_fetch() -> None:
    """Download Apache Kafka's jars from Maven Central (deploy/kafka/pom.xml)."""
    from deploy.kafka_local import fetch

    console.print(f"Kafka classpath: {fetch(_settings().kafka.lib_dir)}")


@kafka_app.command("up")
def kafka_up(
    port: Annotated[int | None, typer.Option(help="client port (default 9092)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="KRaft storage and logs")] = None,
) -> None:
    """Format KRaft storage if new, start a broker+controller, wait until it serves."""
    s = _settings()
    broker = _broker(port or s.kafka.port, data_dir)
    with console.status(f"starting Kafka on {broker.bootstrap}"):
        broker.start(timeout_s=s.kafka.start_timeout_s)
    console.print(f"[green]Kafka up[/green] at {broker.bootstrap} (data: {broker.data_dir})")
    print(broker.bootstrap)


@kafka_app.command("status")
def kafka_status(
    data_dir: Annotated[Path | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Is the local broker running? Exit code 1 (CHECK_FAILED) when it is not."""
    st = _broker(None, data_dir).status()
    _emit(st, as_json)
    raise typer.Exit(ExitCode.OK if st["running"] else ExitCode.CHECK_FAILED)


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
        s,
        region,
        max_idle_s,
        factory,
        group_id=group_id or f"{s.learner.group_prefix}-{region}",
        metrics_port=s.learner.metrics_port if metrics_port is None else metrics_port,
    )
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
        rounds=rounds,
        devices=devices,
        cohorts=cohorts,
        regions=tuple(r.strip() for r in regions.split(",")),
        out_dir=out,
        bootstrap=bootstrap,
    )
    codes = {"complete": ExitCode.OK, "degraded": ExitCode.CHECK_FAILED}
    raise typer.Exit(codes.get(report["status"], ExitCode.INTERRUPTED))


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

    Exit code 1 (CHECK_FAILED) when any check fails; the report file is written either way."""
    from datetime import datetime

    from rich.table import Table

    from deploy.compliance import audit_region, write_report

    try:
        when = datetime.fromisoformat(since) if since else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    report = audit_region(_settings(), region, since=when, expect_head=expect_head)
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
    raise typer.Exit(ExitCode.OK if report.ok else ExitCode.CHECK_FAILED)


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        _print_json(result)
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
    scale_ns: Annotated[
        str,
        typer.Option(
            "--scale-ns",
            help="comma-separated n for the server's per-client cost ('' to skip)",
        ),
    ] = "250,1000,2000,5000",
) -> None:
    """SecAgg+ client/server cost at n clients x d dims, and the speedup over Flower's."""
    from deploy.bench_secagg import run_secagg_bench

    try:
        ns = tuple(int(v) for v in scale_ns.split(",") if v.strip())
        result = run_secagg_bench(
            n=n, d=d, dropout=dropout, drop_stage=drop_stage, flower=flower, scale_ns=ns
        )
    except ValueError as exc:  # a parameter out of range
        raise typer.BadParameter(str(exc)) from None
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
    workers: Annotated[
        int | None,
        typer.Option(help="validation processes (default: the usable cores; 0 in-process)"),
    ] = None,
) -> None:
    """Ingestion throughput vs the all-core HPKE ceiling (and a bare consumer), same run."""
    from backend.observability import configure_logging
    from deploy.bench_ingest import run_ingest_bench

    configure_logging("WARNING")  # stdout carries only the result
    try:
        result = run_ingest_bench(bootstrap, n=n, profile=profile, workers=workers)
    except ValueError as exc:  # a parameter out of range
        raise typer.BadParameter(str(exc)) from None
    except RuntimeError as exc:  # the pipeline or the raw consumer fell short
        _fail(exc, ExitCode.SERVICE_FAILURE)
    _emit(result, as_json)


@bench_app.command("round")
def bench_round(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    n: Annotated[int, typer.Option("--n", help="simulated devices")] = 1000,
    d: Annotated[int, typer.Option("--d", help="vector dimension")] = 10000,
    dropout: Annotated[
        float, typer.Option("--dropout", help="fraction of devices that vanish")
    ] = 0.1,
    processes: Annotated[int, typer.Option("--processes", help="device processes")] = 2,
    drop_stage: Annotated[str, typer.Option(help="masked (default) or unmask")] = "masked",
    in_memory: Annotated[
        bool, typer.Option(help="also run the same round in memory (protocol_compute_s)")
    ] = True,
    bootstrap: Annotated[
        str | None,
        typer.Option(help="Kafka bootstrap (default: $SOTTO_KAFKA_BOOTSTRAP or a local broker)"),
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(
            help="write a cProfile of the coordinator process here (devices: PATH.devices-PID)"
        ),
    ] = None,
) -> None:
    """One SecAgg+ round over a real broker (devices in several processes) vs in memory."""
    from backend.observability import configure_logging
    from deploy.bench_round import run_round_bench

    configure_logging("WARNING")  # stdout carries only the result; progress goes to stderr
    try:
        result = run_round_bench(
            n=n,
            d=d,
            dropout=dropout,
            processes=processes,
            drop_stage=drop_stage,
            bootstrap=bootstrap,
            in_memory=in_memory,
            profile=profile,
        )
    except ValueError as exc:  # a parameter out of range
        raise typer.BadParameter(str(exc)) from None
    except RuntimeError as exc:  # the round did not finish, or a device process failed
        _fail(exc, ExitCode.SERVICE_FAILURE)
    _emit(result, as_json)


@privacy_app.command("report")
def privacy_report(
    region: Annotated[str | None, typer.Option(help="only this region")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Epsilon spent and left per cohort, from each region's ledger (read-only)."""
    from ingestion.ledger_store import report_policy

    rows = [r.as_dict() for r in report_policy(_settings().policy, region)]
    if as_json:
        _print_json({"cohorts": rows})
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
    devices: Annotated[int, typer.Option(help="devices per cohort (at most 1,000)")] = 1000,
    rounds: Annotated[int, typer.Option(help="rounds per cohort")] = 12,
    epsilons: Annotated[
        str, typer.Option(help="privacy budgets per cohort (whole run), comma-separated")
    ] = "1,2,8",
) -> None:
    """Private personalization vs base and vs a central (non-private) oracle at several
    budgets side by side (user-level ε, δ = 1e-6), and drift recovery."""
    from deploy.bench_quality import run_quality_bench

    budgets = tuple(float(e) for e in epsilons.split(",") if e.strip())
    _emit(
        run_quality_bench(
            devices_per_cohort=devices, rounds=rounds, epsilons=budgets, progress=not as_json
        ),
        as_json,
    )


@bench_app.command("hint")
def bench_hint(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    devices: Annotated[int, typer.Option(help="devices per cohort")] = 100,
    cohorts: Annotated[int, typer.Option(help="cohorts per region")] = 1,
    rounds: Annotated[int, typer.Option(help="days of episodes per device")] = 6,
    epsilon: Annotated[float, typer.Option(help="privacy budget per round (DP channel)")] = 2.0,
    habit_devices: Annotated[
        int, typer.Option(help="devices per cohort that take up a new habit")
    ] = 40,
    seed: Annotated[int, typer.Option(help="population seed (not the base model's)")] = 23,
) -> None:
    """Hint precision on realistic Open-AutoGLM episodes: base, memory, memory + private
    adapter and a per-user oracle, per language and region; launchable share; new habits."""
    from deploy.bench_hint import run_hint_bench

    result = run_hint_bench(
        devices_per_cohort=devices,
        cohorts_per_region=cohorts,
        rounds=rounds,
        epsilon_round=epsilon,
        habit_devices=habit_devices,
        seed=seed,
        progress=not as_json,
    )
    _emit(result, as_json)


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

    s, sources, path = _settings(), st.value_sources(), st.config_file()
    for key in st.unknown_keys():
        console.print(f"[yellow]warning:[/yellow] not a setting, ignored: {key}")
    if as_json:
        doc = {
            "config_file": str(path) if path else None,
            "settings": s.model_dump(mode="json"),
            "sources": sources,
        }
        _print_json(doc)
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
    except (SottoError, OSError) as exc:  # the file named by --update is not a usable page
        raise typer.BadParameter(str(exc), param_hint="--update") from None
    console.print(f"updated {update}")


# -- the user's controls over a device's data, and Open-AutoGLM with Sotto attached -----------

device_app = typer.Typer(
    help="What a device recorded: see, export, forget; pause; never-record apps; the hint.",
    no_args_is_help=True,
)
app.add_typer(device_app, name="device")
_device_key_file: list[Path] = []  # set by the group's --key-file


@device_app.callback()
def device_options(
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            envvar="SOTTO_DEVICE_KEY_FILE",
            help="the device's master key file (default: <data-dir>/device.key)",
        ),
    ] = None,
) -> None:
    """Options shared by the device commands."""
    _device_key_file[:] = [key_file] if key_file else []


autoglm_app = typer.Typer(help="Open-AutoGLM's own CLI with Sotto attached.", no_args_is_help=True)
app.add_typer(autoglm_app, name="autoglm")

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="SOTTO_DEVICE_DATA_DIR",
        help="the device's data dir (context.db, memory.db, controls.db, outbox.db)",
    ),
]


def _controls(data_dir: Path, *, must_exist: bool = True):
    """The device's controls; a data dir that does not exist is an error for the commands
    that read it (they would create an empty one), not for the ones that set a switch."""
    from edge_client.controls import DeviceControls
    from edge_client.sealing import FileKeyProvider

    if must_exist and not data_dir.is_dir():
        raise ConfigError(f"no device data at {data_dir}")
    key_file = _device_key_file[0] if _device_key_file else data_dir / "device.key"
    if not key_file.is_file() and any(data_dir.glob("*.db")):
        # a store sealed under a key we do not have: opening would start fresh and reset it
        raise ConfigError(
            f"no device key at {key_file} for the stores in {data_dir}; pass --key-file "
            "(refusing to start fresh, which would erase them)"
        )
    return DeviceControls(data_dir, keys=FileKeyProvider(key_file))


def _when(value: str | None, name: str):
    """An ISO date or date-time; one without a zone is this machine's local time."""
    from datetime import datetime

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"not an ISO date/time: {value!r}", param_hint=name) from None
    return parsed if parsed.tzinfo is not None else parsed.astimezone()


@device_app.command("show")
def device_show(data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """Say in plain words what is stored: steps, learned preferences, settings, counters."""
    with _controls(data_dir) as controls:
        if as_json:
            _print_json(controls.show())
        else:
            print(controls.describe())


@device_app.command("export")
def device_export(
    data_dir: DataDir,
    out: Annotated[Path | None, typer.Option(help="write the JSON here (default: stdout)")] = None,
) -> None:
    """Everything stored about the user, as one JSON document."""
    with _controls(data_dir) as controls:
        doc = json.dumps(controls.export(), indent=2, sort_keys=True, ensure_ascii=False)
    if out is None:
        print(doc)
    else:
        out.write_text(doc + "\n", encoding="utf-8")
        console.print(f"exported to {out}")


@device_app.command("forget")
def device_forget(
    data_dir: DataDir,
    everything: Annotated[bool, typer.Option("--all", help="forget everything")] = False,
    app_name: Annotated[str | None, typer.Option("--app", help="one app (any spelling)")] = None,
    intent: Annotated[str | None, typer.Option(help="one intent, e.g. navigation")] = None,
    since: Annotated[str | None, typer.Option(help="from this ISO date/time on")] = None,
    until: Annotated[str | None, typer.Option(help="before this ISO date/time")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Forget steps and learned preferences: everything, one app, one intent or a time range
    (filters combine). Unsent round summaries are discarded too."""
    filters = (app_name, intent, since, until)
    if everything == any(f is not None for f in filters):
        raise typer.BadParameter("give --all, or any of --app/--intent/--since/--until")
    with _controls(data_dir) as controls:
        gone = controls.forget(
            app=app_name,
            intent=intent,
            since=_when(since, "--since"),
            until=_when(until, "--until"),
        )
    if as_json:
        _print_json(gone)
    else:
        print(
            f"forgot {gone['steps']} steps and {gone['memory']} learned launches; "
            f"{gone['envelopes']} unsent round summaries discarded"
        )


@device_app.command("pause")
def device_pause(data_dir: DataDir) -> None:
    """Stop recording (a running agent stops at its next step): nothing is stored or learned."""
    with _controls(data_dir, must_exist=False) as controls:
        controls.pause()
    print(f"recording paused for {data_dir}")


@device_app.command("resume")
def device_resume(data_dir: DataDir) -> None:
    """Record again."""
    with _controls(data_dir, must_exist=False) as controls:
        controls.resume()
    print(f"recording resumed for {data_dir}")


@device_app.command("never-record")
def device_never_record(
    data_dir: DataDir,
    add: Annotated[list[str] | None, typer.Option("--add", help="an app never to record")] = None,
    remove: Annotated[list[str] | None, typer.Option("--remove", help="record it again")] = None,
    reset: Annotated[bool, typer.Option(help="back to the default list")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show or change the apps that are never recorded (default: payment and banking apps;
    `*` matches any text)."""
    with _controls(data_dir, must_exist=False) as controls:
        if reset:
            controls.reset_never_record()
        if add:
            controls.add_never_record(*add)
        if remove:
            controls.remove_never_record(*remove)
        listed = list(controls.never_record)
    if as_json:
        _print_json({"never_record": listed})
    else:
        print("never recorded: " + (", ".join(listed) or "(nothing)"))


@device_app.command("hint")
def device_hint(
    data_dir: DataDir,
    on: Annotated[bool | None, typer.Option("--on/--off", help="hint the agent or not")] = None,
    local_only: Annotated[
        bool | None,
        typer.Option(
            "--local-only/--any-endpoint",
            help="hint only a model endpoint on this machine (localhost, loopback, unix)",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show or set this device's hint switches (they override `[autoglm]` towards less)."""
    with _controls(data_dir, must_exist=False) as controls:
        controls.set_hint(enabled=on, local_only=local_only)
        state = {"enabled": controls.hint_enabled, "local_only": controls.hint_local_only}
    if as_json:
        _print_json(state)
    else:
        where = "local model endpoints only" if state["local_only"] else "any model endpoint"
        print("hint: " + (f"on, for {where}" if state["enabled"] else "off"))


@device_app.command("retention")
def device_retention(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            envvar="SOTTO_DEVICE_DATA_DIR",
            help="also apply it to this data dir now and count what is left",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """How long the device keeps what (edge_client.retention.RetentionPolicy, in days).

    Enforced when a store opens and every `check_every` writes: expired rows are overwritten,
    their data keys shredded, the WAL truncated (docs/device-data.md)."""
    from edge_client.retention import DEFAULT_RETENTION

    doc: dict = {"retention_days": DEFAULT_RETENTION.describe()}
    if data_dir is not None:
        with _controls(data_dir) as controls:  # opening the stores applies the policy
            doc["stored"] = {
                "steps": len(controls.context),
                "memory_events": len(controls.memory),
                "outbox_pending": len(controls.outbox.pending()) if controls.outbox else 0,
            }
    if as_json:
        _print_json(doc)
        return
    days = doc["retention_days"]
    for what, kept in (
        ("steps (context.db)", f"{days['context']:g} days after recording"),
        ("learned launches (memory.db)", f"{days['memory']:g} days"),
        ("sent envelopes (outbox.db)", f"{days['outbox_sent']:g} days"),
        ("unsent envelopes (outbox.db)", f"{days['outbox_pending']:g} days, then dropped"),
    ):
        print(f"{what + ':':30} {kept}")
    print(f"enforced when a store opens and every {days['check_every']} writes")
    if "stored" in doc:
        n = doc["stored"]
        print(
            f"now at {data_dir}: {n['steps']} steps, {n['memory_events']} learned launches, "
            f"{n['outbox_pending']} envelopes pending"
        )


@autoglm_app.command(
    "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def autoglm_run(
    ctx: typer.Context,
    data_dir: DataDir,
    autoglm_path: Annotated[
        Path | None,
        typer.Option(envvar="SOTTO_AUTOGLM_PATH", help="an Open-AutoGLM checkout (main.py)"),
    ] = None,
    no_hint: Annotated[bool, typer.Option("--no-hint", help="record, never hint")] = False,
    hint_where: Annotated[str | None, typer.Option(help="task or system_prompt")] = None,
    hint_min_score: Annotated[float | None, typer.Option(help="confidence for a hint")] = None,
    hint_local_only: Annotated[
        bool, typer.Option("--hint-local-only", help="hint only a model on this machine")
    ] = False,
    hint_no_scores: Annotated[bool, typer.Option("--hint-no-scores")] = False,
    confirm: Annotated[str, typer.Option(help="sensitive actions: ask, yes or no")] = "ask",
    takeover: Annotated[str, typer.Option(help="take-over requests: ask or continue")] = "ask",
    base_model: Annotated[Path | None, typer.Option(help="on-device base model ONNX")] = None,
    keyset_dir: Annotated[Path | None, typer.Option(help="the region's published keys")] = None,
    region: Annotated[str, typer.Option()] = "cn",
    cohort: Annotated[str, typer.Option()] = "cn-c0",
    device_id: Annotated[str, typer.Option()] = "phone-1",
) -> None:
    """Run Open-AutoGLM's main.py with Sotto attached; arguments after `--` go to main.py.

    `sotto autoglm run --data-dir DIR -- --base-url http://localhost:8000/v1 "打开导航"`.
    Hint defaults come from the `[autoglm]` settings; these options override them."""
    from edge_client import autoglm_cli

    argv = ["--data-dir", str(data_dir), "--confirm", confirm, "--takeover", takeover]
    argv += ["--region", region, "--cohort", cohort, "--device-id", device_id]
    for flag, value in (
        ("--autoglm-path", autoglm_path),
        ("--hint-where", hint_where),
        ("--hint-min-score", hint_min_score),
        ("--base-model", base_model),
        ("--keyset-dir", keyset_dir),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for flag, on in (
        ("--no-hint", no_hint),
        ("--hint-local-only", hint_local_only),
        ("--hint-no-scores", hint_no_scores),
    ):
        if on:
            argv.append(flag)
    try:
        code = autoglm_cli.main([*argv, "--", *ctx.args], defaults=_settings().autoglm)
    except SystemExit as exc:  # argparse refused a value
        code = exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    raise typer.Exit(code)


def _debugging() -> bool:
    return _debug or os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes"}


def _report(exc: BaseException, message: str, code: ExitCode) -> ExitCode:
    if _debugging():
        traceback.print_exception(exc, file=sys.stderr)
    _error(message)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run `sotto` with ``argv`` (default: the process arguments); returns the exit code.

    Only messages are printed, never an exception's repr or locals (they may carry key bytes)."""
    global _debug
    _debug = False
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>`: every thread's stack to stderr, for a
        # service that stopped turning (frames only: file, line and function, never locals);
        # skipped where stderr has no file descriptor (captured, or an embedding host's)
        with contextlib.suppress(Exception):
            faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        rv = app(args=argv, prog_name="sotto", standalone_mode=False)
    except typer.Abort:  # EOF at a prompt
        print("sotto: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except _ClickException as exc:  # usage errors, bad parameter values
        exc.show()
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print("sotto: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except ConfigError as exc:
        return _report(exc, str(exc), ExitCode.CONFIG)
    except SottoError as exc:
        return _report(exc, str(exc), ExitCode.SERVICE_FAILURE)
    except Exception as exc:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):  # a policy or key set file that does not parse
            return _report(exc, _validation_message(exc), ExitCode.CONFIG)
        hint = "" if _debugging() else f" (rerun with --debug or {DEBUG_ENV}=1 for the traceback)"
        detail = _one_line(str(exc))
        message = f"unexpected {type(exc).__name__}{': ' + detail if detail else ''}{hint}"
        return _report(exc, message, ExitCode.SERVICE_FAILURE)
    code = rv if isinstance(rv, int) else ExitCode.OK  # typer.Exit(code) comes back as rv
    if code == ExitCode.INTERRUPTED:
        print("sotto: interrupted", file=sys.stderr)
    return int(code)
