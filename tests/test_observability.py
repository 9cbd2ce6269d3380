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
    ready = {"ok": True, "live": True, "ready": True, "problems": []}
    srv = serve_service(0, "ingest", "zz", lambda: stats, lambda: gauges, lambda: ready)
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
        ready.update(ok=False, ready=False, problems=["retrying after OperationalError"])
        with pytest.raises(urllib.error.HTTPError) as exc:  # degraded is reported as degraded
            urllib.request.urlopen(base + "/readyz", timeout=5)
        assert exc.value.code == 503
        assert json.loads(exc.value.read())["problems"] == ["retrying after OperationalError"]
        live = json.loads(urllib.request.urlopen(base + "/livez", timeout=5).read())
        assert live["live"] is True  # not ready, but alive: no restart wanted
    finally:
        srv.__exit__(None, None, None)


def test_unhealthy_is_503() -> None:
    from backend.observability import MetricsServer

    with MetricsServer(0, lambda: {"ok": False}) as srv:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=5)
        assert exc.value.code == 503


def test_service_without_a_health_source_is_not_ready() -> None:
    srv = serve_service(0, "learn", "zz", lambda: {}, None)
    assert srv is not None
    try:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/readyz", timeout=5)
        assert exc.value.code == 503
    finally:
        srv.__exit__(None, None, None)


def test_consumer_app_health_tells_the_truth() -> None:
    import structlog

    from backend.consumer_app import DurableConsumerApp

    app = DurableConsumerApp()
    app._log = structlog.get_logger("test")
    app.lag = 0
    assert app.health()["ready"] is True
    app.consecutive_failures, app.last_failure = 3, "OperationalError"
    state = app.health()
    assert state["ready"] is False and "OperationalError" in state["problems"][0]
    app.succeeded()
    app.lag = 10**9
    assert app.health(max_lag=1000)["ready"] is False
    app.lag = None  # broker away: lag unknown is not "fine"
    assert app.health()["ready"] is False
    app.lag = 0
    app.last_loop_at -= 1000  # the loop stopped turning
    state = app.health(stall_s=60)
    assert state["live"] is False and state["ready"] is False
