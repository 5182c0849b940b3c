"""``gatekit::sliced_conv``: the sliced conv as one opaque custom op, for AOTInductor.

Inductor lowers a convolution itself and needs its channel count as a number; a sliced
conv's count is ``nonzero``'s data-dependent size, and lowering stops with
``GuardOnDataDependentSymNode``.  Registered as a :mod:`torch.library` custom op, the
gather and the convolution run as one call to eager ATen kernels that Inductor does not
look into: its fake kernel says only that the output has ``len(out_idx)`` channels.

:func:`sliced_conv_reference` is the specification (and the op's eager body); it is
also exactly what :class:`gatekit.export.ExportConv` computes inline for ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gather_weight", "sliced_conv", "sliced_conv_reference"]

_CONVS = (F.conv1d, F.conv2d, F.conv3d)


def gather_weight(weight: Tensor, bias: Tensor | None, out_idx: Tensor | None,
                  in_idx: Tensor | None, in_major: bool) -> tuple[Tensor, Tensor | None]:
    """The weight (and bias) of the picked output rows and input columns.

    ``weight`` is ``(out, in, *kernel)``, or ``(in, out, *kernel)`` when ``in_major``
    (then only ``in_idx`` may be given).  Every gather copies contiguous rows where it can:
    runtimes copy one block per index, and a block of one float is slow.
    """
    if in_major:
        return weight.index_select(0, in_idx).transpose(0, 1), bias
    if out_idx is not None and in_idx is not None:
        # One gather of (out, in) pairs from the (out * in, taps) view: no intermediate.
        cols = weight.shape[1]
        flat = (out_idx[:, None] * cols + in_idx[None, :]).flatten()
        w = weight.flatten(2).flatten(0, 1).index_select(0, flat)
        w = w.view(-1, in_idx.shape[0], *weight.shape[2:])
    elif out_idx is not None:
        w = weight.index_select(0, out_idx)
    elif in_idx is not None:
        w = weight.index_select(1, in_idx)
    else:
        w = weight
    if bias is not None and out_idx is not None:
        bias = bias.index_select(0, out_idx)
    return w, bias


def sliced_conv_reference(x: Tensor, weight: Tensor, bias: Tensor | None,
                          out_idx: Tensor | None, in_idx: Tensor | None, stride: list[int],
                          padding: list[int], dilation: list[int], groups: int,
                          in_major: bool) -> Tensor:
    """Convolve ``x`` (whose channels are ``in_idx``'s, when given) with the filters
    ``out_idx`` of ``weight`` (every filter when None)."""
    w, b = gather_weight(weight, bias, out_idx, in_idx, in_major)
    conv = _CONVS[weight.ndim - 3]
    return conv(x, w, b, stride, padding, dilation, groups)


@torch.library.custom_op("gatekit::sliced_conv", mutates_args=())
def sliced_conv(x: Tensor, weight: Tensor, bias: Tensor | None, out_idx: Tensor | None,
                in_idx: Tensor | None, stride: list[int], padding: list[int],
                dilation: list[int], groups: int, in_major: bool) -> Tensor:
    """:func:`sliced_conv_reference` as one opaque op (see the module docstring)."""
    return sliced_conv_reference(x, weight, bias, out_idx, in_idx, stride, padding,
                                 dilation, groups, in_major).contiguous()


@sliced_conv.register_fake
def _(x, weight, bias, out_idx, in_idx, stride, padding, dilation, groups, in_major):
    if out_idx is not None:
        out_c = out_idx.shape[0]
    else:
        out_c = weight.shape[1] if in_major else weight.shape[0]
    kernel = weight.shape[2:]
    spatial = [(size + 2 * p - d * (k - 1) - 1) // s + 1
               for size, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation)]
    return x.new_empty(x.shape[0], out_c, *spatial)
