"""Losses on gates: the paper's L1 pull, a target open rate, and the expected L0 of hard concrete.

Every loss takes gates (or logits) of shape ``(N, num_gates)`` (any leading shape works:
the last dim indexes gates) and returns a scalar.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._errors import GatekitError
from .estimators import _check_stretch

__all__ = ["expected_l0", "expected_l0_loss", "gate_l1_loss", "target_rate_loss"]


def _acc(x: Tensor) -> Tensor:
    """Accumulate in float32 at least (half-precision sums lose counts), float64 stays."""
    return x if x.dtype == torch.float64 else x.float()


def _check_gates(gates: Tensor, fn: str) -> None:
    if not isinstance(gates, Tensor) or not gates.is_floating_point():
        got = gates.dtype if isinstance(gates, Tensor) else type(gates).__name__
        raise GatekitError(f"{fn} expects a floating-point tensor of gates, got {got}")
    if gates.ndim == 0 or gates.numel() == 0:
        raise GatekitError(f"{fn} expects gates of shape (N, num_gates), got {tuple(gates.shape)}")


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


def expected_l0(
    logits: Tensor, tau: float | Tensor = 2.0 / 3.0, stretch: tuple[float, float] = (-0.1, 1.1)
) -> Tensor:
    """Expected number of non-zero hard concrete gates along the last dim.

    ``sum_j sigmoid(logits_j - tau * log(-low / high))`` (Louizos et al. 2018, eq. 12).

    >>> import torch
    >>> expected_l0(torch.tensor([[-20.0, 20.0]]))
    tensor([1.])
    """
    _check_gates(logits, "expected_l0")
    low, high = _check_stretch(stretch)
    shift = math.log(-low / high)
    return torch.sigmoid(_acc(logits) - tau * shift).sum(-1)


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
    _check_gates(logits, "expected_l0_loss")
    return weight * (expected_l0(logits, tau, stretch) / logits.shape[-1]).mean()
