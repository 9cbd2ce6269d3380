from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privacy import quantize
from privacy.errors import ConfigError
from privacy.rand import SeededRandomness
from privacy.round import plan_round

floats = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float64, st.integers(1, 64), elements=floats),
    clip=st.floats(0.01, 100),
    scale=st.floats(1, 1e4),
    seed=st.integers(0, 2**31),
)
def test_quantize_dequantize_is_within_one_step_of_the_clipped_input(x, clip, scale, seed) -> None:
    cfg = quantize.QuantConfig(dim=x.size, clip=clip, scale=scale, bits=40)
    q = quantize.quantize(x, cfg, SeededRandomness.from_int(seed))
    assert np.all(np.abs(q) <= cfg.coord_bound)
    back = quantize.dequantize(q, cfg)
    clipped = quantize.clip_l2(x, clip)
    assert np.linalg.norm(clipped) <= clip * (1 + 1e-9)
    assert np.all(np.abs(back - clipped) <= 1.0 / scale + 1e-9)
    assert np.linalg.norm(q) <= cfg.l2_sensitivity + 1e-6


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 62), data=st.data())
def test_encode_decode_roundtrip(bits: int, data) -> None:
    half = 1 << (bits - 1)
    v = np.array(
        data.draw(st.lists(st.integers(-half, half - 1), min_size=1, max_size=20)), dtype=np.int64
    )
    enc = quantize.encode(v, bits)
    assert np.all(enc.astype(np.uint64) < (1 << bits))
    assert np.array_equal(quantize.decode(enc, bits), v)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(4, 62), n=st.integers(1, 12), data=st.data())
def test_modular_sum_decodes_to_the_integer_sum_when_it_fits(bits: int, n: int, data) -> None:
    per = ((1 << (bits - 1)) - 1) // n
    vecs = [
        np.array(
            data.draw(st.lists(st.integers(-per, per), min_size=5, max_size=5)), dtype=np.int64
        )
        for _ in range(n)
    ]
    total = quantize.mod_sum([quantize.encode(v, bits) for v in vecs], bits)
    assert np.array_equal(quantize.decode(total, bits), np.sum(vecs, axis=0))


def test_stochastic_rounding_is_unbiased() -> None:
    y = np.full(200_000, 0.3)
    r = quantize.stochastic_round(y, SeededRandomness.from_int(5))
    assert set(np.unique(r)) == {0, 1}
    # mean 0.3, std of the mean ~0.001: a 5-sigma band never flakes with a fixed seed
    assert abs(r.mean() - 0.3) < 0.005


def test_headroom_refuses_a_config_that_could_wrap() -> None:
    cfg = quantize.QuantConfig(dim=10, clip=1.0, scale=1000.0, bits=16)
    with pytest.raises(ConfigError, match="can wrap.*bits >= "):
        quantize.check_headroom(100, cfg, noise_bound=50)
    need = quantize.required_bits(100, cfg.coord_bound, 50)
    ok = quantize.QuantConfig(dim=10, clip=1.0, scale=1000.0, bits=need)
    quantize.check_headroom(100, ok, noise_bound=50)
    # and the bound is tight enough: one bit less can wrap
    with pytest.raises(ConfigError):
        quantize.check_headroom(
            100, quantize.QuantConfig(dim=10, clip=1.0, scale=1000.0, bits=need - 1), 50
        )


def test_worst_case_inputs_do_not_wrap_at_the_chosen_modulus() -> None:
    plan = plan_round("w", n=50, dim=8, clip=1.0, scale=300.0, epsilon=1.0, delta=1e-6)
    b, bound = plan.quant.bits, plan.quant.coord_bound + plan.noise.bound
    worst = [np.full(8, bound, dtype=np.int64) for _ in range(50)]
    total = quantize.mod_sum([quantize.encode(v, b) for v in worst], b)
    assert np.array_equal(quantize.decode(total, b), np.full(8, 50 * bound))
    neg = [-v for v in worst]
    total = quantize.mod_sum([quantize.encode(v, b) for v in neg], b)
    assert np.array_equal(quantize.decode(total, b), np.full(8, -50 * bound))


def test_round_creation_refuses_explicit_bits_that_could_wrap() -> None:
    with pytest.raises(ConfigError, match="can wrap"):
        plan_round("w", n=1000, dim=100, clip=1.0, scale=1e4, epsilon=1.0, delta=1e-6, bits=20)


def test_rejects_non_finite_input() -> None:
    cfg = quantize.QuantConfig(dim=2, clip=1.0, scale=10.0, bits=16)
    with pytest.raises(ValueError):
        quantize.quantize(np.array([math.nan, 0.0]), cfg)
