"""A device refuses rounds that do not keep their announced privacy promise."""

from __future__ import annotations

import pytest

from privacy.errors import RemoteProtocolError
from privacy.round import plan_round
from privacy.round_check import PrivacyFloor, active_floor, check_round
from privacy.round_wire import NoiseSpec, RoundOpen, round_id_for

TOKENS = tuple(f"{i:032x}" for i in range(20))


def _announce(epsilon: float = 1.0, delta: float = 1e-6, **noise_changes: float) -> RoundOpen:
    rid = round_id_for("eu", "c1", 4)
    rp = plan_round(rid, n=20, dim=64, clip=1.0, scale=256.0, epsilon=epsilon, delta=delta)
    noise = NoiseSpec.of(rp.noise).model_copy(update=noise_changes)
    return RoundOpen(
        region="eu",
        cohort="c1",
        round=4,
        params=rp.params,
        layout="t",
        clip=1.0,
        scale=256.0,
        noise=noise,
        epsilon=epsilon,
        delta=delta,
        participants=TOKENS,
        stage_timeout_s=5.0,
    )


def test_an_honest_round_passes_and_its_epsilon_is_recomputed() -> None:
    eps = check_round(_announce(epsilon=1.0))
    assert 0 < eps <= 1.0 * 1.001


def test_understated_epsilon_is_refused() -> None:
    honest = _announce(epsilon=1.0)
    cheap = honest.noise.client_variance / 4  # a quarter of the noise, same claimed ε
    with pytest.raises(RemoteProtocolError) as exc:
        check_round(_announce(epsilon=1.0, client_variance=cheap))
    assert exc.value.reason == "epsilon_understated"


def test_no_noise_is_refused_unless_the_device_allows_test_rounds() -> None:
    unnoised = _announce(epsilon=1.0, client_variance=0.0)
    with pytest.raises(RemoteProtocolError) as exc:
        check_round(unnoised)
    assert exc.value.reason == "no_dp_noise"
    assert check_round(unnoised, PrivacyFloor(allow_unnoised=True)) == 0.0


def test_ceiling_and_cohort_size() -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        check_round(_announce(epsilon=1.0), PrivacyFloor(max_epsilon=0.5))
    assert exc.value.reason == "budget_too_high"
    with pytest.raises(RemoteProtocolError) as exc:
        check_round(_announce(epsilon=1.0), PrivacyFloor(min_participants=50))
    assert exc.value.reason == "round_too_small"
    with pytest.raises(RemoteProtocolError) as exc:
        check_round(_announce(epsilon=1.0, min_clients=21))
    assert exc.value.reason == "noise_overclaimed"


def test_the_active_server_floor_is_priced_in() -> None:
    """An active coordinator can isolate a group of t + 1 clients, fewer than min_clients here:
    the device computes ε at that count too and refuses above its active-server ceiling."""
    rid = round_id_for("eu", "c1", 4)
    rp = plan_round(
        rid, n=20, dim=64, clip=1.0, scale=256.0, epsilon=1.0, delta=1e-6, min_clients=18
    )
    assert active_floor(rp.params.t, rp.params.min_clients) == rp.params.t + 1 < 18
    announce = _announce().model_copy(update={"params": rp.params, "noise": NoiseSpec.of(rp.noise)})
    assert check_round(announce) <= 1.0 * 1.001  # the honest floor: as announced
    with pytest.raises(RemoteProtocolError, match="active coordinator") as exc:
        check_round(announce, PrivacyFloor(max_epsilon_active=1.2))
    assert exc.value.reason == "budget_too_high"
