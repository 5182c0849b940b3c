"""The losses a run adds to the cross-entropy: a list of terms, each weighted by a :class:`Ramp`.

A :class:`Term` is one loss: its name, its weight, its function of the training
:class:`Step`, and what ``results.json`` records of it.  :class:`Losses` sums the terms
whose weight is not 0 at the step's epoch, and describes them all.  The gate terms of a
gated run (:func:`gate_terms`):

- ``--gate-loss-weight``: GaterNet's L1 pull towards closed gates (:func:`gatekit.gate_l1_loss`);
- ``--target-rate``: the batch's open fraction pulled to a rate (:func:`gatekit.target_rate_loss`);
- ``--budget``: the batch's FLOPs-weighted open fraction pulled to a budget
  (:func:`gatekit.flops_budget_loss`, costs from :func:`gatekit.gate_costs` at the training
  image size); the budget itself may move (``1:0.56:5``, a :class:`Ramp`);
- ``--budget-range``: each sample's FLOPs-weighted open fraction pulled to the budget it was
  drawn (a budget-input model, :mod:`.budgets`);
- ``--batch-shaping``: each gate's open probability over the batch pulled to a Beta prior
  (:func:`gatekit.batch_shaping_loss` on :attr:`gatekit.GaterNet.last_probs`).

The first three act on the gates the estimator gave (``last_gates``); the budget terms, with
``--budget-gates eval`` or ``both``, on the hard gates evaluation keeps (``last_eval_gates``);
batch shaping on the open probabilities, whose gradient does not vanish where the
estimator saturates.
Distillation from a teacher (``--distill-from``, :mod:`.distill`) is one more term, which
reads the images and the model's logits instead of the gates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import gatekit
from gatekit import GatekitError

from . import models
from .config import RunConfig
from .ramp import Ramp


@dataclass(frozen=True)
class Step:
    """What a term may read of one training step (inside its autocast region)."""

    model: nn.Module  # the GaterNet itself (last_gates, last_probs), or the plain backbone
    images: Tensor
    logits: Tensor  # the model's output for ``images``
    epoch: float  # fractional: steps done / steps per epoch
    epochs: int  # the run's length, over which a ramp without K moves

    @property
    def gates(self) -> Tensor:
        """The gates of this forward pass (:attr:`gatekit.GaterNet.last_gates`)."""
        gates = self.model.last_gates
        assert gates is not None
        return gates

    @property
    def eval_gates(self) -> Tensor:
        """The hard gates evaluation keeps for this pass's logits, straight-through
        (:attr:`gatekit.GaterNet.last_eval_gates`)."""
        gates = self.model.last_eval_gates
        assert gates is not None
        return gates

    @property
    def probs(self) -> Tensor:
        """The gates' open probabilities (:attr:`gatekit.GaterNet.last_probs`)."""
        probs = self.model.last_probs
        assert probs is not None
        return probs


@dataclass(frozen=True)
class Term:
    """One loss: ``weight.at(epoch) * fn(step)``, not computed while its weight is 0."""

    name: str
    weight: Ramp
    fn: Callable[[Step], Tensor]
    config: dict[str, Any]  # what results.json records of it, under ``section``
    section: str = "gate_losses"


class Losses:
    """The terms a run adds to the cross-entropy."""

    def __init__(self, terms: Iterable[Term] = ()) -> None:
        self.terms = list(terms)

    def weights(self, epoch: float, epochs: float) -> dict[str, float]:
        """Each term's weight at ``epoch`` (fractional) of ``epochs``."""
        return {term.name: term.weight.at(epoch, epochs) for term in self.terms}

    def __call__(self, step: Step) -> Tensor:
        """The weighted sum of the terms for this step (float32; 0 without any)."""
        loss = step.logits.new_zeros((), dtype=torch.float32)
        for term in self.terms:
            w = term.weight.at(step.epoch, step.epochs)
            if w != 0.0:
                loss = loss + w * term.fn(step)
        return loss

    def describe(self) -> dict[str, dict[str, Any]]:
        """What ``results.json`` records: per section (``gate_losses``, ``distillation``), the
        configuration of its terms, weights as given (``W``, ``A:B`` or ``A:B:K``)."""
        out: dict[str, dict[str, Any]] = {}
        for term in self.terms:
            out.setdefault(term.section, {}).update(term.config)
        return out


