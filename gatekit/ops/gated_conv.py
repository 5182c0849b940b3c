"""``gated_conv2d``: the public entry point of the gated convolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .dispatch import select_implementation
from .inputs import make_inputs

__all__ = ["gated_conv2d"]


def gated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    gate: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    activation: str | None = "relu",
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    in_gate: torch.Tensor | None = None,
    op: str | None = None,
) -> torch.Tensor:
    """A convolution, an affine per-channel map, an activation and a per-sample channel gate, fused.

    Computes, exactly as this plain PyTorch does (:func:`gatekit.ops.gated_conv2d_reference`)::

        x = x * in_gate.repeat_interleave(C_in // in_gate.shape[1], 1)[:, :, None, None]
        y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        y = act(y * scale[:, None, None] + shift[:, None, None])
        y = y * gate.repeat_interleave(C_out // gate.shape[1], 1)[:, :, None, None]

    with each of ``in_gate``, ``bias``, ``scale``, ``shift`` and the activation skipped when
    ``None``.  ``scale``/``shift`` are a BatchNorm folded for inference
    (``weight / sqrt(var + eps)`` and ``bias - mean * scale``).

    Args:
        x: ``(N, C_in, H, W)``; channels-last memory is fastest for the Triton kernels.
        weight: ``(C_out, C_in // groups, kH, kW)``.
        gate: ``(N, C_out)``, or ``(N, C_out // group_size)`` with one gate per group of
            ``group_size`` adjacent output channels.  On CUDA the channels whose gate is 0
            are not computed.
        bias, scale, shift: ``(C_out,)`` each, or ``None``.
        activation: ``"relu"`` or ``None``.
        stride, padding, dilation, groups: as in :func:`torch.nn.functional.conv2d`.
        in_gate: the gate ``(N, C_in)`` or ``(N, C_in // group_size)`` of the layer that
            produced ``x``, when ``x`` is itself gated.  ``x`` is multiplied by it (a no-op
            when ``x`` was already gated with it), and on CUDA input-channel blocks that it
            switches off are skipped.
        op: an implementation name (``"triton"``, ``"reference"``), or ``None`` for the best
            that supports the inputs; see :mod:`gatekit.ops.dispatch`.

    All tensors share one device and one dtype (float16, bfloat16, float32 or float64).
    Differentiable in every tensor argument.  Raises :class:`~gatekit.GatekitError` for
    malformed inputs, and when ``op`` (or, with ``op=None``, every implementation) does not
    support them, listing the reasons.

    >>> import torch, gatekit.ops
    >>> x, w = torch.randn(2, 8, 5, 5), torch.randn(4, 8, 3, 3)
    >>> gate = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # 2 groups of 2 output channels
    >>> y = gatekit.ops.gated_conv2d(x, w, gate, padding=1)
    >>> y.shape, bool(y[0, 2:].eq(0).all()), bool(y[1, :2].eq(0).all())
    (torch.Size([2, 4, 5, 5]), True, True)
    """
    inputs = make_inputs(
        x, weight, gate, bias=bias, scale=scale, shift=shift, in_gate=in_gate,
        activation=activation, stride=stride, padding=padding, dilation=dilation, groups=groups,
    )
    return select_implementation(inputs, op)(inputs)
