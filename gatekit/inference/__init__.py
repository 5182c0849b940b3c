"""Inference-time execution of a GaterNet: skipping closed filters on the CPU, fused ops.

- :func:`skip_compute`: a copy of an eval-mode GaterNet that computes only the open
  filters (BatchNorm folded, gated convs and their consumers sliced per gate pattern);
- :func:`fuse_gated_convs`: a copy of an eval-mode GaterNet whose gated conv + BatchNorm +
  ReLU + gate run as one :func:`gatekit.ops.gated_conv2d` call;
- both return a :class:`gatekit.GaterNet` (:class:`InferenceGaterNet`, and its subclass
  :class:`gatekit.SkipComputeNet`) whose ``routes`` hold one :class:`SiteRoute` per site:
  what that site became;
- :func:`fold_batchnorm`: the conv weight and bias equal to ``bn(conv(x))``.

Layout.  Public modules, the parts :mod:`gatekit.export` builds on too (one
implementation each): ``common`` holds what the transforms share (the eval-mode check,
the net copy, the graph clean-up, the returned class, the route mode names, the
gate-to-channel expansion), ``plan`` reads the gated graph (which sites can be sliced,
where their zeros go), ``conv`` is the sliced convolution (BatchNorm folded, the weight
gather, the padded weight layout, the conv functions), ``rewrite`` rewrites the graph,
``batching`` is the seam for batching modes (how a batch of mixed gate patterns runs) and
their one registry.  Private modules: ``_skip`` runs the rewritten graph; one module per
batching mode: ``_pattern``, ``_union``, ``_gather`` (one grouped call per site for the
whole batch), ``_masked`` (every filter, closed ones zeroed), ``_auto`` (one of those per
batch, by the rule in ``_rule``, which :func:`tune_batching` fits to the machine);
``_fuse`` rewrites the graph for the fused op, ``_folding`` holds the BatchNorm algebra;
the rules about graph nodes they share with site finding live in ``gatekit._graph``.

How skipping pays on the CPU (ResNet-50, inner sites, 50% open, batch 1, 2 threads: about
2x the dense gated model; ``benchmarks/skip_inference_cpu.py``): BatchNorm is folded once,
ahead of time; activations stay channels-last, so a 1x1 conv is one GEMM on a view; the
open rows of each weight are gathered per call into contiguous buffers (one gather for
both dimensions of a 3x3 weight); a 1x1 conv whose output is added to a dead residual
accumulates into it; Python work per call is one ``nonzero`` and slicing per site.
"""

# The batching modes, one module each: importing a mode's module registers it in
# batching.BATCHINGS, the one list of modes (skip_compute looks names up there).
from . import _auto, _gather, _masked, _pattern, _union  # noqa: F401
from ._folding import fold_batchnorm
from ._fuse import FusedGatedConv2d, fuse_gated_convs
from ._rule import BatchingChoice, BatchingRule, ModeCost, set_batching_rule, tune_batching
from ._skip import SkipComputeNet, skip_compute
from .common import InferenceGaterNet, SiteRoute

__all__ = [
    "BatchingChoice",
    "BatchingRule",
    "FusedGatedConv2d",
    "InferenceGaterNet",
    "ModeCost",
    "SiteRoute",
    "SkipComputeNet",
    "fold_batchnorm",
    "fuse_gated_convs",
    "set_batching_rule",
    "skip_compute",
    "tune_batching",
]
