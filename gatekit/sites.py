"""Where to gate: tracing a CNN with torch.fx and choosing the convs whose filters get gates.

A *gate site* is one conv whose output channels are gated.  The gate multiplies the output
of the node right after the conv: its normalisation layer when one follows directly
(BatchNorm, GroupNorm, InstanceNorm, LayerNorm2d-like, FrozenBatchNorm2d, timm's
BatchNormAct2d; or a permute to channels-last followed by a LayerNorm over channels, as in
ConvNeXt), else the conv itself.  That is GaterNet's ``phi(F * I) * g`` with the gate after
the norm (for timm's fused norm+activation layers, after the activation).

Policies (``sites=``):

- ``"residual"``: the last conv of each residual branch, gated before the addition: the
  released GaterNet code's choice.  A residual addition is an ``add`` whose two inputs
  descend from a common node (the block input) and at least one of which passes through a
  conv; the branch with more convs is the residual branch (on a tie, both are: two-branch
  blocks such as Shake-Shake).  The shortcut is never gated.  Convs behind a global
  pooling inside a branch (squeeze-and-excitation) do not count.
- ``"inner"``: every other conv inside residual branches (where compute can be skipped).
- ``"all"``: every conv but the first one run (the stem).
- a list of conv names (qualified, as ``named_modules`` spells them), or a callable
  ``(name, module) -> bool`` asked about every conv.

Sites come in the order the convs run; each takes ``channels // group_size`` consecutive
entries of the flat gate vector, starting at ``offset``.  Convs are the modules that are
instances of :class:`torch.nn.Conv1d`, ``Conv2d`` or ``Conv3d`` (subclasses included);
functional convolutions and transposed convs are not gate sites.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from . import _graph
from ._errors import GatekitError
from ._tracing import trace

__all__ = ["GateSite", "get_gate_sites"]

SitePolicy = str | Sequence[str] | Callable[[str, nn.Module], bool]

_POLICIES = ("residual", "inner", "all")


@dataclass(frozen=True)
class GateSite:
    """One gated conv: which conv, whose output is multiplied, and where its gates sit.

    Attributes:
        name: qualified name of the gated conv (``"layer1.0.conv3"``).
        after: qualified name of the module whose output is multiplied by the gates: the
            norm layer that directly follows the conv, or the conv itself.
        channels: output channels of the conv.
        offset: start of this site's chunk in the flat gate vector, in gate units.
        group_size: adjacent channels switched by one gate.
        norm: qualified name of the norm layer, or None when none follows the conv.
        activation: the activation that alone reads ``after``'s output (module name, or
            function or method name), or None.  :func:`gatekit.fuse_gated_convs` fuses
            it into the gated conv when it is a ReLU; the transform does not read it.
        channel_dim: 1 for channels-first outputs, -1 when ``after`` works channels-last
            (a LayerNorm after a permute).
        spatial_dims: 1, 2 or 3 (Conv1d/2d/3d).

    >>> site = GateSite("layer1.0.conv2", "layer1.0.bn2", channels=64, offset=0, group_size=4)
    >>> site.num_gates, site.stop
    (16, 16)
    """

    name: str
    after: str
    channels: int
    offset: int = 0
    group_size: int = 1
    norm: str | None = None
    activation: str | None = None
    channel_dim: int = 1
    spatial_dims: int = 2

    @property
    def num_gates(self) -> int:
        """Number of gates of this site, ``channels // group_size``."""
        return self.channels // self.group_size

    @property
    def stop(self) -> int:
        """End (exclusive) of this site's chunk in the flat gate vector."""
        return self.offset + self.num_gates


def get_gate_sites(
    backbone: nn.Module,
    sites: SitePolicy = "residual",
    group_size: int = 1,
    *,
    leaf_modules: Sequence[type[nn.Module] | str] = (),
    autowrap_functions: Sequence[Callable[..., Any]] = (),
) -> list[GateSite]:
    """List what :func:`gatekit.gate_model` would gate in ``backbone``, in execution order.

    ``leaf_modules`` (classes or qualified names) are kept whole while tracing (their convs
    are then not gate sites); ``autowrap_functions`` are free functions recorded as single
    calls (both as in :class:`torch.fx.Tracer`).  The backbone is not modified.

    >>> from gatekit.models import resnet20
    >>> found = get_gate_sites(resnet20())
    >>> [(s.name, s.after, s.offset) for s in found[:2]]
    [('stage1.block1.conv2', 'stage1.block1.bn2', 0), ('stage1.block2.conv2', 'stage1.block2.bn2', 16)]
    >>> sum(s.num_gates for s in found)
    336
    """
    graph_module = trace(backbone, leaf_modules=leaf_modules, autowrap_functions=autowrap_functions)
    return [site for site, _ in find_sites(graph_module, sites, group_size)]


