"""The optimiser recipe: SGD with nesterov momentum, no weight decay on norms and biases,
linear warm-up then cosine decay, stepped every iteration."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights of convs and linears decay; norm weights and all biases do not.

    One-dimensional parameters are exactly the norm scales/shifts and the biases, so the
    split needs no list of norm classes.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum,
                           nesterov=momentum > 0, foreach=True)


class WarmupCosine:
    """LR factor: linear from ``start`` to 1 over ``warmup`` steps, then cosine to ``end``.

    A class (not a lambda) so that the scheduler's state dict round-trips.
    """

    def __init__(self, total: int, warmup: int, start: float = 0.1, end: float = 0.0) -> None:
        self.total, self.warmup, self.start, self.end = total, warmup, start, end

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.start + (1.0 - self.start) * step / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.end + (1.0 - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                   warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps))
