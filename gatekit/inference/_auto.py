"""Batching mode ``"auto"``: per batch, the mode the rule (``_rule``) estimates cheapest.

The candidates are the registered modes with ``candidate = True`` (``"pattern"``,
``"union"``, ``"gather"``, ``"masked"``); ``"masked"`` skips nothing, so that a batch on
which every skipping mode costs more than it saves runs as the dense gated model does.
The choice is a function of the gates, the model's conv geometry for the input's sample
shape, the thread count and the process-wide rule (:func:`gatekit.tune_batching` fits it
to this machine): nothing is timed here, and nothing about the machine is kept.  The only
thing kept is the conv geometry per sample shape, a pure function of the model, left out
of copies and pickles.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._rule import BatchingChoice, ConvGeometry, conv_geometry, current_rule
from .batching import BATCHINGS, Backbone, Batching, GateCounts, register

__all__: list[str] = []


@register
class AutoBatching(Batching):
    """Choose a candidate mode per batch by the rule; run it.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner").eval()
    >>> fast = gatekit.skip_compute(net, batching="auto")
    >>> x, gates = torch.randn(2, 3, 32, 32), (torch.rand(2, net.num_gates) < 0.5).float()
    >>> choice = fast.backbone.mode.choose(fast.backbone, x, gates)
    >>> choice.mode in ("pattern", "union", "gather", "masked"), choice.reason != ""
    (True, True)
    """

    name = "auto"
    summary = ("per batch, the candidate the rule estimates cheapest from the gates (the "
               "work each mode computes, its passes, the thread count); "
               "gatekit.tune_batching fits the rule to the machine")

    def __init__(self) -> None:
        self._geometry: dict[tuple, ConvGeometry] = {}

    def geometry(self, backbone: Backbone, x: Any, gates: Tensor) -> ConvGeometry:
        """The conv geometry for ``x``'s sample shape (read once per shape)."""
        key = ((tuple(x.shape[1:]), x.dtype, str(x.device)) if isinstance(x, Tensor)
               else (type(x).__name__, gates.dtype, str(gates.device)))
        found = self._geometry.get(key)
        if found is None:
            found = self._geometry[key] = conv_geometry(backbone, x, gates)
        return found

    def choose(self, backbone: Backbone, x: Any, gates: Tensor) -> BatchingChoice:
        """The mode this batch runs in, and why."""
        counts = GateCounts.of(backbone, gates)
        return current_rule().choose(self.geometry(backbone, x, gates), counts,
                                     torch.get_num_threads())

    def run_mixed(self, backbone: Backbone, x: Any, gates: Tensor) -> Any:
        mode = self.choose(backbone, x, gates).mode
        return BATCHINGS[mode]().run_mixed(backbone, x, gates)

    def __getstate__(self) -> dict:
        return {"_geometry": {}}
