"""Distillation from a trained dense teacher (``--distill-from``), and in-place distillation
(``--inplace-distill``): one more loss term each.

The teacher is the script's ``--arch`` with the weights of a run's ``checkpoint.pt`` (its
backbone, for a gated run) or of a ``state_dict`` file, every key and shape checked as for
``--init-from``.  It runs in eval mode under ``torch.no_grad``; it is a training cost only,
never part of the model whose FLOPs ``results.json`` reports.

In-place distillation (universally slimmable networks, Yu & Huang 2019) serves a model with
a budget input (``--budget-range``): the model itself at the range's high end teaches every
sample at the budget it drew, on the same images.  The teacher pass runs under
``torch.no_grad`` in training mode, as US-Nets' widest network does: its norms read the
batch's statistics, and the gates are the hard ones evaluation gives at that budget
(:meth:`gatekit.Gate.binarize`).  It runs on copies of the buffers, and leaves the norms'
running statistics and the step's ``last_gates`` as they were.  Not eval mode: while the
budgets widen, the running statistics are a mixture over budgets and the eval-mode model is
far worse than the training-mode one (a first run with an eval-mode teacher ended its first epoch at 39%
training accuracy, where the same run without it reached 82%).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

import gatekit
from gatekit import GatekitError

from . import models
from .config import RunConfig
from .losses import Step, Term
from .ramp import Ramp
from .warm_start import load_into, read_state_dict


def distillation(teacher: nn.Module, weight: Ramp, temperature: float, source: str) -> Term:
    """The term: :func:`gatekit.distillation_loss` of the model's logits against the
    teacher's on the same images.  The teacher runs under ``torch.no_grad`` in the mode it is
    in (eval, as :func:`distillation_term` loads it), and only while the weight is not 0."""
    def loss(step: Step) -> Tensor:
        with torch.no_grad():
            teacher_logits = teacher(step.images)
        return gatekit.distillation_loss(step.logits, teacher_logits, temperature)

    return Term("distillation", weight, loss,
                {"from": source, "weight": str(weight), "temperature": temperature},
                section="distillation")


def distillation_term(config: RunConfig, num_classes: int, device: torch.device) -> Term | None:
    """The distillation ``--distill-from`` asks for (None without it); checked before any write."""
    if config.distill_from is None:
        return None
    temperature = _temperature(config)
    path = Path(config.distill_from)
    state, _ = read_state_dict(path, flag="--distill-from")
    teacher = models.backbone(config, num_classes)
    load_into(teacher, state, what=models.label(config, "teacher"), source=f"--distill-from {path}")
    teacher = teacher.to(device).eval().requires_grad_(False)
    if config.channels_last_on:
        teacher = teacher.to(memory_format=torch.channels_last)
    return distillation(teacher, config.distill_weight, temperature, str(path))


class _AtBudget(nn.Module):
    """A GaterNet's logits at one budget with the hard gates evaluation gives, through
    ``gate_logits`` and ``backbone`` (so the net's ``last_gates`` are not replaced)."""

    def __init__(self, net: nn.Module, budget: float) -> None:
        super().__init__()
        self.net, self.budget = net, budget

    def forward(self, images: Tensor) -> Tensor:
        net = self.net
        gates = net.estimator.binarize(net.gate_logits(images, budget=self.budget))
        return net.backbone(images, gates=gates)


def inplace_distillation(weight: Ramp, temperature: float, budget: float) -> Term:
    """The term: :func:`gatekit.distillation_loss` of the model's logits against its own
    logits at ``budget`` on the same images (training mode, hard gates, no gradient).  The
    teacher pass runs on copies of the model's buffers (``torch.func.functional_call``): a
    norm in training mode updates its running statistics in place, which would change the
    model's, and tensors the trained pass saved for its backward."""
    def loss(step: Step) -> Tensor:
        teacher = _AtBudget(step.model, budget)
        copies = {name: b.clone() for name, b in teacher.named_buffers()}
        with torch.no_grad():
            teacher_logits = torch.func.functional_call(teacher, copies, (step.images,))
        return gatekit.distillation_loss(step.logits, teacher_logits, temperature)

    return Term("inplace_distillation", weight, loss,
                {"inplace_weight": str(weight), "inplace_budget": budget,
                 "inplace_teacher": "training mode, hard gates", "temperature": temperature},
                section="distillation")


def inplace_distillation_term(config: RunConfig) -> Term | None:
    """The in-place distillation ``--inplace-distill`` asks for (None while its weight is 0
    throughout); the config's checks require ``--budget-range``."""
    if not config.inplace_distill.active:
        return None
    if config.budget_range is None:
        raise GatekitError("--inplace-distill needs --budget-range LO:HI: its teacher is the "
                           "model at the range's high end")
    return inplace_distillation(config.inplace_distill, _temperature(config),
                                float(config.budget_range.high))


def _temperature(config: RunConfig) -> float:
    """``--distill-temperature``, checked (both distillation terms read it)."""
    if not config.distill_temperature > 0:
        raise GatekitError(f"--distill-temperature must be > 0, got {config.distill_temperature}")
    return float(config.distill_temperature)
