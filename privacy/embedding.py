"""Deterministic, versioned behavior embeddings, computed on the device with no model download.

Why feature hashing: it needs no vocabulary or weights (nothing to download or ship), is
stable across devices and releases for a given :data:`EMBED_VERSION`, handles Chinese and
English instructions alike (character n-grams), and compresses any number of categorical
features into a fixed 128-d vector. Signed hashing keeps the inner product an unbiased
estimate of feature overlap. blake2b is used as a *hash*, not for secrecy.

>>> v = embed_instruction("打开导航")
>>> v.shape, round(float((v * v).sum()), 6)
((128,), 1.0)
>>> bool((embed_instruction("打开导航") == v).all())
True
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping

import numpy as np

from privacy.wire import EMBEDDING_DIM

EMBED_VERSION = 1
_WORD = re.compile(r"[a-z0-9]+")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")


def _bucket(token: str) -> tuple[int, float]:
    digest = hashlib.blake2b(token.encode(), digest_size=8, person=b"sotto-emb-v1").digest()
    value = int.from_bytes(digest, "little")
    return value % EMBEDDING_DIM, 1.0 if (value >> 63) & 1 else -1.0


def instruction_tokens(text: str) -> list[str]:
    """Words for Latin text, character uni- and bi-grams for CJK text."""
    lowered = text.lower()
    tokens = [f"w:{w}" for w in _WORD.findall(lowered)]
    for run in _CJK.findall(lowered):
        tokens += [f"c:{ch}" for ch in run]
        tokens += [f"b:{run[i : i + 2]}" for i in range(len(run) - 1)]
    return tokens


def hash_features(features: Iterable[tuple[str, float]]) -> np.ndarray:
    """Signed feature hashing into a unit-norm float32 vector (zero vector if no features)."""
    vec = np.zeros(EMBEDDING_DIM, dtype=np.float64)
    for token, weight in features:
        idx, sign = _bucket(token)
        vec[idx] += sign * weight
    norm = math.sqrt(float(vec @ vec))
    if norm > 0:
        vec /= norm
    return vec.astype(np.float32)


def embed_instruction(text: str) -> np.ndarray:
    """The 128-d embedding of an instruction's text alone."""
    return hash_features((t, 1.0) for t in instruction_tokens(text))


def embed_step(
    instruction: str,
    action: str,
    app: str | None,
    outcome: str,
    hour: int,
    extra: Mapping[str, str] | None = None,
) -> np.ndarray:
    """One behavior event: its instruction plus categorical features (action, app, outcome,
    hour-of-day bucket). Categorical features weigh more than single tokens on purpose: they
    carry the user's habits, the text mostly carries the intent."""
    feats: list[tuple[str, float]] = [(t, 1.0) for t in instruction_tokens(instruction)]
    feats.append((f"action:{action.lower()}", 2.0))
    if app:
        feats.append((f"app:{app.lower()}", 3.0))
        feats.append((f"app_action:{app.lower()}:{action.lower()}", 1.5))
    feats.append((f"outcome:{outcome}", 1.0))
    feats.append((f"hour:{hour // 3}", 1.0))
    for k, v in (extra or {}).items():
        feats.append((f"x:{k}:{v}", 1.0))
    return hash_features(feats)


def combine(vectors: Iterable[np.ndarray], weights: Iterable[float]) -> np.ndarray:
    """Weighted sum re-normalized to unit length: the context embedding of a window."""
    acc = np.zeros(EMBEDDING_DIM, dtype=np.float64)
    for v, w in zip(vectors, weights, strict=True):
        acc += w * v.astype(np.float64)
    norm = math.sqrt(float(acc @ acc))
    return (acc / norm if norm > 0 else acc).astype(np.float32)
