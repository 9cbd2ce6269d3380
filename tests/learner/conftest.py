"""Shared, session-scoped fixtures: the base model is trained once (a few seconds)."""

from __future__ import annotations

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.simulation.base_model import build_base_model
from deploy.simulation.population import OPTIONS, Drift, Population
from learner.model import PersonalizationNet, export_onnx

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def base_net() -> PersonalizationNet:
    return build_base_model()


@pytest.fixture(scope="session")
def base_onnx(base_net: PersonalizationNet) -> bytes:
    return export_onnx(base_net)


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def population() -> Population:
    """An evaluation population disjoint from the base's training population; cn-c0 switches
    its navigation app at round 3."""
    shape = {"seed": 1, "cohorts_per_region": 2, "devices_per_cohort": 8}
    before = Population(**shape).cohort_preference("cn-c0", "navigation", 0)  # type: ignore[arg-type]
    new = next(a for a in OPTIONS["cn"]["navigation"] if a != before)
    return Population(
        **shape,  # type: ignore[arg-type]
        drift_rounds=[Drift(round=3, cohort="cn-c0", intent="navigation", new_app=new)],
    )
