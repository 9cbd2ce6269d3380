"""Steps to arrays: the one place that turns agent steps into model inputs and labels.

Why one place: the device computes exactly these features at suggestion time (instruction
embedding beside its context embedding), so training, evaluation and the device must agree.
Instruction embeddings are cached by text because phrasings repeat a lot.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

from privacy.catalog import candidate_index
from privacy.embedding import embed_instruction
from privacy.wire import EMBEDDING_DIM


@lru_cache(maxsize=8192)
def _instruction_vector(text: str) -> np.ndarray:
    v = embed_instruction(text)
    v.setflags(write=False)
    return v


def instruction_features(text: str) -> np.ndarray:
    """The 128-d instruction embedding (cached, read-only)."""
    return _instruction_vector(text)


class LabelledStep(Protocol):
    """What a step must offer to become a training or evaluation row."""

    @property
    def instruction(self) -> str: ...

    @property
    def context(self) -> np.ndarray: ...

    @property
    def candidate(self) -> str: ...


@dataclass(frozen=True)
class StepArrays:
    """Model inputs and labels for a batch of steps: float32 ``[N, 128]`` twice, int64 ``[N]``."""

    instruction: np.ndarray
    context: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def from_steps(cls, steps: Iterable[LabelledStep]) -> StepArrays:
        steps = list(steps)
        if not steps:
            empty = np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
            return cls(empty, empty.copy(), np.zeros(0, dtype=np.int64))
        return cls(
            instruction=np.stack([instruction_features(s.instruction) for s in steps]),
            context=np.stack([s.context.astype(np.float32) for s in steps]),
            labels=np.array([candidate_index(s.candidate) for s in steps], dtype=np.int64),
        )

    @classmethod
    def concat(cls, parts: Iterable[StepArrays]) -> StepArrays:
        parts = list(parts)
        return cls(
            instruction=np.concatenate([p.instruction for p in parts]),
            context=np.concatenate([p.context for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
        )


def hit_at_k(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Share of rows whose label is among the ``k`` highest scores (0.0 for no rows)."""
    if len(labels) == 0:
        return 0.0
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())
