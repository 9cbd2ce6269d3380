"""What the learner puts on the adapters topic, and how each record is keyed and signed.

The adapters topic of a region is **compacted**: Kafka keeps the newest record per key, so a
device that starts reading from the beginning sees each version's current state, not its
whole history. Keys (cohort ids never contain ``|``):

=============================  =================================================================
``<cohort>|<version>``         :class:`~privacy.adapter_manifest.SignedAdapter`, ``kind="release"``.
                               Republished under the same key when its rollout changes
                               (shadow ``rollout_fraction=0`` -> canary -> live ``1.0``).
                               A tombstone (no value) when the version is withdrawn.
``<cohort>|rollback|<parent>`` SignedAdapter, ``kind="rollback"``: devices on ``parent`` go
                               back to ``version``.
``plan|<cohort>``              the cohort's :class:`~privacy.adapter_plan.AdapterPlan` as JSON.
=============================  =================================================================

Every record also carries a ``sotto-type`` header (``release``/``rollback``/``plan``/
``tombstone``) for tools; devices do not trust it (nor the key): a signed artifact stands on
its own signature, and plans and tombstones can only make a device *discard* a staged
candidate, never run something unsigned.

Manifests take ``created_at`` from the release that caused them, so signing is a function of
the releases alone (Ed25519 is deterministic): a rerun over the same releases produces the
same bytes, and a record republished after a crash is identical to the first copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.adapter_manifest import SignedAdapter, make_manifest, sign_artifact
from privacy.adapter_plan import AdapterStatus

OutboxKind = Literal["release", "rollback", "plan", "tombstone"]


def release_key(cohort: str, version: int) -> str:
    return f"{cohort}|{version}"


def rollback_key(cohort: str, parent_version: int) -> str:
    return f"{cohort}|rollback|{parent_version}"


def plan_key(cohort: str) -> str:
    return f"plan|{cohort}"


def rollout_for(status: AdapterStatus, requested: float) -> float:
    """The signed ``rollout_fraction`` a status ships with: 0 for shadow (every device stages
    it, none runs it), the requested fraction for canary, 1 for live."""
    if status is AdapterStatus.LIVE:
        return 1.0
    if status is AdapterStatus.CANARY:
        return requested
    return 0.0


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    """One record for the adapters topic, waiting in ``adapter_outbox``."""

    cohort: str
    version: int | None
    kind: OutboxKind
    key: str
    value: bytes | None  # None: tombstone


@dataclass(frozen=True)
class Signer:
    """Signs a region's artifacts for one base model. Holds the private key; never prints it."""

    region: str
    base_model_sha256: str
    _key: Ed25519PrivateKey = field(repr=False)

    def release(
        self,
        cohort: str,
        version: int,
        adapter: bytes,
        *,
        rollout_fraction: float,
        parent_version: int | None,
        created_at: datetime,
    ) -> SignedAdapter:
        manifest = make_manifest(
            adapter,
            base_model_sha256=self.base_model_sha256,
            version=version,
            region=self.region,
            cohort=cohort,
            rollout_fraction=rollout_fraction,
            parent_version=parent_version,
            kind="release",
            created_at=created_at,
        )
        return sign_artifact(manifest, adapter, self._key)

    def rollback(
        self,
        cohort: str,
        version: int,
        adapter: bytes,
        *,
        parent_version: int,
        created_at: datetime,
    ) -> SignedAdapter:
        manifest = make_manifest(
            adapter,
            base_model_sha256=self.base_model_sha256,
            version=version,
            region=self.region,
            cohort=cohort,
            rollout_fraction=1.0,
            parent_version=parent_version,
            kind="rollback",
            created_at=created_at,
        )
        return sign_artifact(manifest, adapter, self._key)
