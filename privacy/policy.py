"""The region policy: which regions exist and where each one's data may live.

Pure data (pydantic); reading the file is the caller's job (``deploy.settings``). Every
region is its own world: bootstrap servers, topics, database and HPKE key set. Nothing about
a user crosses regions, so ingestion checks every envelope against this policy.
"""

from __future__ import annotations

import tomllib
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from privacy.errors import ConfigError
from privacy.wire import REGION_PATTERN


class Topics(BaseModel):
    """Topic names of one region. Defaults derive from the region name (``sotto.<r>.*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ingest: str
    dead_letter: str
    aggregates: str
    rounds: str
    adapters: str
    audit: str | None = None  # signed audit chain heads (compacted); default: <ingest>.audit

    @model_validator(mode="after")
    def _default_audit(self) -> Topics:
        if self.audit is None:
            base = self.ingest.removesuffix(".ingest")
            object.__setattr__(self, "audit", f"{base}.audit")
        return self

    @classmethod
    def for_region(cls, region: str) -> Topics:
        p = f"sotto.{region}"
        return cls(
            ingest=f"{p}.ingest",
            dead_letter=f"{p}.dlq",
            aggregates=f"{p}.aggregates",
            rounds=f"{p}.rounds",
            adapters=f"{p}.adapters",
        )

    def all(self) -> list[str]:
        assert self.audit is not None
        return [
            self.ingest,
            self.dead_letter,
            self.aggregates,
            self.rounds,
            self.adapters,
            self.audit,
        ]


class RegionConfig(BaseModel):
    """One region's world. ``keyset_dir`` holds its HPKE key set (see ``backend.keystore``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=REGION_PATTERN)]
    bootstrap_servers: list[str] = Field(default_factory=lambda: ["127.0.0.1:9092"])
    database_url: str
    keyset_dir: str
    topics: Topics | None = None
    partitions: Annotated[int, Field(ge=1, le=256)] = 3

    @model_validator(mode="after")
    def _default_topics(self) -> RegionConfig:
        if self.topics is None:
            object.__setattr__(self, "topics", Topics.for_region(self.name))
        return self

    @property
    def t(self) -> Topics:
        assert self.topics is not None
        return self.topics


class RegionPolicy(BaseModel):
    """All regions of a deployment, and the routing checks derived from them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = 1
    regions: dict[str, RegionConfig]

    @model_validator(mode="after")
    def _consistent(self) -> RegionPolicy:
        seen_topics: dict[str, str] = {}
        for key, region in self.regions.items():
            if key != region.name:
                raise ValueError(f"region table [regions.{key}] has name {region.name!r}")
            for topic in region.t.all():
                if topic in seen_topics:
                    raise ValueError(
                        f"topic {topic!r} is used by both {seen_topics[topic]!r} and {key!r}"
                    )
                seen_topics[topic] = key
        if not self.regions:
            raise ValueError("a policy needs at least one region")
        return self

    def region(self, name: str) -> RegionConfig:
        try:
            return self.regions[name]
        except KeyError:
            raise ConfigError(
                f"unknown region {name!r}; the policy defines {sorted(self.regions)}"
            ) from None

    def region_of_topic(self, topic: str) -> str | None:
        for name, region in self.regions.items():
            if topic in region.t.all():
                return name
        return None

    @classmethod
    def from_toml(cls, text: str) -> RegionPolicy:
        """Parse a TOML policy. Regions may omit ``name``; the table key supplies it."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"region policy is not valid TOML: {exc}") from exc
        for key, region in (data.get("regions") or {}).items():
            if isinstance(region, dict):
                region.setdefault("name", key)
        try:
            return cls.model_validate(data)
        except ValueError as exc:
            raise ConfigError(f"region policy is invalid: {exc}") from exc
