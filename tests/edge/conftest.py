"""Session-scoped on-device model fixtures for edge tests: the base is trained once (seconds).

Mirrors tests/learner/conftest.py (same seed, same export), kept separate so the edge tests
run on their own.
"""

from __future__ import annotations

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.simulation.base_model import build_base_model
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
