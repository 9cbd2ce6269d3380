"""Fixtures for ingestion tests: a deployment whose consumer groups are private to the test."""

from __future__ import annotations

import pytest

from deploy.settings import SottoSettings


@pytest.fixture
def settings(deployment: SottoSettings, unique: str) -> SottoSettings:
    """``deployment`` with a consumer-group prefix of its own (tests share one broker)."""
    ingest = deployment.ingest.model_copy(update={"group_prefix": f"t{unique}-ingest"})
    return SottoSettings(
        home=deployment.home, kafka_bootstrap=deployment.kafka_bootstrap, ingest=ingest
    )
