"""Fit a cohort's LoRA from windowed sufficient statistics: a damped Newton step, in torch.

The objective. Devices send ``M = mean h (e_y - p_base)^T``, the negative gradient of the
cross-entropy with respect to a final-layer delta ``D`` at the base model. Around the base, the
loss is approximated by the quadratic

    J(D) = 1/2 <D, (G + lam I) D> / kappa - <M, D> + mu/2 ||D - D_live||^2 / kappa

with ``G = E[h h^T]`` the trunk-feature Gram matrix (read on the base model's public training
population: it is a property of the frozen trunk, nearly the same for every cohort, and
privately estimating its 2,080 entries would cost budget better spent on ``M``), ``kappa`` the
inverse curvature (a step size), ``lam`` a ridge that also shrinks the DP noise, and ``mu`` a
pull towards the live adapter that keeps successive versions close. LoRA constrains
``D = scale * A @ B`` to rank ``r``; we minimise ``J`` over ``(A, B)`` with Adam for a fixed
number of steps, warm-started from the live adapter, in the whitened form
``||P (scale*A@B - D*)||^2`` with ``P = (G + (lam+mu) I)^{1/2}`` and ``D*`` the unconstrained
minimiser. The cost is independent of how many rounds the stream has seen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from learner.model import PersonalizationNet
from privacy.adapter_file import LoRAWeights


@dataclass(frozen=True)
class FitConfig:
    """Hyperparameters of the Newton-LoRA fit (set once per deployment, not per cohort)."""

    kappa: float = 60.0  # inverse curvature: how far one step goes along the gradient
    ridge: float = 3.0  # lam: shrinks noisy directions
    prox: float = 0.5  # mu: pull towards the live adapter
    steps: int = 250  # Adam steps (fixed: cost does not grow with the stream)
    lr: float = 0.05
    seed: int = 0


def _net_digest(net: PersonalizationNet) -> str:
    h = hashlib.sha256()
    for p in net.state_dict().values():
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def reference_gram(net: PersonalizationNet) -> np.ndarray:
    """``E[h h^T]`` of the trunk features on the base's own (public, simulated) training data,
    stored in the net when it was trained (:meth:`PersonalizationNet.set_reference_gram`)."""
    gram = net.gram.detach().cpu().numpy().astype(np.float64)
    if not gram.any():
        raise ValueError("the base net carries no reference Gram; train it with train_base")
    return gram.copy()


def newton_target(
    mean_stats: np.ndarray, gram: np.ndarray, live: LoRAWeights | None, scale: float, cfg: FitConfig
) -> np.ndarray:
    """The unconstrained minimiser ``D*`` of ``J``."""
    hidden = gram.shape[0]
    d_live = np.zeros_like(mean_stats) if live is None else scale * live.delta().astype(np.float64)
    lhs = gram + (cfg.ridge + cfg.prox) * np.eye(hidden)
    return np.linalg.solve(lhs, cfg.kappa * mean_stats + cfg.prox * d_live)


def fit_adapter(
    mean_stats: np.ndarray,
    gram: np.ndarray,
    *,
    rank: int,
    scale: float,
    live: LoRAWeights | None = None,
    config: FitConfig = FitConfig(),
) -> LoRAWeights:
    """Rank-``rank`` LoRA minimising ``J`` (see module docstring); deterministic given inputs."""
    hidden, _ = mean_stats.shape
    target = newton_target(mean_stats, gram, live, scale, config)
    w, v = np.linalg.eigh(gram + (config.ridge + config.prox) * np.eye(hidden))
    p = (v * np.sqrt(np.maximum(w, 0.0))) @ v.T
    t_p = torch.from_numpy(p)
    t_target = torch.from_numpy(p @ target)
    norm = float(torch.linalg.norm(t_target)) or 1.0
    if live is not None and np.any(live.B):
        a = torch.from_numpy(live.A.astype(np.float64).copy())
        b = torch.from_numpy(live.B.astype(np.float64).copy())
    else:  # the usual LoRA start: small random A, zero B (deterministic)
        gen = torch.Generator().manual_seed(config.seed)
        a = torch.randn(hidden, rank, generator=gen, dtype=torch.float64) / hidden**0.5
        b = torch.zeros(rank, mean_stats.shape[1], dtype=torch.float64)
    a.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=config.lr)
    for _ in range(config.steps):
        opt.zero_grad()
        resid = t_p @ (scale * a @ b) - t_target
        loss = (resid * resid).sum() / norm**2
        loss.backward()
        opt.step()
    return LoRAWeights(a.detach().numpy(), b.detach().numpy())


def optimal_rank_r(target: np.ndarray, gram_reg: np.ndarray, rank: int) -> np.ndarray:
    """The exact best rank-``rank`` ``D`` in the ``P``-metric (for tests and diagnostics)."""
    w, v = np.linalg.eigh(gram_reg)
    p = (v * np.sqrt(w)) @ v.T
    p_inv = (v / np.sqrt(w)) @ v.T
    u, s, vt = np.linalg.svd(p @ target, full_matrices=False)
    return p_inv @ ((u[:, :rank] * s[:rank]) @ vt[:rank])
