"""Batching mode ``"auto"``: the fastest of ``"pattern"``, ``"union"``, ``"gather"`` and
``"masked"``, measured once per input shape.

The first batch of mixed patterns with a given shape (batch size, sample shape, dtype,
device) runs every candidate once to warm up (the allocator, oneDNN's caches) and then
``repeats`` times (3), and keeps the candidate whose fastest timed run was fastest: the
minimum, because on a shared machine noise only ever adds time.  ``"masked"`` (every filter
computed, closed ones zeroed: nothing skipped) is a candidate so that a batch on which
every skipping mode costs more than it saves runs no slower than the dense gated model.
The output returned is that of the last run, which all candidates compute equally.  Later
batches of that shape run the chosen mode only.  ``choices`` maps each shape seen to the
mode chosen, ``timings`` to each candidate's fastest time in seconds.

Which mode wins depends on the machine, the thread count, the model and how much the
samples' patterns differ, which is why it is measured rather than predicted; a batch whose
samples all share one pattern needs no choice (one pass, as in every mode).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from ._batching import Backbone, Batching
from ._gather import GatherBatching
from ._masked import MaskedBatching
from ._pattern import PatternBatching
from ._union import UnionBatching

__all__: list[str] = []


def _sync(t: Tensor) -> None:
    """Wait for the device's queued work, so that a GPU run is timed, not its launch."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


class AutoBatching(Batching):
    """Measure the candidate modes on the first mixed batch of each shape; keep the fastest.

    ``choices``: ``{(batch, sample shape, dtype, device): mode name}`` for the shapes seen;
    ``timings``: for the same keys, ``{mode name: fastest of its timed runs, in seconds}``.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner").eval()
    >>> fast = gatekit.skip_compute(net, batching="auto")
    >>> gates = (torch.rand(2, net.num_gates) < 0.5).float()
    >>> _ = fast(torch.randn(2, 3, 32, 32), gates=gates)
    >>> list(fast.backbone.mode.choices.values())[0] in ("pattern", "union", "gather", "masked")
    True
    """

    name = "auto"
    candidates: tuple[type[Batching], ...] = (
        PatternBatching, UnionBatching, GatherBatching, MaskedBatching)
    #: Timed runs per candidate, after one warm-up run.
    repeats = 3

    def __init__(self) -> None:
        self.modes = {c.name: c() for c in self.candidates}
        self.choices: dict[tuple, str] = {}
        self.timings: dict[tuple, dict[str, float]] = {}

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
        output, timings = None, {}
        for name, mode in self.modes.items():
            mode.run_mixed(backbone, x, gates)  # warm-up
            fastest = None
            for _ in range(self.repeats):
                _sync(gates)
                start = time.perf_counter()
                output = mode.run_mixed(backbone, x, gates)
                _sync(gates)
                took = time.perf_counter() - start
                fastest = took if fastest is None else min(fastest, took)
            timings[name] = fastest
        self.timings[key] = timings
        self.choices[key] = min(timings, key=timings.__getitem__)
        return output

    def __repr__(self) -> str:
        return f"AutoBatching(choices={len(self.choices)})"
