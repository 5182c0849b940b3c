"""The graph rewrite that :func:`gatekit.skip_compute` and :func:`gatekit.exportable` share.

Given the site plans (``plan``), :func:`rewrite` replaces every conv that a site touches,
or that an eval-mode BatchNorm follows, by a :class:`~.conv.SkipConv` with the BatchNorm
folded in (``_folding``), called as ``skip(x, channels, out_site, in_site)``: the run's
:class:`~.conv.Channels` says which channels it computes.  A 1x1 conv whose output is
added to a residual that nothing reads later accumulates into it (``residual=r``).
skip_compute runs the result as it is; the export swaps each SkipConv for its own conv.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .. import _graph
from ._folding import foldable_batchnorm
from .common import DENSE, SLICED, finish_graph
from .conv import FULL, SkipConv
from .plan import SitePlan

__all__: list[str] = []

#: A single image with fewer elements than this stays contiguous (NCHW): PyTorch runs
#: the convs of such small activations on its native im2col path (not oneDNN's), which
#: wants NCHW; channels-last there costs a copy per conv (CIFAR ResNets at batch 1).
SMALL_IMAGE = 3 * 64 * 64


def channels_last(x: Any) -> Any:
    """``x`` in the layout skip_compute keeps its activations in: a 4-d tensor
    channels-last (mkldnn convs and the 1x1 GEMMs both want NHWC), unless it is one image
    smaller than :data:`SMALL_IMAGE`; anything else as it is."""
    if isinstance(x, Tensor) and x.ndim == 4:
        if x.shape[0] == 1 and x[0].numel() < SMALL_IMAGE:
            return x.contiguous()
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _single_bn_user(gm: fx.GraphModule, conv: fx.Node, calls: dict[str, int]) -> fx.Node | None:
    user = _graph.only_user(conv)
    if user is None or user.op != "call_module" or user.args != (conv,) or user.kwargs or calls[user.target] != 1:
        return None
    return user if foldable_batchnorm(gm.get_submodule(user.target)) else None


def rewrite(gm: fx.GraphModule, plans: list[SitePlan], *, layout: bool = True) -> None:
    """Replace convs (and their BatchNorms and gate multiplies) by :class:`SkipConv` calls.

    The graph gets a ``channels`` argument (the run's :class:`.conv.Channels`); each
    SkipConv is called as ``skip(x, channels, out_site, in_site)``, the site numbers
    constants of the graph.  ``layout``: the input first goes through
    :func:`channels_last` (False: left as it comes, for a graph whose layout is a
    runtime's choice, as in an export).
    """
    graph = gm.graph
    calls = _graph.call_counts(graph)
    producers = {p.conv: p for p in plans if p.mode != DENSE}
    consumers = {p.consumer: p for p in plans if p.mode == SLICED}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    gates = next(p for p in placeholders if p.target == "gates")
    with graph.inserting_after(gates):
        channels = graph.placeholder("channels")
    if layout:
        first = placeholders[0]
        with graph.inserting_after(channels):
            to_layout = graph.call_function(channels_last, (first,))
        first.replace_all_uses_with(to_layout, delete_user_cb=lambda user: user is not to_layout)

    for node in list(graph.nodes):
        if node.op != "call_module" or calls.get(node.target) != 1:
            continue
        module = gm.get_submodule(node.target)
        if not _graph.is_conv(module):
            continue
        out_plan, in_plan = producers.get(node), consumers.get(node)
        if out_plan is not None:
            bn_node = out_plan.norm
        elif node.args and len(node.args) == 1 and not node.kwargs:
            bn_node = _single_bn_user(gm, node, calls)
        else:
            bn_node = None
        if out_plan is None and in_plan is None and bn_node is None:
            continue
        bn = None if bn_node is None else gm.get_submodule(bn_node.target)
        out_mode = FULL if out_plan is None else out_plan.mode
        skip = SkipConv(module, bn, out_mode=out_mode, in_sliced=in_plan is not None)
        name = "skip_" + node.target.replace(".", "_")
        gm.add_submodule(name, skip)
        out_site, in_site = (None if p is None else p.index for p in (out_plan, in_plan))
        with graph.inserting_before(node):
            new = graph.call_module(name, (node.args[0], channels, out_site, in_site))
        replaced = out_plan.mul if out_plan is not None else (bn_node or node)
        replaced.replace_all_uses_with(new)
    graph.eliminate_dead_code()
    _accumulate_residuals(gm)
    finish_graph(gm)


def _inplace_alias(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` returns its first argument modified in place (an in-place ReLU)."""
    if node.op == "call_module":
        return getattr(gm.get_submodule(node.target), "inplace", False) is True
    if node.op == "call_method":
        return node.target.endswith("_")
    if node.op == "call_function":
        return node.kwargs.get("inplace", False) is True or getattr(
            node.target, "__name__", ""
        ).endswith("_")
    return False


_FRESH_FUNCTIONS = (*_graph.ADD_FUNCTIONS, operator.mul, torch.relu, F.relu, F.relu6, F.silu, F.gelu)
_FRESH_MODULES = (SkipConv, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU)


def _fresh(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s output is a new tensor owned by the graph (no user's or module's)."""
    if _inplace_alias(gm, node):
        source = node.args[0] if node.args else None
        return isinstance(source, fx.Node) and len(source.users) == 1 and _fresh(gm, source)
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _FRESH_MODULES)
    return node.op == "call_function" and node.target in _FRESH_FUNCTIONS


def _accumulate_residuals(gm: fx.GraphModule) -> None:
    """``add(skip_conv(x), r)`` -> ``skip_conv(x, residual=r)``, accumulating into ``r``.

    Only where ``r`` is a fresh tensor of the graph and nothing derived from it runs after
    the addition, so overwriting it is invisible.
    """
    nodes = list(gm.graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    for add in nodes:
        # Out-of-place additions only: an in-place one already writes into an input.
        if add.op != "call_function" or not _graph.is_add(add, in_place=False):
            continue
        if add.kwargs or len(add.args) != 2:
            continue
        for conv, residual in (add.args, add.args[::-1]):
            if not (
                isinstance(conv, fx.Node)
                and isinstance(residual, fx.Node)
                and conv.op == "call_module"
                and isinstance(gm.get_submodule(conv.target), SkipConv)
                and len(conv.users) == 1
                and "residual" not in conv.kwargs
                and _fresh(gm, residual)
            ):
                continue
            pending, seen = list(residual.users), set()
            while pending:  # every node reading r (or anything made from it) runs before add
                user = pending.pop()
                if user in seen or user is add:
                    continue
                if position[user] > position[add]:
                    break
                seen.add(user)
                pending.extend(user.users)
            else:
                conv.kwargs = {"residual": residual}
                add.prepend(conv)  # the residual may be computed after the conv
                add.replace_all_uses_with(conv)
                gm.graph.erase_node(add)
                break


