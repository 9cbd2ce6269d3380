"""The one typed settings object: defaults that work, overridden by a TOML file and the environment.

Precedence (highest first): constructor arguments, ``SOTTO_*`` environment variables
(nested with ``__``, e.g. ``SOTTO_INGEST__MAX_ENVELOPE_BYTES``), the TOML file named by
``SOTTO_CONFIG`` (default ``./sotto.toml`` when present), then the defaults below.

Every field carries a ``description`` because ``sotto config doc`` turns the model into
``docs/configuration.md`` (a test keeps the two equal), and ``sotto config show`` prints
the effective values with where each one came from (:func:`value_sources`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from privacy.errors import ConfigError
from privacy.policy import RegionPolicy

if TYPE_CHECKING:  # heavy or cyclic imports only where a helper needs them
    from ingestion.round_open import RoundSpec
    from privacy.ledger import Budget

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
ENV_PREFIX = "SOTTO_"
ENV_NESTED = "__"


class KafkaSettings(BaseModel):
    """The local single-node KRaft broker started by ``sotto kafka up``."""

    port: Annotated[
        int,
        Field(
            ge=1, le=65535,
            description="Client port of the local broker; also the bootstrap `sotto init` "
            "writes into the region policy (`127.0.0.1:<port>`) when none is given.",
        ),
    ] = 9092  # fmt: skip
    controller_port: Annotated[
        int,
        Field(
            ge=0, le=65535,
            description="KRaft controller port of the local broker; `0` means `port + 1`. "
            "Set it when `port + 1` is taken.",
        ),
    ] = 0  # fmt: skip
    data_dir: Path = Field(
        Path(".sotto/kafka"),
        description="KRaft storage, pid file and `kafka.log` of the local broker (relative "
        "paths are relative to the working directory).",
    )
    lib_dir: Path = Field(
        PACKAGE_DIR / "kafka" / "lib",
        description="Kafka's jars, filled by `sotto kafka fetch` from Maven Central "
        "(`deploy/kafka/pom.xml`); point it elsewhere to share one download.",
    )
    heap: str = Field(
        "512m",
        description="JVM heap of the local broker (`-Xmx`/`-Xms`, Java size syntax); "
        "enough for tests and the demo.",
    )
    start_timeout_s: float = Field(
        90.0,
        gt=0,
        description="Seconds `sotto kafka up` waits for the broker to serve before it gives "
        "up (the first start formats storage and is slower).",
    )


class IngestSettings(BaseModel):
    """Ingestion service tuning. Batches bound both latency and the size of one DB transaction."""

    max_envelope_bytes: Annotated[
        int,
        Field(
            ge=256,
            description="Largest ingest record accepted, in bytes; bigger ones are "
            "dead-lettered before decryption. Also caps a round's masked input: a round "
            "whose sealed input would not fit is refused when it is opened.",
        ),
    ] = 64 * 1024
    batch_max_records: Annotated[
        int,
        Field(
            ge=1,
            description="Records per poll, and so per database transaction (Kafka "
            "`max_poll_records`): larger batches raise throughput and latency.",
        ),
    ] = 2000
    poll_timeout_ms: Annotated[
        int,
        Field(
            ge=10,
            description="Milliseconds one poll waits for records; bounds how late a "
            "shutdown or a round deadline is noticed.",
        ),
    ] = 500
    group_prefix: str = Field(
        "sotto-ingest",
        description="Consumer group prefix; the group is `<prefix>-<region>`. Replicas of "
        "one region share it, which is how ingestion scales out.",
    )
    session_timeout_ms: Annotated[
        int,
        Field(
            ge=6000,
            description="Milliseconds a crashed consumer keeps its partitions before the "
            "group reassigns them; the heartbeat is a quarter of it (at least 1 s).",
        ),
    ] = 10000
    metrics_port: Annotated[
        int | None,
        Field(
            ge=1, le=65535,
            description="Default port of `/metrics` and `/healthz` for `sotto ingest` "
            "(its `--metrics-port` wins); unset: no HTTP server.",
        ),
    ] = None  # fmt: skip


class LearnerSettings(BaseModel):
    """The learner service (``sotto learn``): its consumer and its metrics endpoint.

    The cohort learning policy (window, margins, canary fraction) is ``learner.cohort.
    LearnerConfig``; it is checkpointed with each cohort's state, so it is code-level, not
    a setting (see docs/configuration.md)."""

    group_prefix: str = Field(
        "sotto-learn",
        description="Consumer group prefix of `sotto learn`; the group is `<prefix>-<region>`.",
    )
    session_timeout_ms: Annotated[
        int,
        Field(
            ge=6000,
            description="Milliseconds a crashed learner keeps its partitions before the "
            "group reassigns them; the heartbeat is a quarter of it (at least 1 s).",
        ),
    ] = 10000
    max_poll_records: Annotated[
        int,
        Field(
            ge=1,
            description="Releases per poll. Each release is its own transaction, so this "
            "only bounds how long a poll's work delays a shutdown or a rebalance.",
        ),
    ] = 50
    metrics_port: Annotated[
        int | None,
        Field(
            ge=1, le=65535,
            description="Default port of `/metrics` and `/healthz` for `sotto learn` "
            "(its `--metrics-port` wins); unset: no HTTP server.",
        ),
    ] = None  # fmt: skip

    def consumer_config(self) -> dict[str, int]:
        """Overrides for ``learner.service.CONSUMER_DEFAULTS``; equal to them by default."""
        return {
            "max_poll_records": self.max_poll_records,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": max(1000, self.session_timeout_ms // 4),
        }


class RoundsSettings(BaseModel):
    """SecAgg+ round defaults of a region's round service (``sotto ingest --coordinate``).

    The budget is what the coordinator gives a cohort without a ledger row; the per-round
    fields build the :class:`~ingestion.round_open.RoundSpec` of callers that open rounds
    (:meth:`spec`). Their defaults equal ``RoundSpec``'s (a test checks it)."""

    epsilon: Annotated[
        float,
        Field(
            gt=0,
            description="ε of one round's release (at `delta`); the DP noise is calibrated "
            "to it. Smaller: more noise per round, more rounds per budget.",
        ),
    ] = 1.0
    delta: Annotated[
        float,
        Field(gt=0, lt=1, description="δ of one round's release; keep it far below 1/devices."),
    ] = 1e-6
    budget_epsilon: Annotated[
        float,
        Field(
            gt=0,
            description="Total ε a cohort may spend (RDP composition at `budget_delta`); a "
            "round that would exceed it is refused before any device is contacted. "
            "Default of `sotto ingest --coordinate --budget-epsilon`.",
        ),
    ] = 10.0
    budget_delta: Annotated[
        float,
        Field(
            gt=0, lt=1,
            description="δ at which a cohort's total ε is accounted. Default of "
            "`sotto ingest --coordinate --budget-delta`.",
        ),
    ] = 1e-5  # fmt: skip
    scale: Annotated[
        float,
        Field(
            gt=0,
            description="Integer units per input unit when quantizing (resolution "
            "1/scale); keep `clip * scale` well above sqrt(dim).",
        ),
    ] = 1000.0
    stage_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            description="Seconds a SecAgg+ stage waits for devices before it closes with "
            "whoever answered (the rest count as dropped).",
        ),
    ] = 30.0
    min_participants: Annotated[
        int,
        Field(
            ge=2,
            description="Fewest fresh check-ins a round needs to be opened; fewer and the "
            "round is refused (nothing is announced).",
        ),
    ] = 3
    max_clients: Annotated[
        int,
        Field(
            ge=2,
            description="Most devices sampled into one round; bounds the server's "
            "unmasking work and the size of the announcement.",
        ),
    ] = 1000
    checkin_ttl_s: Annotated[
        float,
        Field(
            gt=0,
            description="Seconds a device's check-in stays eligible for sampling; older "
            "ones are likely offline and would only drop out.",
        ),
    ] = 3600.0
    expected_dropout: Annotated[
        float | None,
        Field(
            ge=0,
            lt=0.5,
            description="Share of sampled devices expected to vanish mid-round; the SecAgg+ "
            "neighbour graph is sized so that a round survives it (unset: k = O(log n)).",
        ),
    ] = None

    def budget(self) -> Budget:
        """The default per-cohort budget, as the ledger wants it."""
        from privacy.ledger import Budget

        return Budget(epsilon=self.budget_epsilon, delta=self.budget_delta)

    def spec(self, layout: str, dim: int, clip: float, **overrides: Any) -> RoundSpec:
        """A ``RoundSpec`` for ``layout`` with these defaults; ``overrides`` win."""
        from ingestion.round_open import RoundSpec

        fields = {
            "epsilon": self.epsilon, "delta": self.delta, "scale": self.scale,
            "stage_timeout_s": self.stage_timeout_s, "min_participants": self.min_participants,
            "max_clients": self.max_clients, "checkin_ttl_s": self.checkin_ttl_s,
            "dropout": self.expected_dropout,
        }  # fmt: skip
        return RoundSpec(layout=layout, dim=dim, clip=clip, **{**fields, **overrides})


