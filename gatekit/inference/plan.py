"""Reading a GaterNet's graph: for each gate site, what can be skipped and where its zeros go.

For each site the gated backbone's fx graph reads ``conv -> [norm] -> mul(gates chunk)``,
the multiply found by the mark :func:`gatekit.gate_model` put on it (``gatekit._graph``).
A site's *producer* is that conv: when its norm is an eval-mode BatchNorm (or absent) and
the conv is ungrouped, the BatchNorm folds into it and only the open filters need computing
(*sliced output*).  Its *consumer* is the next conv, reached from the gate multiply through
channel-wise ops that map 0 to 0 (ReLU and kin, dropout, pooling): that conv can read the
compact tensor of open channels with its matching input channels only, because a channel
that is zero contributes nothing to a convolution.  Where the gated output goes anywhere
else (a residual addition, a concatenation, two users), the open filters are computed and
scattered back into zeros (*scatter*).  Sites that fit neither run as in the dense model
(*dense*), with the reason recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn

from .. import _graph
from ..sites import GateSite
from ._folding import foldable_batchnorm
from .common import DENSE, SCATTER, SLICED, SiteRoute

__all__: list[str] = []


@dataclass
class SitePlan:
    """One gate site read off the gated graph: its nodes, and how skip_compute can run it.

    ``mode`` and ``reason`` as in :class:`gatekit.inference.SiteRoute`; ``chain`` holds the
    zero-keeping nodes between the gate multiply and the ``consumer`` conv.

    >>> import gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="residual").eval()
    >>> plan = plan_sites(net.backbone, net.sites)[0]
    >>> plan.site.name, plan.mode, plan.reason != ""
    ('stage1.block1.conv2', 'scatter', True)
    """

    index: int
    site: GateSite
    conv: fx.Node
    norm: fx.Node | None
    mul: fx.Node
    chain: tuple[fx.Node, ...]
    consumer: fx.Node | None
    mode: str
    reason: str

    def route(self, batching: str, dense_note: str = "") -> SiteRoute:
        """What the site became, as a :class:`~gatekit.inference.SiteRoute`: ``batching``
        for a site that skips; ``dense_note`` added to a dense site's reason.

        >>> import gatekit
        >>> from gatekit.models import resnet20, resnet20_gater
        >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner").eval()
        >>> plan_sites(net.backbone, net.sites)[0].route("union")
        SiteRoute(site='stage1.block1.conv1', mode='sliced', consumer='stage1.block1.conv2', reason='', batching='union')
        """
        consumer = None if self.consumer is None else self.consumer.target
        if self.mode == DENSE:
            reason = f"{self.reason}; {dense_note}" if dense_note else self.reason
            return SiteRoute(self.site.name, self.mode, consumer, reason, "")
        return SiteRoute(self.site.name, self.mode, consumer, self.reason, batching)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def sliceable_conv(module: nn.Module | None) -> bool:
    """A conv whose input and output channels can be sliced independently: ungrouped, zero padding."""
    return (
        _graph.is_conv(module)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def plan_sites(
    gm: fx.GraphModule, sites: tuple[GateSite, ...], who: str = "plan_sites"
) -> list[SitePlan]:
    """Classify every site of a gated backbone graph (see the module docstring).

    ``who`` names the caller in the :class:`gatekit.GatekitError` raised when a gate
    multiply lacks its mark.

    >>> import gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="all").eval()
    >>> plans = plan_sites(net.backbone, net.sites)
    >>> [(p.site.name, p.mode) for p in plans[:3]]
    [('stage1.block1.conv1', 'sliced'), ('stage1.block1.conv2', 'scatter'), ('stage1.block2.conv1', 'sliced')]
    """
    calls = _graph.call_counts(gm.graph)
    modules = dict(gm.named_modules())
    by_target: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            by_target.setdefault(node.target, node)
    muls = _graph.gate_nodes(gm.graph, [s.name for s in sites], who)
    plans = []
    for index, (site, mul) in enumerate(zip(sites, muls)):
        conv = by_target.get(site.name)
        after = by_target.get(site.after)
        norm = after if site.norm is not None and after is not conv else None
        plan = SitePlan(index, site, conv, norm, mul, (), None, DENSE, "")
        plans.append(plan)
        if conv is None or after is None or mul.args[0] is not after:
            plan.reason = "graph does not read conv -> [norm] -> gate multiply"
            continue
        conv_module = _module(gm, conv)
        if calls[site.name] != 1 or (norm is not None and calls[norm.target] != 1):
            plan.reason = "module called more than once"
        elif not sliceable_conv(conv_module):
            plan.reason = "grouped, non-zero-padded or non-Conv1d/2d/3d conv"
        elif norm is not None and not foldable_batchnorm(_module(gm, norm)):
            plan.reason = f"norm {site.norm} is not an eval-mode BatchNorm (cannot fold)"
        elif set(after.users) - {mul, mul.args[1]} or (
            norm is not None and (len(conv.users) != 1 or norm.args != (conv,) or norm.kwargs)
        ):
            plan.reason = "conv or norm output has other users"
        elif site.channel_dim != 1:
            plan.reason = "channels-last site"
        if plan.reason:
            continue
        plan.mode, plan.reason = SCATTER, "gated output feeds a non-conv op"
        chain, node = [], mul
        while len(node.users) == 1:
            user = next(iter(node.users))
            if _graph.keeps_zero_channels(user, node, modules, compact=True):
                chain.append(user)
                node = user
                continue
            if (
                user.op == "call_module"
                and user.args[0] is node
                and len(user.args) == 1
                and not user.kwargs
                and calls[user.target] == 1
                and sliceable_conv(_module(gm, user))
            ):
                plan.mode, plan.reason, plan.consumer = SLICED, "", user
            break
        plan.chain = tuple(chain)
    return plans
