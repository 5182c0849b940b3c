"""Calibrating a budget-input GaterNet: the budget a user asks for is the FLOPs it gets.

A model trained with per-sample budgets (``gate_model(..., budget_input=True)``) learns a
knob, not a contract: the squared budget loss pulls each sample's kept fraction towards
its budget, the task loss pulls the other way, and the two settle off the diagonal
(a ResNet-20 trained for budgets 0.3 to 1.0 kept 41% of its backbone FLOPs at budget 0.3,
and 76% at 0.7).  :func:`calibrate_budget` measures, on images the user provides, the
mean FLOPs fraction the model keeps at each value of the knob, and installs the inverse
as a :class:`gatekit.budget.BudgetMap` in the model's head: from then on ``model(x, budget=b)`` feeds the
head the knob value that kept the fraction ``b`` on the calibration images.

What the fraction is of is the caller's choice (``dense_flops``): by default the gated
FLOPs (the unit the budget loss trains in), or, given the backbone's dense FLOPs, the
whole backbone's (what a FLOPs budget of the model usually means).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import GatekitError
from .budget import BudgetMap
from .gater import GaterNet

__all__ = ["calibrate_budget"]


def _inputs(batches: Iterable[Any]) -> Iterable[Tensor]:
    for i, batch in enumerate(batches):
        x = batch[0] if isinstance(batch, tuple | list) else batch
        if not isinstance(x, Tensor):
            raise GatekitError(
                f"calibrate_budget expects batches of input tensors (or (inputs, labels) "
                f"pairs), got {type(x).__name__} in batch {i}")
        yield x


def _checked(model: Any, costs: Any, dense_flops: float | None, budgets: Tensor | None,
             knob_range: tuple[float, float], steps: Any) -> tuple[Tensor, float, Tensor]:
    """calibrate_budget's arguments checked: the costs (float64, CPU), the dense FLOPs and
    the requested budgets (ascending)."""
    fn = "calibrate_budget"
    if not isinstance(model, GaterNet) or not model.budget_input:
        raise GatekitError(
            f"{fn} expects a GaterNet with a budget input (gatekit.gate_model(..., "
            f"budget_input=True)), got {type(model).__name__}"
            + ("" if not isinstance(model, GaterNet) else " without one"))
    if not isinstance(costs, Tensor) or costs.shape != (model.num_gates,) \
            or not costs.is_floating_point():
        got = tuple(costs.shape) if isinstance(costs, Tensor) else type(costs).__name__
        raise GatekitError(
            f"{fn} expects costs as a floating tensor of shape ({model.num_gates},), one per "
            f"gate, got {got}; compute them with gatekit.gate_costs(model, example_input)")
    c = costs.detach().double().cpu()
    if not bool(torch.isfinite(c).all()) or bool((c < 0).any()) or not c.sum() > 0:
        raise GatekitError(f"{fn} expects finite non-negative costs with a positive sum")
    dense = float(c.sum()) if dense_flops is None else float(dense_flops)
    if not dense >= float(c.sum()):
        raise GatekitError(
            f"{fn} expects dense_flops >= the gates' summed costs ({float(c.sum()):.6g}): "
            f"the FLOPs with every gate open include what the gates can remove; got {dense_flops!r}")
    lo, hi = (float(v) for v in knob_range)
    if not lo < hi or isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise GatekitError(
            f"{fn} expects knob_range (lo, hi) with lo < hi and an int steps >= 2, got "
            f"{knob_range!r} and {steps!r}")
    requested = (torch.linspace(0.01, 1.0, 100) if budgets is None
                 else torch.as_tensor(budgets, dtype=torch.float32).flatten().sort().values)
    if requested.numel() < 2 or not bool(((requested > 0) & (requested <= 1)).all()) \
            or not bool((requested[1:] > requested[:-1]).all()):
        raise GatekitError(
            f"{fn} expects at least two distinct budgets in (0, 1], got {requested.tolist()}")
    return c, dense, requested


def _inverse(grid: Tensor, measured: Tensor, requested: Tensor) -> Tensor:
    """Per requested budget, the knob where the running maximum of ``measured`` (the kept
    fraction at each knob of ``grid``) first reaches it, interpolated (see
    :func:`calibrate_budget`); non-decreasing, float64."""
    mono = torch.cummax(measured, 0).values
    knob = torch.empty(requested.shape[0], dtype=torch.float64)
    for i, r in enumerate(requested.double()):
        r = r - 1e-6  # budgets are float32: 0.05 is 0.0500000007 and 1 / 20 must reach it
        reached = torch.nonzero(mono >= r)
        if reached.numel() == 0:  # above what any knob keeps: the first that keeps the most
            knob[i] = grid[int(torch.nonzero(mono >= mono[-1])[0])]
            continue
        j = int(reached[0])
        if j == 0:
            knob[i] = grid[0]
            continue
        f0, f1 = mono[j - 1], mono[j]
        knob[i] = grid[j - 1] + (r - f0) / (f1 - f0) * (grid[j] - grid[j - 1])
    return torch.cummax(knob, 0).values


@torch.no_grad()
def calibrate_budget(
    model: nn.Module,
    batches: Iterable[Any],
    costs: Tensor,
    *,
    dense_flops: float | None = None,
    budgets: Tensor | None = None,
    knob_range: tuple[float, float] = (-0.5, 1.5),
    steps: int = 201,
) -> BudgetMap:
    """Make ``model(x, budget=b)`` keep, on average, the fraction ``b`` of the FLOPs.

    ``model`` is a :class:`gatekit.GaterNet` with a budget input; ``batches`` yields input
    tensors (or ``(inputs, labels)`` pairs), images the model has not been tested on
    (training images serve); ``costs`` ``(num_gates,)`` are the FLOPs per image each gate
    removes (:func:`gatekit.gate_costs`, with ``downstream`` as the user counts).  A sample
    with hard gates ``g`` keeps the fraction::

        kept(g) = (dense_flops - sum_j costs_j * (1 - g_j)) / dense_flops

    ``dense_flops`` defaults to ``costs.sum()`` (the fraction of the gated FLOPs, the
    budget loss's unit); pass the backbone's FLOPs per image with every gate open to
    calibrate in fractions of the whole backbone.

    The gater's trunk runs once per image, in eval mode; the head then runs at ``steps``
    knob values evenly spaced over ``knob_range`` (values outside the training budgets
    extrapolate the head: ``achieved`` says whether that reached the fraction), and
    ``F(knob)``, the mean kept fraction of the images under the eval-mode (hard) gates, is
    made non-decreasing (a running maximum).  For each requested budget ``r`` in
    ``budgets`` (default 100 values, 0.01 to 1.0) the knob is where ``F`` first reaches
    ``r``, linearly interpolated between the two grid points around it; below ``F``'s
    smallest value it is the range's low end, above its largest the first knob that reaches
    that.  The map is installed as ``model.head.budget_map`` (a :class:`~gatekit.budget.BudgetMap`, replacing
    any earlier one; ``model.head.budget_map = None`` removes it) and returned, with
    ``achieved``: ``F`` measured again at each mapped knob.  The model's train/eval flags are
    restored.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner", budget_input=True)
    >>> costs = gatekit.gate_costs(net, torch.zeros(1, 3, 32, 32))
    >>> m = gatekit.calibrate_budget(net, [torch.randn(8, 3, 32, 32)], costs)
    >>> net.head.budget_map is m, tuple(m.requested.shape)
    (True, (100,))
    """
    c, dense, requested = _checked(model, costs, dense_flops, budgets, knob_range, steps)
    lo, hi = (float(v) for v in knob_range)
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        features = [model.gater(x) for x in _inputs(batches)]
        if not features:
            raise GatekitError("calibrate_budget got no batches; pass calibration images")
        f = torch.cat(features)

        def kept(knob: float) -> float:
            b = torch.full((f.shape[0],), knob, device=f.device)
            g = model.estimator(model.head.logits(f, b)).double().cpu()
            return float(((dense - (1.0 - g) @ c) / dense).mean())

        grid = torch.linspace(lo, hi, steps, dtype=torch.float64)
        measured = torch.tensor([kept(float(k)) for k in grid], dtype=torch.float64)
        knob = _inverse(grid, measured, requested)
        achieved = torch.tensor([kept(float(k)) for k in knob])
    finally:
        for m, training in flags.items():
            m.train(training)
    budget_map = BudgetMap(requested, knob.float(), achieved).to(f.device)
    budget_map.train(model.head.training)
    model.head.budget_map = budget_map
    return budget_map
