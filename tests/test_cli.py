"""The `sotto` command line as a user runs it: a subprocess through `python -m deploy`, which is
what the `sotto` console script calls (`deploy.cli:main`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from deploy import cli
from deploy.cli import ExitCode
from privacy.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SOTTO_")}
    return {**env, "SOTTO_HOME": str(home), **extra}


def sotto(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args],
        capture_output=True,
        text=True,
        env=_env(home, **env),
        cwd=home.parent,
        timeout=120,
    )


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sotto: error: ")
    return lines[0]


def test_exit_codes_are_distinct_and_pinned() -> None:
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "CHECK_FAILED": 1,
        "USAGE": 2,
        "CONFIG": 3,
        "SERVICE_FAILURE": 4,
        "INTERRUPTED": 130,
    }


def test_readme_documents_every_exit_code() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The command line", 1)[1].split("\n## ", 1)[0]
    for code in ExitCode:
        assert re.search(rf"^\| `?{int(code)}`? \| `?{code.name}`? \|", section, re.M), code.name


def test_keys_list_before_init_is_a_config_error_in_one_line(home: Path) -> None:
    proc = sotto(home, "keys", "list", "--region", "eu")
    assert proc.returncode == ExitCode.CONFIG
    line = _one_error_line(proc)
    assert "no region policy" in line and "sotto init" in line
    assert proc.stdout == ""


def test_privacy_report_before_init_is_a_config_error(home: Path) -> None:
    proc = sotto(home, "privacy", "report", "--json")
    assert proc.returncode == ExitCode.CONFIG
    _one_error_line(proc)


def test_version(home: Path) -> None:
    proc = sotto(home, "--version")
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert proc.stdout == f"sotto {version('sotto')}\n"


def test_usage_errors_exit_with_usage(home: Path) -> None:
    unknown = sotto(home, "keys", "list", "--no-such-option")
    assert unknown.returncode == ExitCode.USAGE
    assert "No such option" in unknown.stderr and "Traceback" not in unknown.stderr
    missing = sotto(home, "keys", "list")  # --region is required
    assert missing.returncode == ExitCode.USAGE
    bad_value = sotto(home, "audit", "--region", "eu", "--since", "not-a-time")
    assert bad_value.returncode == ExitCode.USAGE
    assert "--since" in bad_value.stderr and "Traceback" not in bad_value.stderr
    assert sotto(home).returncode == ExitCode.USAGE  # no command: help, and the usage code


def test_invalid_setting_is_a_config_error_that_does_not_echo_the_value(home: Path) -> None:
    proc = sotto(home, "config", "show", SOTTO_INGEST__METRICS_PORT="hunter2")
    assert proc.returncode == ExitCode.CONFIG
    line = _one_error_line(proc)
    assert "ingest.metrics_port" in line
    assert "hunter2" not in proc.stderr + proc.stdout


def test_init_then_keys_as_json(home: Path) -> None:
    init = sotto(home, "init", "--json")
    assert init.returncode == ExitCode.OK, init.stderr
    doc = json.loads(init.stdout)
    assert doc["created"] is True and Path(doc["policy"]) == (home / "regions.toml").resolve()
    assert sorted(doc["regions"]) == ["cn", "eu"]
    first = doc["regions"]["eu"]["current_key"]
    assert json.loads(sotto(home, "init", "--json").stdout)["created"] is False

    listed = sotto(home, "keys", "list", "--region", "eu", "--json")
    assert listed.returncode == ExitCode.OK, listed.stderr
    keys = json.loads(listed.stdout)
    assert keys["region"] == "eu"
    assert [(k["key_id"], k["status"]) for k in keys["keys"]] == [(first, "current")]
    assert sorted(keys["keys"][0]) == ["created_at", "key_id", "status"]  # no key material
    text = sotto(home, "keys", "list", "--region", "eu")  # the text form is unchanged
    assert text.stdout.split("\t")[:2] == [first, "current"]

    rotated = sotto(home, "keys", "rotate", "--region", "eu", "--json")
    assert rotated.returncode == ExitCode.OK, rotated.stderr
    second = json.loads(rotated.stdout)["current_key"]
    assert second != first
    keys = json.loads(sotto(home, "keys", "list", "--region", "eu", "--json").stdout)["keys"]
    assert {k["key_id"]: k["status"] for k in keys} == {first: "decrypt_only", second: "current"}

    current = sotto(home, "keys", "retire", "--region", "eu", "--key-id", second)
    assert current.returncode == ExitCode.CONFIG  # refused: rotate first
    assert "rotate first" in _one_error_line(current)
    retired = sotto(home, "keys", "retire", "--region", "eu", "--key-id", first, "--json")
    assert retired.returncode == ExitCode.OK, retired.stderr
    assert json.loads(retired.stdout) == {"region": "eu", "retired": first}
    keys = json.loads(sotto(home, "keys", "list", "--region", "eu", "--json").stdout)["keys"]
    assert {k["key_id"]: k["status"] for k in keys} == {first: "retired", second: "current"}

    unknown = sotto(home, "keys", "list", "--region", "xx", "--json")
    assert unknown.returncode == ExitCode.CONFIG
    assert "unknown region" in _one_error_line(unknown) and unknown.stdout == ""


def test_privacy_report_json_after_init(home: Path) -> None:
    assert sotto(home, "init").returncode == ExitCode.OK
    proc = sotto(home, "privacy", "report", "--json")
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert json.loads(proc.stdout) == {"cohorts": []}  # no round has spent budget yet
    text = sotto(home, "privacy", "report", "--region", "eu")
    assert text.returncode == ExitCode.OK and text.stdout.startswith("region\tcohort\t")


def test_kafka_status_of_no_broker_is_a_failed_check(home: Path) -> None:
    proc = sotto(home, "kafka", "status", "--data-dir", str(home / "kafka"), "--json")
    assert proc.returncode == ExitCode.CHECK_FAILED
    assert json.loads(proc.stdout)["running"] is False


# -- main() in-process: failures that a subprocess cannot provoke -----------------------------


@pytest.fixture
def broken_init(home: Path, monkeypatch: pytest.MonkeyPatch):
    """`sotto init` whose implementation raises what the test sets in ``raised``."""
    import deploy.bootstrap

    for name in list(os.environ):
        if name.upper().startswith("SOTTO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SOTTO_HOME", str(home))
    monkeypatch.chdir(home.parent)
    raised: list[BaseException] = []

    def boom(*args: object, **kwargs: object) -> None:
        key = "".join(["s3c", "r3t-key"])  # a local that a traceback with locals would show
        assert key
        raise raised[0]

    monkeypatch.setattr(deploy.bootstrap, "init_deployment", boom)
    return raised


def test_unexpected_error_is_one_line_and_a_service_failure(
    broken_init: list[BaseException], capsys: pytest.CaptureFixture[str]
) -> None:
    broken_init.append(RuntimeError("disk on fire\nsecond line"))
    assert cli.main(["init"]) == ExitCode.SERVICE_FAILURE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("sotto: error: unexpected RuntimeError: disk on fire; second line")


def test_debug_shows_the_traceback_but_not_locals(
    broken_init: list[BaseException],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken_init.append(RuntimeError("disk on fire"))
    assert cli.main(["--debug", "init"]) == ExitCode.SERVICE_FAILURE
    err = capsys.readouterr().err
    assert "Traceback" in err and "s3cr3t-key" not in err
    assert err.splitlines()[-1] == "sotto: error: unexpected RuntimeError: disk on fire"

    assert cli.main(["init"]) == ExitCode.SERVICE_FAILURE  # --debug does not stick
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.setenv("SOTTO_DEBUG", "1")
    assert cli.main(["init"]) == ExitCode.SERVICE_FAILURE
    assert "Traceback" in capsys.readouterr().err


def test_sotto_errors_and_interrupts(
    broken_init: list[BaseException], capsys: pytest.CaptureFixture[str]
) -> None:
    broken_init.append(ConfigError("bad policy"))
    assert cli.main(["init"]) == ExitCode.CONFIG
    assert capsys.readouterr().err == "sotto: error: bad policy\n"
    broken_init[0] = KeyboardInterrupt()
    assert cli.main(["init"]) == ExitCode.INTERRUPTED
    assert capsys.readouterr().err.strip().endswith("interrupted")


def test_device_retention_shows_the_policy_and_applies_it(home: Path, tmp_path: Path) -> None:
    proc = sotto(home, "device", "retention", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["retention_days"]["context"] == 30.0
    data = tmp_path / "dev"
    data.mkdir()
    proc = sotto(home, "device", "retention", "--json", "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stored"] == {
        "steps": 0,
        "memory_events": 0,
        "outbox_pending": 0,
    }
    proc = sotto(home, "device", "retention")
    assert "30 days after recording" in proc.stdout and "7 days" in proc.stdout
