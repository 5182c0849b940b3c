"""The rules about fx graph nodes, in one place: what counts as a conv, an addition, an
activation, a global pooling, a channel-wise op that keeps zeros zero, which node is a
site's gate multiply, and how often a module runs.

Used by site finding (:mod:`gatekit.sites`), the transform, gate costs and the inference
rewrites (:mod:`gatekit.inference`), so that they agree on what they see.

>>> import torch
>>> from torch import fx, nn
>>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)))
>>> modules = dict(gm.named_modules())
>>> [n.target for n in gm.graph.nodes if n.op == "call_module" and is_conv(modules[n.target])]
['0', '2']
>>> conv_output_size((32, 32), kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1))
[16, 16]
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ._errors import GatekitError

__all__: list[str] = []

# --------------------------------------------------------------------------------------
# Convs
# --------------------------------------------------------------------------------------

#: The convs gatekit gates, costs and rewrites: ``Conv1d/2d/3d`` and their subclasses
#: (timm's ``Conv2dSame``).  Transposed convs are not: their output channels are not
#: filters over the input in the same sense.  Tracing keeps every ``_ConvNd`` (transposed
#: included) whole, see :data:`ANY_CONV_TYPES`.
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Every conv, transposed included: the tracer keeps them whole (never traces through
#: them), a mode-dependent module holding one cannot be made a leaf, and the gater probe
#: sizes its dummy input from the first one.
ANY_CONV_TYPES = (nn.modules.conv._ConvNd,)


def is_conv(module: nn.Module | None) -> bool:
    """A conv gatekit can gate: an instance of ``Conv1d``, ``Conv2d`` or ``Conv3d``."""
    return isinstance(module, CONV_TYPES)


def conv_output_size(
    size: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> list[int]:
    """The spatial output size of a convolution (``torch.nn.Conv2d``'s formula), per dim."""
    return [
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(size, kernel_size, stride, padding, dilation)
    ]


# --------------------------------------------------------------------------------------
# Additions
# --------------------------------------------------------------------------------------

#: Out-of-place additions: a new tensor, the inputs untouched.
ADD_FUNCTIONS = (operator.add, torch.add)
#: In-place additions (``out += identity`` traces to ``iadd``): they write into their
#: first input.  A residual addition all the same for site finding; not rewritten by
#: skip_compute's residual accumulation, which would have to track that aliasing.
INPLACE_ADD_FUNCTIONS = (operator.iadd,)
ADD_METHODS = ("add",)
INPLACE_ADD_METHODS = ("add_",)


def is_add(node: fx.Node, *, in_place: bool = True) -> bool:
    """An addition of two graph values (``in_place=False``: out-of-place ones only)."""
    functions = ADD_FUNCTIONS + (INPLACE_ADD_FUNCTIONS if in_place else ())
    methods = ADD_METHODS + (INPLACE_ADD_METHODS if in_place else ())
    adds = (node.op == "call_function" and node.target in functions) or (
        node.op == "call_method" and node.target in methods
    )
    return adds and len(node.args) >= 2 and all(isinstance(a, fx.Node) for a in node.args[:2])


# --------------------------------------------------------------------------------------
# Activations and pooling
# --------------------------------------------------------------------------------------

ACTIVATION_FUNCTIONS = {
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, F.relu, F.relu_, F.relu6, F.silu,
    F.gelu, F.hardswish, F.leaky_relu, F.mish,
}  # fmt: skip
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}
_RELU_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu_}
_RELU_METHODS = {"relu", "relu_"}


