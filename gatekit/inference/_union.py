"""Batching mode ``"union"``: one pass over the filters open in any sample.

Per site, the filters open in at least one sample are computed for the whole batch and
each sample's closed ones zeroed (``SharedChannels.masks``).  Best for trained gaters whose
gates mostly agree across samples: always-off filters are skipped at the full batch size.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .batching import Backbone, Batching, GateCounts, Runs, SharedChannels, register
from .common import per_channel

__all__: list[str] = []


@register
class UnionBatching(Batching):
    """Run the graph once, on each site's filters open in any sample."""

    name = "union"
    candidate = True
    summary = ("one pass computing, per site, the filters open in any sample, zeroing "
               "them per sample; best when the samples' gates mostly agree (trained "
               "gaters): always-off filters are skipped at the full batch size")

    def runs(self, counts: GateCounts) -> Runs:
        return Runs.one(counts.batch, counts.union)

    def run_mixed(self, backbone: Backbone, x: Any, gates: Tensor) -> Any:
        return one_pass(backbone, x, gates, (gates != 0).any(0))


def one_pass(backbone: Backbone, x: Any, gates: Tensor, computed: Tensor, *,
             sliced: bool = True) -> Any:
    """Run the batch once, computing at each site the channels of the gates ``computed``
    (``(num_gates,)``) and zeroing each sample's closed ones among them.  ``sliced=False``:
    every channel is computed (``computed`` should then be all ones)."""
    idx = backbone.open_channels(computed)
    channels = SharedChannels(idx if sliced else [None] * len(idx), masks(backbone, gates, idx))
    return backbone.run(x, gates, channels)


def masks(
    backbone: Backbone, gates: Tensor, open_channels: list[Tensor | None]
) -> list[Tensor | None]:
    """Per site, the samples' gates ``(N, k)`` of the ``k`` channels computed (None: all 1).

    >>> import torch
    >>> from types import SimpleNamespace
    >>> site = SimpleNamespace(offset=0, stop=3, group_size=1)
    >>> gates = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    >>> masks(SimpleNamespace(sites=(site,)), gates, [torch.tensor([0, 1, 2])])[0].tolist()
    [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    """
    result: list[Tensor | None] = []
    for site, idx in zip(backbone.sites, open_channels):
        if idx is None:
            result.append(None)
            continue
        mask = per_channel(gates[:, site.offset : site.stop], site.group_size).index_select(1, idx)
        result.append(None if bool(mask.all()) else mask)
    return result
