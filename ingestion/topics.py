"""Create a region's topics: one place, so every service agrees on their settings.

The adapters topic is compacted from birth (the latest signed adapter per key is what a
device that joins late must read), and so is the audit topic (the latest signed chain head per
region); the others keep the broker's retention.
"""

from __future__ import annotations

import contextlib

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from privacy.policy import RegionConfig


def ensure_region_topics(config: RegionConfig) -> list[str]:
    """Create whichever of the region's topics are missing; returns the ones created."""
    admin = KafkaAdminClient(bootstrap_servers=config.bootstrap_servers)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in config.t.all() if t not in existing]
        if missing:
            new = [
                NewTopic(
                    t,
                    config.partitions,
                    replication_factor=-1,
                    topic_configs={"cleanup.policy": "compact"}
                    if t in (config.t.adapters, config.t.audit)
                    else {},
                )
                for t in missing
            ]
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
        return missing
    finally:
        admin.close()
