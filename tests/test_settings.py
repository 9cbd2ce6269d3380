"""Settings precedence and the on-disk key store."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend import keystore
from deploy.bootstrap import init_deployment
from deploy.cli import app
from deploy.settings import (
    DOC_BEGIN,
    DOC_END,
    SottoSettings,
    leaf_fields,
    render_markdown,
    replace_generated,
    unknown_keys,
    value_sources,
)
from privacy.errors import ConfigError
from privacy.keys import KeyStatus
from privacy.wire import b64d


def test_env_and_file_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "sotto.toml"
    cfg.write_text(
        'log_level = "DEBUG"\n[ingest]\nbatch_max_records = 77\nmax_envelope_bytes = 4096\n'
    )
    monkeypatch.setenv("SOTTO_CONFIG", str(cfg))
    monkeypatch.setenv("SOTTO_INGEST__MAX_ENVELOPE_BYTES", "8192")
    s = SottoSettings()
    assert s.log_level == "DEBUG"
    assert s.ingest.batch_max_records == 77  # from the file
    assert s.ingest.max_envelope_bytes == 8192  # env beats file


def test_missing_config_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SOTTO_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        SottoSettings()


def test_init_and_bootstrap_override(tmp_path: Path) -> None:
    init_deployment(tmp_path / "h", ("eu", "cn"), "127.0.0.1:1234")
    s = SottoSettings(home=tmp_path / "h", kafka_bootstrap="10.0.0.1:9092,10.0.0.2:9092")
    assert s.policy.region("cn").bootstrap_servers == ["10.0.0.1:9092", "10.0.0.2:9092"]
    assert SottoSettings(home=tmp_path / "nohome").policy_path.name == "regions.toml"
    with pytest.raises(ConfigError, match="sotto init"):
        _ = SottoSettings(home=tmp_path / "nohome").policy


def test_keystore_rotation_and_retirement(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    ks1 = keystore.rotate(d, "eu")
    first = ks1.current().key_id
    priv = d / "private" / f"{first}.key"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    ks2 = keystore.rotate(d, "eu")
    assert ks2.get(first).status is KeyStatus.DECRYPT_ONLY
    assert set(keystore.load_private_keys(d)) == {k.key_id for k in ks2.keys}
    ks3 = keystore.retire(d, first)
    assert ks3.get(first).status is KeyStatus.RETIRED
    assert not priv.exists()
    assert first not in keystore.load_private_keys(d)


def test_a_rotation_never_reuses_a_key_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Key ids carry 24 random bits a day: a repeat would overwrite the private key that still
    decrypts the envelopes in flight, so a rotation draws again."""
    d = tmp_path / "keys"
    draws = iter(["eu-20261202-aaaaaa", "eu-20261202-aaaaaa", "eu-20261202-bbbbbb"])
    monkeypatch.setattr(keystore, "_new_key_id", lambda region: next(draws))
    first = keystore.rotate(d, "eu").current()
    before = (d / "private" / f"{first.key_id}.key").read_bytes()
    second = keystore.rotate(d, "eu").current()
    assert second.key_id == "eu-20261202-bbbbbb" != first.key_id
    private = keystore.load_private_keys(d)
    assert private[first.key_id].raw_bytes() == before
    assert private[first.key_id].public_bytes() == b64d(first.public_key)


