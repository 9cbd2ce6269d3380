"""The deployment's base model, trained on the simulated population (no download).

Why here: the base is population-level and made from simulated users, so its training data is
simulation, which only the composition root may import. The learner receives the finished
:class:`~learner.base_bundle.BaseBundle`; devices receive its ONNX bytes. Its rows are whole
agent episodes as Open-AutoGLM produces them (:mod:`deploy.simulation.population`), read by
the same feature code the device runs (:mod:`privacy.features`).
"""

from __future__ import annotations

from pathlib import Path

from deploy.simulation.population import Population
from learner.base_bundle import BaseBundle, base_model_bundle
from learner.model import BASE_SEED, MODEL_FORMAT, ModelConfig, PersonalizationNet, train_base
from privacy.features import StepArrays


def base_population(seed: int = BASE_SEED) -> Population:
    """The simulated population the base is trained on (disjoint seed from evaluations)."""
    return Population(seed=seed, cohorts_per_region=4, devices_per_cohort=12)


def base_training_data(seed: int = BASE_SEED, rounds: int = 2) -> StepArrays:
    pop = base_population(seed)
    return StepArrays.from_rows(
        row
        for device in pop.devices
        for r in range(rounds)
        for row in pop.rows_for_round(device, r)
    )


def build_base_model(
    seed: int = BASE_SEED, config: ModelConfig | None = None
) -> PersonalizationNet:
    """The project's base model: population-level training, fully determined by ``seed``."""
    return train_base(base_training_data(seed), config or ModelConfig(), seed=seed)


def models_dir(home: Path, seed: int = BASE_SEED) -> Path:
    """Where the deployment's base bundle lives; the model format is in the name, so a bundle
    of an older architecture left in a home is never read as this one."""
    return Path(home) / "models" / f"base-{seed}-f{MODEL_FORMAT}"


def deployment_base(home: Path, seed: int = BASE_SEED) -> BaseBundle:
    """The base bundle of the deployment under ``home`` (built once, then read back)."""
    return base_model_bundle(models_dir(home, seed), lambda: build_base_model(seed))
