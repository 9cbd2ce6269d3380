"""The base model as one deployment runs it: the torch net, its shipped ONNX bytes, their SHA-256.

Why a cache on disk: every adapter manifest names the base by the SHA-256 of its ONNX bytes,
and a device refuses adapters built for another base. The learner and the devices of a
deployment must therefore agree on one byte string. The first process to need it builds the
base with the builder the composition root passes in (deterministic: seeded training on
simulated data), exports it once, and publishes ``base.onnx`` + ``base.pt`` (the net's weights
and reference Gram) together in the bundle's directory; every later process, learner or device simulator, reads those files back.
Publication is a directory rename, so a racing second builder simply adopts the first one's
files. The base is population-level, not user data, so one copy serves every region of a home.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from learner.model import ModelConfig, PersonalizationNet, export_onnx, model_sha256

ONNX_NAME = "base.onnx"
WEIGHTS_NAME = "base.pt"


class BaseBundle(NamedTuple):
    net: PersonalizationNet
    onnx_bytes: bytes
    sha256: str


_cache: dict[Path, BaseBundle] = {}
_lock = threading.Lock()


def base_model_bundle(directory: Path, build: Callable[[], PersonalizationNet]) -> BaseBundle:
    """``(net, onnx_bytes, sha256)`` of the base model kept in ``directory``, built at most once
    (by ``build``) and read back by every later caller."""
    directory = Path(directory).resolve()
    with _lock:
        bundle = _cache.get(directory)
        if bundle is None:
            if not (directory / ONNX_NAME).is_file():
                _build_into(directory, build)
            bundle = _load(directory)
            _cache[directory] = bundle
        return bundle


def _build_into(directory: Path, build: Callable[[], PersonalizationNet]) -> None:
    net = build()
    onnx_bytes = export_onnx(net)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        torch.save(net.state_dict(), tmp / WEIGHTS_NAME)
        (tmp / ONNX_NAME).write_bytes(onnx_bytes)
        for name in (WEIGHTS_NAME, ONNX_NAME):
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            tmp.rename(directory)
        except OSError:
            if not (directory / ONNX_NAME).is_file():
                raise
            # another process published first: use its files, so all agree on one hash
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(directory: Path) -> BaseBundle:
    net = PersonalizationNet(ModelConfig())
    net.load_state_dict(torch.load(directory / WEIGHTS_NAME, weights_only=True))
    net.eval()
    onnx_bytes = (directory / ONNX_NAME).read_bytes()
    return BaseBundle(net, onnx_bytes, model_sha256(onnx_bytes))
