"""A device's own check of a round's privacy promise, before it contributes anything.

The coordinator announces ε, δ and the noise each device must add. A device does not take
that on trust: it recomputes, from the announced quantization (clip, scale, dim) and noise
(per-client variance, minimum survivors), the noise multiplier the released sum will carry,
asks the same accountant what ε that buys, and refuses a round whose announced ε is lower
than the truth, whose ε or δ exceed the device's own ceiling, that adds no noise at all, or
whose cohort is too small. A refusing device simply does not join: the server sees a dropout.

The noise floor: the server releases a sum of as few as ``params.min_clients`` inputs, and
each device adds ``1/noise.min_clients`` of the variance, so noise calibrated for more
devices than the release floor is overclaimed (at 11 survivors of noise meant for 100 the
release costs ε 3.3, not 1). The device refuses such a round and recomputes ε at exactly
``params.min_clients``, the fewest inputs a release can hold.

Against an active coordinator the floor is lower: it can isolate the sum of a group of
``t + 1`` clients (:func:`active_floor`; see privacy/secagg/client.py), so the device also
computes ε at that count and refuses above ``max_epsilon_active``.

What it cannot check alone: that at least ``min_clients`` inputs really are summed. The
consistency round makes the server show every survivor one signed survivor set of at least
``min_clients`` ids, but ids of devices that never sent an input cannot be told apart from
real survivors by one device; see docs/threat-model.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from privacy import accountant, dp, quantize
from privacy.errors import ProtocolReason, RemoteProtocolError
from privacy.round_wire import RoundOpen


@dataclass(frozen=True, slots=True)
class PrivacyFloor:
    """What a device accepts. ``allow_unnoised`` exists for test deployments only."""

    max_epsilon: float = 8.0  # per round, as announced (release of >= min_clients inputs)
    max_delta: float = 1e-5  # per round
    # per round against an active coordinator, which can isolate a group of t + 1 clients
    max_epsilon_active: float = 16.0
    min_participants: int = 3
    allow_unnoised: bool = False
    rel_tolerance: float = 1e-3


DEFAULT_FLOOR = PrivacyFloor()


def check_round(announce: RoundOpen, floor: PrivacyFloor | None = None) -> float:
    """Raise :class:`RemoteProtocolError` unless the round keeps its promise; returns the ε
    the device computed for it."""
    floor = floor or DEFAULT_FLOOR
    p = announce.params
    if p.n < floor.min_participants:
        raise RemoteProtocolError(
            ProtocolReason.ROUND_TOO_SMALL, f"{p.n} participants < {floor.min_participants}"
        )
    noise = announce.noise
    if noise.client_variance <= 0 or announce.epsilon <= 0:
        if floor.allow_unnoised:
            return 0.0
        raise RemoteProtocolError(ProtocolReason.NO_DP_NOISE, "the round adds no DP noise")
    if announce.epsilon > floor.max_epsilon or announce.delta > floor.max_delta:
        raise RemoteProtocolError(
            ProtocolReason.BUDGET_TOO_HIGH,
            f"round asks ε={announce.epsilon:.3g}, δ={announce.delta:.3g}; device allows "
            f"ε≤{floor.max_epsilon:.3g}, δ≤{floor.max_delta:.3g}",
        )
    if noise.min_clients > p.min_clients:
        raise RemoteProtocolError(
            ProtocolReason.NOISE_OVERCLAIMED,
            f"noise calibrated for {noise.min_clients} devices, but a release may hold only "
            f"{p.min_clients}",
        )
    quant = quantize.QuantConfig(dim=p.dim, clip=announce.clip, scale=announce.scale, bits=p.bits)
    z = dp.effective_multiplier(quant.l2_sensitivity, noise.client_variance, p.min_clients, p.dim)
    if z <= 0:
        raise RemoteProtocolError(ProtocolReason.NO_DP_NOISE, "recomputed noise multiplier is 0")
    true_eps = accountant.epsilon([z], announce.delta)
    if true_eps > announce.epsilon * (1 + floor.rel_tolerance) + 1e-9:
        raise RemoteProtocolError(
            ProtocolReason.EPSILON_UNDERSTATED,
            f"announced ε={announce.epsilon:.4g} but the announced noise gives ε={true_eps:.4g}",
        )
    active = active_floor(p.t, p.min_clients)
    if active < p.min_clients:
        z_active = dp.effective_multiplier(
            quant.l2_sensitivity, noise.client_variance, active, p.dim
        )
        eps_active = accountant.epsilon([z_active], announce.delta) if z_active > 0 else math.inf
        if eps_active > floor.max_epsilon_active:
            raise RemoteProtocolError(
                ProtocolReason.BUDGET_TOO_HIGH,
                f"an active coordinator could release a sum of {active} inputs at "
                f"ε={eps_active:.3g} > the device's {floor.max_epsilon_active:.3g}",
            )
    return true_eps


def active_floor(t: int, min_clients: int) -> int:
    """The fewest inputs whose sum an active coordinator can isolate: a client unmasks only
    with ``t`` signing neighbours it exchanged masks with, so an isolated group has at least
    ``t + 1`` members (and never fewer than an honest release, ``min_clients``, when that is
    smaller)."""
    return min(min_clients, t + 1)
