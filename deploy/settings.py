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
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edge_client.hint_options import HintOptions
from ingestion.settings import IngestSettings, RoundsSettings
from learner.settings import LearnerSettings
from privacy.errors import ConfigError
from privacy.policy import RegionPolicy

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
ENV_PREFIX = "SOTTO_"
ENV_NESTED = "__"


class KafkaSettings(BaseModel):
    """The local single-node KRaft broker started by ``sotto kafka up``."""

    port: Annotated[
        int,
        Field(
            ge=1,
            le=65535,
            description="Client port of the local broker; also the bootstrap `sotto init` "
            "writes into the region policy (`127.0.0.1:<port>`) when none is given.",
        ),
    ] = 9092
    controller_port: Annotated[
        int,
        Field(
            ge=0,
            le=65535,
            description="KRaft controller port of the local broker; `0` means `port + 1`. "
            "Set it when `port + 1` is taken.",
        ),
    ] = 0
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
    autoglm: HintOptions = Field(
        default_factory=HintOptions,
        description="The preference hint of `sotto autoglm run` (Open-AutoGLM with Sotto "
        "attached); `python -m edge_client.autoglm_cli` reads the same `SOTTO_AUTOGLM__*` "
        "variables. A device's own `sotto device hint` switches can only make it stricter.",
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
    out += [
        f"environment: {k}"
        for k in sorted(os.environ)
        if k.upper().startswith(ENV_PREFIX) and k.upper() not in env_names
    ]
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


_BOUNDS = {
    annotated_types.Ge: "≥",
    annotated_types.Gt: ">",
    annotated_types.Le: "≤",
    annotated_types.Lt: "<",
}


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
            lines += [
                "",
                f"### {heading}",
                "",
                str(about),
                "",
                "| option | env var | type | default | description |",
                "|---|---|---|---|---|",
            ]
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
