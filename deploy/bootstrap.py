"""`sotto init`: a working two-region deployment on this machine, from nothing."""

from __future__ import annotations

from pathlib import Path

from backend import keystore
from privacy.policy import RegionPolicy

DEFAULT_REGIONS = ("eu", "cn")


def render_policy(
    home: Path, regions: tuple[str, ...], bootstrap: str, topic_prefix: str = "sotto"
) -> str:
    lines = ["# Sotto region policy: each region is its own world.", "version = 1", ""]
    for r in regions:
        lines += [
            f"[regions.{r}]",
            f'bootstrap_servers = ["{bootstrap}"]',
            f'database_url = "sqlite:///{(home / f"{r}.db").as_posix()}"',
            f'keyset_dir = "{(home / "keys" / r).as_posix()}"',
            "partitions = 3",
            "",
        ]
        if topic_prefix != "sotto":
            p = f"{topic_prefix}.{r}"
            lines += [
                f"[regions.{r}.topics]",
                f'ingest = "{p}.ingest"',
                f'dead_letter = "{p}.dlq"',
                f'aggregates = "{p}.aggregates"',
                f'rounds = "{p}.rounds"',
                f'adapters = "{p}.adapters"',
                "",
            ]
    return "\n".join(lines)


def _signing_keys(keyset_dir: str | Path, region: str) -> None:
    """What adapters and rounds need, so both work out of the box: the adapter-signing key and
    the device-credential issuer (in production the latter lives with enrollment)."""
    keystore.load_or_create_signing_key(keyset_dir)
    keystore.credential_issuer(keyset_dir, region)


def init_deployment(
    home: Path,
    regions: tuple[str, ...] = DEFAULT_REGIONS,
    bootstrap: str = "127.0.0.1:9092",
    *,
    overwrite: bool = False,
    topic_prefix: str = "sotto",
) -> Path:
    """Write ``<home>/regions.toml``, a fresh HPKE key set, the adapter-signing key and the
    device-credential issuer per region; returns the policy path."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    path = home / "regions.toml"
    if path.exists() and not overwrite:
        for name, region in RegionPolicy.from_toml(path.read_text()).regions.items():
            _signing_keys(region.keyset_dir, name)  # homes made before they existed
        return path
    text = render_policy(home, regions, bootstrap, topic_prefix)
    policy = RegionPolicy.from_toml(text)
    for name, region in policy.regions.items():
        if not (Path(region.keyset_dir) / "keyset.json").exists() or overwrite:
            keystore.rotate(region.keyset_dir, name)
        _signing_keys(region.keyset_dir, name)
    path.write_text(text)
    return path
