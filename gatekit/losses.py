"""Losses on gates: the paper's L1 pull, a target open rate, the expected L0 of hard
concrete, a FLOPs budget, and batch shaping.

Every loss takes gates (or logits, or open probabilities) of shape ``(N, num_gates)`` and
returns a scalar; the first three accept any leading shape (the last dim indexes gates).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._errors import GatekitError
from .estimators import expected_l0  # hard-concrete maths lives beside its estimator

__all__ = [
    "batch_shaping_loss",
    "expected_l0",
    "expected_l0_loss",
    "flops_budget_loss",
    "gate_l1_loss",
    "target_rate_loss",
]


def _acc(x: Tensor) -> Tensor:
    """Accumulate in float32 at least (half-precision sums lose counts), float64 stays."""
    return x if x.dtype == torch.float64 else x.float()


def _check_gates(gates: Tensor, fn: str, what: str = "gates") -> None:
    """``gates``: what the loss takes, named ``what`` in the message (gates, logits, probabilities)."""
    if not isinstance(gates, Tensor) or not gates.is_floating_point():
        got = gates.dtype if isinstance(gates, Tensor) else type(gates).__name__
        raise GatekitError(f"{fn} expects a floating-point tensor of {what}, got {got}")
    if gates.ndim == 0 or gates.numel() == 0:
        raise GatekitError(f"{fn} expects {what} of shape (N, num_gates), got {tuple(gates.shape)}")


def gate_l1_loss(gates: Tensor, weight: float = 1.0) -> Tensor:
    """``weight * ||g||_1 / c`` averaged over samples: GaterNet's pull towards closed gates.

    Gates are non-negative, so this is ``weight`` times the mean open fraction.

    >>> import torch
    >>> gate_l1_loss(torch.tensor([[1.0, 0.0, 1.0, 0.0]]), weight=0.1)
    tensor(0.0500)
    """
    _check_gates(gates, "gate_l1_loss")
    return weight * _acc(gates).abs().mean()


def target_rate_loss(
    gates: Tensor, target: float = 0.5, weight: float = 1.0, *, per_sample: bool = False
) -> Tensor:
    """Squared distance between the open fraction and ``target``.

    By default the open fraction is the batch mean, so single samples may open more or
    fewer gates than the target (gating stays input-dependent); ``per_sample=True``
    pulls every sample's own open fraction to the target.

    >>> import torch
    >>> g = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    >>> target_rate_loss(g, target=0.5)
    tensor(0.)
    >>> target_rate_loss(g, target=0.5, per_sample=True)
    tensor(0.2500)
    """
    _check_gates(gates, "target_rate_loss")
    if not 0.0 <= target <= 1.0:
        raise GatekitError(f"target_rate_loss target must lie in [0, 1], got {target}")
    g = _acc(gates)
    if per_sample:
        rate = g.reshape(-1, g.shape[-1]).mean(-1)
        return weight * (rate - target).pow(2).mean()
    return weight * (g.mean() - target).pow(2)


def expected_l0_loss(
    logits: Tensor,
    weight: float = 1.0,
    tau: float | Tensor = 2.0 / 3.0,
    stretch: tuple[float, float] = (-0.1, 1.1),
) -> Tensor:
    """``weight`` times the expected open fraction of hard concrete gates, averaged over samples.

    >>> import torch
    >>> expected_l0_loss(torch.full((2, 4), 20.0))
    tensor(1.)
    """
    _check_gates(logits, "expected_l0_loss", "logits")
    return weight * (expected_l0(logits, tau, stretch) / logits.shape[-1]).mean()


# --------------------------------------------------------------------------------------
# FLOPs budget
# --------------------------------------------------------------------------------------


def _check_budget(budget: Any, gates: Tensor, fn: str) -> bool:
    """A float budget in [0, 1] (False) or per-sample budgets, one per row of ``gates`` (True)."""
    if isinstance(budget, Tensor):
        if budget.shape != (gates.shape[0],) or not budget.is_floating_point():
            raise GatekitError(
                f"{fn} expects per-sample budgets as a floating tensor of shape "
                f"({gates.shape[0]},), one per row of gates {tuple(gates.shape)}, got "
                f"{budget.dtype} of shape {tuple(budget.shape)}"
            )
        if not torch.compiler.is_compiling() and not bool(((budget >= 0) & (budget <= 1)).all()):
            raise GatekitError(
                f"{fn} expects per-sample budgets in [0, 1], got values from "
                f"{budget.min().item()} to {budget.max().item()}"
            )
        return True
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0.0 <= budget <= 1.0:
        raise GatekitError(
            f"{fn} expects budget as a float in [0, 1] (the fraction of the gated FLOPs to "
            f"keep) or an (N,) tensor of per-sample budgets, got {budget!r}"
        )
    return False


def flops_budget_loss(gates: Tensor, costs: Tensor, budget: float | Tensor) -> Tensor:
    """Squared distance between the cost-weighted open fraction and ``budget``.

    With ``w_g = costs_g / sum_g costs_g`` and ``k_n = sum_g w_g * gates_ng``, the fraction
    of the gated FLOPs sample ``n`` keeps:

    - a float ``budget``: ``(mean_n k_n - budget) ** 2``, the batch's kept fraction pulled
      to the budget (samples may spend more or less; the batch as a whole may not);
    - an ``(N,)`` tensor of per-sample budgets (a model with a budget input):
      ``mean_n (k_n - budget_n) ** 2``, each sample held to its own budget (the budgets
      are targets: no gradient flows into them).

    ``costs`` is typically :func:`gatekit.gate_costs` of the model (FLOPs per image that each gate
    removes); with equal costs this is :func:`target_rate_loss`.  Computed in float32
    (float64 when ``gates`` is float64), on ``gates``' device.

    ``gates``: ``(N, G)`` floating point; ``costs``: ``(G,)``, non-negative, finite, with
    a positive sum; ``budget``: in ``[0, 1]``, a float or a floating ``(N,)`` tensor.

    >>> import torch
    >>> gates = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    >>> costs = torch.tensor([3.0, 1.0])  # (3 * 1 + 1 * 0.5) / 4 = 0.875 kept
    >>> flops_budget_loss(gates, costs, budget=0.5)
    tensor(0.1406)
    >>> flops_budget_loss(gates, costs, budget=torch.tensor([0.75, 1.0]))  # kept: 0.75 and 1
    tensor(0.)
    """
    fn = "flops_budget_loss"
    _check_gates(gates, fn)
    if gates.ndim != 2:
        raise GatekitError(
            f"{fn} expects gates of shape (N, num_gates), got {tuple(gates.shape)}; "
            f"pass model.last_gates (one row per sample)"
        )
    if not isinstance(costs, Tensor) or costs.dtype == torch.bool or costs.is_complex():
        got = costs.dtype if isinstance(costs, Tensor) else type(costs).__name__
        raise GatekitError(
            f"{fn} expects costs as a real tensor of shape ({gates.shape[1]},), got {got}; "
            f"compute them with gatekit.gate_costs(model, example_input)"
        )
    if costs.shape != (gates.shape[1],):
        raise GatekitError(
            f"{fn} expects costs of shape ({gates.shape[1]},), one per gate of gates "
            f"{tuple(gates.shape)}, got {tuple(costs.shape)}; compute them with "
            f"gatekit.gate_costs(model, example_input) for the model that made the gates"
        )
    per_sample = _check_budget(budget, gates, fn)
    c = costs.detach().to(device=gates.device, dtype=torch.float64)
    if not torch.compiler.is_compiling():
        if not bool(torch.isfinite(c).all()) or bool((c < 0).any()):
            raise GatekitError(
                f"{fn} expects finite non-negative costs, got min {c.min().item()} and "
                f"max {c.max().item()}; costs are FLOPs per gate, see gatekit.gate_costs"
            )
        if not c.sum() > 0:
            raise GatekitError(
                f"{fn} expects costs with a positive sum, got all zeros; a budget over "
                f"gates that cost nothing is undefined. Check the costs come from gate_costs"
            )
    g = _acc(gates)
    weights = (c / c.sum()).to(g.dtype)  # normalised in float64 so large FLOP counts stay exact
    if per_sample:
        kept = (g * weights).sum(1)
        return (kept - budget.detach().to(device=g.device, dtype=g.dtype)).pow(2).mean()
    return ((g.mean(0) * weights).sum() - budget).pow(2)


# --------------------------------------------------------------------------------------
# Batch shaping
# --------------------------------------------------------------------------------------

# Bounds of the Beta pdf used as the gradient of the CDF, as in the batch-shaping release:
# the pdf is infinite at 0 (alpha < 1) and 1 (beta < 1) and zero there for alpha, beta > 1.
_PDF_CLIP = (1e-3, 100.0)
_TINY = 1e-300  # Lentz's guard against division by zero (Numerical Recipes' FPMIN)


def _betacf(a: Tensor, b: Tensor, x: Tensor, iterations: int) -> Tensor:
    """Continued fraction of the incomplete beta function by the modified Lentz method
    (Numerical Recipes ``betacf``), run a fixed number of steps, elementwise."""

    def guard(v: Tensor) -> Tensor:
        return torch.where(v.abs() < _TINY, torch.full_like(v, _TINY), v)

    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = torch.ones_like(x)
    d = 1.0 / guard(1.0 - qab * x / qap)
    h = d
    for m in range(1, iterations + 1):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),  # even step
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),  # odd step
        ):
            d = 1.0 / guard(1.0 + aa * d)
            c = guard(1.0 + aa / c)
            h = h * d * c
    return h


def _cf_iterations(alpha: float, beta: float) -> int:
    # The fraction converges in O(sqrt(max(a, b))) steps below the symmetry point; 40 + 2
    # sqrt(max) reaches float64 round-off (< 1e-12 against SciPy) for a, b up to 1e4.
    return 40 + 2 * math.ceil(math.sqrt(max(alpha, beta)))


def _beta_cdf_forward(x: Tensor, alpha: float, beta: float) -> Tensor:
    """Regularised incomplete beta ``I_x(alpha, beta)`` for float64 ``x`` in [0, 1]."""
    swap = x > (alpha + 1.0) / (alpha + beta + 2.0)  # I_x(a, b) = 1 - I_{1-x}(b, a)
    full_a, full_b = torch.full_like(x, alpha), torch.full_like(x, beta)
    a, b = torch.where(swap, full_b, full_a), torch.where(swap, full_a, full_b)
    xx = torch.where(swap, 1.0 - x, x)
    xs = xx.clamp(min=_TINY)  # log(0) would give 0 * inf below; the value at 0 is set after
    log_beta = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    front = torch.exp(a * torch.log(xs) + b * torch.log1p(-xs) - log_beta)
    part = front * _betacf(a, b, xs, _cf_iterations(alpha, beta)) / a
    part = torch.where(xx > 0, part, torch.zeros_like(part))
    return torch.where(swap, 1.0 - part, part).clamp(0.0, 1.0)


def _beta_pdf(x: Tensor, alpha: float, beta: float) -> Tensor:
    """``x^(a-1) (1-x)^(b-1) / B(a, b)``; xlogy keeps ``0^0 = 1`` (a or b equal to 1)."""
    log_beta = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    return torch.exp(
        torch.special.xlogy(alpha - 1.0, x) + torch.special.xlog1py(beta - 1.0, -x) - log_beta
    )


class _BetaCDF(torch.autograd.Function):
    """Beta(alpha, beta) CDF of float64 ``x``, with the pdf clipped to ``_PDF_CLIP`` as its
    gradient, so the gradient stays finite (and non-zero) at exactly 0 and 1."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, alpha: float, beta: float) -> Tensor:
        return _beta_cdf_forward(x, alpha, beta)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, float, float], output: Tensor) -> None:
        x, ctx.alpha, ctx.beta = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return grad * _beta_pdf(x, ctx.alpha, ctx.beta).clamp(*_PDF_CLIP), None, None


