"""Inference-time execution of a GaterNet: skipping closed filters on the CPU, fused ops.

- :func:`skip_compute`: a copy of an eval-mode GaterNet that computes only the open
  filters (BatchNorm folded, gated convs and their consumers sliced per gate pattern);
- :func:`fold_batchnorm`: the conv weight and bias equal to ``bn(conv(x))``.
"""

from .folding import fold_batchnorm
from .skip import SkipComputeNet, skip_compute

__all__ = ["SkipComputeNet", "fold_batchnorm", "skip_compute"]
