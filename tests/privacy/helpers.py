"""Test data helpers for the privacy tests."""

from __future__ import annotations

import numpy as np

from privacy import quantize
from privacy.credential import CredentialIssuer, IssuerVerifier
from privacy.rand import Randomness, SeededRandomness
from privacy.secagg.client import SecAggClient
from privacy.secagg.messages import RoundParams
from privacy.secagg.server import SecAggServer


def make_inputs(
    params: RoundParams, seed: int = 1
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Signed integer inputs (public test data) and their encodings mod 2**bits."""
    data = np.random.default_rng(seed)  # test data, not a secret
    bound = 1 << (params.bits - 2)
    per = max(1, bound // params.n)
    raw = {c: data.integers(-per, per, params.dim) for c in range(params.n)}
    return raw, {c: quantize.encode(v, params.bits) for c, v in raw.items()}


# One credential issuer for the privacy tests (its key comes from a seeded DRBG: test only).
ISSUER = CredentialIssuer.generate("sim", "test-issuer", SeededRandomness.from_int(99))
VERIFIER = IssuerVerifier("sim", {ISSUER.key_id: ISSUER.public_key}, valid_at=1_000)


def make_client(params: RoundParams, cid: int, vector: np.ndarray, rng: Randomness) -> SecAggClient:
    """A client with a fresh one-round credential from :data:`ISSUER`."""
    identity = ISSUER.issue(not_after=1 << 40, rng=rng)
    return SecAggClient(params, cid, vector, rng, identity=identity, verifier=VERIFIER)


def make_server(params: RoundParams, rng: Randomness) -> SecAggServer:
    return SecAggServer(params, rng, verifier=VERIFIER)
