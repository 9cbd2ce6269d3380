"""Incremental learners: sliding-window LoRA fine-tuning, shadow gate, registry, shipping."""

from __future__ import annotations

from privacy.lazy import exports

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

__getattr__, __dir__ = exports(__name__, _EXPORTS)