# -- configuration story: sections, `sotto config`, docs/configuration.md ---------------------

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No SOTTO_* variables and an empty working directory (so no ./sotto.toml)."""
    for name in list(os.environ):
        if name.upper().startswith("SOTTO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_settings_work_with_no_file_and_no_env(clean_env: Path) -> None:
    s = SottoSettings()
    assert s.ingest.metrics_port is None and s.learner.metrics_port is None
    assert s.rounds.budget_epsilon == 10.0 and s.rounds.budget_delta == 1e-5
    assert value_sources() == dict.fromkeys(value_sources(), "default")
    assert unknown_keys() == []


def test_every_setting_is_described() -> None:
    for section, name, info in leaf_fields():
        assert info.description and len(info.description) > 20, f"{section}.{name}"


def test_configuration_doc_is_generated_from_the_model() -> None:
    """docs/configuration.md's option tables are `sotto config doc`'s output, byte for byte."""
    text = (REPO / "docs" / "configuration.md").read_text()
    assert DOC_BEGIN in text and DOC_END in text
    generated = text.split(DOC_BEGIN, 1)[1].split(DOC_END, 1)[0]
    assert generated == "\n" + render_markdown(), (
        "docs/configuration.md is stale: run `sotto config doc --update docs/configuration.md`"
    )
    assert replace_generated(text, render_markdown()) == text


def test_section_defaults_equal_the_code_they_configure(clean_env: Path) -> None:
    """The new sections are additive: their defaults are what the services hard-code."""
    from ingestion.round_open import RoundSpec
    from learner.cohort import LearnerConfig
    from learner.service import CONSUMER_DEFAULTS

    s = SottoSettings()
    spec = s.rounds.spec("t", 4, 1.0)
    plain = RoundSpec(layout="t", dim=4, clip=1.0, epsilon=spec.epsilon, delta=spec.delta)
    assert spec == plain
    assert s.rounds.spec("t", 4, 1.0, scale=256.0).scale == 256.0
    assert s.rounds.budget().epsilon == s.rounds.budget_epsilon
    assert s.learner.consumer_config().items() <= CONSUMER_DEFAULTS.items()
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert s.learner.policy() == LearnerConfig()  # the policy settings default to the code's
    for f in dataclasses.fields(LearnerConfig):  # every knob is a setting or documented code-level
        assert f"| `learner.{f.name}` |" in doc or f"`{f.name}` =" in doc, f.name


def test_config_show_reports_sources_and_round_trips(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / "sotto.toml").write_text(
        "log_json = true\ntypo_key = 1\n[rounds]\nepsilon = 0.5\nbudget_epsilon = 4.0\n"
        "[ingest]\nmetrics_port = 9101\n"
    )
    monkeypatch.setenv("SOTTO_ROUNDS__BUDGET_EPSILON", "6")
    monkeypatch.setenv("SOTTO_NOT_A_SETTING", "x")
    runner = CliRunner()
    res = runner.invoke(app, ["config", "show", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["settings"]["rounds"]["budget_epsilon"] == 6.0
    assert doc["sources"]["rounds.budget_epsilon"] == "env"
    assert doc["sources"]["rounds.epsilon"] == "file"
    assert doc["sources"]["rounds.delta"] == "default"
    assert "typo_key" in res.stderr and "SOTTO_NOT_A_SETTING" in res.stderr

    text = runner.invoke(app, ["config", "show"]).stdout
    assert "SOTTO_ROUNDS__BUDGET_EPSILON" in text
    pinned = tomllib.loads(text)  # the text form is a valid sotto.toml ...
    (clean_env / "pinned.toml").write_text(text)
    monkeypatch.setenv("SOTTO_CONFIG", str(clean_env / "pinned.toml"))
    monkeypatch.delenv("SOTTO_ROUNDS__BUDGET_EPSILON")
    assert SottoSettings().model_dump() == SottoSettings.model_validate(pinned).model_dump()
    assert SottoSettings().rounds.budget_epsilon == 6.0  # ... that pins the effective values


def test_ingest_coordinate_takes_its_budget_from_settings(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deploy.services

    calls: list[tuple[float, float, int | None]] = []

    def fake(settings, region, budget, metrics_port=None):  # type: ignore[no-untyped-def]
        calls.append((budget.epsilon, budget.delta, metrics_port))
        return deploy.services.IngestStats()

    monkeypatch.setattr(deploy.services, "run_round_service", fake)
    monkeypatch.setenv("SOTTO_ROUNDS__BUDGET_EPSILON", "3.5")
    monkeypatch.setenv("SOTTO_INGEST__METRICS_PORT", "9101")
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", "--region", "eu", "--coordinate"]).exit_code == 0
    assert (
        runner.invoke(
            app,
            [
                "ingest",
                "--region",
                "eu",
                "--coordinate",
                "--budget-epsilon",
                "2",
                "--budget-delta",
                "1e-7",
                "--metrics-port",
                "9200",
            ],
        ).exit_code
        == 0
    )
    first, second = calls
    assert first[0] == 3.5 and first[1] == 1e-5
    assert first[2] == 9101
    assert second[0] == 2.0 and second[1] == 1e-7
    assert second[2] == 9200


def test_config_doc_update_needs_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("no markers\n")
    assert CliRunner().invoke(app, ["config", "doc", "--update", str(page)]).exit_code == 2
    page.write_text(f"intro\n{DOC_BEGIN}\nold\n{DOC_END}\noutro\n")
    assert CliRunner().invoke(app, ["config", "doc", "--update", str(page)]).exit_code == 0
    assert page.read_text() == f"intro\n{DOC_BEGIN}\n{render_markdown()}{DOC_END}\noutro\n"
