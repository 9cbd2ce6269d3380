"""Central (non-private) LoRA fitting: the plain-torch baseline for a cohort or a user adapter.

Why keep it: it is the upper bound a private learner is compared against (a cohort's raw rows,
or one user's: the per-user oracle of ``sotto bench hint``), and it gives tests a real
personalized adapter. Only ``A`` and ``B`` train; the base stays frozen, exactly the
parameters an adapter file can carry. ``A`` starts small and random and ``B`` at zero (the
usual LoRA start), so the first step is the base model. The loss is the base's
(:func:`learner.model.row_loss`): cross-entropy for used apps, ``-log(1-p)`` for failed
launches, over each row's available apps.
"""

from __future__ import annotations

import torch

from learner.model import PersonalizationNet, row_loss
from privacy.adapter_file import LoRAWeights
from privacy.features import StepArrays


def fit_lora(
    net: PersonalizationNet,
    data: StepArrays,
    seed: int = 0,
    steps: int = 150,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
    init: LoRAWeights | None = None,
) -> LoRAWeights:
    """Full-batch Adam on ``A, B`` only; returns the fitted weights (base untouched)."""
    cfg = net.config
    gen = torch.Generator().manual_seed(seed)
    if init is None:
        a = torch.randn(cfg.hidden, cfg.rank, generator=gen) / cfg.hidden**0.5
        b = torch.zeros(cfg.rank, cfg.query_dim)
    else:
        a, b = torch.from_numpy(init.A.copy()), torch.from_numpy(init.B.copy())
    if len(data) == 0:
        return LoRAWeights(a.numpy().copy(), b.numpy().copy())
    a.requires_grad_(True)
    b.requires_grad_(True)
    x_i = torch.from_numpy(data.instruction)
    x_c = torch.from_numpy(data.context)
    y = torch.from_numpy(data.labels)
    pol = torch.from_numpy(data.polarity)
    avail = torch.from_numpy(data.available)
    for p in net.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():  # frozen: compute once
            apps = torch.from_numpy(data.app_features())
            h = net.features(x_i, x_c)
            v = net.app_vectors(apps)
            base = net(x_i, x_c, apps, *(torch.zeros_like(t) for t in (a, b)))
        opt = torch.optim.Adam([a, b], lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            opt.zero_grad()
            delta = ((h @ a) @ b) * cfg.scale
            logits = base + delta @ v.T
            row_loss(logits, y, pol, avail).backward()
            opt.step()
    finally:
        for p in net.parameters():
            p.requires_grad_(True)
    return LoRAWeights(a.detach().numpy().copy(), b.detach().numpy().copy())
