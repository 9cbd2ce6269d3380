"""A simulated cohort of devices and the private channel between them and the learner.

Why in the package (not only in tests): the tests, ``sotto bench quality`` and the docs'
figures must run the *same* loop. Each round: devices build their contribution under the
cohort's :class:`~privacy.adapter_plan.AdapterPlan` (:func:`edge_client.contribution.build_contribution`),
the channel releases the DP-noised sum as a :class:`~privacy.wire.ReleasedAggregate`, the
learner turns it into actions, and the devices take the shipped weights.

Two channels:

* ``gaussian`` — the sum of the clipped vectors plus Gaussian noise of stddev ``z * C`` with
  ``z = privacy.accountant.calibrate(epsilon_round, delta)``: the mechanism the accountant
  charges, fast enough for many rounds.
* ``secagg`` — a real in-memory SecAgg+ round (:func:`privacy.secagg.simulate.run_round`)
  with quantization and distributed discrete Gaussian noise (:mod:`privacy.round`).

numpy generators drive the *simulation* only (noise of the gaussian channel included, which
stands in for the devices' noise shares); the secagg channel draws secrets from
:class:`privacy.rand.SeededRandomness`, as tests must be reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import timedelta

import numpy as np

from deploy.simulation.population import EPOCH, Population
from edge_client.contribution import Trunk, build_contribution
from learner.actions import AdapterAction
from privacy import accountant
from privacy.adapter_file import LoRAWeights
from privacy.adapter_plan import AdapterPlan
from privacy.contribution import LAYOUT_V2, ContributionLayout
from privacy.features import StepArrays
from privacy.rand import SeededRandomness
from privacy.round import client_input, plan_round, release
from privacy.secagg.simulate import run_round
from privacy.wire import ReleasedAggregate


class StepCache:
    """Row arrays per (device, round), computed once: the simulator is pure, so caching is safe.

    A device's rows of a round are its finished tasks (:func:`privacy.features.rows_of`),
    as the device computes them from the agent's steps."""

    def __init__(self, population: Population) -> None:
        self.population = population
        self._train: dict[tuple[str, int], StepArrays] = {}
        self._held: dict[tuple[str, int], StepArrays] = {}

    def train(self, device_id: str, round_: int) -> StepArrays:
        key = (device_id, round_)
        if key not in self._train:
            dev = self._device(device_id)
            self._train[key] = StepArrays.from_rows(self.population.rows_for_round(dev, round_))
        return self._train[key]

    def heldout(self, device_id: str, round_: int) -> StepArrays:
        key = (device_id, round_)
        if key not in self._held:
            dev = self._device(device_id)
            self._held[key] = StepArrays.from_episodes(self.population.heldout(dev, round_))
        return self._held[key]

    def _device(self, device_id: str):  # type: ignore[no-untyped-def]
        return self.population.device(device_id)


def noise_multiplier_for(total_epsilon: float, rounds: int, delta: float) -> float:
    """The per-round noise multiplier whose ``rounds``-fold composition costs ``total_epsilon``
    (:func:`privacy.accountant.calibrate`, the one place for the formula)."""
    return accountant.calibrate(total_epsilon, delta, rounds=rounds, tol=1e-6)


class CohortFleet:
    """The devices of one cohort, the adapters they hold, and the channel to the learner."""

    def __init__(
        self,
        cache: StepCache,
        cohort: str,
        trunk: Trunk,
        *,
        noise_multiplier: float,
        delta: float = 1e-5,
        seed: int = 0,
        layout: ContributionLayout = LAYOUT_V2,
        devices: Sequence[str] | None = None,
    ) -> None:
        self.cache = cache
        self.cohort = cohort
        self.region = cohort.split("-c")[0]
        self.trunk = trunk
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.layout = layout
        self.device_ids = list(
            devices or [d.device_id for d in cache.population.devices_in(cohort)]
        )
        self.adapters: dict[int, LoRAWeights] = {}
        self._rng = np.random.default_rng(seed)
        self._zs: list[float] = []

    # --- devices ---------------------------------------------------------------------------

    def apply(self, actions: Iterable[AdapterAction]) -> None:
        """Devices take the weights any action carries (the signed path is tested elsewhere)."""
        for a in actions:
            if a.lora_a is not None and a.lora_b is not None and a.version not in self.adapters:
                self.adapters[a.version] = LoRAWeights(np.array(a.lora_a), np.array(a.lora_b))

    def corrupt(self, version: int, weights: LoRAWeights) -> None:
        """Make the devices run ``weights`` for ``version`` (a broken adapter in the field)."""
        self.adapters[version] = weights

    def contributions(self, round_: int, plan: AdapterPlan) -> list[np.ndarray]:
        return [
            build_contribution(
                self.trunk,
                self.cache.train(d, round_),
                plan,
                d,
                adapters=self.adapters,
                layout=self.layout,
            )
            for d in self.device_ids
        ]

    # --- channel ---------------------------------------------------------------------------

    def release(
        self, round_: int, plan: AdapterPlan, *, channel: str = "gaussian"
    ) -> ReleasedAggregate:
        vectors = self.contributions(round_, plan)
        if channel == "gaussian":
            total, stddev, z, n = self._gaussian(vectors)
        elif channel == "secagg":
            total, stddev, z, n = self._secagg(round_, vectors)
        else:
            raise ValueError(f"unknown channel {channel!r}")
        self._zs.append(z)
        return ReleasedAggregate.build(
            total,
            region=self.region,
            cohort=self.cohort,
            round=round_,
            layout=self.layout.name,
            participants=n,
            dropped=len(vectors) - n,
            noise_stddev=stddev,
            epsilon=accountant.epsilon([z], self.delta),
            delta=self.delta,
            epsilon_spent=accountant.epsilon(self._zs, self.delta),
            released_at=EPOCH + timedelta(days=round_),
        )

    def _gaussian(self, vectors: list[np.ndarray]) -> tuple[np.ndarray, float, float, int]:
        stddev = self.noise_multiplier * self.layout.l2_sensitivity
        total = np.sum(vectors, axis=0) + self._rng.normal(0.0, stddev, self.layout.dim)
        return total, stddev, self.noise_multiplier, len(vectors)

    def _secagg(
        self, round_: int, vectors: list[np.ndarray]
    ) -> tuple[np.ndarray, float, float, int]:
        n = len(vectors)
        epsilon = accountant.epsilon([self.noise_multiplier], self.delta)
        plan = plan_round(
            f"{self.cohort}-r{round_}",
            n=n,
            dim=self.layout.dim,
            clip=self.layout.clip,
            scale=2.0**12,
            epsilon=epsilon,
            delta=self.delta,
        )
        rng = SeededRandomness.from_int(1000 + round_)
        inputs = {c: client_input(v, plan, rng) for c, v in enumerate(vectors)}
        result = run_round(plan.params, inputs, rng=rng)
        total = release(result, plan)
        stddev = math.sqrt(len(result.survivors) * plan.noise.client_variance) / plan.quant.scale
        return total, stddev, plan.noise.noise_multiplier, len(result.survivors)

    # --- evaluation ------------------------------------------------------------------------

    def heldout(self, rounds: Iterable[int]) -> StepArrays:
        return StepArrays.concat(self.cache.heldout(d, r) for d in self.device_ids for r in rounds)

    def hit1(self, data: StepArrays, weights: LoRAWeights | None) -> float:
        """hit@1 on the preference rows of ``data`` (each among its available apps)."""
        return data.hits(self.trunk.logits(data, weights))