def config_file() -> Path | None:
    """The TOML file the settings read: ``$SOTTO_CONFIG`` (must exist) or ``./sotto.toml``."""
    path = Path(os.environ.get("SOTTO_CONFIG", "sotto.toml"))
    if path.is_file():
        return path
    if "SOTTO_CONFIG" in os.environ:
        raise ConfigError(f"SOTTO_CONFIG names {path}, which does not exist")
    return None


class SottoSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED, extra="ignore", toml_file=None
    )

    home: Path = Field(
        Path(".sotto"),
        description="State folder: region policy, HPKE key sets and SQLite databases made "
        "by `sotto init`, and the base model files.",
    )
    policy_file: Path | None = Field(
        None,
        description="Region policy TOML (see below); unset: `<home>/regions.toml`.",
    )
    kafka_bootstrap: str | None = Field(
        None,
        description="Comma-separated `host:port` list that replaces every region's "
        "`bootstrap_servers` (one shared broker, e.g. in tests or CI).",
    )
    log_level: str = Field(
        "INFO", description="Level of the services' structured logs (`DEBUG`, `INFO`, ...)."
    )
    log_json: bool = Field(
        False, description="One JSON object per log line (for log shippers) instead of text."
    )
    kafka: KafkaSettings = Field(
        default_factory=KafkaSettings, description="The local broker of `sotto kafka`."
    )
    ingest: IngestSettings = Field(
        default_factory=IngestSettings, description="The ingestion service, `sotto ingest`."
    )
    learner: LearnerSettings = Field(
        default_factory=LearnerSettings, description="The learner service, `sotto learn`."
    )
    rounds: RoundsSettings = Field(
        default_factory=RoundsSettings,
        description="SecAgg+ rounds and the DP budget (`sotto ingest --coordinate`).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = config_file()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
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


# -- introspection: `sotto config show` and `sotto config doc` --------------------------------

Source = Literal["default", "file", "env"]


def _is_section(info: FieldInfo) -> bool:
    return isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)


