"""Inference-time execution of a GaterNet: skipping closed filters on the CPU, fused ops.

- :func:`skip_compute`: a copy of an eval-mode GaterNet that computes only the open
  filters (BatchNorm folded, gated convs and their consumers sliced per gate pattern);
- :func:`fuse_gated_convs`: a copy of an eval-mode GaterNet whose gated conv + BatchNorm +
  ReLU + gate run as one :func:`gatekit.ops.gated_conv2d` call;
- :func:`fold_batchnorm`: the conv weight and bias equal to ``bn(conv(x))``.
"""

from .folding import fold_batchnorm
from .fuse import FusedGatedConv2d, fuse_gated_convs
from .skip import SkipComputeNet, skip_compute

__all__ = [
    "FusedGatedConv2d",
    "SkipComputeNet",
    "fold_batchnorm",
    "fuse_gated_convs",
    "skip_compute",
]
