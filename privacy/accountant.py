"""Privacy accounting with Google's ``dp_accounting`` (Rényi DP), one place for every formula.

Each released SecAgg+ sum is modelled as one Gaussian mechanism with an *effective* noise
multiplier ``z`` (see :mod:`privacy.dp` for how the distributed discrete Gaussian maps to it).
Rounds compose with :class:`dp_accounting.rdp.RdpAccountant`; ``epsilon`` is read off at the
budget's delta minus the (tiny) sampler slack each round adds. No amplification by sampling
is claimed: cohorts are not Poisson-sampled (a device could not verify that it was), so the
accounting is the conservative one, and it is *user-level*: a device may be in every round.

Why Rényi DP and not a tighter privacy-loss-distribution (PLD) accountant: the distributed
discrete Gaussian's guarantee (Kairouz, Liu, Steinke 2021, Thm. 1) is a concentrated-DP
(Rényi) bound, not the continuous Gaussian's privacy-loss distribution, so a PLD of a Gaussian
would claim more than the real channel is proven to give. For a continuous Gaussian the PLD
epsilon is about 7 % lower (``tests/privacy/test_accountant.py`` checks ours is never below
it and agrees within 2 % with dp_accounting's and Opacus's RDP accountants).
"""

from __future__ import annotations

from collections.abc import Iterable

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from privacy.errors import ConfigError


def _event(noise_multipliers: Iterable[float]) -> dp_accounting.DpEvent:
    zs = [float(z) for z in noise_multipliers]
    if len(set(zs)) == 1:  # the common case (a run at one noise level): one RDP evaluation
        return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(zs[0]), len(zs))
    return dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z) for z in zs])


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


def calibrate(epsilon_target: float, delta: float, *, rounds: int = 1, tol: float = 1e-4) -> float:
    """The smallest noise multiplier whose ``rounds``-fold composition costs at most
    ``epsilon_target`` (``rounds = 1``: one release). A whole run's budget split evenly over
    its rounds is ``calibrate(total, delta, rounds=T)``, the user-level figure a device that
    joins every round is charged."""
    if not epsilon_target > 0 or not 0 < delta < 1:
        raise ConfigError("need epsilon > 0 and 0 < delta < 1 to calibrate noise")
    if rounds < 1:
        raise ConfigError("need at least one round to calibrate noise")
    lo, hi = 1e-3, 1.0
    while epsilon([hi] * rounds, delta) > epsilon_target:
        hi *= 2
        if hi > 1e6:
            raise ConfigError(f"epsilon {epsilon_target} at delta {delta} is unreachable")
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        if epsilon([mid] * rounds, delta) > epsilon_target:
            lo = mid
        else:
            hi = mid
    return hi
