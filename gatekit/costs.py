"""What each gate costs: the FLOPs per image that closing it removes, for budgets on compute.

:func:`gate_costs` measures a :class:`gatekit.GaterNet` at one input size and returns one
number per gate, in the order of the flat gate vector, ready for
:func:`gatekit.flops_budget_loss`.  FLOPs are counted as
:class:`torch.utils.flop_counter.FlopCounterMode` counts a convolution: 2 per
multiply-add, bias not counted, so one output channel of a conv costs::

    2 * prod(out_spatial) * (in_channels / groups) * prod(kernel_size)

Data flow: ``example_input -> backbone (all gates open, eval, no grad) -> forward hooks on
the gated convs (and, with downstream=True, on the convs they feed) -> costs``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, fx, nn

from ._errors import GatekitError
from ._graph import CONV_TYPES, gate_nodes, keeps_zero_channels
from .gater import GaterNet

__all__ = ["gate_costs"]

def _channel_flops(conv: nn.Module, out_shape: torch.Size) -> int:
    """FLOPs per image of one output channel of ``conv`` (FlopCounterMode's count / C_out)."""
    spatial = out_shape[len(out_shape) - len(conv.kernel_size):]
    return 2 * math.prod(spatial) * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)


def _input_channel_flops(conv: nn.Module, out_shape: torch.Size) -> int:
    """FLOPs per image that one input channel of ``conv`` takes part in."""
    spatial = out_shape[len(out_shape) - len(conv.kernel_size):]
    return 2 * math.prod(spatial) * (conv.out_channels // conv.groups) * math.prod(conv.kernel_size)


def _consumers(gated: fx.Node, modules: dict[str, nn.Module]) -> list[fx.Node]:
    """Conv call nodes whose input is ``gated`` through channel-wise nodes that keep zeros."""
    found, frontier, seen = [], [gated], {gated}
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if (
                user.op == "call_module"
                and isinstance(modules[user.target], CONV_TYPES)
                and user.args
                and user.args[0] is node
            ):
                found.append(user)
            elif keeps_zero_channels(user, node, modules):
                frontier.append(user)
    return found


def _check(model: Any, example_input: Any) -> None:
    if not isinstance(model, GaterNet):
        raise GatekitError(
            f"gate_costs expects a gatekit.GaterNet (what gatekit.gate_model returns), got "
            f"{type(model).__name__}; build it with gatekit.gate_model(backbone, gater)"
        )
    if not isinstance(example_input, Tensor) or example_input.ndim < 2 or example_input.shape[0] < 1:
        got = tuple(example_input.shape) if isinstance(example_input, Tensor) else type(example_input).__name__
        raise GatekitError(
            f"gate_costs expects example_input as a batched tensor (N, C, ...) of the size to "
            f"cost, got {got}; pass e.g. torch.zeros(1, 3, 224, 224)"
        )


def _output_shapes(model: GaterNet, example_input: Tensor, modules: dict[str, nn.Module],
                   hooked: set[str]) -> dict[str, list[torch.Size]]:
    """The output shape of every call of each module in ``hooked``, in the order they run,
    from one pass of the backbone with every gate open (eval mode, no grad; the model's
    train/eval flags restored after)."""
    shapes: dict[str, list[torch.Size]] = {name: [] for name in hooked}

    def record(name: str):
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            shapes[name].append(output.shape)

        return hook

    handles = [modules[name].register_forward_hook(record(name)) for name in sorted(hooked)]
    modes = [(m, m.training) for m in model.modules()]
    n = example_input.shape[0]
    dtype = example_input.dtype if example_input.is_floating_point() else torch.float32
    try:
        model.eval()
        with torch.no_grad():
            gates = torch.ones(n, model.num_gates, device=example_input.device, dtype=dtype)
            try:
                model.backbone(example_input, gates=gates)
            except GatekitError:
                raise
            except Exception as e:  # the input does not fit the backbone; say so once
                raise GatekitError(
                    f"gate_costs could not run the backbone on example_input of shape "
                    f"{tuple(example_input.shape)} ({example_input.dtype}, "
                    f"{example_input.device}): {type(e).__name__}: {e}; expected an input the "
                    f"model accepts, e.g. one training batch on the model's device"
                ) from e
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes:
            m.training = mode
    return shapes


def gate_costs(model: GaterNet, example_input: Tensor, *, downstream: bool = False) -> Tensor:
    """FLOPs per image that closing each gate removes, shape ``(model.num_gates,)``, float64.

    A gate of site ``s`` zeroes ``s.group_size`` output channels of the conv ``s.name``;
    its cost is those channels' share of the conv's FLOPs at ``example_input``'s size
    (``example_input`` may hold a batch; the result is per image)::

        group_size * 2 * prod(out_spatial) * (in_channels / groups) * prod(kernel_size)

    With ``downstream=True`` a gate also counts the work its zeroed channels would take in
    the convs that read them directly: convs whose input is the gated output itself or
    reached from it through channel-wise ops that keep zeros zero (ReLU, ReLU6, LeakyReLU,
    PReLU, ELU, CELU, SELU, GELU, SiLU, Mish, Hardswish, Tanh and the shrinks, Identity,
    dropout, max and average pooling, ``clone``/``contiguous``; modules, functions or tensor
    methods: the rule skip_compute slices by).  Each such conv adds
    ``group_size * 2 * prod(its out_spatial) * (its out_channels / its groups) *
    prod(its kernel_size)``.  That is exact: a closed channel is zero at that conv's input,
    so its multiply-adds can be skipped.  Nothing is counted through anything else: a
    residual addition (the shortcut keeps the channel alive, as for the "residual"
    sites), a norm (BatchNorm turns a zero channel into a constant), concatenation or
    channels-last permutes.  In practice the "inner" sites (``conv -> BN -> gate -> ReLU
    -> conv``) gain, the "residual" sites do not.

    A reader that is itself a gate site is not counted: the multiply-adds of its closed
    output channels are that site's own cost already, and what remains depends on both
    gates at once.  So ``(costs * closed_fraction).sum()`` never counts a multiply-add
    twice; it is exact when no reader is gated (the "inner" sites of basic blocks) and a
    lower bound otherwise (``sites="all"``: there ``downstream`` adds only the readers left
    ungated).

    The backbone runs once, all gates open, under :func:`torch.no_grad` in eval mode; the
    model's train/eval flags are restored after and its ``last_gates`` are not touched.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner")
    >>> costs = gatekit.gate_costs(net, torch.zeros(1, 3, 32, 32))
    >>> costs.shape, costs[0].item()  # stage1.block1.conv1: 2 * 32*32 * 16 * 3*3
    (torch.Size([336]), 294912.0)
    >>> gatekit.gate_costs(net, torch.zeros(1, 3, 32, 32), downstream=True)[0].item()
    589824.0
    """
    _check(model, example_input)
    backbone = model.backbone
    modules = dict(backbone.named_modules())
    graph = backbone.graph
    calls: dict[str, list[fx.Node]] = {}  # every call of every conv, in the order they run
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), CONV_TYPES):
            calls.setdefault(node.target, []).append(node)
    missing = [s.name for s in model.sites if s.name not in calls]
    if missing:
        raise GatekitError(
            f"gate_costs found no call of the gated convs {missing[:3]} in model.backbone's "
            f"graph; expected a GaterNet as gatekit.gate_model builds it, unchanged"
        )
    consumers: dict[int, list[fx.Node]] = {}
    site_names = {s.name for s in model.sites}
    if downstream:
        gate_muls = gate_nodes(graph, [s.name for s in model.sites], "gate_costs")
        for i, gated in enumerate(gate_muls):
            found = _consumers(gated, modules)
            # A reader that is gated itself saves (in, out) pairs that both gates would
            # claim: left out, so that summed costs never count a multiply-add twice.
            consumers[i] = [c for c in found if c.target not in site_names]
    hooked = {s.name for s in model.sites} | {c.target for cs in consumers.values() for c in cs}
    shapes = _output_shapes(model, example_input, modules, hooked)

    def out_shape(node: fx.Node) -> torch.Size:
        return shapes[node.target][calls[node.target].index(node)]

    costs = torch.zeros(model.num_gates, dtype=torch.float64)
    for i, site in enumerate(model.sites):
        per_channel = _channel_flops(modules[site.name], out_shape(calls[site.name][0]))
        for consumer in consumers.get(i, []):
            per_channel += _input_channel_flops(modules[consumer.target], out_shape(consumer))
        costs[site.offset : site.stop] = float(per_channel * site.group_size)
    return costs