# --------------------------------------------------------------------------------------
# Graph analysis
# --------------------------------------------------------------------------------------


def _is_norm(module: nn.Module, channels: int) -> bool:
    """A channels-first norm over ``channels`` (LayerNorm only through a subclass such as
    LayerNorm2d: plain ``nn.LayerNorm`` on an NCHW tensor normalises the last spatial dim)."""
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return module.num_features == channels
    if isinstance(module, nn.GroupNorm):
        return module.num_channels == channels
    if isinstance(module, nn.LayerNorm):
        return type(module) is not nn.LayerNorm and tuple(module.normalized_shape) == (channels,)
    if type(module).__name__ == "FrozenBatchNorm2d":  # torchvision.ops, not an nn subclass
        return getattr(module, "weight", torch.empty(0)).shape == (channels,)
    return False


def _is_channels_last_permute(node: fx.Node, spatial_dims: int) -> bool:
    want = [0, *range(2, spatial_dims + 2), 1]
    if node.op == "call_method" and node.target == "permute":
        dims = node.args[1:]
    elif node.op == "call_function" and node.target is torch.permute:
        dims = node.args[1:] or (node.kwargs.get("dims"),)
    else:
        return False
    if len(dims) == 1 and isinstance(dims[0], list | tuple):
        dims = tuple(dims[0])
    return list(dims) == want


