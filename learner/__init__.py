"""Incremental learners: sliding-window LoRA fine-tuning, shadow gate, registry, shipping."""

from __future__ import annotations

import importlib
from typing import Any

# name -> defining module; resolved on first use (PEP 562), so importing one submodule
# (say, the settings section) does not import the whole package (say, torch).
_EXPORTS = {
    "AdapterAction": "learner.actions",
    "BaseBundle": "learner.base_bundle",
    "CohortLearner": "learner.cohort",
    "LearnerApp": "learner.service",
    "LearnerConfig": "learner.cohort",
    "LearnerSettings": "learner.settings",
    "LearnerStats": "learner.service",
    "ModelConfig": "learner.model",
    "PersonalizationNet": "learner.model",
    "base_model_bundle": "learner.base_bundle",
    "export_onnx": "learner.model",
    "ship_lora": "learner.publish",
    "train_base": "learner.model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
