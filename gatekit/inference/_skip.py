"""skip_compute: run a GaterNet in eval mode computing only the filters whose gates are open.

The dense gated model computes every filter and multiplies the closed ones by zero.
:func:`skip_compute` rewrites the gated backbone's graph once (``plan``, ``rewrite``):
every conv followed by an eval-mode BatchNorm gets the BatchNorm folded in, each gated conv
computes only its open filters, and the conv that consumes a gated output reads only the
matching input channels.  The result's backbone, a :class:`SkipBackbone`, takes ``(x, gates)`` like
any gated backbone: it groups the samples by gate pattern (or takes the union of their
open filters) and runs the rewritten graph once per group.  How it batches is a batching
mode (``batching``; one module per mode, registered in ``batching.BATCHINGS``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, fx, nn

from .._checks import check_gates
from ..gater import GaterNet
from ..sites import GateSite
from ._auto import AutoBatching
from ._pattern import PatternBatching
from ._rule import BatchingChoice
from .batching import Batching, get_batching, one_pattern
from .common import (
    DENSE,
    SCATTER,
    SLICED,
    InferenceGaterNet,
    channel_index,
    check_binary,
    check_eval_net,
)
from .conv import Channels
from .plan import plan_sites
from .rewrite import rewrite

__all__ = ["SkipComputeNet", "skip_compute"]


def batching_mode(name: Any) -> Batching:
    """The batching mode called ``name`` (:class:`GatekitError` for an unknown one)."""
    return get_batching(name, "skip_compute")


class SkipBackbone(nn.Module):
    """The backbone of a :class:`SkipComputeNet`: ``forward(x, gates)`` as a gated backbone.

    It checks that the gates are binary and hands the batch to its batching ``mode``
    (:attr:`batching` is its name), which runs ``graph_module`` (the rewritten
    gated backbone, taking ``x``, ``gates`` and ``channels``) once for the batch when all
    samples share one gate pattern, else as the mode says: ``"pattern"`` once per group of
    samples that share a pattern, and so on: each registered mode (``batching.BATCHINGS``)
    says what it does in its ``summary``.
    """

    def __init__(
        self,
        graph_module: fx.GraphModule,
        sites: tuple[GateSite, ...],
        live: list[bool],
        mode: Batching,
    ):
        super().__init__()
        self.graph_module = graph_module
        self.sites = sites
        self.mode = mode
        self.live = list(live)
        self.register_buffer(
            "_starts", torch.tensor([s.offset for s in sites], dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "_stops", torch.tensor([s.stop for s in sites], dtype=torch.long), persistent=False
        )

    def open_channels(self, row: Tensor) -> list[Tensor | None]:
        """Per site, the sorted channel numbers whose gate is open in ``row`` (None: a dense
        site, computed in full)."""
        open_gates = row.nonzero().squeeze(1)
        bounds = torch.searchsorted(open_gates, torch.cat([self._starts, self._stops])).tolist()
        n = len(self.sites)
        result: list[Tensor | None] = []
        for i, site in enumerate(self.sites):
            if not self.live[i]:
                result.append(None)
                continue
            idx = open_gates[bounds[i] : bounds[n + i]] - site.offset
            result.append(channel_index(idx, site.group_size))
        return result

    def run(self, x: Any, gates: Tensor, channels: Channels) -> Any:
        """One pass of the rewritten graph over ``x`` with the run's ``channels``."""
        return self.graph_module(x, gates=gates, channels=channels)

    @property
    def batching(self) -> str:
        """The batching mode's name, as ``skip_compute(net, batching=...)`` took it."""
        return self.mode.name

    def forward(self, x: Any, gates: Tensor) -> Any:
        check_binary(gates, "skip_compute")
        return self.mode(self, x, gates)

    def extra_repr(self) -> str:
        return f"batching={self.batching!r}"


