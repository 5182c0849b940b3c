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
from torch import Tensor

from .._graph import conv_output_size
from ..inference.conv import CONV_FUNCTIONS, gather_weight

__all__ = ["conv_weights", "sliced_conv", "sliced_conv_reference"]


def conv_weights(weight: Tensor, bias: Tensor | None, out_idx: Tensor | None,
                 in_idx: Tensor | None, in_major: bool) -> tuple[Tensor, Tensor | None]:
    """The weight (and bias) of the picked output rows and input columns, in conv layout.

    ``weight`` is ``(out, in, *kernel)``, or ``(in, out, *kernel)`` when ``in_major``
    (then only ``in_idx`` may be given: its rows are gathered, then transposed back).  The
    gather is skip_compute's (``gather_weight`` in ``gatekit/inference/conv.py``).
    """
    w, b = gather_weight(weight, bias, out_idx, in_idx, in_major=in_major)
    return (w.transpose(0, 1) if in_major else w), b


def sliced_conv_reference(x: Tensor, weight: Tensor, bias: Tensor | None,
                          out_idx: Tensor | None, in_idx: Tensor | None, stride: list[int],
                          padding: list[int], dilation: list[int], groups: int,
                          in_major: bool) -> Tensor:
    """Convolve ``x`` (whose channels are ``in_idx``'s, when given) with the filters
    ``out_idx`` of ``weight`` (every filter when None)."""
    w, b = conv_weights(weight, bias, out_idx, in_idx, in_major)
    conv = CONV_FUNCTIONS[weight.ndim - 3]
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
    spatial = conv_output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    return x.new_empty(x.shape[0], out_c, *spatial)