def _activation_after(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    user = _graph.only_user(node)
    return None if user is None else _graph.activation_name(user, modules)


def _follow_conv(conv: fx.Node, modules: dict[str, nn.Module]) -> tuple[fx.Node, int]:
    """The node whose output gets the gates, and its channel dim (1 or -1)."""
    module = modules[conv.target]
    channels, spatial = module.out_channels, len(module.kernel_size)
    user = _graph.only_user(conv)
    if user is None:
        return conv, 1
    if user.op == "call_module" and _is_norm(modules[user.target], channels):
        return user, 1
    if _is_channels_last_permute(user, spatial):
        norm = _graph.only_user(user)
        if (
            norm is not None
            and norm.op == "call_module"
            and isinstance(modules[norm.target], nn.LayerNorm)
            and tuple(modules[norm.target].normalized_shape) == (channels,)
        ):
            return norm, -1
    return conv, 1


def _residual_branches(
    nodes: list[fx.Node], convs: list[fx.Node], modules: dict[str, nn.Module]
) -> list[list[fx.Node]]:
    """For every residual addition, the convs of each residual branch (in execution order).

    Convs behind a global pooling inside the branch (squeeze-and-excitation and other
    attention side paths) are left out: they work on pooled vectors, not on the branch's
    feature maps.

    Ancestor sets are Python ints used as bitsets over node positions, so the analysis is
    linear in graph size per addition even for models with thousands of nodes.
    """
    index = {node: i for i, node in enumerate(nodes)}
    ancestors: dict[fx.Node, int] = {}
    spatial: dict[fx.Node, int] = {}  # ancestors along paths that cross no global pooling
    for node in nodes:
        mask = spatial_mask = 0
        for inp in node.all_input_nodes:
            mask |= ancestors[inp] | (1 << index[inp])
            if not _graph.is_global_pool(inp, modules):
                spatial_mask |= spatial[inp] | (1 << index[inp])
        ancestors[node] = mask
        spatial[node] = spatial_mask
    branches = []
    for node in nodes:
        if not _graph.is_add(node):
            continue
        a, b = node.args[0], node.args[1]
        reach_a, reach_b = ancestors[a] | (1 << index[a]), ancestors[b] | (1 << index[b])
        common = reach_a & reach_b
        if not common:
            continue
        fork_bit = 1 << (common.bit_length() - 1)
        lo, hi = common.bit_length() - 1, index[node]

        def branch(reach: int, lo: int = lo, hi: int = hi, fork_bit: int = fork_bit) -> list[fx.Node]:
            return [
                c
                for c in convs
                if lo < index[c] < hi
                and reach >> index[c] & 1
                and spatial[c] & fork_bit
            ]

        conv_a, conv_b = branch(reach_a), branch(reach_b)
        if len(conv_a) != len(conv_b):
            branches.append(max(conv_a, conv_b, key=len))
        elif conv_a:
            branches.extend([conv_a, conv_b])
    return branches


def _unknown_policy(sites: Any) -> GatekitError:
    return GatekitError(
        f"unknown gate-site policy {sites!r}; expected one of {list(_POLICIES)}, a list of conv "
        f"names, or a callable (name, module) -> bool; gatekit.get_gate_sites(backbone, 'all') "
        f"lists the convs"
    )


def _select(
    sites: SitePolicy, convs: list[fx.Node], modules: dict[str, nn.Module], nodes: list[fx.Node], what: str
) -> list[fx.Node]:
    if isinstance(sites, str):
        if sites not in _POLICIES:
            raise _unknown_policy(sites)
        if sites == "all":
            chosen = convs[1:]
        else:
            branches = _residual_branches(nodes, convs, modules)
            last = {b[-1] for b in branches}
            chosen = list(last) if sites == "residual" else [c for b in branches for c in b[:-1] if c not in last]
            if not branches:
                raise GatekitError(
                    f"{what} has no residual additions, so policy {sites!r} finds no gate sites; "
                    f"use sites='all', a list of conv names or a callable; "
                    f"gatekit.get_gate_sites(backbone, 'all') lists the candidates"
                )
    elif callable(sites):
        chosen = [c for c in convs if sites(c.target, modules[c.target])]
    elif isinstance(sites, Sequence) and all(isinstance(s, str) for s in sites):
        by_name = {c.target: c for c in convs}
        if len(set(sites)) != len(sites):
            dup = sorted({s for s in sites if list(sites).count(s) > 1})
            raise GatekitError(f"site names must be unique, got duplicates {dup}; list each conv once")
        for name in sites:
            if name not in by_name:
                kind = type(modules[name]).__name__ if name in modules else None
                got = f"a {kind}, not a Conv1d/2d/3d" if kind else "not a module of the backbone"
                near = difflib.get_close_matches(name, list(by_name), n=3)
                raise GatekitError(
                    f"site {name!r} is {got}; expected the qualified name of a conv"
                    + (f" (close: {near})" if near else "")
                    + "; gatekit.get_gate_sites(backbone, 'all') lists the convs"
                )
        chosen = [by_name[s] for s in sites]
    else:
        raise _unknown_policy(sites)
    position = {node: i for i, node in enumerate(nodes)}
    chosen = sorted(set(chosen), key=position.__getitem__)
    if not chosen:
        raise GatekitError(
            f"policy {sites!r} selects no gate sites in {what}; expected at least one conv; "
            f"try another policy or gatekit.get_gate_sites(backbone, 'all')"
        )
    return chosen


def find_sites(
    graph_module: fx.GraphModule, sites: SitePolicy = "residual", group_size: int = 1
) -> list[tuple[GateSite, fx.Node]]:
    """The gate sites of a traced backbone, each with the graph node to multiply."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise GatekitError(f"group_size must be an int >= 1, got {group_size!r}")
    what = type(graph_module).__name__
    modules = dict(graph_module.named_modules())
    nodes = list(graph_module.graph.nodes)
    convs, seen = [], set()
    calls = _graph.call_counts(graph_module.graph)
    for node in nodes:
        if node.op == "call_module" and _graph.is_conv(modules[node.target]) and node.target not in seen:
            seen.add(node.target)
            convs.append(node)
    if not convs:
        raise GatekitError(
            f"{what} has no Conv1d/Conv2d/Conv3d modules reachable by tracing, so there is "
            f"nothing to gate; gatekit gates the filters of conv layers"
        )
    result, offset, bad = [], 0, []
    for conv in _select(sites, convs, modules, nodes, what):
        if calls[conv.target] > 1:
            raise GatekitError(
                f"conv {conv.target!r} runs {calls[conv.target]} times in one forward pass, so "
                f"one gate chunk per call is ambiguous; expected each gated conv to run once; "
                f"leave it out with an explicit site list or a callable policy"
            )
        module = modules[conv.target]
        after, channel_dim = _follow_conv(conv, modules)
        if module.out_channels % group_size:
            bad.append(f"{conv.target}: {module.out_channels}")
        site = GateSite(
            name=conv.target,
            after=after.target,
            channels=module.out_channels,
            offset=offset,
            group_size=group_size,
            norm=None if after is conv else after.target,
            activation=_activation_after(after, modules),
            channel_dim=channel_dim,
            spatial_dims=len(module.kernel_size),
        )
        offset += site.num_gates
        result.append((site, after))
    if bad:
        raise GatekitError(
            f"group_size={group_size} must divide the channels of every site; got "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; pick a group_size that "
            f"divides them or leave those convs out"
        )
    return result