def activation_name(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """If ``node`` is an activation, its name: the module's qualified name (a module from
    ``torch.nn.modules.activation``) or the function's or method's name; else None."""
    if node.op == "call_module":
        if type(modules[node.target]).__module__.startswith("torch.nn.modules.activation"):
            return node.target
    elif node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS:
        return node.target.__name__
    elif node.op == "call_method" and node.target in ACTIVATION_METHODS:
        return node.target
    return None


def is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A plain ReLU: an ``nn.ReLU`` module (not a subclass), ``relu``/``relu_`` function or method."""
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in _RELU_METHODS


GLOBAL_POOL_MODULES = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
GLOBAL_POOL_FUNCTIONS = {
    torch.mean, torch.amax, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.adaptive_max_pool2d,
}  # fmt: skip
GLOBAL_POOL_METHODS = ("mean", "amax", "max", "sum")


def is_global_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A reduction over the spatial dims (adaptive pooling, ``mean``, ``amax``, ...)."""
    if node.op == "call_module":
        return isinstance(modules[node.target], GLOBAL_POOL_MODULES)
    if node.op == "call_function":
        return node.target in GLOBAL_POOL_FUNCTIONS
    return node.op == "call_method" and node.target in GLOBAL_POOL_METHODS


# Channel-wise modules, functions and tensor methods with f(0) == 0 in eval mode (where gate
# costs and skip_compute run them; AlphaDropout keeps zeros in eval mode only): a closed
# (all-zero) channel is all zero after them.  Norms are not here: BatchNorm maps a zero
# channel to a constant.  PReLU is, see _keeps_zero_module.
#: The local poolings among them: channel-wise, but not element-wise (the export's blocked
#: path cannot run them on a blocked tensor).
POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                nn.AvgPool3d)
POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
                  F.avg_pool3d}
_ZERO_KEEPING_MODULES = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Tanh, nn.Softshrink, nn.Hardshrink, nn.Tanhshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, *POOL_MODULES,
)  # fmt: skip
_ZERO_KEEPING_FUNCTIONS = {
    torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu,
    F.gelu, F.silu, F.mish, F.hardswish, torch.tanh, F.dropout, F.dropout1d, F.dropout2d,
    F.dropout3d, *POOL_FUNCTIONS,
}  # fmt: skip
_ZERO_KEEPING_METHODS = {"relu", "relu_", "tanh", "tanh_", "clone", "contiguous"}

#: The submodule through which a gated graph reads its own train/eval mode (a
#: :class:`gatekit._tracing.ModeFlag`, as in ``F.dropout(x, training=gatekit_mode())``):
#: a bool at run time, not a tensor.
MODE_FLAG = "gatekit_mode"


def _is_tensor_arg(arg: object) -> bool:
    return isinstance(arg, fx.Node) and not (arg.op == "call_module" and arg.target == MODE_FLAG)


def _keeps_zero_module(module: nn.Module, compact: bool) -> bool:
    if isinstance(module, nn.Hardtanh):  # ReLU6 included
        return module.min_val <= 0 <= module.max_val
    if isinstance(module, nn.PReLU):  # a * 0 == 0, but one weight per channel unless 1
        return not compact or module.num_parameters == 1
    return isinstance(module, _ZERO_KEEPING_MODULES)


def keeps_zero_channels(
    node: fx.Node, source: fx.Node, modules: dict[str, nn.Module], *, compact: bool = False
) -> bool:
    """``node`` is channel-wise with ``f(0) == 0`` and takes ``source`` as its only tensor:
    a channel of ``source`` that is all zero is all zero in ``node``'s output.

    The one rule for both readers of zeros: gate costs count a closed channel's work in the
    convs it reaches through such nodes (:func:`gatekit.gate_costs`), and skip_compute
    runs such nodes on the open channels alone (``compact=True``).  ``compact=True`` also
    asks that ``node`` run unchanged on a tensor holding only some of ``source``'s channels,
    ``f(x[:, idx]) == f(x)[:, idx]``: a module with one parameter per channel
    (``nn.PReLU(num_parameters=C)``) keeps zeros but fails that.

    >>> import torch
    >>> from torch import fx, nn
    >>> gm = fx.symbolic_trace(nn.Sequential(nn.PReLU(4), nn.MaxPool2d(2)))
    >>> x, prelu, pool = list(gm.graph.nodes)[:3]
    >>> modules = dict(gm.named_modules())
    >>> keeps_zero_channels(prelu, x, modules), keeps_zero_channels(prelu, x, modules, compact=True)
    (True, False)
    >>> keeps_zero_channels(pool, prelu, modules, compact=True)
    True
    """
    if not node.args or node.args[0] is not source:
        return False
    if any(_is_tensor_arg(a) for a in (*node.args[1:], *node.kwargs.values())):
        return False
    if node.op == "call_module":
        return _keeps_zero_module(modules[node.target], compact)
    if node.op == "call_function":
        return node.target in _ZERO_KEEPING_FUNCTIONS
    return node.op == "call_method" and node.target in _ZERO_KEEPING_METHODS


# --------------------------------------------------------------------------------------
# Gate multiplies
# --------------------------------------------------------------------------------------

