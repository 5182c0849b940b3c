"""Batching mode ``"masked"``: every filter computed for the whole batch, each sample's
closed ones zeroed.

The gated model's own arithmetic, in the rewritten graph (BatchNorm folded, no gate
multiplications left at dense sites' producers): no index is built and no weight is cut.
It skips nothing, so it is never the mode to ask for by name to save time; it is there for
``"auto"`` to choose when the samples' patterns differ so much, or the model is so small,
that every skipping mode costs more than it saves: then ``"auto"`` is never slower than the
dense gated model by more than measurement noise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._union import one_pass
from .batching import Backbone, Batching, GateCounts, Runs, register

__all__: list[str] = []


@register
class MaskedBatching(Batching):
    """Run the graph once over every filter; zero each sample's closed filters.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner").eval()
    >>> fast = gatekit.skip_compute(net, batching="masked")
    >>> x, g = torch.randn(2, 3, 32, 32), (torch.rand(2, net.num_gates) < 0.5).float()
    >>> torch.allclose(fast(x, gates=g), net(x, gates=g), atol=1e-4)
    True
    """

    name = "masked"
    candidate = True
    summary = ("one pass computing every filter, each sample's closed ones zeroed (the "
               "dense gated model's arithmetic with BatchNorm folded): it skips nothing, "
               "and is there for \"auto\" when no skipping mode pays")

    def runs(self, counts: GateCounts) -> Runs:
        return Runs.one(counts.batch, counts.full, copies=0.0)

    def run_mixed(self, backbone: Backbone, x: Any, gates: Tensor) -> Any:
        return one_pass(backbone, x, gates, torch.ones_like(gates[0]), sliced=False)
