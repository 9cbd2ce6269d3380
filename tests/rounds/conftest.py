"""Fixtures for round tests: a two-region deployment whose consumer groups are the test's own."""

from __future__ import annotations

import pytest

from deploy.settings import SottoSettings


@pytest.fixture
def settings(deployment: SottoSettings, unique: str) -> SottoSettings:
    ingest = deployment.ingest.model_copy(
        update={"group_prefix": f"t{unique}-ingest", "poll_timeout_ms": 100}
    )
    return SottoSettings(
        home=deployment.home, kafka_bootstrap=deployment.kafka_bootstrap, ingest=ingest
    )
