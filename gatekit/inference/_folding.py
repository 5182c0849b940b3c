"""Folding an eval-mode BatchNorm into the convolution before it.

``bn(conv(x)) == conv'(x)`` with ``w' = w * s`` and ``b' = (b - mean) * s + beta`` per
output channel, where ``s = gamma / sqrt(running_var + eps)``.  The fold is computed in
float64 and cast back to the weight's dtype, so it adds one rounding per weight.
"""

from __future__ import annotations

import torch
from torch import nn

from .._errors import GatekitError

__all__ = ["fold_batchnorm"]


def foldable_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm that acts as a fixed per-channel affine map.

    That is an eval-mode ``BatchNorm1d/2d/3d`` (or a subclass) holding running statistics.

    >>> foldable_batchnorm(nn.BatchNorm2d(4).eval()), foldable_batchnorm(nn.BatchNorm2d(4))
    (True, False)
    """
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and not module.training
        and module.running_mean is not None
        and module.running_var is not None
    )


def batchnorm_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel ``(scale, shift)`` with ``bn(y) == y * scale + shift`` in eval mode.

    Computed in float64; cast to the dtype of ``bn.running_var``.

    >>> bn = nn.BatchNorm2d(3).eval()
    >>> scale, shift = batchnorm_scale_shift(bn)
    >>> y = torch.randn(2, 3, 4, 4)
    >>> torch.allclose(bn(y), y * scale[:, None, None] + shift[:, None, None], atol=1e-6)
    True
    """
    if not foldable_batchnorm(bn):
        raise GatekitError(
            f"expected an eval-mode BatchNorm with running statistics, got "
            f"{type(bn).__name__} (training={bn.training}); call model.eval() first"
        )
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    dtype = bn.running_var.dtype
    return scale.to(dtype), shift.to(dtype)


def fold_batchnorm(
    conv: nn.Module, bn: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of the single conv equal to ``bn(conv(x))`` (``bn`` None: conv's own).

    The returned tensors are new (detached) and have the conv weight's dtype and device.

    >>> conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4).eval()
    >>> _ = bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    >>> w, b = fold_batchnorm(conv, bn)
    >>> x = torch.randn(1, 3, 8, 8)
    >>> torch.allclose(nn.functional.conv2d(x, w, b), bn(conv(x)), atol=1e-5)
    True
    """
    weight = conv.weight.detach()
    bias = None if conv.bias is None else conv.bias.detach()
    if bn is None:
        return weight.clone(), None if bias is None else bias.clone()
    scale, shift = batchnorm_scale_shift(bn)
    scale, shift = scale.double(), shift.double()
    view = (-1,) + (1,) * (weight.ndim - 1)
    folded_w = weight.double() * scale.view(view)
    folded_b = shift if bias is None else bias.double() * scale + shift
    return folded_w.to(weight.dtype), folded_b.to(weight.dtype)
