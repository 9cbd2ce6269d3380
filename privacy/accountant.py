"""Privacy accounting with Google's ``dp_accounting`` (Rényi DP), one place for every formula.

Each released SecAgg+ sum is modelled as one Gaussian mechanism with an *effective* noise
multiplier ``z`` (see :mod:`privacy.dp` for how the distributed discrete Gaussian maps to it).
Rounds compose with :class:`dp_accounting.rdp.RdpAccountant`; ``epsilon`` is read off at the
budget's delta minus the (tiny) sampler slack each round adds. No amplification by sampling
is claimed: cohorts are not Poisson-sampled, so the accounting is the conservative one.
"""

from __future__ import annotations

from collections.abc import Iterable

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from privacy.errors import ConfigError


def _event(noise_multipliers: Iterable[float]) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(float(z)) for z in noise_multipliers]
    )


def epsilon(noise_multipliers: Iterable[float], delta: float) -> float:
    """The RDP epsilon at ``delta`` of Gaussian releases with these noise multipliers."""
    zs = list(noise_multipliers)
    if not zs:
        return 0.0
    if not 0 < delta < 1:
        return float("inf")
    acc = RdpAccountant()
    acc.compose(_event(zs))
    return float(acc.get_epsilon(delta))


def calibrate(epsilon_target: float, delta: float, *, tol: float = 1e-4) -> float:
    """The smallest noise multiplier whose single release costs at most ``epsilon_target``."""
    if not epsilon_target > 0 or not 0 < delta < 1:
        raise ConfigError("need epsilon > 0 and 0 < delta < 1 to calibrate noise")
    lo, hi = 1e-3, 1.0
    while epsilon([hi], delta) > epsilon_target:
        hi *= 2
        if hi > 1e6:
            raise ConfigError(f"epsilon {epsilon_target} at delta {delta} is unreachable")
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        if epsilon([mid], delta) > epsilon_target:
            lo = mid
        else:
            hi = mid
    return hi
