"""Two regions end to end on the real broker: each region's sums equal the ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.settings import SottoSettings
from ingestion.aggregates import aggregates
from ingestion.audit import verify_chain
from ingestion.service import IngestionApp
from tests.ingestion.helpers import Truth, assert_matches, produce, random_summary, seal_for

pytestmark = pytest.mark.kafka


def test_two_regions_aggregate_exactly(settings: SottoSettings) -> None:
    rng = np.random.default_rng(7)
    truth = {"eu": Truth(), "cn": Truth()}
    for region in ("eu", "cn"):
        values = []
        for i in range(300):
            cohort, rnd = f"c{i % 3}", i % 2
            s = random_summary(rng)
            values.append(seal_for(settings, region, s, cohort, rnd).to_bytes())
            truth[region].add(cohort, rnd, s)
        produce(settings.kafka_bootstrap, settings.policy.region(region).t.ingest, values)

    for region in ("eu", "cn"):
        with IngestionApp(settings.policy, region, settings.ingest) as app:
            app.process_available(timeout_s=60)
            assert app.stats.accepted == 300
            assert app.stats.rejected_total == 0
            assert_matches(aggregates(app.engine, region), truth[region])
            one = aggregates(app.engine, region, cohort="c1", round=1)
            assert len(one) == 1 and one[0].count == truth[region].count[("c1", 1)]
            assert verify_chain(app.engine, region) == (True, None)
            # the other region's sums never appear in this region's database
            other = "cn" if region == "eu" else "eu"
            assert aggregates(app.engine, other) == []
