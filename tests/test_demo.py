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


def test_audit_passes_on_demo_data_and_fails_on_a_tampered_copy(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    import shutil
    import sqlite3
    import subprocess
    import sys

    home = tmp_path / "home"
    run_demo(
        rounds=1, devices=2, cohorts=1, out_dir=tmp_path / "r", home=home, bootstrap=kafka_bootstrap
    )

    def audit(h: Path, region: str) -> subprocess.CompletedProcess[str]:
        env = {**__import__("os").environ, "SOTTO_HOME": str(h)}
        return subprocess.run(
            [sys.executable, "-m", "deploy", "audit", "--region", region, "--json",
             "--out", str(tmp_path / f"audit-{region}.json")],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip

    for region in ("eu", "cn"):
        ok = audit(home, region)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        report = json.loads(ok.stdout)
        assert report["ok"] is True
        checks = {c["name"]: c for c in report["checks"]}
        assert checks["rejections"]["evidence"]["by_reason"]["replay"] == 1
        assert json.loads((tmp_path / f"audit-{region}.json").read_text())["ok"] is True

    # a tampered copy: one accept row rewritten to look like it came from cn's topic
    copy = tmp_path / "tampered"
    shutil.copytree(home, copy)
    policy = (copy / "regions.toml").read_text().replace(str(home), str(copy))
    (copy / "regions.toml").write_text(policy)
    db = sqlite3.connect(copy / "eu.db")
    db.execute("UPDATE audit_log SET cohort = 'eu-c9' WHERE region = 'eu' AND seq = 2")
    db.commit()
    db.close()
    bad = audit(copy, "eu")
    assert bad.returncode == 1
    chain = {c["name"]: c for c in json.loads(bad.stdout)["checks"]}["audit_chain"]
    assert chain["ok"] is False and chain["evidence"]["first_bad_seq"] == 2
