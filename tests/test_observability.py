"""The metrics/health endpoint speaks Prometheus text and reports health honestly."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from backend.observability import serve_service


def test_metrics_and_health() -> None:
    stats = {"accepted": 5, "rejected": {"replay": 3}}
    gauges = [("sotto_epsilon_spent", "eps", {"cohort": "c1"}, 1.5)]
    srv = serve_service(0, "ingest", "zz", lambda: stats, lambda: gauges)
    assert srv is not None
    try:
        base = f"http://127.0.0.1:{srv.port}"
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert 'sotto_ingest_rejected_total{reason="replay",region="zz"} 3.0' in text
        assert 'sotto_ingest_accepted_total{region="zz"} 5.0' in text
        assert 'sotto_epsilon_spent{cohort="c1",region="zz"} 1.5' in text
        stats["accepted"] = 9  # read at scrape time, not copied at start
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert 'sotto_ingest_accepted_total{region="zz"} 9.0' in text
        health = json.loads(urllib.request.urlopen(base + "/healthz", timeout=5).read())
        assert health["ok"] is True and health["accepted"] == 9 and health["region"] == "zz"
    finally:
        srv.__exit__(None, None, None)


def test_unhealthy_is_503() -> None:
    from backend.observability import MetricsServer

    with MetricsServer(0, lambda: {"ok": False}) as srv:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=5)
        assert exc.value.code == 503
