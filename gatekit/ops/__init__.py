"""Gated convolution ops: ``act(conv2d(x, w, b) * scale + shift) * gate`` in one call.

- :func:`gated_conv2d`: the op, dispatched to the best implementation that fits;
- :func:`gated_conv2d_reference`: its plain PyTorch definition (the equivalent code);
- :data:`IMPLEMENTATIONS`, :func:`get_implementation`, :func:`select_implementation`: what
  each implementation supports and why it does not fit given inputs;
- :func:`make_inputs`: the validation every call goes through.

Importing this package imports neither Triton nor CUDA; the Triton kernels load on first use.

>>> import torch, gatekit.ops
>>> x, w, gate = torch.randn(1, 3, 4, 4), torch.randn(2, 3, 1, 1), torch.ones(1, 2)
>>> torch.allclose(gatekit.ops.gated_conv2d(x, w, gate), torch.relu(torch.conv2d(x, w)))
True
"""

from .dispatch import IMPLEMENTATIONS, Implementation, get_implementation, select_implementation
from .gated_conv import gated_conv2d
from .inputs import GatedConvInputs, make_inputs
from .reference import expand_gate, gated_conv2d_reference

__all__ = [
    "IMPLEMENTATIONS",
    "GatedConvInputs",
    "Implementation",
    "expand_gate",
    "gated_conv2d",
    "gated_conv2d_reference",
    "get_implementation",
    "make_inputs",
    "select_implementation",
]
