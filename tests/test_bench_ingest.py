"""`sotto bench ingest`: the all-core HPKE ceiling is measured in the same run and the ratio
is the pipeline's rate over it; every envelope is really ingested (the bench checks it)."""

from __future__ import annotations

import pytest

from deploy.bench_ingest import run_ingest_bench
from ingestion.pool import usable_cpus

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("workers", [0, 2])
def test_bench_reports_the_ceiling_and_the_ratio_to_it(kafka_bootstrap: str, workers: int) -> None:
    out = run_ingest_bench(kafka_bootstrap, n=300, progress=False, workers=workers)
    assert out["envelopes"] == 300
    assert out["workers"] == workers
    assert out["cpus"] == usable_cpus()
    assert out["hpke_open_ceiling_per_s"] > 0
    ratio = out["envelopes_per_s"] / out["hpke_open_ceiling_per_s"]
    assert out["ratio_to_ceiling"] == pytest.approx(ratio, rel=1e-2)
    assert isinstance(out["loadavg_1min"], float)
    for kept in ("raw_consume_per_s", "ratio", "pipeline_s", "batches"):  # the old fields
        assert kept in out
    cpu = out["cpu_us_per_envelope"]
    assert cpu["main"] > 0 and cpu["broker"] is None  # an external broker: not measured
    if workers == 0:  # in-process: no worker CPU (with workers, 300 records may be < 1 tick)
        assert cpu["workers"] == 0
    assert cpu["total"] == pytest.approx(cpu["main"] + cpu["workers"], abs=0.2)
    bound = out["hpke_open_us_per_core"] / cpu["total"]
    assert out["ratio_to_ceiling_cpu_bound"] == pytest.approx(bound, rel=1e-2)
    assert out["hpke_open_us_per_core"] == pytest.approx(
        out["cpus"] / out["hpke_open_ceiling_per_s"] * 1e6, rel=1e-2
    )
