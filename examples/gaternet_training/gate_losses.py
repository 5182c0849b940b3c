"""The gate losses a run adds to the cross-entropy, each weighted by a :class:`Ramp`.

- ``--gate-loss-weight``: GaterNet's L1 pull towards closed gates (:func:`gatekit.gate_l1_loss`);
- ``--target-rate``: the batch's open fraction pulled to a rate (:func:`gatekit.target_rate_loss`);
- ``--budget``: the batch's FLOPs-weighted open fraction pulled to a budget
  (:func:`gatekit.flops_budget_loss`, costs from :func:`gatekit.gate_costs` at the training
  image size); the budget itself may move (``1:0.56:5``, a :class:`Ramp`);
- ``--batch-shaping``: each gate's open probability over the batch pulled to a Beta prior
  (:func:`gatekit.batch_shaping_loss` on :attr:`gatekit.GaterNet.last_probs`).

The first three act on the gates the estimator gave (``last_gates``), batch shaping on the
open probabilities, whose gradient does not vanish where the estimator saturates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import gatekit
from gatekit import GatekitError

from . import models
from .config import RunConfig
from .ramp import Ramp


def as_ramp(value: Any) -> Ramp:
    return value if isinstance(value, Ramp) else Ramp(float(value))


class GateLosses:
    """Computes the weighted sum of the configured gate losses for one training step."""

    def __init__(self, config: RunConfig, model: nn.Module, image_size: int,
                 device: torch.device) -> None:
        self.l1 = as_ramp(config.gate_loss_weight)
        self.target_rate = config.target_rate
        self.target_rate_weight = as_ramp(config.target_rate_weight)
        self.budget: Ramp | None = as_ramp(config.budget) if config.budget is not None else None
        self.budget_weight = as_ramp(config.budget_weight)
        shaping = as_ramp(config.batch_shaping)
        self.batch_shaping = shaping if shaping.active else None
        self.prior = tuple(config.batch_shaping_prior)
        self.count_downstream = config.count_downstream
        if self.target_rate is not None and not 0.0 <= self.target_rate <= 1.0:
            raise GatekitError(f"--target-rate must lie in [0, 1], got {self.target_rate}")
        if self.budget is not None and not all(
                0.0 <= v <= 1.0 for v in (self.budget.start, self.budget.end) if v is not None):
            raise GatekitError(f"--budget must lie in [0, 1] (a fraction of the gated convs' "
                               f"FLOPs), got {self.budget}")
        self.costs: Tensor | None = None
        if self.budget is not None:
            was_training = model.training
            x = models.probe(image_size, device)
            self.costs = gatekit.gate_costs(model, x, downstream=config.count_downstream).to(
                device=device, dtype=torch.float32)
            model.train(was_training)

    @property
    def active(self) -> bool:
        return bool(self.l1.active or self.target_rate is not None or self.budget is not None
                    or self.batch_shaping is not None)

    def weights(self, epoch: float, total: float) -> dict[str, float]:
        """Each active loss's weight at ``epoch`` (fractional)."""
        out = {}
        if self.l1.active:
            out["l1"] = self.l1.at(epoch, total)
        if self.target_rate is not None:
            out["target_rate"] = self.target_rate_weight.at(epoch, total)
        if self.budget is not None:
            out["budget"] = self.budget_weight.at(epoch, total)
        if self.batch_shaping is not None:
            out["batch_shaping"] = self.batch_shaping.at(epoch, total)
        return out

    def __call__(self, model: gatekit.GaterNet, epoch: float, total: float) -> Tensor:
        gates = model.last_gates
        assert gates is not None
        loss = gates.new_zeros((), dtype=torch.float32)
        for name, w in self.weights(epoch, total).items():
            if w == 0.0:
                continue
            if name == "l1":
                term = gatekit.gate_l1_loss(gates)
            elif name == "target_rate":
                term = gatekit.target_rate_loss(gates, self.target_rate)
            elif name == "budget":
                term = gatekit.flops_budget_loss(gates, self.costs, self.budget.at(epoch, total))
            else:
                probs = model.last_probs
                assert probs is not None
                term = gatekit.batch_shaping_loss(probs, *self.prior)
            loss = loss + w * term
        return loss

    def describe(self) -> dict[str, Any]:
        """The configuration, for ``results.json``: weights as given (``W``, ``A:B`` or ``A:B:K``)."""
        out: dict[str, Any] = {"l1_weight": str(self.l1)}
        if self.target_rate is not None:
            out.update(target_rate=self.target_rate, target_rate_weight=str(self.target_rate_weight))
        if self.budget is not None:
            # a constant budget stays a number in results.json; a moving one is its A:B:K
            budget = self.budget.start if self.budget.end is None else str(self.budget)
            out.update(budget=budget, budget_weight=str(self.budget_weight),
                       count_downstream=self.count_downstream)
        if self.batch_shaping is not None:
            out.update(batch_shaping_weight=str(self.batch_shaping),
                       batch_shaping_prior=list(self.prior))
        return out
