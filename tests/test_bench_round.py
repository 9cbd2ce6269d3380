"""`sotto bench round`: a small round (n = 24, two device processes) over the real broker
finishes, releases exactly the survivors' sum, and reports every field docs/benchmarks.md
shows. No timing is asserted; the figures are only checked to be there and consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.bench_round import STAGES, run_round_bench

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def result(kafka_bootstrap: str) -> dict:
    return run_round_bench(
        n=24, d=256, dropout=0.125, processes=2, bootstrap=kafka_bootstrap, progress=False
    )


def test_round_completes_exactly_with_the_dropouts(result: dict) -> None:
    assert result["released"] is True
    assert result["exact"] is True
    assert result["dropped_devices"] == 3
    assert result["survivors"] == 24 - 3
    assert result["drop_stage"].startswith("masked")
    # the same round in memory drops the same clients and is exact too
    assert result["protocol_exact"] is True
    assert result["protocol_survivors"] == result["survivors"]


def test_every_stage_timed_and_the_ratio_is_the_ratio(result: dict) -> None:
    assert list(result["stage_wall_s"]) == list(STAGES)
    assert all(s > 0 for s in result["stage_wall_s"].values())
    assert sum(result["stage_wall_s"].values()) <= result["wall_s"] + 0.01  # rounding
    assert result["protocol_compute_s"] > 0
    assert result["wall_over_compute"] == pytest.approx(
        result["wall_s"] / result["protocol_compute_s"], abs=0.01
    )
    assert result["goal_met"] == (result["wall_over_compute"] <= 3)
    # only the masked stage had silent devices, so only its grace was skipped
    assert result["grace_skipped_s"] > 0
    for stage, line in result["stage_timeline_s"].items():
        assert line["closed_s"] == result["stage_wall_s"][stage]
        # a stage closes on its goal, after its first answer; a straggler may answer after
        # the close (late answers are legal), so the last answer is not bounded by it
        assert line["first_answer_s"] <= line["closed_s"]
        assert line["first_answer_s"] <= line["last_answer_s"]
        assert line["publish_s"] >= 0
    # the in-memory baseline with a verifier per client costs at least the shared one
    assert result["protocol_compute_shared_verifier_s"] > 0


def test_bytes_and_cpu_are_measured(result: dict) -> None:
    per = result["bytes_per_device"]
    # up: five sealed payloads plus the check-in; the masked input alone is d words
    assert per["up_median"] > 256 * 2
    assert per["down_median"] > 0
    assert result["bytes_total"]["up"] >= per["up_median"] * 21
    cpu = result["cpu_s"]
    assert cpu["coordinator"] > 0 and cpu["devices"]["handle"] > 0
    assert cpu["total"] >= cpu["coordinator"] + cpu["devices"]["cpu"] - 1e-6
    assert result["cpu_bound_wall_s"] == pytest.approx(cpu["total"] / result["cpus"], abs=0.01)
    assert len(cpu["device_processes_wall_s"]) == result["processes"] == 2
    assert (result["k"], result["t"]) == (23, result["t"])  # n <= 32: complete graph
    assert result["cpus"] >= 1 and "start" in result["loadavg_1min"]


def test_cli_prints_one_json_object(kafka_bootstrap: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deploy", "bench", "round", "--json", "--n", "8", "--d", "32"]
        + ["--dropout", "0", "--processes", "2", "--no-in-memory"]
        + ["--bootstrap", kafka_bootstrap],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["exact"] is True and out["survivors"] == 8
    assert out["protocol_compute_s"] is None and out["goal_met"] is None
    assert out["grace_skipped_s"] == 0  # nobody vanished: every stage closed complete
