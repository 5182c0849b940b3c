"""One model for any budget (``--budget-range LO:HI[:K]``): the budgets a run draws and
evaluates, and its loss term.

Every training step draws each sample's budget uniformly from ``[low, HI]``; ``low`` is LO,
or, with ``K``, moves from HI down to LO over the first K epochs (a curriculum that starts
at the trained model's full compute and widens).  ``--budget-ends F`` is the sandwich rule of
slimmable networks in per-sample form: in every batch, a fraction F/2 of the samples gets the
range's low end and F/2 its high end, the rest uniform draws, so that both ends are trained at
every step at no extra cost per step (the samples of a batch already carry their own budgets).  The model's head reads the budget
(``gate_model(..., budget_input=True)``) and :func:`gatekit.flops_budget_loss` holds each
sample to its own.  Evaluation: every epoch at the range's midpoint; at the end, at every
budget of ``--eval-budgets``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import Tensor

from .ramp import Ramp

DEFAULT_EVAL_BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class BudgetRange:
    low: float
    high: float
    epochs: float | None = None  # the curriculum's length; None: the whole range from the start
    ends: float = 0.0  # --budget-ends: the fraction of each batch at the range's two ends

    def low_at(self, epoch: float) -> float:
        if self.epochs is None:
            return self.low
        return Ramp(self.high, self.low, self.epochs).at(epoch, self.epochs)

    def draw(self, n: int, epoch: float, device: torch.device) -> Tensor:
        """``n`` budgets: ``round(n * ends / 2)`` at ``low_at(epoch)``, as many at ``high``,
        the rest uniform on ``[low_at(epoch), high]`` (all uniform without ``ends``)."""
        low = self.low_at(epoch)
        budgets = torch.rand(n, device=device) * (self.high - low) + low
        k = min(round(n * self.ends / 2), n // 2)
        if k:
            budgets[:k] = low
            budgets[k:2 * k] = self.high
        return budgets

    @property
    def midpoint(self) -> float:
        return (self.low + self.high) / 2

    def __str__(self) -> str:
        tail = f":{self.epochs:g}" if self.epochs is not None else ""
        return f"{self.low:g}:{self.high:g}{tail}"


def budget_range_arg(value: str) -> BudgetRange:
    parts = value.split(":")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected LO:HI or LO:HI:K (numbers), got {value!r}")
    low, high = numbers[:2]
    if not 0.0 < low <= high <= 1.0:
        raise argparse.ArgumentTypeError(
            f"expected budgets with 0 < LO <= HI <= 1 (fractions of the gated convs' FLOPs), "
            f"got {value!r}")
    if len(numbers) == 3 and numbers[2] <= 0:
        raise argparse.ArgumentTypeError(f"the curriculum's length K must be > 0 epochs, got {value!r}")
    return BudgetRange(low, high, numbers[2] if len(numbers) == 3 else None)


def eval_budgets_arg(value: str) -> tuple[float, ...]:
    try:
        budgets = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated budgets, got {value!r}") from None
    if not budgets or not all(0.0 < b <= 1.0 for b in budgets):
        raise argparse.ArgumentTypeError(f"every budget must lie in (0, 1], got {value!r}")
    return budgets