class SkipComputeNet(InferenceGaterNet):
    """A GaterNet for inference that computes only the filters whose gates are open.

    Made by :func:`gatekit.skip_compute`.  ``forward(x, gates=None)`` returns what the
    gated model returns in eval mode (``gates``: binary, ``(N, num_gates)``; by default
    the gater's eval-mode gates), running without autograd.  ``backbone`` is a
    :class:`SkipBackbone` around the rewritten graph; ``routes`` lists a
    :class:`~gatekit.inference.SiteRoute` per site, ``mode`` ``"sliced"``, ``"scatter"``
    or ``"dense"``.  ``last_gates`` holds the gates of the last forward.

    A batch whose samples open different filters runs in the batching mode that
    :func:`gatekit.skip_compute` took (by default ``"auto"``: per batch, the mode a rule
    estimates cheapest; :meth:`batching_choice` says which and why).

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="residual").eval()
    >>> fast = gatekit.skip_compute(net)
    >>> fast
    SkipComputeNet(
      num_gates=336, sites=9, batching='auto', sliced=0, scatter=9, dense=0
      ...
    >>> fast(torch.randn(2, 3, 32, 32)).shape, fast.last_gates.shape
    (torch.Size([2, 10]), torch.Size([2, 336]))
    """

    backbone: SkipBackbone
    _MODES = (SLICED, SCATTER, DENSE)

    def forward(self, x: Any, gates: Tensor | None = None, *, budget: float | Tensor | None = None) -> Any:
        with torch.no_grad():
            return super().forward(x, gates, budget=budget)

    @torch.no_grad()
    def batching_choice(self, x: Any, gates: Tensor | None = None, *,
                        budget: float | Tensor | None = None) -> BatchingChoice:
        """The batching mode that ``self(x, gates, budget=budget)`` runs in, and why.

        A :class:`~gatekit.inference.BatchingChoice`: under ``batching="auto"``, the
        candidate the rule estimates cheapest, with its reason and every candidate's
        estimate (:func:`gatekit.tune_batching` fits the rule); under a fixed mode, that
        mode.  A batch whose samples all share one gate pattern runs once, whatever the
        mode.  Runs the gater (for ``gates=None``) but not the backbone.

        >>> import torch, gatekit
        >>> from gatekit.models import resnet20, resnet20_gater
        >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner").eval()
        >>> fast = gatekit.skip_compute(net, batching="auto")
        >>> x, g = torch.randn(4, 3, 32, 32), (torch.rand(4, net.num_gates) < 0.5).float()
        >>> choice = fast.batching_choice(x, g)
        >>> choice.mode in choice.estimates, choice.reason.startswith(choice.mode + ": cheapest")
        (True, True)
        >>> fast.batching_choice(x[:1], g[:1])
        BatchingChoice(mode='pattern', reason='one gate pattern in the batch: one pass', estimates={})
        """
        if gates is None:
            gates = self.estimator(self.gate_logits(x, budget))
        else:
            check_gates(gates, x, self.num_gates, self.sites)
        check_binary(gates, "batching_choice")
        mode = self.backbone.mode
        if one_pattern(gates):
            shared = PatternBatching.name if isinstance(mode, AutoBatching) else mode.name
            return BatchingChoice(shared, "one gate pattern in the batch: one pass", {})
        if isinstance(mode, AutoBatching):
            return mode.choose(self.backbone, x, gates)
        return BatchingChoice(mode.name, f"fixed by skip_compute(batching={mode.name!r})", {})

    def _repr_fields(self) -> list[str]:
        return [f"batching={self.backbone.batching!r}", *super()._repr_fields()]


def skip_compute(net: GaterNet, *, batching: str = AutoBatching.name) -> SkipComputeNet:
    """Return a copy of an eval-mode ``net`` that computes only the filters whose gates are open.

    For each sample, or each group of samples sharing a gate pattern: every eval-mode
    BatchNorm that follows a conv is folded into it (once, here); a gated conv computes
    only its open filters; the next conv (reached through ReLU-like, dropout or pooling
    ops) reads only the matching input channels.  Where a gated output goes elsewhere (a
    residual addition, say) the open filters are computed and scattered back into zeros.
    ``result.routes`` says what each site became.  ``net`` is not modified.

    Outputs equal the dense gated model's up to floating-point rounding: folding BatchNorm
    rounds each weight once and a conv over fewer channels sums in another order (float32:
    differences of order 1e-6 of the activations' scale; float64: 1e-13).  Runs best on
    the CPU with 4-d (channels-last) activations; on a GPU see :func:`gatekit.fuse_gated_convs`.

    ``batching`` says how a batch whose samples open different filters runs, one of the
    registered modes (the docs' ops page lists them with what each does):
    ``"pattern"`` groups the samples by gate pattern, one pass per group; ``"union"``,
    ``"gather"`` and ``"masked"`` run one pass (the filters open in any sample; each
    sample's own, padded to the batch's largest count; every filter); ``"auto"``
    (default) picks one of those per batch by a rule over the gates (see
    :func:`gatekit.tune_batching`, which fits the rule to this machine).  The default is
    ``"auto"`` because it measured faster: in ``benchmarks/results/end_to_end_cpu_rule.json``
    it ran 1.8x faster than ``"pattern"`` end to end, in geometric mean over the 40 points
    with batch > 1 (0.93x to 4.2x); pass ``batching="pattern"`` for the former default.

    The result is a :class:`SkipComputeNet`, a :class:`gatekit.GaterNet` whose backbone
    takes ``(x, gates)`` and batches as above.  Raises :class:`GatekitError` if ``net`` is
    in training mode or is not a GaterNet, for an unknown ``batching``, and at call time
    for non-binary gates.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner").eval()
    >>> fast = gatekit.skip_compute(net)
    >>> x, g = torch.randn(2, 3, 32, 32), (torch.rand(2, net.num_gates) < 0.5).float()
    >>> torch.allclose(fast(x, gates=g), net(x, gates=g), atol=1e-4)
    True
    >>> fast.routes[0]
    SiteRoute(site='stage1.block1.conv1', mode='sliced', consumer='stage1.block1.conv2', reason='', batching='auto')
    """
    check_eval_net(net, "skip_compute", "binary gates, BatchNorm with running statistics")
    mode = batching_mode(batching)
    graph = copy.deepcopy(net.backbone)
    plans = plan_sites(graph, net.sites, "skip_compute")
    rewrite(graph, plans)
    live = [p.mode != DENSE for p in plans]
    backbone = SkipBackbone(graph, net.sites, live, mode)
    return SkipComputeNet(net, backbone, [p.route(mode.name) for p in plans])

