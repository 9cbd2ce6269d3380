"""Test data helpers for the privacy tests."""

from __future__ import annotations

import numpy as np

from privacy import quantize
from privacy.secagg.messages import RoundParams


def make_inputs(
    params: RoundParams, seed: int = 1
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Signed integer inputs (public test data) and their encodings mod 2**bits."""
    data = np.random.default_rng(seed)  # test data, not a secret
    bound = 1 << (params.bits - 2)
    per = max(1, bound // params.n)
    raw = {c: data.integers(-per, per, params.dim) for c in range(params.n)}
    return raw, {c: quantize.encode(v, params.bits) for c, v in raw.items()}
