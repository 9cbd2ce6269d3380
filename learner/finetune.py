"""Central (non-private) LoRA fitting: the plain-torch baseline for a cohort adapter.

Why keep it: it is the upper bound a private learner is compared against, and it gives tests
a real personalized adapter. Only ``A`` and ``B`` train; the base stays frozen, exactly the
parameters an adapter file can carry. ``A`` starts small and random and ``B`` at zero (the
usual LoRA start), so the first step is the base model.
"""

from __future__ import annotations

import torch
from torch import nn

from learner.model import PersonalizationNet
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
        b = torch.zeros(cfg.rank, cfg.num_candidates)
    else:
        a, b = torch.from_numpy(init.A.copy()), torch.from_numpy(init.B.copy())
    a.requires_grad_(True)
    b.requires_grad_(True)
    x_i = torch.from_numpy(data.instruction)
    x_c = torch.from_numpy(data.context)
    y = torch.from_numpy(data.labels)
    for p in net.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            h = net.features(x_i, x_c)  # frozen: compute once
            base = net.out(h)
        opt = torch.optim.Adam([a, b], lr=lr, weight_decay=weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(steps):
            opt.zero_grad()
            logits = base + (h @ a) @ b * cfg.scale
            loss_fn(logits, y).backward()
            opt.step()
    finally:
        for p in net.parameters():
            p.requires_grad_(True)
    return LoRAWeights(a.detach().numpy().copy(), b.detach().numpy().copy())
