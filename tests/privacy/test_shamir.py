from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy import shamir
from privacy.rand import SeededRandomness


def _is_probable_prime(n: int) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_is_prime_and_holds_32_byte_secrets() -> None:
    assert _is_probable_prime(shamir.PRIME)
    assert shamir.PRIME > 2**256


def test_any_t_shares_recover_the_secret(rng) -> None:
    secret = rng.token_bytes(32)
    shares = shamir.split(secret, [3, 5, 8, 13, 21, 34], 4, rng)
    for subset in itertools.combinations(shares, 4):
        assert shamir.combine(list(subset), 4) == secret


def test_fewer_than_t_shares_do_not_give_the_secret(rng) -> None:
    secret = rng.token_bytes(32)
    shares = shamir.split(secret, list(range(1, 11)), 6, rng)
    with pytest.raises(ValueError):
        shamir.combine(shares[:5], 6)
    # Interpolating through t-1 points yields some field element, not the secret...
    guess = shamir.interpolate_unchecked(shares[:5])
    assert guess != int.from_bytes(secret, "big")
    # Every extra share moves the guess: with t-1 points the secret is not pinned down.
    more = shamir.interpolate_unchecked([*shares[:4], shares[6]])
    assert more != guess


def test_corrupted_share_is_detected_or_changes_the_secret(rng) -> None:
    secret = rng.token_bytes(32)
    shares = shamir.split(secret, [1, 2, 3], 3, rng)
    bad = [shares[0], shares[1], shamir.Share(3, (shares[2].y + 1) % shamir.PRIME)]
    try:
        recovered = shamir.combine(bad, 3)
    except ValueError:
        return  # detected: the result did not fit 32 bytes
    assert recovered != secret


def test_share_repr_hides_value(rng) -> None:
    (s,) = shamir.split(rng.token_bytes(32), [7], 1, rng)
    assert str(s.y) not in repr(s)


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    t=st.integers(1, 6),
    extra=st.integers(0, 4),
    seed=st.integers(0, 2**32),
)
def test_split_combine_roundtrip(secret: bytes, t: int, extra: int, seed: int) -> None:
    rng = SeededRandomness.from_int(seed)
    xs = [rng.randbelow(2**40) + 1 for _ in range(t + extra)]
    if len(set(xs)) != len(xs):
        return
    shares = shamir.split(secret, xs, t, rng)
    assert shamir.combine(shares[extra:], t) == secret


def _reference_lagrange(xs: list[int]) -> list[int]:
    """The textbook O(t^2) field computation, to check the fast one against."""
    p = shamir.PRIME
    out = []
    for m, xm in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != m:
                num, den = num * xj % p, den * (xj - xm) % p
        out.append(num * pow(den, -1, p) % p)
    return out


@settings(max_examples=60, deadline=None)
@given(
    xs=st.lists(
        st.one_of(st.integers(1, 5000), st.integers(1, 2**31), st.integers(1, 2**200)),
        min_size=1,
        max_size=60,
        unique=True,
    )
)
def test_fast_lagrange_coefficients_equal_the_textbook_ones(xs: list[int]) -> None:
    assert shamir.lagrange_at_zero(xs) == _reference_lagrange(xs)


def test_lagrange_refuses_repeated_or_zero_points() -> None:
    for xs in ([3, 3, 5], [0, 1, 2]):
        with pytest.raises(ValueError):
            shamir.lagrange_at_zero(xs)


def test_cached_coefficients_rebuild_the_same_secret(rng) -> None:
    cache = shamir.LagrangeCache(limit=2)
    secrets_ = [rng.token_bytes(32) for _ in range(4)]
    xs = list(range(10, 20))
    for secret in secrets_:
        shares = shamir.split(secret, xs, 6, rng)
        points = [(s.x, s.y) for s in shares]
        assert shamir.combine_points(points, 6, cache) == secret
        assert shamir.combine_points(points[3:], 6, cache) == secret
    assert (cache.misses, cache.hits) == (2, 6)
    with pytest.raises(ValueError):
        shamir.combine_points(points[:5], 6, cache)


def test_batched_weights_equal_one_set_at_a_time() -> None:
    """Sets of equal size share one numpy pass and one inversion; mixed sizes, large points
    and more sets than one batch take the other paths: all give the textbook coefficients."""
    rng = SeededRandomness.from_int(4)
    sets = [[rng.randbelow(3000) + 1 for _ in range(12)] for _ in range(300)]
    sets = [xs for xs in sets if len(set(xs)) == len(xs)]
    sets += [[1, 2, 3], [2**40, 5, 7], [9]]
    for xs, (scale, w) in zip(sets, shamir.lagrange_weights(sets), strict=True):
        assert [scale * c % shamir.PRIME for c in w] == _reference_lagrange(xs)
    with pytest.raises(ValueError):
        shamir.lagrange_weights([[1, 2], [3, 3]])
