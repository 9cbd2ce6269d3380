"""Shared, session-scoped fixtures: the base model is trained once (a few seconds)."""

from __future__ import annotations

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.simulation.base_model import build_base_model
from deploy.simulation.population import Drift, Population
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
    """An evaluation population disjoint from the base's training population."""
    return Population(
        seed=1,
        cohorts_per_region=2,
        devices_per_cohort=8,
        drift_rounds=[Drift(round=3, cohort="cn-c0", intent="navigation", new_app="百度地图")],
    )
