"""The budget input: a head that reads a per-sample compute budget, and the map that makes
the budget a user asks for the head input that keeps that FLOPs fraction.

- :class:`BudgetHead`: the :class:`gatekit.head.GaterHead` of a model built with
  ``gate_model(..., budget_input=True)``; it adds the budget's three terms to the head;
- :class:`BudgetMap`: the monotone map :func:`gatekit.calibrate_budget` measures and
  installs as ``head.budget_map``, saved in the model's ``state_dict``.

A model without a budget input has a plain :class:`~gatekit.head.GaterHead`: no budget
parameters, no map, no branch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._errors import GatekitError
from .head import GaterHead

__all__ = ["BudgetHead", "BudgetMap"]

_NAMES = ("requested", "knob", "achieved")


def _check_map(requested: Tensor, knob: Tensor, achieved: Tensor, where: str) -> None:
    """The rules of a map: one length >= 2, finite, requested strictly increasing in (0, 1],
    knob non-decreasing, achieved in [0, 1]."""
    fix = ("; calibrate again with gatekit.calibrate_budget" if where != "BudgetMap"
           else "")
    if requested.ndim != 1 or requested.shape[0] < 2 or knob.shape != requested.shape \
            or achieved.shape != requested.shape:
        raise GatekitError(
            f"{where} expects requested, knob and achieved as 1-d tensors of one length "
            f">= 2, got shapes {tuple(requested.shape)}, {tuple(knob.shape)} and "
            f"{tuple(achieved.shape)}{fix}")
    for name, t in zip(_NAMES, (requested, knob, achieved)):
        if not bool(torch.isfinite(t).all()):
            raise GatekitError(f"{where} expects finite {name} values, got {t.tolist()}{fix}")
    if not bool((requested[1:] > requested[:-1]).all()):
        raise GatekitError(
            f"{where} expects strictly increasing requested budgets, got "
            f"{requested.tolist()}{fix}")
    if not bool(((requested > 0) & (requested <= 1)).all()):
        raise GatekitError(
            f"{where} expects requested budgets in (0, 1] (fractions of the FLOPs), got "
            f"{requested.min().item()} to {requested.max().item()}{fix}")
    if not bool((knob[1:] >= knob[:-1]).all()):
        raise GatekitError(
            f"{where} expects knob values that never decrease (a larger budget never "
            f"asks the head for less), got {knob.tolist()}{fix}")
    if not bool(((achieved >= -1e-6) & (achieved <= 1 + 1e-6)).all()):
        raise GatekitError(
            f"{where} expects achieved fractions in [0, 1], got {achieved.min().item()} "
            f"to {achieved.max().item()}{fix}")


class BudgetMap(nn.Module):
    """A monotone piecewise-linear map from a requested budget to the head's budget input.

    ``requested`` ``(K,)`` strictly increasing in (0, 1], ``knob`` ``(K,)`` non-decreasing,
    ``K >= 2``: ``forward(b)`` interpolates linearly between the knots and holds the end
    values outside them.  ``achieved`` ``(K,)`` records the mean fraction the calibration
    images kept at each knot's knob (where a requested budget lies below what the model can
    reach, achieved is above it: read it before trusting the map there).  All three are
    buffers, saved in the model's ``state_dict``.  Loading checks the same rules (a
    reversed knob, say, raises :class:`gatekit.GatekitError`) and takes the state's knot
    count, whatever the map had before.

    >>> import torch
    >>> m = BudgetMap(torch.tensor([0.2, 0.6, 1.0]), torch.tensor([0.0, 0.5, 1.0]))
    >>> m(torch.tensor([0.1, 0.4, 0.8, 1.0]))
    tensor([0.0000, 0.2500, 0.7500, 1.0000])
    """

    requested: Tensor
    knob: Tensor
    achieved: Tensor

    def __init__(self, requested: Tensor, knob: Tensor, achieved: Tensor | None = None):
        super().__init__()
        requested = torch.as_tensor(requested, dtype=torch.float32).detach().clone()
        knob = torch.as_tensor(knob, dtype=torch.float32).detach().clone()
        achieved = (requested.clone() if achieved is None
                    else torch.as_tensor(achieved, dtype=torch.float32).detach().clone())
        _check_map(requested, knob, achieved, "BudgetMap")
        self.register_buffer("requested", requested)
        self.register_buffer("knob", knob)
        self.register_buffer("achieved", achieved)

    @classmethod
    def placeholder(cls, knots: int = 2) -> BudgetMap:
        """An identity map of ``knots`` knots, made to load a saved map into."""
        grid = torch.arange(1, max(knots, 2) + 1, dtype=torch.float32) / max(knots, 2)
        return cls(grid, grid)

    def forward(self, budget: Tensor) -> Tensor:
        r, k = self.requested.to(budget.dtype), self.knob.to(budget.dtype)
        # The knots below each budget, counted with a broadcast comparison: the index
        # torch.searchsorted(r, budget) gives (left side), written with ops every exporter
        # lowers (the ONNX exporter has no searchsorted; a calibrated model did not export).
        # The (..., K) comparison is small: K is the calibration's budget count (100 by
        # default), against one head evaluation per image.
        hi = (r < budget.unsqueeze(-1)).sum(-1).clamp(1, r.shape[0] - 1)
        r0, r1, k0, k1 = r[hi - 1], r[hi], k[hi - 1], k[hi]
        t = ((budget - r0) / (r1 - r0)).clamp(0.0, 1.0)
        return k0 + t * (k1 - k0)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        keys = [prefix + name for name in _NAMES]
        if all(k in state_dict for k in keys):
            saved = [state_dict[k].detach().float().cpu() for k in keys]
            _check_map(*saved, where=f"loading {prefix.rstrip('.') or 'a BudgetMap'}")
            for name, value in zip(_NAMES, saved):  # take the saved knot count
                mine = getattr(self, name)
                if mine.shape != value.shape:
                    setattr(self, name, mine.new_empty(value.shape))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return (f"knots={self.requested.shape[0]}, requested {self.requested[0].item():.3g} to "
                f"{self.requested[-1].item():.3g}")


class BudgetHead(GaterHead):
    """A :class:`~gatekit.head.GaterHead` that also reads a per-sample budget ``b`` in (0, 1].

    One trained model for any budget.  The budget enters as the feature ``u = 2b - 1``,
    three times::

        logits = fc2(ReLU(BN(fc1(f)) + budget_embed(u))) + budget_gate(u) + budget_scale * u

    - ``budget_scale * u``, one learned scalar: a shift of every logit, a threshold that
      closes the gates the head ranks lowest for this image first as the budget falls.
      Every gate's gradient adds into this one number, so it learns within tens of steps;
    - ``budget_gate(u)``, one slope per gate (a linear map without bias: the per-gate term
      gives gate ``j`` the shift ``budget_gate.weight[j, 0] * u``), so that each gate can move
      its own threshold.
      Alone it does not suffice: a gate's share of the budget loss's gradient is its share of
      the cost (about 1/num_gates), and a 336-gate ResNet-20 head trained with SGD at
      lr 0.1 kept the same open fraction at budgets 0.3 and 1.0 after 300 steps;
    - ``budget_embed(u)`` added to the bottleneck, so that the image and the budget interact.

    All three start at zero: at initialisation the head computes what the head without a
    budget computes.  The trunk runs once; only the head sees the budget.

    ``budget_map`` (None until :func:`gatekit.calibrate_budget` installs one) is a
    :class:`BudgetMap`: in eval mode, ``forward`` maps each requested budget to the head
    input that kept that FLOPs fraction on calibration images.  In training mode the map
    is bypassed: the head reads the budget itself, as it did when it was trained, so that
    fine-tuning a calibrated model trains the head the way it was trained, not through a
    map measured on the weights before (which the training makes stale: calibrate again
    afterwards).  :meth:`logits` takes the head input itself.  Loading a ``state_dict``
    that holds a map makes one of the saved size (see :class:`BudgetMap`).

    >>> import torch
    >>> head = BudgetHead(64, 336)
    >>> head(torch.randn(2, 64), torch.tensor([0.3, 0.9])).shape
    torch.Size([2, 336])
    """

    budget_map: BudgetMap | None

    def __init__(self, in_features: int, num_gates: int, bottleneck: int = 8, **options: Any):
        """``options``: the keyword arguments of :class:`~gatekit.head.GaterHead`
        (``batchnorm``, ``init_bias``, ``device``, ``dtype``)."""
        super().__init__(in_features, num_gates, bottleneck, **options)
        weight = self.fc2.weight  # the budget's layers live where the head's do
        kw: dict[str, Any] = {"device": weight.device, "dtype": weight.dtype}
        self.budget_embed = nn.Linear(1, bottleneck, **kw)
        self.budget_gate = nn.Linear(1, num_gates, bias=False, **kw)
        self.budget_scale = nn.Parameter(torch.zeros((), **kw))
        self.budget_map = None
        with torch.no_grad():
            for p in (self.budget_embed.weight, self.budget_embed.bias, self.budget_gate.weight):
                p.zero_()

    def forward(self, features: Tensor, budget: Tensor) -> Tensor:  # type: ignore[override]
        if self.budget_map is not None and not self.training:
            budget = self.budget_map(budget)
        return self.logits(features, budget)

    def logits(self, features: Tensor, knob: Tensor) -> Tensor:
        """The logits at head input ``knob`` ``(N,)``, bypassing ``budget_map`` (what
        :func:`gatekit.calibrate_budget` searches over)."""
        hidden = self.hidden(features)
        u = (2.0 * knob.to(hidden.dtype) - 1.0).unsqueeze(1)
        return (self.fc2(self.relu(hidden + self.budget_embed(u))) + self.budget_gate(u)
                + self.budget_scale * u)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A calibrated model's state holds its BudgetMap: make one to load into (BudgetMap's
        # own loading checks the saved map and takes its knot count).
        if self.budget_map is None and f"{prefix}budget_map.requested" in state_dict:
            self.budget_map = BudgetMap.placeholder().to(self.fc2.weight.device)
            self.budget_map.train(self.training)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return "budget_input=True"
