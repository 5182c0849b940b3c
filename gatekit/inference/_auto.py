"""Batching mode ``"auto"``: the fastest of ``"pattern"``, ``"union"`` and ``"gather"``,
measured once per input shape.

The first batch of mixed patterns with a given shape (batch size, sample shape, dtype,
device) runs every candidate twice and keeps the one whose second run was fastest (the
first run warms the allocator and oneDNN's caches); the output returned is that of the
last run, which all candidates compute equally.  Later batches of that shape run the
chosen mode only.  ``choices`` maps each shape seen to the mode chosen.

Which mode wins depends on the machine, the thread count, the model and how much the
samples' patterns differ, which is why it is measured rather than predicted; a batch whose
samples all share one pattern needs no choice (one pass, as in every mode).
"""

from __future__ import annotations

import time
from typing import Any

from torch import Tensor

from ._batching import Backbone, Batching
from ._gather import GatherBatching
from ._pattern import PatternBatching
from ._union import UnionBatching

__all__: list[str] = []


class AutoBatching(Batching):
    """Measure the candidate modes on the first mixed batch of each shape; keep the fastest.

    ``choices``: ``{(batch, sample shape, dtype, device): mode name}`` for the shapes seen.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner").eval()
    >>> fast = gatekit.skip_compute(net, batching="auto")
    >>> gates = (torch.rand(2, net.num_gates) < 0.5).float()
    >>> _ = fast(torch.randn(2, 3, 32, 32), gates=gates)
    >>> list(fast.backbone.mode.choices.values())[0] in ("pattern", "union", "gather")
    True
    """

    name = "auto"
    candidates: tuple[type[Batching], ...] = (PatternBatching, UnionBatching, GatherBatching)

    def __init__(self) -> None:
        self.modes = {c.name: c() for c in self.candidates}
        self.choices: dict[tuple, str] = {}

    @staticmethod
    def key(x: Any, gates: Tensor) -> tuple:
        """What a choice is kept for: batch size, sample shape, dtype and device."""
        if isinstance(x, Tensor):
            return (x.shape[0], tuple(x.shape[1:]), x.dtype, str(x.device))
        return (gates.shape[0], type(x).__name__, gates.dtype, str(gates.device))

    def run_mixed(self, backbone: Backbone, x: Any, gates: Tensor) -> Any:
        key = self.key(x, gates)
        chosen = self.choices.get(key)
        if chosen is not None:
            return self.modes[chosen].run_mixed(backbone, x, gates)
        best, output = None, None
        for name, mode in self.modes.items():
            mode.run_mixed(backbone, x, gates)  # warm-up
            start = time.perf_counter()
            output = mode.run_mixed(backbone, x, gates)
            took = time.perf_counter() - start
            if best is None or took < best[0]:
                best = (took, name)
        self.choices[key] = best[1]
        return output

    def __repr__(self) -> str:
        return f"AutoBatching(choices={len(self.choices)})"
