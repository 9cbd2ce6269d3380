"""The metrics/health endpoint speaks Prometheus text and reports health honestly."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from deploy.observability import INGEST_REJECTED, MetricsServer


def test_metrics_and_health() -> None:
    state = {"ok": True, "region": "eu"}
    INGEST_REJECTED.labels(region="zz", reason="replay").inc(3)
    with MetricsServer(0, lambda: state) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert 'sotto_ingest_rejected_total{reason="replay",region="zz"} 3.0' in text
        assert json.loads(urllib.request.urlopen(base + "/healthz", timeout=5).read()) == state
        state["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(base + "/healthz", timeout=5)
        assert exc.value.code == 503
