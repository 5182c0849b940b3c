"""Distillation from a trained dense teacher (``--distill-from``): the teacher and its term.

The teacher is the script's ``--arch`` with the weights of a run's ``checkpoint.pt`` (its
backbone, for a gated run) or of a ``state_dict`` file, every key and shape checked as for
``--init-from``.  It runs in eval mode under ``torch.no_grad``; it is a training cost only,
never part of the model whose FLOPs ``results.json`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import gatekit
from gatekit import GatekitError

from . import models
from .config import RunConfig
from .ramp import Ramp
from .warm_start import load_into, read_state_dict


@dataclass
class Distillation:
    """The teacher, the weight ramp and the temperature of ``gatekit.distillation_loss``."""

    teacher: nn.Module
    weight: Ramp
    temperature: float
    source: str

    def __call__(self, student_logits: Tensor, images: Tensor, epoch: float, total: float) -> Tensor | None:
        """The weighted term for this step, or None while its weight is 0."""
        w = self.weight.at(epoch, total)
        if w == 0.0:
            return None
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return w * gatekit.distillation_loss(student_logits, teacher_logits, self.temperature)

    def describe(self) -> dict[str, Any]:
        return {"from": self.source, "weight": str(self.weight), "temperature": self.temperature}


def load_distillation(config: RunConfig, num_classes: int,
                      device: torch.device) -> Distillation | None:
    """The distillation ``--distill-from`` asks for (None without it); checked before any write."""
    if config.distill_from is None:
        return None
    if not config.distill_temperature > 0:
        raise GatekitError(f"--distill-temperature must be > 0, got {config.distill_temperature}")
    path = Path(config.distill_from)
    state, _ = read_state_dict(path, flag="--distill-from")
    teacher = models.classifier(config.arch, num_classes)
    load_into(teacher, state, what=f"teacher ({config.arch})", source=f"--distill-from {path}")
    teacher = teacher.to(device).eval().requires_grad_(False)
    if config.channels_last_on:
        teacher = teacher.to(memory_format=torch.channels_last)
    return Distillation(teacher, config.distill_weight, float(config.distill_temperature),
                        str(path))