def leaf_fields() -> list[tuple[str | None, str, FieldInfo]]:
    """``(section, name, field)`` of every setting, top level first, in declaration order."""
    top: list[tuple[str | None, str, FieldInfo]] = []
    nested: list[tuple[str | None, str, FieldInfo]] = []
    for name, info in SottoSettings.model_fields.items():
        if _is_section(info):
            assert isinstance(info.annotation, type)
            nested += [(name, n, f) for n, f in info.annotation.model_fields.items()]
        else:
            top.append((None, name, info))
    return top + nested


def env_var(section: str | None, name: str) -> str:
    parts = [section, name] if section else [name]
    return ENV_PREFIX + ENV_NESTED.join(parts).upper()


def _file_data(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def value_sources() -> dict[str, Source]:
    """Where the effective value of each ``section.name`` came from (constructor arguments
    aside): ``env`` beats ``file`` beats ``default``, as in :class:`SottoSettings`."""
    env = {k.upper(): v for k, v in os.environ.items()}
    data = _file_data(config_file())
    out: dict[str, Source] = {}
    for section, name, _ in leaf_fields():
        key = f"{section}.{name}" if section else name
        in_file = name in (data.get(section) or {}) if section else name in data
        in_env = env_var(section, name) in env
        if section and not in_env and (ENV_PREFIX + section.upper()) in env:
            in_env = f'"{name}"' in env[ENV_PREFIX + section.upper()]  # a JSON section value
        out[key] = "env" if in_env else "file" if in_file else "default"
    return out


def unknown_keys() -> list[str]:
    """Keys in the config file and ``SOTTO_*`` variables that name no setting.

    The model ignores them (``extra="ignore"``), so a typo would silently leave a default in
    force; ``sotto config show`` prints them as warnings."""
    known = {(s, n) for s, n, _ in leaf_fields()}
    sections = {s for s, _, _ in leaf_fields() if s}
    path = config_file()
    out: list[str] = []
    for k, v in _file_data(path).items():
        if k in sections and isinstance(v, dict):
            out += [f"{path}: [{k}] {n}" for n in v if (k, n) not in known]
        elif (None, k) not in known:
            out.append(f"{path}: {k}")
    env_names = {env_var(s, n) for s, n in known} | {ENV_PREFIX + s.upper() for s in sections}
    env_names.add("SOTTO_CONFIG")
    out += [f"environment: {k}" for k in sorted(os.environ) if k.upper().startswith(ENV_PREFIX)
            and k.upper() not in env_names]  # fmt: skip
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a TOML basic string


def render_toml(settings: SottoSettings, sources: dict[str, Source] | None = None) -> str:
    """The effective settings as a valid ``sotto.toml`` (unset options commented out), each
    line annotated with its source when ``sources`` is given."""
    dumped = settings.model_dump()
    lines: list[str] = []
    current: str | None = None
    for section, name, _ in leaf_fields():
        if section != current:
            lines += ["", f"[{section}]"]
            current = section
        value = dumped[section][name] if section else dumped[name]
        key = f"{section}.{name}" if section else name
        line = f"# {name} = (unset)" if value is None else f"{name} = {_toml_value(value)}"
        if sources is not None:
            src = sources.get(key, "default")
            where = f"env {env_var(section, name)}" if src == "env" else src
            line = f"{line:<48} # {where}"
        lines.append(line)
    return "\n".join(lines).lstrip("\n") + "\n"


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = {annotated_types.Ge: "≥", annotated_types.Gt: ">", annotated_types.Le: "≤",
           annotated_types.Lt: "<"}  # fmt: skip


def _type_doc(info: FieldInfo) -> str:
    bounds = []
    for m in info.metadata:
        for cls, sym in _BOUNDS.items():
            if isinstance(m, cls):
                bounds.append(f"{sym} {getattr(m, dataclasses.fields(m)[0].name)}")
    name = _type_name(info.annotation)
    return f"{name} ({', '.join(bounds)})" if bounds else name


def _default_doc(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, Path) and value.is_relative_to(REPO_DIR):
        value = value.relative_to(REPO_DIR)  # machine-independent: relative to the checkout
    if isinstance(value, Path):
        return f"`{value.as_posix()}`"
    return f"`{_toml_value(value)}`"


def render_markdown() -> str:
    """One Markdown table per section, generated from the model (``sotto config doc``)."""
    lines: list[str] = []
    current: object = object()
    for section, name, info in leaf_fields():
        if section != current:
            current = section
            if section is None:
                heading, about = "Top level", "Options outside any table of `sotto.toml`."
            else:
                heading, about = f"`[{section}]`", SottoSettings.model_fields[section].description
            lines += ["", f"### {heading}", "", str(about), "",
                      "| option | env var | type | default | description |",
                      "|---|---|---|---|---|"]  # fmt: skip
        option = f"{section}.{name}" if section else name
        desc = (info.description or "").replace("|", "\\|")
        lines.append(
            f"| `{option}` | `{env_var(section, name)}` | {_type_doc(info)} | "
            f"{_default_doc(info)} | {desc} |"
        )
    return "\n".join(lines).lstrip("\n") + "\n"


DOC_BEGIN = "<!-- BEGIN GENERATED by `sotto config doc`; edit deploy/settings.py instead -->"
DOC_END = "<!-- END GENERATED -->"


def replace_generated(text: str, table: str) -> str:
    """``text`` with the part between :data:`DOC_BEGIN` and :data:`DOC_END` set to ``table``."""
    try:
        head, rest = text.split(DOC_BEGIN, 1)
        _, tail = rest.split(DOC_END, 1)
    except ValueError:
        raise ConfigError("the document has no generated section markers") from None
    return f"{head}{DOC_BEGIN}\n{table}{DOC_END}{tail}"
