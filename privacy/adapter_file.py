"""LoRA weights <-> ONNX Runtime adapter files (``onnxruntime.AdapterFormat``), as bytes.

Why ORT's own format: the device binds an adapter to the shipped base graph with
``RunOptions.add_active_adapter``; ORT feeds each adapter parameter to the graph input of the
same name (``lora_A``, ``lora_B``), so swapping personalization never touches the base model.
ORT 1.32's Python API reads and writes adapters only through file paths, so bytes pass
through a private temporary directory that is removed at once.

The ``base`` adapter is all zeros: ``(h @ 0) @ 0 == 0``, the base model's own output.

>>> w = LoRAWeights.zeros(hidden=4, rank=2, out_dim=3)
>>> blob = adapter_to_bytes(w, adapter_version=5)
>>> back = adapter_from_bytes(blob)
>>> back.adapter_version, back.weights.A.shape, back.weights.B.shape
(5, (4, 2), (2, 3))
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort

from privacy.graph_io import LORA_A, LORA_B

ADAPTER_SUFFIX = ".onnx_adapter"
T = TypeVar("T")


@dataclass(frozen=True)
class LoRAWeights:
    """A low-rank delta on the context tower's last layer: ``query += scale * (h @ A) @ B``.

    ``A`` is ``[hidden, rank]``, ``B`` is ``[rank, query_dim]``, both float32: the adapter's
    size does not depend on how many apps there are. The scale is part of the base graph (see
    :class:`learner.model.ModelConfig`), not of the adapter.
    """

    A: np.ndarray
    B: np.ndarray

    def __post_init__(self) -> None:
        a = np.ascontiguousarray(self.A, dtype=np.float32)
        b = np.ascontiguousarray(self.B, dtype=np.float32)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise ValueError(f"LoRA shapes do not chain: A{a.shape} B{b.shape}")
        object.__setattr__(self, "A", a)
        object.__setattr__(self, "B", b)

    @classmethod
    def zeros(cls, hidden: int, rank: int, out_dim: int) -> LoRAWeights:
        return cls(
            np.zeros((hidden, rank), dtype=np.float32),
            np.zeros((rank, out_dim), dtype=np.float32),
        )

    @property
    def rank(self) -> int:
        return int(self.A.shape[1])

    def delta(self) -> np.ndarray:
        """The full ``[hidden, query_dim]`` update ``A @ B`` (unscaled)."""
        return self.A @ self.B

    def as_feeds(self) -> dict[str, np.ndarray]:
        return {LORA_A: self.A, LORA_B: self.B}


@dataclass(frozen=True)
class AdapterFile:
    """What an adapter file holds once read back."""

    weights: LoRAWeights
    adapter_version: int
    model_version: int
    format_version: int


@contextmanager
def _scratch_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sotto-adapter-") as tmp:
        yield Path(tmp) / f"adapter{ADAPTER_SUFFIX}"


def adapter_to_bytes(weights: LoRAWeights, adapter_version: int, model_version: int = 1) -> bytes:
    """Serialize ``weights`` as an ORT adapter file and return its bytes."""
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(adapter_version)
    fmt.set_model_version(model_version)
    fmt.set_parameters(
        {name: ort.OrtValue.ortvalue_from_numpy(arr) for name, arr in weights.as_feeds().items()}
    )
    with _scratch_path() as path:
        fmt.export_adapter(str(path))
        return path.read_bytes()


def zero_adapter(hidden: int, rank: int, out_dim: int, model_version: int = 1) -> bytes:
    """The ``base`` adapter (version 0): all zeros, so outputs equal the base model's."""
    return adapter_to_bytes(LoRAWeights.zeros(hidden, rank, out_dim), 0, model_version)


def with_adapter_file(data: bytes, use: Callable[[str], T]) -> T:
    """Write ``data`` to a private temporary file, call ``use(path)``, then remove the file.

    Safe for ``LoraAdapter.Load``: ORT maps the file, and on POSIX the mapping outlives the
    directory entry.
    """
    with _scratch_path() as path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return use(str(path))


def adapter_from_bytes(data: bytes) -> AdapterFile:
    """Parse adapter bytes; raises ``ValueError`` if they are not a LoRA adapter we can use."""

    def read(path: str) -> AdapterFile:
        try:
            fmt = ort.AdapterFormat.read_adapter(path)
        except Exception as exc:  # ORT raises RuntimeError subclasses with C++ text
            raise ValueError(f"not an ONNX Runtime adapter: {exc}") from exc
        params = fmt.get_parameters()
        missing = {LORA_A, LORA_B} - set(params)
        if missing:
            raise ValueError(f"adapter lacks parameters {sorted(missing)}")
        weights = LoRAWeights(params[LORA_A].numpy().copy(), params[LORA_B].numpy().copy())
        return AdapterFile(
            weights=weights,
            adapter_version=fmt.get_adapter_version(),
            model_version=fmt.get_model_version(),
            format_version=fmt.get_format_version(),
        )

    return with_adapter_file(data, read)


def load_lora_adapter(data: bytes) -> ort.LoraAdapter:
    """An ``onnxruntime.LoraAdapter`` ready for ``RunOptions.add_active_adapter``."""

    def load(path: str) -> ort.LoraAdapter:
        adapter = ort.LoraAdapter()
        try:
            adapter.Load(path)
        except Exception as exc:
            raise ValueError(f"not an ONNX Runtime adapter: {exc}") from exc
        return adapter

    return with_adapter_file(data, load)
