"""Our accountant against dp_accounting's own accountants and Opacus's, on the same events.

The events are the ones Sotto releases: Gaussian sums composed over a run (all rounds at one
noise multiplier, as the bench and a calibrated cohort use, and rounds at different ones, as
a ledger sees after a re-plan), user-level (q = 1: no sampling is claimed).
"""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from privacy import accountant
from privacy.errors import ConfigError

opacus_rdp = pytest.importorskip("opacus.accountants.analysis.rdp")

DELTA = 1e-6
# (noise multipliers of the rounds): one release, whole runs at the bench's ε = 1, 2, 8
# noise levels (12 rounds), a long run, and a mixed run
RUNS = [
    [1.0],
    [5.0],
    [21.0] * 12,
    [11.0] * 12,
    [3.1] * 12,
    [8.0] * 200,
    [2.0, 4.0, 4.0, 9.0, 9.0, 9.0],
]
OPACUS_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def _dp_event(zs: list[float]) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z) for z in zs])


def _opacus(zs: list[float], delta: float) -> float:
    rdp = sum(
        opacus_rdp.compute_rdp(q=1.0, noise_multiplier=z, steps=1, orders=OPACUS_ORDERS) for z in zs
    )
    eps, _ = opacus_rdp.get_privacy_spent(orders=OPACUS_ORDERS, rdp=rdp, delta=delta)
    return float(eps)


@pytest.mark.parametrize("zs", RUNS, ids=lambda zs: f"{len(zs)}x{zs[0]:g}")
def test_epsilon_agrees_with_dp_accounting_rdp_and_opacus(zs: list[float]) -> None:
    ours = accountant.epsilon(zs, DELTA)
    ref = RdpAccountant()
    ref.compose(_dp_event(zs))
    assert ours == pytest.approx(ref.get_epsilon(DELTA), rel=0.02)
    assert ours == pytest.approx(_opacus(zs, DELTA), rel=0.02)


@pytest.mark.parametrize("zs", RUNS, ids=lambda zs: f"{len(zs)}x{zs[0]:g}")
def test_epsilon_is_never_below_the_gaussian_pld(zs: list[float]) -> None:
    """PLD is tight for a *continuous* Gaussian; our RDP figure must never claim less (it
    would overclaim), and is at most ~10 % above it (what Rényi DP costs us)."""
    pld = PLDAccountant(value_discretization_interval=1e-4)
    if len(set(zs)) == 1:  # PLD self-composes by FFT: fast for long uniform runs
        pld.compose(dp_accounting.GaussianDpEvent(zs[0]), len(zs))
    else:
        pld.compose(_dp_event(zs))
    tight = pld.get_epsilon(DELTA)
    ours = accountant.epsilon(zs, DELTA)
    assert tight <= ours <= 1.10 * tight


@pytest.mark.parametrize("total", [1.0, 2.0, 8.0])
def test_run_calibration_spends_the_budget_and_no_more(total: float) -> None:
    z = accountant.calibrate(total, DELTA, rounds=12, tol=1e-6)
    assert accountant.epsilon([z] * 12, DELTA) <= total
    assert accountant.epsilon([z * (1 - 1e-4)] * 12, DELTA) > total
    # Opacus agrees on what that noise buys, so the budget is not an artefact of our accountant
    assert _opacus([z] * 12, DELTA) == pytest.approx(total, rel=0.02)


def test_more_rounds_need_more_noise_per_round() -> None:
    one = accountant.calibrate(1.0, DELTA)
    twelve = accountant.calibrate(1.0, DELTA, rounds=12)
    assert twelve > 3.0 * one  # roughly sqrt(12): the budget is split over the run


def test_uniform_and_mixed_runs_compose_the_same_way() -> None:
    """The one-event fast path for a uniform run equals composing the rounds one by one."""
    ref = RdpAccountant()
    ref.compose(_dp_event([7.0] * 12))
    assert accountant.epsilon([7.0] * 12, DELTA) == pytest.approx(ref.get_epsilon(DELTA))
    assert accountant.epsilon([7.0] * 11 + [7.0 + 1e-12], DELTA) == pytest.approx(
        accountant.epsilon([7.0] * 12, DELTA), rel=1e-6
    )


def test_calibrate_refuses_nonsense() -> None:
    with pytest.raises(ConfigError):
        accountant.calibrate(1.0, DELTA, rounds=0)
    with pytest.raises(ConfigError):
        accountant.calibrate(1.0, 0.0)
