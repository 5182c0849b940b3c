"""Functional forms of the gate estimators and losses, as ``torch.nn.functional`` is to ``nn``.

>>> import torch
>>> from gatekit import functional as GF
>>> GF.semhash(torch.tensor([[1.0, -1.0]]), training=False)
tensor([[1., 0.]])
"""

from .distillation import distillation_loss
from .estimators import (
    expected_l0,
    gumbel_sigmoid,
    hard_concrete,
    saturating_sigmoid,
    semhash,
    st_sigmoid,
    straight_through,
    tau_schedule,
)
from .losses import (
    batch_shaping_loss,
    expected_l0_loss,
    flops_budget_loss,
    gate_l1_loss,
    target_rate_loss,
)

__all__ = [
    "batch_shaping_loss",
    "distillation_loss",
    "expected_l0",
    "expected_l0_loss",
    "flops_budget_loss",
    "gate_l1_loss",
    "gumbel_sigmoid",
    "hard_concrete",
    "saturating_sigmoid",
    "semhash",
    "st_sigmoid",
    "straight_through",
    "target_rate_loss",
    "tau_schedule",
]
