"""Shared helpers for the privacy tests: seeded randomness so statistical tests never flake."""

from __future__ import annotations

import pytest

from privacy.rand import SeededRandomness


@pytest.fixture
def rng() -> SeededRandomness:
    return SeededRandomness.from_int(20240601)