def _beta_cdf(x: Tensor, alpha: float, beta: float) -> Tensor:
    """``I_x(alpha, beta)``, the regularised incomplete beta function, for float64 ``x``."""
    return _BetaCDF.apply(x, alpha, beta)


def batch_shaping_loss(probs: Tensor, alpha: float = 0.6, beta: float = 0.4) -> Tensor:
    """Batch shaping (Bejnordi et al., ICLR 2020): pull each gate's distribution over the
    batch towards a Beta(alpha, beta) prior.

    For every gate (column of ``probs``) the batch values are sorted,
    ``x_(1) <= ... <= x_(N)``, and compared with the prior's CDF ``F`` (the regularised
    incomplete beta function) at the empirical quantiles::

        loss = mean_gates (1/N) sum_i (i / (N + 1) - F(x_(i))) ** 2

    which lies in ``[0, 1]``.  The default prior (0.6, 0.4) is U-shaped: each gate should
    be on for some images and off for others, on slightly more often.  Pass
    :attr:`GaterNet.last_probs <gatekit.GaterNet.last_probs>` (open probabilities with a
    gradient where the estimator saturates), not hard gates.

    Numerics: ``F`` is computed in float64 (Lentz's continued fraction, a fixed number of
    steps, ``40 + 2 * ceil(sqrt(max(alpha, beta)))``); the loss is returned in float32
    (float64 for float64 ``probs``).  The gradient of ``F`` is the Beta pdf clipped to
    ``[1e-3, 100]``, as in the authors' release, so it is finite at exactly 0 and 1 (where
    the pdf is infinite or zero); the sort's permutation carries no gradient.

    ``probs``: ``(N, num_gates)`` floating point with ``N >= 2`` and values in ``[0, 1]``
    (checked in eager mode; NaN raises).  ``alpha``, ``beta``: positive.

    >>> import torch
    >>> probs = torch.tensor([[0.0, 0.5], [1.0, 0.5]])
    >>> batch_shaping_loss(probs, alpha=1.0, beta=1.0)  # uniform prior: F(x) = x
    tensor(0.0694)
    """
    fn = "batch_shaping_loss"
    for what, value in (("alpha", alpha), ("beta", beta)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0.0 < value < math.inf
        ):
            raise GatekitError(
                f"{fn} expects {what} as a positive finite number (a Beta prior parameter), "
                f"got {value!r}"
            )
    _check_gates(probs, fn)
    if probs.ndim != 2 or probs.shape[0] < 2:
        raise GatekitError(
            f"{fn} expects probs of shape (N, num_gates) with a batch N >= 2 (it compares "
            f"each gate's distribution over the batch with the prior), got "
            f"{tuple(probs.shape)}; pass model.last_probs of a batch of 2 or more"
        )
    if not torch.compiler.is_compiling():
        inside = (probs >= 0) & (probs <= 1)  # False for NaN
        if not bool(inside.all()):
            bad = probs[~inside]
            raise GatekitError(
                f"{fn} expects probabilities in [0, 1], got {bad.numel()} values outside "
                f"(e.g. {bad[0].item()}); pass open probabilities (model.last_probs), "
                f"not logits"
            )
    n = probs.shape[0]
    order = torch.argsort(probs.detach(), dim=0)
    x = probs.gather(0, order).to(torch.float64)
    cdf = _beta_cdf(x, float(alpha), float(beta))
    target = torch.arange(1, n + 1, device=x.device, dtype=torch.float64) / (n + 1)
    loss = (target[:, None] - cdf).pow(2).mean()
    return loss.to(_acc(probs).dtype)
