"""The deployment's base model, trained on the simulated population (no download).

Why here: the base is population-level and made from simulated users, so its training data is
simulation, which only the composition root may import. The learner receives the finished
:class:`~learner.base_bundle.BaseBundle`; devices receive its ONNX bytes.
"""

from __future__ import annotations

from pathlib import Path

from deploy.simulation.population import Population
from learner.base_bundle import BaseBundle, base_model_bundle
from learner.model import BASE_SEED, ModelConfig, PersonalizationNet, train_base
from privacy.features import StepArrays


def base_population(seed: int = BASE_SEED) -> Population:
    """The simulated population the base is trained on (disjoint seed from evaluations)."""
    return Population(seed=seed, cohorts_per_region=4, devices_per_cohort=12)


def base_training_data(seed: int = BASE_SEED, rounds: int = 2) -> StepArrays:
    pop = base_population(seed)
    return StepArrays.from_steps(
        step
        for device in pop.devices
        for r in range(rounds)
        for step in pop.steps_for_round(device, r)
    )


def build_base_model(
    seed: int = BASE_SEED, config: ModelConfig | None = None
) -> PersonalizationNet:
    """The project's base model: population-level training, fully determined by ``seed``."""
    return train_base(base_training_data(seed), config or ModelConfig(), seed=seed)


def models_dir(home: Path, seed: int = BASE_SEED) -> Path:
    return Path(home) / "models" / f"base-{seed}"


def deployment_base(home: Path, seed: int = BASE_SEED) -> BaseBundle:
    """The base bundle of the deployment under ``home`` (built once, then read back)."""
    return base_model_bundle(models_dir(home, seed), lambda: build_base_model(seed))
