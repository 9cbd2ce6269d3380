"""The reusable-buffer expansion gives exactly the words of a fresh one."""

from __future__ import annotations

import numpy as np
import pytest

from privacy import prg
from privacy.secagg import crypto


@pytest.mark.parametrize(("dim", "bits"), [(1, 2), (7, 20), (1000, 32), (333, 33), (64, 62)])
def test_expander_matches_expand(dim: int, bits: int) -> None:
    into = prg.Expander(dim, bits)
    for i in range(3):  # the buffer is reused: each call must overwrite all of it
        seed = bytes([i]) * 32
        assert np.array_equal(into.expand(seed, b"label"), prg.expand(seed, dim, bits, b"label"))
        assert np.array_equal(
            crypto.pair_mask(seed, dim, bits, into), crypto.pair_mask(seed, dim, bits)
        )
        got = crypto.self_mask(seed, "r1", dim, bits, into)
        assert np.array_equal(got, crypto.self_mask(seed, "r1", dim, bits))
        assert got.dtype == prg.mask_dtype(bits) and not got.flags.writeable
