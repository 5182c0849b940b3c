"""Reading a GaterNet's graph: for each gate site, what can be skipped and where its zeros go.

For each site the gated backbone's fx graph reads ``conv -> [norm] -> mul(gates chunk)``.
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

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..sites import GateSite
from .folding import foldable_batchnorm

__all__ = ["SiteRoute", "plan_routes"]

# Channel-wise modules and functions with f(0) == 0: a closed (all-zero) channel stays zero
# through them, so the compact tensor of open channels can flow through unchanged.
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Tanh, nn.Softshrink, nn.Hardshrink, nn.Tanhshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
)  # fmt: skip
_PASS_FUNCTIONS = {
    torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu,
    F.mish, F.hardswish, torch.tanh, F.dropout, F.max_pool1d, F.max_pool2d, F.max_pool3d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
}  # fmt: skip
_PASS_METHODS = {"relu", "relu_", "tanh", "tanh_"}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class SiteRoute:
    """How one gate site runs under :func:`gatekit.skip_compute`.

    ``mode`` is ``"sliced"`` (only open filters computed; the consumer conv reads only
    their input channels), ``"scatter"`` (only open filters computed, then placed into
    zeros) or ``"dense"`` (computed as in the gated model); ``reason`` says why a site is
    not ``"sliced"``.

    >>> import gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="residual").eval()
    >>> route = plan_routes(net.backbone, net.sites)[0]
    >>> route.site.name, route.mode, route.reason != ""
    ('stage1.block1.conv2', 'scatter', True)
    """

    index: int
    site: GateSite
    conv: fx.Node
    norm: fx.Node | None
    mul: fx.Node | None
    chain: tuple[fx.Node, ...]
    consumer: fx.Node | None
    mode: str
    reason: str


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_passthrough(gm: fx.GraphModule, node: fx.Node, source: fx.Node) -> bool:
    """Channel-wise, 0 -> 0, taking ``source`` as its only tensor argument."""
    if not node.args or node.args[0] is not source:
        return False
    if any(isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
        return False
    if node.op == "call_module":
        module = _module(gm, node)
        if isinstance(module, nn.Hardtanh):  # ReLU6 included
            return module.min_val <= 0 <= module.max_val
        return isinstance(module, _PASS_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    return node.op == "call_method" and node.target in _PASS_METHODS


def sliceable_conv(module: nn.Module | None) -> bool:
    """A conv whose input and output channels can be sliced independently: ungrouped, zero padding."""
    return (
        isinstance(module, _CONVS)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _call_counts(gm: fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def _gate_mul(after: fx.Node) -> fx.Node | None:
    """The ``after * gates_chunk`` node that gate_model inserted after ``after``."""
    for user in after.users:
        if user.op == "call_function" and user.target is operator.mul and user.args[0] is after:
            return user
    return None


def plan_routes(gm: fx.GraphModule, sites: tuple[GateSite, ...]) -> list[SiteRoute]:
    """Classify every site of a gated backbone graph (see the module docstring).

    >>> import gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="all").eval()
    >>> routes = plan_routes(net.backbone, net.sites)
    >>> [(r.site.name, r.mode) for r in routes[:3]]
    [('stage1.block1.conv1', 'sliced'), ('stage1.block1.conv2', 'scatter'), ('stage1.block2.conv1', 'sliced')]
    """
    calls = _call_counts(gm)
    by_target: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            by_target.setdefault(node.target, node)
    routes = []
    for index, site in enumerate(sites):
        conv = by_target.get(site.name)
        after = by_target.get(site.after)
        norm = after if site.norm is not None and after is not conv else None
        mul = None if after is None else _gate_mul(after)
        route = SiteRoute(index, site, conv, norm, mul, (), None, "dense", "")
        routes.append(route)
        if conv is None or mul is None:
            route.reason = "graph does not read conv -> [norm] -> gate multiply"
            continue
        conv_module = _module(gm, conv)
        if calls[site.name] != 1 or (norm is not None and calls[norm.target] != 1):
            route.reason = "module called more than once"
        elif not sliceable_conv(conv_module):
            route.reason = "grouped, non-zero-padded or non-Conv1d/2d/3d conv"
        elif norm is not None and not foldable_batchnorm(_module(gm, norm)):
            route.reason = f"norm {site.norm} is not an eval-mode BatchNorm (cannot fold)"
        elif set(after.users) - {mul, mul.args[1]} or (
            norm is not None and (len(conv.users) != 1 or norm.args != (conv,) or norm.kwargs)
        ):
            route.reason = "conv or norm output has other users"
        elif site.channel_dim != 1:
            route.reason = "channels-last site"
        if route.reason:
            continue
        route.mode, route.reason = "scatter", "gated output feeds a non-conv op"
        chain, node = [], mul
        while len(node.users) == 1:
            user = next(iter(node.users))
            if _is_passthrough(gm, user, node):
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
                route.mode, route.reason, route.consumer = "sliced", "", user
            break
        route.chain = tuple(chain)
    return routes
