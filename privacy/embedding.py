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
from functools import lru_cache

import numpy as np

from privacy import catalog
from privacy.wire import EMBEDDING_DIM

EMBED_VERSION = 1
_WORD = re.compile(r"[a-z0-9]+")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_ZERO64 = np.zeros(EMBEDDING_DIM, dtype=np.float64)


@lru_cache(maxsize=16384)
def _bucket(token: str) -> tuple[int, float]:
    """A token's bucket and sign. Cached: instructions reuse a small vocabulary of characters,
    bigrams and words, so the hash runs once per token the device has seen, not per call
    (about 16k tokens, a few MiB at most)."""
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
    idx: list[int] = []
    signed: list[float] = []
    for token, weight in features:
        bucket, sign = _bucket(token)
        idx.append(bucket)
        signed.append(sign * weight)
    vec = np.bincount(idx, weights=signed, minlength=EMBEDDING_DIM) if idx else _ZERO64
    norm = math.sqrt(float(vec @ vec))
    if norm > 0:
        vec /= norm
    return vec.astype(np.float32)


def embed_instruction(text: str) -> np.ndarray:
    """The 128-d embedding of an instruction's text alone: :func:`hash_features` of
    :func:`instruction_tokens` at weight 1, bit for bit (sums of unit weights are exact in any
    order), without building the token list. It runs on every suggestion, so it stays a
    single pass over the text with one cached hash per token.

    >>> text = "Open 高德地图 now"
    >>> bool((embed_instruction(text) == hash_features((t, 1.0) for t in instruction_tokens(text))).all())
    True
    """
    acc = [0.0] * EMBEDDING_DIM
    lowered = text.lower()
    for word in _WORD.findall(lowered):
        bucket, sign = _bucket("w:" + word)
        acc[bucket] += sign
    for run in _CJK.findall(lowered):
        prev = ""
        for ch in run:
            bucket, sign = _bucket("c:" + ch)
            acc[bucket] += sign
            if prev:
                bucket, sign = _bucket("b:" + prev + ch)
                acc[bucket] += sign
            prev = ch
    vec = np.array(acc, dtype=np.float64)
    norm = math.sqrt(float(vec @ vec))
    if norm > 0:
        vec /= norm
    return vec.astype(np.float32)


@lru_cache(maxsize=4096)
def instruction_vector(text: str) -> np.ndarray:
    """:func:`embed_instruction`, once per text (read-only: cached). A task's text is embedded
    once for its hint and again when its episode is stored; people repeat their tasks, so
    most texts are already here. 4,096 texts hold 2 MiB."""
    v = embed_instruction(text)
    v.setflags(write=False)
    return v


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


def app_tokens(name: str) -> list[tuple[str, float]]:
    """Identity features of an app: its canonical id, character n-grams of every spelling
    (CJK uni- and bi-grams, Latin trigrams of the normalized spelling) and its intent tags.

    Any name works: one the catalogue does not know is featurized from its own spelling, so a
    newly installed launchable app is a candidate from day one. Spellings of one app share the
    id token, so "B站" and "bilibili" are the same app to the model."""
    canonical = catalog.resolve(name) or name
    feats: list[tuple[str, float]] = [(f"id:{catalog.normalize(canonical)}", 3.0)]
    spellings = catalog.spellings(canonical)
    share = 1.0 / len(spellings)
    for spelling in spellings:
        key = catalog.normalize(spelling)
        grams = [f"c:{ch}" for run in _CJK.findall(key) for ch in run]
        grams += [f"b:{run[i : i + 2]}" for run in _CJK.findall(key) for i in range(len(run) - 1)]
        latin = "".join(_WORD.findall(key))
        padded = f"^{latin}$" if latin else ""
        grams += [f"t:{padded[i : i + 3]}" for i in range(max(len(padded) - 2, 0))]
        feats += [(f"n:{g}", share) for g in grams]
    feats += [(f"intent:{i}", 2.0) for i in catalog.intents_of(canonical)]
    return feats


@lru_cache(maxsize=4096)
def embed_app(name: str) -> np.ndarray:
    """The 128-d identity vector of an app (unit norm, read-only: cached), the app side of the
    model's input."""
    v = hash_features(app_tokens(name))
    v.setflags(write=False)
    return v


def embed_apps(names: Iterable[str]) -> np.ndarray:
    """``[len(names), 128]`` float32: :func:`embed_app` of each name, in order."""
    rows = [embed_app(n) for n in names]
    return np.stack(rows) if rows else np.zeros((0, EMBEDDING_DIM), dtype=np.float32)


def embed_episode(
    instruction: str,
    used_app: str | None,
    outcome: str,
    hour: int,
    failed_apps: Iterable[str] = (),
) -> np.ndarray:
    """One finished task as the context sees it: what was asked, which app the user ended up
    using (its identity vector, heavily weighted) and which apps failed to launch (their
    identity vectors, *subtracted*: a failure counts against an app, never for it). How many
    taps or swipes happened in the app does not enter: a task is one event.

    Handed-over and failed tasks keep their instruction but name no used app: they say what
    the user wanted, not which app they prefer."""
    acc = instruction_vector(instruction).astype(np.float64)
    acc += hash_features([(f"outcome:{outcome}", 1.0), (f"hour:{hour // 3}", 1.0)]) * 0.5
    if used_app and outcome in ("accepted", "overridden"):
        acc += 2.0 * embed_app(used_app)
    for failed in failed_apps:
        acc -= 1.0 * embed_app(failed)
    norm = math.sqrt(float(acc @ acc))
    return (acc / norm if norm > 0 else acc).astype(np.float32)


def combine(vectors: Iterable[np.ndarray], weights: Iterable[float]) -> np.ndarray:
    """Weighted sum re-normalized to unit length: the context embedding of a window."""
    acc = np.zeros(EMBEDDING_DIM, dtype=np.float64)
    for v, w in zip(vectors, weights, strict=True):
        acc += w * v.astype(np.float64)
    norm = math.sqrt(float(acc @ acc))
    return (acc / norm if norm > 0 else acc).astype(np.float32)
