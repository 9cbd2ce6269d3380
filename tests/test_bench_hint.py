"""A small `sotto bench hint`: the report has its fields, and every app any method named is one
Open-AutoGLM can launch (checked against its own table when the vendored copy is there)."""

from __future__ import annotations

import json

import pytest

from deploy.bench_hint import METHODS, autoglm_app_table, run_hint_bench


@pytest.fixture(scope="module")
def report() -> dict:
    return run_hint_bench(
        devices_per_cohort=16, rounds=2, habit_devices=6, epsilon_round=4.0, progress=False
    )


def test_report_fields(report: dict) -> None:
    json.dumps(report)  # one JSON object
    assert report["methods"] == list(METHODS)
    assert report["memory"] == "edge_client.memory.PersonalMemory"
    for method in METHODS:
        groups = report["precision"][method]
        assert {"all", "zh-cn", "en-eu"} <= set(groups)
        for figures in groups.values():
            assert set(figures) == {"precision", "coverage", "accuracy", "n"}
            assert 0.0 <= figures["precision"] <= 1.0 and figures["n"] > 0
        for key in ("after_1", "after_3"):
            assert report["new_habit"][key][method]["n"] > 0
            assert set(report["habit_switch"][key][method]) == {
                "precision",
                "coverage",
                "accuracy",
                "n",
            }
    assert report["new_habit"]["goal_after_1"] == 0.9
    assert report["privacy"]["epsilon_spent"] > 0


def test_every_named_app_is_launchable(report: dict) -> None:
    assert report["apps_named"] > 0
    assert report["launchable_share"] == 1.0
    if autoglm_app_table() is not None:
        assert report["launchable_checked_against"].startswith("Open-AutoGLM APP_PACKAGES")


def test_memory_and_adapter_beat_the_base(report: dict) -> None:
    p = report["precision"]
    assert p["memory+adapter"]["all"]["accuracy"] > p["base"]["all"]["accuracy"]
