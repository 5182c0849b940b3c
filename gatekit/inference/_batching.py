"""The seam for batching modes: how a :class:`~gatekit.SkipComputeNet` runs a batch whose
samples open different filters.

The rewritten graph (``_skip``) runs with one :class:`~._conv.Channels` object per run,
which says what every site computes and runs each :class:`~._conv.SkipConv`.  A batching
mode is a :class:`Batching` subclass in its own module (``_pattern``, ``_union``,
``_gather``, ``_masked``, ``_auto``), listed once in ``_skip.BATCHINGS``: it splits the batch into runs,
makes each run's :class:`~._conv.Channels` and merges the outputs.  A mode whose samples compute different
channels within one run brings its own :class:`~._conv.Channels` too.

A batch whose samples all share one gate pattern runs once whatever the mode, with
:class:`SharedChannels`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from torch import Tensor

from ..sites import GateSite
from ._conv import Channels, SkipConv

__all__: list[str] = []


class Backbone(Protocol):
    """What a batching mode uses of :class:`gatekit.inference._skip.SkipBackbone`."""

    sites: tuple[GateSite, ...]
    #: Per site, whether it is computed sparsely (False: a dense site, run in full).
    live: list[bool]

    def open_channels(self, row: Tensor) -> list[Tensor | None]:
        """Per site, the sorted channel numbers whose gate is open in ``row`` (None: a
        dense site, computed in full)."""
        ...

    def run(self, x: Any, gates: Tensor, channels: Channels) -> Any:
        """One pass of the rewritten graph over ``x`` with ``channels``."""
        ...


class SharedChannels:
    """A run in which every sample computes the same channels of each site.

    ``open_channels``: per site, the channels computed (None: all); ``masks``: per site,
    the samples' gates ``(N, k)`` of those channels when some sample closed some of them
    (None: all open).

    >>> import torch
    >>> from torch import nn
    >>> skip = SkipConv(nn.Conv2d(4, 6, 1), None, out_mode="sliced", in_sliced=False)
    >>> channels = SharedChannels([torch.tensor([0, 5])])
    >>> skip(torch.randn(2, 4, 3, 3), channels, 0, None).shape  # site 0's 2 open filters
    torch.Size([2, 2, 3, 3])
    """

    def __init__(
        self,
        open_channels: Sequence[Tensor | None],
        masks: Sequence[Tensor | None] | None = None,
    ):
        self.open_channels = open_channels
        self.masks = masks

    def conv(
        self,
        conv: SkipConv,
        x: Tensor,
        out_site: int | None,
        in_site: int | None,
        residual: Tensor | None,
    ) -> Tensor:
        out_idx = None if out_site is None else self.open_channels[out_site]
        in_idx = None if in_site is None else self.open_channels[in_site]
        mask = None if out_site is None or self.masks is None else self.masks[out_site]
        return conv.run_shared(x, out_idx, in_idx, mask, residual)


class Batching(ABC):
    """A batching mode: how a batch whose samples open different filters is run.

    Subclasses set :attr:`name` (what ``skip_compute(net, batching=...)`` takes) and
    implement :meth:`run_mixed`.  Instances hold no state.

    >>> import gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner").eval()
    >>> gatekit.skip_compute(net, batching="union").backbone.mode
    UnionBatching()
    """

    name: ClassVar[str]

    def __call__(self, backbone: Backbone, x: Any, gates: Tensor) -> Any:
        """The backbone's output for ``x`` under binary ``gates`` ``(N, num_gates)``."""
        if gates.shape[0] == 1 or bool((gates == gates[:1]).all()):
            return backbone.run(x, gates, SharedChannels(backbone.open_channels(gates[0])))
        return self.run_mixed(backbone, x, gates)

    @abstractmethod
    def run_mixed(self, backbone: Backbone, x: Any, gates: Tensor) -> Any:
        """The output for a batch whose samples do not all share one gate pattern."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
