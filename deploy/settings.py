"""The one typed settings object: defaults that work, overridden by a TOML file and the environment.

Precedence (highest first): constructor arguments, ``SOTTO_*`` environment variables
(nested with ``__``, e.g. ``SOTTO_INGEST__MAX_ENVELOPE_BYTES``), the TOML file named by
``SOTTO_CONFIG`` (default ``./sotto.toml`` when present), then the defaults below.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from privacy.errors import ConfigError
from privacy.policy import RegionPolicy

PACKAGE_DIR = Path(__file__).resolve().parent


class KafkaSettings(BaseModel):
    """The local single-node KRaft broker started by ``sotto kafka up``."""

    port: Annotated[int, Field(ge=1, le=65535)] = 9092
    controller_port: Annotated[int, Field(ge=0, le=65535)] = 0  # 0: port + 1
    data_dir: Path = Path(".sotto/kafka")
    lib_dir: Path = PACKAGE_DIR / "kafka" / "lib"
    heap: str = "512m"
    start_timeout_s: float = 90.0


class IngestSettings(BaseModel):
    """Ingestion service tuning. Batches bound both latency and the size of one DB transaction."""

    max_envelope_bytes: Annotated[int, Field(ge=256)] = 64 * 1024
    batch_max_records: Annotated[int, Field(ge=1)] = 2000
    poll_timeout_ms: Annotated[int, Field(ge=10)] = 500
    group_prefix: str = "sotto-ingest"
    # how long a crashed consumer keeps its partitions before the group reassigns them
    session_timeout_ms: Annotated[int, Field(ge=6000)] = 10000


class SottoSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SOTTO_", env_nested_delimiter="__", extra="ignore", toml_file=None
    )

    home: Path = Path(".sotto")
    policy_file: Path | None = None  # default: <home>/regions.toml
    kafka_bootstrap: str | None = None  # overrides every region's bootstrap servers
    log_level: str = "INFO"
    log_json: bool = False
    kafka: KafkaSettings = KafkaSettings()
    ingest: IngestSettings = IngestSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("SOTTO_CONFIG", "sotto.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        elif "SOTTO_CONFIG" in os.environ:
            raise ConfigError(f"SOTTO_CONFIG names {path}, which does not exist")
        return tuple(sources)

    @property
    def policy_path(self) -> Path:
        return self.policy_file or self.home / "regions.toml"

    @cached_property
    def policy(self) -> RegionPolicy:
        path = self.policy_path
        if not path.is_file():
            raise ConfigError(f"no region policy at {path}; run `sotto init` to create one")
        policy = RegionPolicy.from_toml(path.read_text())
        if self.kafka_bootstrap:
            servers = [s.strip() for s in self.kafka_bootstrap.split(",") if s.strip()]
            policy = policy.model_copy(
                update={
                    "regions": {
                        k: r.model_copy(update={"bootstrap_servers": servers})
                        for k, r in policy.regions.items()
                    }
                }
            )
        return policy