#: The ``node.meta`` key that :func:`gatekit.gate_model` sets on each gate multiply it
#: inserts (``after * gates[...]``): the site's index in ``GaterNet.sites``.  Gate costs
#: and the inference planner find a site's gate by this mark, never by the shape of the
#: nodes around it.
GATE_SITE = "gatekit_site"

#: The GraphModule attribute that carries the marks through pickling.  Unpickling a
#: GraphModule re-traces its generated code, which makes new nodes without their meta (and
#: node names may change); the ``operator.mul`` calls keep their order, so the marks are
#: kept as ``(number of mul calls, ((rank among them, site index), ...))`` and put back by
#: gatekit's tracer (:func:`restore_gate_marks`).
GATE_MARKS_ATTR = "_gatekit_gate_marks"


def mark_gate(node: fx.Node, index: int) -> None:
    """Mark ``node`` as the gate multiply of site ``index``."""
    node.meta[GATE_SITE] = index


def _muls(graph: fx.Graph) -> list[fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function" and n.target is operator.mul]


def save_gate_marks(graph_module: fx.GraphModule) -> None:
    """Record the graph's gate marks on ``graph_module`` (call after the last graph edit)."""
    muls = _muls(graph_module.graph)
    marks = tuple((rank, n.meta[GATE_SITE]) for rank, n in enumerate(muls) if GATE_SITE in n.meta)
    setattr(graph_module, GATE_MARKS_ATTR, (len(muls), marks))


def restore_gate_marks(root: Any, graph: fx.Graph) -> None:
    """Put back the marks recorded on ``root`` (the module a graph is re-traced from).

    Nothing is put back when ``root`` has no record or when the graph's ``mul`` calls are
    not the recorded ones; the readers (:func:`gate_nodes`) then raise.
    """
    record = getattr(root, GATE_MARKS_ATTR, None)
    if record is None:
        return
    count, marks = record
    muls = _muls(graph)
    if len(muls) != count:
        return
    for rank, index in marks:
        mark_gate(muls[rank], index)


def gate_nodes(graph: fx.Graph, site_names: Sequence[str], who: str) -> list[fx.Node]:
    """The gate multiply of each site, in site order, found by its :data:`GATE_SITE` mark.

    Raises :class:`GatekitError` when a site has no marked node, or one has several.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner")
    >>> muls = gate_nodes(net.backbone.graph, [s.name for s in net.sites], "a test")
    >>> muls[0].args[0].target, muls[0].meta[GATE_SITE]
    ('stage1.block1.bn1', 0)
    """
    found: dict[int, list[fx.Node]] = {}
    unknown: list[str] = []
    for node in graph.nodes:
        if GATE_SITE in node.meta:
            mark = node.meta[GATE_SITE]
            if isinstance(mark, int) and 0 <= mark < len(site_names):
                found.setdefault(mark, []).append(node)
            else:
                unknown.append(f"mark {mark!r} on {node.name}")
    missing = [name for i, name in enumerate(site_names) if i not in found]
    if missing:
        raise GatekitError(
            f"{who} expects each gate multiply of the backbone's graph to carry its site's "
            f"mark (node.meta[{GATE_SITE!r}], set by gatekit.gate_model), got none for the "
            f"sites {missing[:3]} ({len(missing)} of {len(site_names)}); build the model with "
            f"gatekit.gate_model and leave its graph as it made it"
        )
    repeated = [
        f"site {i} marked on {', '.join(n.name for n in nodes)}"
        for i, nodes in found.items()
        if len(nodes) > 1
    ]
    if repeated or unknown:
        raise GatekitError(
            f"{who} expects one marked gate multiply per site of the model "
            f"({len(site_names)} sites), got {'; '.join((repeated + unknown)[:3])} "
            f"(node.meta[{GATE_SITE!r}]); build the model with gatekit.gate_model and leave "
            f"its graph as it made it"
        )
    return [found[i][0] for i in range(len(site_names))]


# --------------------------------------------------------------------------------------
# Graph structure
# --------------------------------------------------------------------------------------


def call_counts(graph: fx.Graph) -> dict[str, int]:
    """How many times each module runs in one pass: its ``call_module`` nodes, by target."""
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def only_user(node: fx.Node) -> fx.Node | None:
    """The single node that reads ``node``, or None when there are none or several."""
    return next(iter(node.users)) if len(node.users) == 1 else None
