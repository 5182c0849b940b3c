"""Distillation from a trained dense teacher (``--distill-from``): one more loss term.

The teacher is the script's ``--arch`` with the weights of a run's ``checkpoint.pt`` (its
backbone, for a gated run) or of a ``state_dict`` file, every key and shape checked as for
``--init-from``.  It runs in eval mode under ``torch.no_grad``; it is a training cost only,
never part of the model whose FLOPs ``results.json`` reports.
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
    if not config.distill_temperature > 0:
        raise GatekitError(f"--distill-temperature must be > 0, got {config.distill_temperature}")
    path = Path(config.distill_from)
    state, _ = read_state_dict(path, flag="--distill-from")
    teacher = models.backbone(config, num_classes)
    load_into(teacher, state, what=models.label(config, "teacher"), source=f"--distill-from {path}")
    teacher = teacher.to(device).eval().requires_grad_(False)
    if config.channels_last_on:
        teacher = teacher.to(memory_format=torch.channels_last)
    return distillation(teacher, config.distill_weight, float(config.distill_temperature), str(path))
