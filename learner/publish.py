"""One call from LoRA tensors to a signed artifact ready for the adapters topic.

Why: a learner should not have to know the adapter file format, the manifest's hash fields or
the signing layout; it has ``A``, ``B``, a version and a key.

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> from privacy.adapter_file import LoRAWeights
>>> key = Ed25519PrivateKey.generate()
>>> signed = ship_lora(LoRAWeights.zeros(4, 2, 3), base_model_sha256="0" * 64, version=1,
...                    region="eu", cohort="eu-c0", private_key=key)
>>> signed.manifest.version, len(verify(signed, key.public_key())) > 0
(1, True)
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.adapter_file import LoRAWeights, adapter_to_bytes
from privacy.adapter_manifest import (
    ALL_COHORTS,
    SignedAdapter,
    make_manifest,
    sign_artifact,
    verify,
)

__all__ = ["ship_lora", "verify"]


def ship_lora(
    weights: LoRAWeights,
    *,
    base_model_sha256: str,
    version: int,
    region: str,
    private_key: Ed25519PrivateKey,
    cohort: str = ALL_COHORTS,
    rollout_fraction: float = 1.0,
    parent_version: int | None = None,
    kind: Literal["release", "rollback"] = "release",
    created_at: datetime | None = None,
    model_version: int = 1,
) -> SignedAdapter:
    """Write ``weights`` as an ORT adapter (its version = ``version``), describe and sign it.

    Send ``signed.to_bytes()`` as the Kafka record value; devices call
    ``DeviceModel.install`` (or ``offer``) with ``SignedAdapter.from_bytes(value)``.
    """
    adapter = adapter_to_bytes(weights, adapter_version=version, model_version=model_version)
    manifest = make_manifest(
        adapter,
        base_model_sha256=base_model_sha256,
        version=version,
        region=region,
        cohort=cohort,
        rollout_fraction=rollout_fraction,
        parent_version=parent_version,
        kind=kind,
        created_at=created_at,
    )
    return sign_artifact(manifest, adapter, private_key)
