"""What one device contributes to a learning round: a flat vector whose cohort *sum* is enough.

Devices never send data the learner could read one by one: each contribution is clipped,
noised, masked with SecAgg+ and only the cohort's DP-noised sum is released. So the vector
must be built from quantities whose *sum* is what the learner needs. Layout ``lora-ss-v2``
has three blocks (see docs/learning.md for the measurements behind each choice):

``stats`` ``[hidden, query_dim]``
    ``M_i = mean_t h_t (V^T g_t)^T`` over the device's labelled rows of the round (one per
    finished task, :func:`privacy.features.rows_of`): ``h`` the frozen trunk features
    ``relu(W1 x + b1)``, ``V`` the app tower's vectors of the device's candidate apps, ``g``
    the negative loss gradient with respect to the logits under the *base* model
    (:func:`privacy.features.row_gradient`: ``e_y - p`` for the app the user used, the
    opposite push for an app that failed to launch). It is the negative gradient with respect
    to a delta on the context tower's last layer at the base model, so a sum over devices is
    the cohort's gradient and, with the trunk's feature Gram matrix, gives a Newton
    (quadratic) step — exactly what the LoRA needs, since LoRA is a delta on that layer. Its
    shape does not depend on the apps: devices with different candidate sets add up. Per-row
    *means* bound each device's influence whatever its activity.
``shadow`` ``[2]``
    ``(d_i, d_i**2)`` with ``d_i`` = the device's hit@1 of the shadow candidate minus that of
    live on its own round steps. A paired, per-device difference: its sum over devices gives
    the mean difference, and the sum of squares its between-device variance, so the gate can
    compute a standard error without ever seeing a device.
``rollout`` ``[2]``
    The same pair for the rollout comparison: canary minus live on canary devices while a
    canary runs, otherwise live minus the previous (fallback) adapter on every device — what
    the rollback detector watches.

Each block is clipped in its own raw units to ``raw_clip`` and multiplied by ``weight``; the
whole vector's L2 norm is then at most :attr:`ContributionLayout.clip` (``C``), which is the
L2 sensitivity of the sum under add/remove-one-device adjacency. ``weight`` spends the norm
budget: decoded noise on block ``b`` is ``noise_stddev / weight_b``. The eval blocks are tiny
(two numbers), so a large weight makes their decoded noise small at little cost.

>>> v = LAYOUT_V2.encode({"shadow": np.array([0.1, 0.01])})
>>> v.shape == (LAYOUT_V2.dim,), round(float(LAYOUT_V2.decode(v)["shadow"][0]), 6)
(True, 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

HIDDEN = 64  # the trunk width of learner.model.ModelConfig (kept torch-free here)
QUERY_DIM = 32  # the query/app vector width of learner.model.ModelConfig


@dataclass(frozen=True)
class Block:
    """One named slice of the contribution vector."""

    name: str
    shape: tuple[int, ...]
    raw_clip: float  # L2 bound of the block in its own units (the device clips to it)
    weight: float  # multiplier applied after clipping: spends the vector's norm budget

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def bound(self) -> float:
        """Largest L2 norm this block can have inside the encoded vector."""
        return self.raw_clip * self.weight


def _clip(x: np.ndarray, bound: float) -> np.ndarray:
    norm = float(np.linalg.norm(x))
    return x * (bound / norm) if norm > bound else x


@dataclass(frozen=True)
class ContributionLayout:
    """A versioned reading of the flat vector: ``name`` travels as ``ReleasedAggregate.layout``."""

    name: str
    blocks: tuple[Block, ...]

    @property
    def dim(self) -> int:
        return sum(b.size for b in self.blocks)

    @property
    def clip(self) -> float:
        """``C``: every encoded vector has L2 norm at most this."""
        return math.sqrt(sum(b.bound**2 for b in self.blocks))

    @property
    def l2_sensitivity(self) -> float:
        """L2 sensitivity of the cohort sum (add or remove one device): ``C``."""
        return self.clip

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"layout {self.name} has no block {name!r}")

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for b in self.blocks:
            out[b.name] = slice(start, start + b.size)
            start += b.size
        return out

    def encode(self, parts: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per-device blocks (raw units; missing ones are zero) -> the clipped flat vector."""
        unknown = set(parts) - {b.name for b in self.blocks}
        if unknown:
            raise KeyError(f"layout {self.name} has no blocks {sorted(unknown)}")
        out = np.zeros(self.dim, dtype=np.float64)
        for b, sl in zip(self.blocks, self.slices().values(), strict=True):
            if b.name not in parts:
                continue
            x = np.asarray(parts[b.name], dtype=np.float64)
            if x.shape != b.shape:
                raise ValueError(f"block {b.name} has shape {x.shape}, layout says {b.shape}")
            if not np.all(np.isfinite(x)):
                raise ValueError(f"block {b.name} has non-finite values")
            out[sl] = _clip(x.reshape(-1), b.raw_clip) * b.weight
        return _clip(out, self.clip)  # a no-op by construction; kept as the hard guarantee

    def decode(self, total: np.ndarray) -> dict[str, np.ndarray]:
        """A (summed, noisy) vector -> blocks in raw units (weights divided out)."""
        total = np.asarray(total, dtype=np.float64).reshape(-1)
        if total.shape != (self.dim,):
            raise ValueError(f"layout {self.name} has dim {self.dim}, got {total.shape[0]}")
        return {
            b.name: (total[sl] / b.weight).reshape(b.shape)
            for b, sl in zip(self.blocks, self.slices().values(), strict=True)
        }

    def block_noise_stddev(self, noise_stddev: float, name: str) -> float:
        """Stddev, in the block's raw units, of the noise a release with ``noise_stddev`` adds."""
        return noise_stddev / self.block(name).weight


LAYOUT_V2 = ContributionLayout(
    name="lora-ss-v2",
    blocks=(
        Block("stats", (HIDDEN, QUERY_DIM), raw_clip=0.6, weight=0.8),
        Block("shadow", (2,), raw_clip=0.5, weight=0.84),
        Block("rollout", (2,), raw_clip=0.5, weight=0.84),
    ),
)
LAYOUTS: dict[str, ContributionLayout] = {LAYOUT_V2.name: LAYOUT_V2}


def layout_named(name: str) -> ContributionLayout:
    """The layout a release names; unknown names are an error, never a guess."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise KeyError(f"unknown contribution layout {name!r}") from None
