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

app = typer.Typer(help="Sotto: privacy-preserving personalization for phone agents.", no_args_is_help=True)
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
    from deploy import keystore

    try:
        ks = keystore.rotate(_settings().policy.region(region).keyset_dir, region)
    except SottoError as exc:
        _fail(exc)
    console.print(f"current key of {region}: {ks.current().key_id}")


@keys_app.command("retire")
def keys_retire(region: Annotated[str, typer.Option()], key_id: Annotated[str, typer.Option()]) -> None:
    """Stop accepting envelopes sealed to KEY_ID and delete its private key."""
    from deploy import keystore

    try:
        keystore.retire(_settings().policy.region(region).keyset_dir, key_id)
    except SottoError as exc:
        _fail(exc)
    console.print(f"retired {key_id}")


@keys_app.command("list")
def keys_list(region: Annotated[str, typer.Option()]) -> None:
    """Show key ids and their status (never key material beyond the public key)."""
    from deploy import keystore

    ks = keystore.load_keyset(_settings().policy.region(region).keyset_dir)
    for k in ks.keys:
        print(f"{k.key_id}\t{k.status.value}\t{k.created_at.isoformat()}")


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


def main() -> None:  # pragma: no cover - console entry point shim
    try:
        app()
    except SottoError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
