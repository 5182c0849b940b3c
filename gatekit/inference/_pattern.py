"""Batching mode ``"pattern"``: one pass per group of samples that share a gate pattern.

Each group runs at its own batch size with exactly its open filters; the outputs go back
in sample order.  Best when patterns differ a lot, and at batch 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._errors import GatekitError
from .batching import Backbone, Batching, GateCounts, Runs, SharedChannels, register

__all__: list[str] = []


@register
class PatternBatching(Batching):
    """Group the samples by gate pattern; run the graph once per group."""

    name = "pattern"
    candidate = True
    summary = ("one pass per group of samples that share a gate pattern, each on exactly "
               "its open filters; best when patterns differ a lot and the model is large, "
               "and at batch 1")

    def runs(self, counts: GateCounts) -> Runs:
        return Runs(counts.pattern_sizes, counts.patterns, torch.ones_like(counts.pattern_sizes))

    def run_mixed(self, backbone: Backbone, x: Any, gates: Tensor) -> Any:
        patterns, group = torch.unique(gates, dim=0, return_inverse=True)
        outputs, members = [], []
        for p in range(patterns.shape[0]):
            idx = (group == p).nonzero().squeeze(1)
            channels = SharedChannels(backbone.open_channels(patterns[p]))
            outputs.append(backbone.run(x.index_select(0, idx), gates.index_select(0, idx), channels))
            members.append(idx)
        return merge(outputs, torch.cat(members))


def merge(outputs: list[Any], order: Tensor) -> Any:
    """Put per-group outputs back in sample order (tensors, and tuples/lists/dicts of them).

    ``order``: the sample number of each row of the concatenated outputs.

    >>> merge([torch.tensor([10, 30]), torch.tensor([20])], torch.tensor([0, 2, 1]))
    tensor([10, 20, 30])
    """
    first = outputs[0]
    if isinstance(first, Tensor):
        stacked = torch.cat(outputs)
        result = torch.empty_like(stacked)
        result[order] = stacked
        return result
    if isinstance(first, (tuple, list)):
        return type(first)(merge([o[i] for o in outputs], order) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: merge([o[k] for o in outputs], order) for k in first}
    raise GatekitError(
        f"skip_compute can merge per-pattern outputs that are tensors, tuples, lists or "
        f"dicts of tensors, got {type(first).__name__}; pass samples that share one gate "
        f"pattern (or one sample) per call"
    )
