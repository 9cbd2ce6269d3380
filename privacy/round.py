"""One round's plan: SecAgg+ parameters, quantization and DP noise, checked together.

The coordinator calls :func:`plan_round` when it creates a round. It calibrates the noise to
the per-round (epsilon, delta), picks the modulus ``b`` from the cohort size, clip, scale and
noise bound (or checks a given ``b``), and raises :class:`~privacy.errors.ConfigError` for
any configuration whose sum could wrap. Devices call :func:`client_input`; the server calls
:func:`release` on the unmasked sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from privacy import dp, quantize
from privacy.errors import ConfigError
from privacy.ledger import ChargeEvent
from privacy.rand import DEFAULT_RANDOMNESS, Randomness
from privacy.secagg import sizing
from privacy.secagg.messages import RoundParams
from privacy.secagg.server import AggregateResult


@dataclass(frozen=True, slots=True)
class RoundPlan:
    params: RoundParams
    quant: quantize.QuantConfig
    noise: dp.NoisePlan

    def charge_event(self, region: str, cohort: str) -> ChargeEvent:
        """What the ledger must afford before the round is announced."""
        if self.noise.noise_multiplier <= 0:
            raise ConfigError("a round without DP noise cannot be charged to a privacy budget")
        return ChargeEvent(
            round_id=self.params.round_id,
            region=region,
            cohort=cohort,
            noise_multiplier=self.noise.noise_multiplier,
            delta_slack=self.noise.delta_slack(self.params.n),
        )


def plan_round(
    round_id: str,
    *,
    n: int,
    dim: int,
    clip: float,
    scale: float,
    epsilon: float | None,
    delta: float | None,
    k: int | None = None,
    t: int | None = None,
    min_clients: int | None = None,
    bits: int | None = None,
    dropout: float | None = None,
    corrupt: float = sizing.DEFAULT_CORRUPT,
    risk: float = sizing.DEFAULT_RISK,
) -> RoundPlan:
    """Plan and validate a round. ``epsilon=None`` means no DP noise (tests only).

    ``dropout``: the expected share of clients that vanish; ``corrupt``: the share that may
    collude with the server; ``risk``: the failure probability the round may have. ``k`` and
    ``t`` default to :func:`privacy.secagg.sizing.choose`; given ones are refused when the
    chance that some client is exposed exceeds ``risk`` (abort risk only costs a round)."""
    try:
        base = RoundParams.recommended(
            round_id, n, dim, bits or 2, k=k, dropout=dropout, corrupt=corrupt, risk=risk
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    t = t or base.t
    drop = sizing.DEFAULT_DROPOUT if dropout is None else dropout
    fail = sizing.failure(n, base.k, t, dropout=drop, corrupt=corrupt)
    if fail.exposure > risk:
        raise ConfigError(
            f"k={base.k}, t={t} expose a client with probability {fail.exposure:.2e} > "
            f"{risk:.1e} when {corrupt:.3g} of {n} clients collude (need 2t - k beyond what "
            "colluding neighbours reach; raise t or k)"
        )
    min_clients = min_clients or max(t, base.min_clients)
    q0 = quantize.QuantConfig(dim=dim, clip=clip, scale=scale, bits=bits or quantize.MAX_BITS)
    if epsilon is None or delta is None:
        noise = dp.NoisePlan.none(dim, q0.l2_sensitivity)
    else:
        noise = dp.plan(
            epsilon=epsilon,
            delta=delta,
            sensitivity=q0.l2_sensitivity,
            min_clients=min_clients,
            dim=dim,
        )
    need = quantize.required_bits(n, q0.coord_bound, noise.bound)
    if bits is None:
        if need > quantize.MAX_BITS:
            raise ConfigError(
                f"no modulus up to 2^{quantize.MAX_BITS} holds this sum; lower scale or clip"
            )
        bits = max(need, 8)
    quant = quantize.QuantConfig(dim=dim, clip=clip, scale=scale, bits=bits)
    quantize.check_headroom(n, quant, noise.bound)
    try:
        params = RoundParams(
            round_id=round_id, n=n, k=base.k, t=t, min_clients=min_clients, dim=dim, bits=bits
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid SecAgg+ parameters: {exc.errors()[0]['msg']}") from None
    return RoundPlan(params, quant, noise)


def client_input(
    x: np.ndarray, plan: RoundPlan, rng: Randomness = DEFAULT_RANDOMNESS
) -> np.ndarray:
    """Clip, scale, round, add this client's noise share, encode mod 2**b."""
    v = quantize.quantize(x, plan.quant, rng) + plan.noise.sample(rng)
    return quantize.encode(v, plan.quant.bits)


def release(result: AggregateResult, plan: RoundPlan) -> np.ndarray:
    """The noisy sum of the survivors' clipped inputs, in input units."""
    return quantize.dequantize(quantize.decode(result.total, result.bits), plan.quant)
