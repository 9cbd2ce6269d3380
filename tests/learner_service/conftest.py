"""Fixtures for learner-service tests: a deployment (unique topics, fresh DBs and keys on the
real broker) whose base model is built once per session and copied in, so every test and
every learner process of a test agree on one base-model hash without retraining."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from deploy.settings import SottoSettings
from deploy.simulation.base_model import deployment_base, models_dir

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("models-home")
    settings = SottoSettings(home=home)
    deployment_base(settings.home)
    return models_dir(settings.home)


@pytest.fixture
def settings(deployment: SottoSettings, built_models: Path) -> SottoSettings:
    target = models_dir(deployment.home)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(built_models, target)
    return deployment


@pytest.fixture
def group(unique: str) -> str:
    """A consumer group private to the test (tests share one broker)."""
    return f"t{unique}-learn"
