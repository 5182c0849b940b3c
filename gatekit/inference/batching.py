"""The seam for batching modes: how a :class:`~gatekit.SkipComputeNet` runs a batch whose
samples open different filters.

The rewritten graph (``_skip``) runs with one :class:`~.conv.Channels` object per run,
which says what every site computes and runs each :class:`~.conv.SkipConv`.  A batching
mode is a :class:`Batching` subclass in its own module (``_pattern``, ``_union``,
``_gather``, ``_masked``, ``_auto``), registered once in :data:`BATCHINGS` with
:func:`register`: it splits the batch into runs, makes each run's
:class:`~.conv.Channels` and merges the outputs.  A mode whose samples compute different
channels within one run brings its own :class:`~.conv.Channels` too.  :data:`BATCHINGS`
is the one list of modes: ``skip_compute`` takes its names, ``"auto"`` chooses among its
candidates, and the docs print it (:func:`describe`).

A mode says how much it computes with :meth:`Batching.runs`: the runs it makes of a batch
and, per run, how many channels of each site it computes, read off :class:`GateCounts`
(one pass over the gates).  ``"auto"``'s rule (``_rule``) turns that into an estimate of
time.

A batch whose samples all share one gate pattern runs once whatever the mode, with
:class:`SharedChannels`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar

import torch
from torch import Tensor

from .._errors import GatekitError
from ..sites import GateSite
from .conv import Channels, SkipConv

__all__: list[str] = []

#: Every batching mode, by name, in the order registered: the one list of modes.
BATCHINGS: dict[str, type[Batching]] = {}

_B = TypeVar("_B", bound="type[Batching]")


def register(cls: _B) -> _B:
    """Class decorator: add a :class:`Batching` subclass to :data:`BATCHINGS` by its name."""
    if cls.name in BATCHINGS and BATCHINGS[cls.name] is not cls:
        raise GatekitError(f"a batching mode called {cls.name!r} is already registered")
    BATCHINGS[cls.name] = cls
    return cls


def get_batching(name: Any, who: str = "skip_compute") -> Batching:
    """A new instance of the mode called ``name`` (:class:`GatekitError` for an unknown one)."""
    if not isinstance(name, str) or name not in BATCHINGS:
        names = " or ".join(repr(known) for known in BATCHINGS)
        raise GatekitError(f"{who} expects batching to be {names}, got {name!r}; pass one of them")
    return BATCHINGS[name]()


def candidates() -> list[str]:
    """The modes ``"auto"`` chooses among (registered with ``candidate = True``)."""
    return [name for name, cls in BATCHINGS.items() if cls.candidate]


def describe() -> str:
    """One line per mode, ``name: summary`` (what the docs print)."""
    return "\n".join(f"{name}: {cls.summary}" for name, cls in BATCHINGS.items())


def one_pattern(gates: Tensor) -> bool:
    """Whether every sample of ``gates`` ``(N, num_gates)`` shares one gate pattern (a
    batch of one does): then every mode runs the batch as one pass.

    >>> one_pattern(torch.tensor([[1.0, 0], [1, 0]])), one_pattern(torch.tensor([[1.0, 0], [0, 1]]))
    (True, False)
    """
    return gates.shape[0] == 1 or bool((gates == gates[:1]).all())


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

    def conv(self, conv: SkipConv, x: Tensor, out_site: int | None, in_site: int | None,
             residual: Tensor | None) -> Tensor:
        out_idx = None if out_site is None else self.open_channels[out_site]
        in_idx = None if in_site is None else self.open_channels[in_site]
        mask = None if out_site is None or self.masks is None else self.masks[out_site]
        return conv.run_shared(x, out_idx, in_idx, mask, residual)


class GateCounts(NamedTuple):
    """A batch's gates counted per live site (channels, ``group_size`` counted in), in one pass.

    ``batch``: ``N``; ``union`` ``(S,)``: channels open in any sample; ``batch_max`` ``(S,)``:
    the largest count one sample opens; ``patterns`` ``(P, S)``: the open count of each
    distinct gate pattern, ``pattern_sizes`` ``(P,)`` its number of samples; ``full``
    ``(S,)``: every channel.  Float64 on the CPU.

    >>> from types import SimpleNamespace
    >>> site = SimpleNamespace(offset=0, stop=3, num_gates=3, group_size=2)
    >>> c = GateCounts.of(SimpleNamespace(sites=(site,), live=[True]),
    ...                   torch.tensor([[1.0, 0, 0], [1, 1, 0], [1, 0, 0]]))
    >>> c.union.tolist(), c.batch_max.tolist(), c.patterns.tolist(), c.pattern_sizes.tolist()
    ([4.0], [4.0], [[2.0], [4.0]], [2.0, 1.0])
    """

    batch: int
    union: Tensor
    batch_max: Tensor
    patterns: Tensor
    pattern_sizes: Tensor
    full: Tensor

    @classmethod
    def of(cls, backbone: Backbone, gates: Tensor) -> GateCounts:
        sites = [s for s, live in zip(backbone.sites, backbone.live) if live]
        opened = (gates != 0).cpu()
        columns = torch.cat([torch.arange(s.offset, s.stop) for s in sites]) if sites \
            else torch.zeros(0, dtype=torch.long)
        site_of = torch.cat([torch.full((s.num_gates,), i) for i, s in enumerate(sites)]) \
            if sites else torch.zeros(0, dtype=torch.long)
        group = torch.tensor([float(s.group_size) for s in sites], dtype=torch.float64)
        if sites:
            patterns, sizes = torch.unique(opened[:, columns], dim=0, return_counts=True)
        else:  # nothing to skip: every sample runs one (empty) pattern; unique needs a column
            patterns = torch.zeros(1, 0, dtype=torch.bool)
            sizes = torch.tensor([gates.shape[0]])

        def per_site(rows: Tensor) -> Tensor:  # (R, gates of live sites) -> (R, S) channels
            out = torch.zeros(rows.shape[0], len(sites), dtype=torch.float64)
            return out.index_add_(1, site_of, rows.double()) * group

        union = per_site(patterns.any(0, keepdim=True))[0]
        counts = per_site(patterns)
        full = torch.tensor([float(s.num_gates * s.group_size) for s in sites], dtype=torch.float64)
        return cls(gates.shape[0], union, counts.amax(0), counts, sizes.double(), full)


class Runs(NamedTuple):
    """What a mode computes for a batch: per run, its samples ``sizes`` ``(R,)``, the
    channels of each live site it computes ``channels`` ``(R, S)``, and how many cut weight
    blocks it gathers ``copies`` ``(R,)`` (one per run, one per sample, or none);
    ``blocks``: the convolution blocks each conv launches over all runs (one per run
    unless a run convolves its samples as groups: ``"gather"``'s one group per sample)."""

    sizes: Tensor
    channels: Tensor
    copies: Tensor
    blocks: int | None = None

    @classmethod
    def one(cls, batch: int, channels: Tensor, copies: float = 1.0, blocks: int = 1) -> Runs:
        """One run of the whole batch computing ``channels`` ``(S,)``."""
        return cls(torch.tensor([float(batch)], dtype=torch.float64), channels[None],
                   torch.tensor([copies], dtype=torch.float64), blocks)

    @property
    def passes(self) -> int:
        """Convolution blocks per conv (``blocks``, else one per run)."""
        return self.sizes.shape[0] if self.blocks is None else self.blocks


class Batching(ABC):
    """A batching mode: how a batch whose samples open different filters is run.

    Subclasses set :attr:`name` (what ``skip_compute(net, batching=...)`` takes) and
    :attr:`summary` (one sentence for the docs), implement :meth:`run_mixed` and
    :meth:`runs`, and are registered with :func:`register`.  Instances hold no state
    that depends on the machine.

    >>> import gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner").eval()
    >>> gatekit.skip_compute(net, batching="union").backbone.mode
    UnionBatching()
    """

    name: ClassVar[str]
    #: What the mode does and when it pays, one sentence (the docs list it).
    summary: ClassVar[str]
    #: Whether ``"auto"`` may choose it (then :meth:`runs` says what it computes).
    candidate: ClassVar[bool] = False

    def __call__(self, backbone: Backbone, x: Any, gates: Tensor) -> Any:
        """The backbone's output for ``x`` under binary ``gates`` ``(N, num_gates)``."""
        if one_pattern(gates):
            return backbone.run(x, gates, SharedChannels(backbone.open_channels(gates[0])))
        return self.run_mixed(backbone, x, gates)

    @abstractmethod
    def run_mixed(self, backbone: Backbone, x: Any, gates: Tensor) -> Any:
        """The output for a batch whose samples do not all share one gate pattern."""

    def runs(self, counts: GateCounts) -> Runs:
        """The runs this mode makes of a batch with ``counts`` (see :class:`Runs`)."""
        raise GatekitError(f"batching mode {self.name!r} does not say what it computes")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
