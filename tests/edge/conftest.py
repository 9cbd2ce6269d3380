"""Session-scoped on-device model fixtures for edge tests: the base is trained once (seconds).

Mirrors tests/learner/conftest.py (same seed, same export), kept separate so the edge tests
run on their own. torch is imported only when a test asks for the base net: the edge SDK's own
tests also run in an edge-only venv (tests/test_edge_install.py), which has no torch.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@pytest.fixture(scope="session")
def base_net() -> Any:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from deploy.simulation.base_model import build_base_model

    return build_base_model()


@pytest.fixture(scope="session")
def base_onnx(base_net: Any) -> bytes:
    from learner.model import export_onnx

    return export_onnx(base_net)


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()