def gate_terms(config: RunConfig, model: nn.Module, image_size: int,
               device: torch.device) -> list[Term]:
    """The gate terms the flags ask for, checked.  The L1 term is always listed:
    ``results.json`` records its weight, 0 by default (when it is never computed)."""
    l1 = config.gate_loss_weight
    terms = [Term("l1", l1, lambda s: gatekit.gate_l1_loss(s.gates), {"l1_weight": str(l1)})]
    rate = config.target_rate
    if rate is not None:
        if not 0.0 <= rate <= 1.0:
            raise GatekitError(f"--target-rate must lie in [0, 1], got {rate}")
        terms.append(Term("target_rate", config.target_rate_weight,
                          lambda s: gatekit.target_rate_loss(s.gates, rate),
                          {"target_rate": rate,
                           "target_rate_weight": str(config.target_rate_weight)}))
    which = config.budget_gates
    budget = config.budget
    if budget is not None:
        if not all(0.0 <= v <= 1.0 for v in (budget.start, budget.end) if v is not None):
            raise GatekitError(f"--budget must lie in [0, 1] (a fraction of the gated convs' "
                               f"FLOPs), got {budget}")
        costs = _costs(model, image_size, device, config.count_downstream)
        terms.append(Term(
            "budget", config.budget_weight,
            lambda s: _budget_loss(which, s, costs, budget.at(s.epoch, s.epochs)),
            # a constant budget stays a number in results.json; a moving one is its A:B:K
            {"budget": budget.start if budget.end is None else str(budget),
             "budget_weight": str(config.budget_weight),
             "budget_gates": config.budget_gates,
             "count_downstream": config.count_downstream}))
    budget_range = config.budget_range
    if budget_range is not None:
        if budget is not None:
            raise GatekitError("--budget and --budget-range both set the budget; pass one: "
                               "--budget for one budget, --budget-range for a model that serves any")
        costs = _costs(model, image_size, device, config.count_downstream)
        terms.append(Term(
            "budget", config.budget_weight,
            # each sample held to the budget it was given (GaterNet.last_budget)
            lambda s: _budget_loss(which, s, costs, s.model.last_budget),
            {"budget_range": str(budget_range), "budget_ends": config.budget_ends,
             "budget_weight": str(config.budget_weight),
             "budget_gates": config.budget_gates,
             "count_downstream": config.count_downstream}))
    shaping, prior = config.batch_shaping, tuple(config.batch_shaping_prior)
    if shaping.active:
        terms.append(Term("batch_shaping", shaping,
                          lambda s: gatekit.batch_shaping_loss(s.probs, *prior),
                          {"batch_shaping_weight": str(shaping),
                           "batch_shaping_prior": list(prior)}))
    return terms


def _budget_loss(which: str, step: Step, costs: Tensor, budget: float | Tensor) -> Tensor:
    """:func:`gatekit.flops_budget_loss` on the gates ``--budget-gates`` names: the training
    gates, the hard gates evaluation keeps, or both terms summed."""
    if which == "train":
        return gatekit.flops_budget_loss(step.gates, costs, budget)
    loss = gatekit.flops_budget_loss(step.eval_gates, costs, budget)
    if which == "both":
        loss = loss + gatekit.flops_budget_loss(step.gates, costs, budget)
    return loss


def _costs(model: nn.Module, image_size: int, device: torch.device, downstream: bool) -> Tensor:
    """Each gate's FLOPs (:func:`gatekit.gate_costs`) at the run's image size, float32."""
    was_training = model.training
    costs = gatekit.gate_costs(model, models.probe(image_size, device), downstream=downstream)
    model.train(was_training)
    return costs.to(device=device, dtype=torch.float32)
