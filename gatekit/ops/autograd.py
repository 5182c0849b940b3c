"""The backward pass of the gated convolution, shared by every implementation's custom op.

Forward kernels return only the gated output, so the backward recomputes the convolution
``z = conv2d(x * in_gate, weight)`` once (as activation checkpointing does) with PyTorch's own
convolution and then applies the chain rule of the formula by hand:

    u = (z + bias) * scale + shift,   a = act(u),   y = a * gate

The recomputation keeps memory at one saved input per layer and gives the gate its full
gradient ``sum_hw(dy * a)``, which gated-off channels need (their output is zero, but the
straight-through estimators train on this gradient).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# Internal wiring shared by the reference and Triton ops; users call gatekit.ops.gated_conv2d.
__all__: list[str] = []


def _group_sum(per_channel: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum adjacent channels of ``(N, C)`` into ``(N, groups)``."""
    return per_channel.unflatten(1, (groups, -1)).sum(-1)


def gated_conv2d_backward(
    grad: torch.Tensor, args: Sequence[Any], needs: tuple[bool, ...]
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of the gated convolution wrt ``(x, weight, gate, bias, scale, shift, in_gate)``.

    ``args``: the op's twelve arguments, in the order of ``gatekit::gated_conv2d_reference``
    (``x, weight, gate, bias, scale, shift, in_gate, activation, stride, padding, dilation,
    groups``).  ``needs`` says which of the seven tensors' gradients are wanted (the others
    come back as ``None``).

    >>> import torch.nn.functional as F
    >>> x, w, g = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 1, 1), torch.ones(1, 3)
    >>> dy = torch.randn(1, 3, 4, 4)
    >>> args = (x, w, g, None, None, None, None, "none", [1, 1], [0, 0], [1, 1], 1)
    >>> dx, *_ = gated_conv2d_backward(dy, args, (True,) + (False,) * 6)
    >>> torch.allclose(dx, F.conv_transpose2d(dy, w))
    True
    """
    x, weight, gate, bias, scale, shift, in_gate, activation, stride, padding, dilation, groups = args
    need_x, need_w, need_gate, need_bias, need_scale, need_shift, need_in_gate = needs
    c_in, c_out = x.shape[1], weight.shape[0]
    x_gated = x
    if in_gate is not None:
        in_gate_c = in_gate.repeat_interleave(c_in // in_gate.shape[1], dim=1)[:, :, None, None]
        x_gated = x * in_gate_c
    z = torch.nn.functional.conv2d(x_gated, weight, None, stride, padding, dilation, groups)
    zb = z if bias is None else z + bias[:, None, None]
    u = zb if scale is None else zb * scale[:, None, None]
    if shift is not None:
        u = u + shift[:, None, None]
    a = torch.relu(u) if activation == "relu" else u

    gate_c = gate.repeat_interleave(c_out // gate.shape[1], dim=1)[:, :, None, None]
    d_gate = _group_sum((grad * a).sum((2, 3)), gate.shape[1]) if need_gate else None
    du = grad * gate_c
    if activation == "relu":
        du = du * (u > 0)
    d_shift = du.sum((0, 2, 3)) if need_shift else None
    d_scale = (du * zb).sum((0, 2, 3)) if need_scale else None
    dz = du if scale is None else du * scale[:, None, None]
    d_bias = dz.sum((0, 2, 3)) if need_bias else None

    d_x = d_w = d_in_gate = None
    need_dxg = need_x or need_in_gate
    if need_dxg or need_w:
        d_xg, d_w, _ = torch.ops.aten.convolution_backward(
            dz, x_gated, weight, None, stride, padding, dilation, False, [0, 0], groups,
            [need_dxg, need_w, False],
        )
        if need_dxg:
            d_x = d_xg if in_gate is None else d_xg * in_gate_c
            if need_in_gate:
                d_in_gate = _group_sum((d_xg * x).sum((2, 3)), in_gate.shape[1])
    return d_x, d_w, d_gate, d_bias, d_scale, d_shift, d_in_gate


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    x, weight, gate, bias, scale, shift, in_gate, activation, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight, gate, bias, scale, shift, in_gate)
    ctx.conv_args = (activation, stride, padding, dilation, groups)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple:
    tensors = ctx.saved_tensors
    grads = gated_conv2d_backward(grad, (*tensors, *ctx.conv_args), tuple(ctx.needs_input_grad[:7]))
    return (*grads, None, None, None, None, None)


def register_gated_conv_autograd(op: Any) -> None:
    """Give a gated-conv custom op (the schema of ``gatekit::gated_conv2d_reference``) its backward."""
    op.register_autograd(_backward, setup_context=_setup_context)
