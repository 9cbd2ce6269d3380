"""A shortened `sotto demo` end to end against the real broker; the report's numbers add up."""

from __future__ import annotations

import json
from pathlib import Path

from deploy.demo import run_demo


def test_demo_report_numbers(tmp_path: Path, kafka_bootstrap: str) -> None:
    out = tmp_path / "report"
    report = run_demo(
        rounds=2,
        devices=3,
        cohorts=2,
        out_dir=out,
        home=tmp_path / "home",
        bootstrap=kafka_bootstrap,
    )
    assert report["status"] == "complete"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["status"] == "complete"
    for region in ("eu", "cn"):
        f = on_disk["foundation"][region]
        assert f["sent"] == 2 * 2 * 3
        assert f["accepted"] == f["sent"]  # every delivered summary counted once
        assert f["rejected"] == {
            "malformed": 1, "schema_violation": 1, "replay": 1, "decrypt_failed": 1, "wrong_region": 1,
        }  # fmt: skip
        assert sum(a["count"] for a in f["aggregates"]) == f["accepted"]
        assert {a["cohort"] for a in f["aggregates"]} == {f"{region}-c0", f"{region}-c1"}
        assert f["audit_ok"] is True
