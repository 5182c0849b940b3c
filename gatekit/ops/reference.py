"""The plain PyTorch definition of the gated convolution, and its custom op.

:func:`gated_conv2d_reference` *is* the specification: every other implementation must
compute what it computes.  It is also registered as ``torch.ops.gatekit.gated_conv2d_reference``
(with the shared backward of :mod:`gatekit.ops.autograd`) and as the ``"reference"``
implementation of the dispatcher, used wherever no faster one fits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .autograd import register_gated_conv_autograd

__all__ = ["expand_gate", "gated_conv2d_reference"]


def expand_gate(gate: torch.Tensor, channels: int) -> torch.Tensor:
    """Repeat each of a grouped gate's ``G`` entries over its ``channels // G`` adjacent channels.

    >>> expand_gate(torch.tensor([[1.0, 0.0]]), 4)
    tensor([[1., 1., 0., 0.]])
    """
    return gate.repeat_interleave(channels // gate.shape[1], dim=1)


def gated_conv2d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    gate: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    in_gate: torch.Tensor | None = None,
    activation: str | None = "relu",
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """``act(conv2d(x * in_gate, weight, bias) * scale + shift) * gate``, in plain PyTorch.

    This is the equivalent code of :func:`gatekit.ops.gated_conv2d` (no validation: call
    that for checked inputs).  Gates are broadcast over space and, when grouped, over
    their adjacent channels; every elementwise step runs in the input dtype.

    >>> x, w = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3)
    >>> gate = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # 2 groups of 2 channels
    >>> y = gated_conv2d_reference(x, w, gate, padding=(1, 1))
    >>> expected = F.relu(F.conv2d(x, w, padding=1)) * gate.repeat_interleave(2, 1)[:, :, None, None]
    >>> torch.equal(y, expected)
    True
    """
    if in_gate is not None:
        x = x * expand_gate(in_gate, x.shape[1])[:, :, None, None]
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if scale is not None:
        y = y * scale[:, None, None]
    if shift is not None:
        y = y + shift[:, None, None]
    if activation == "relu":
        y = F.relu(y)
    return y * expand_gate(gate, y.shape[1])[:, :, None, None]


def _reference_body(
    x: torch.Tensor,
    weight: torch.Tensor,
    gate: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    in_gate: torch.Tensor | None,
    activation: str,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    # The op's schema spells "no activation" as "none": schemas have no optional strings.
    return gated_conv2d_reference(
        x, weight, gate, bias, scale, shift, in_gate, None if activation == "none" else activation,
        tuple(stride), tuple(padding), tuple(dilation), groups,
    )


_reference_op = torch.library.custom_op(
    "gatekit::gated_conv2d_reference", _reference_body, mutates_args=()
)
# The formula runs on fake tensors too, so it is its own shape (and stride) function.
_reference_op.register_fake(_reference_body)
register_gated_conv_autograd(_reference_op)
