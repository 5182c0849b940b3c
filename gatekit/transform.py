"""gate_model: turn a CNN and a gater trunk into a :class:`gatekit.GaterNet` in one call.

The backbone is traced with torch.fx (see :func:`gatekit.get_gate_sites` for what gets
gated), a placeholder ``gates`` of shape ``(N, num_gates)`` is added to the graph, and after
each site's ``after`` node the graph multiplies by that site's chunk of the gate vector:

    out = out * gates[:, offset:stop, None, None]        # channels-first, 2-d convs

(one ``None`` per spatial dim; for channels-last sites the chunk goes last; with
``group_size > 1`` the chunk is ``repeat_interleave``-d first; the chunk takes the
activation's dtype, so autocast keeps half precision).  These are one view and one
multiply per site, the same work a hand-written gated model does, so the transform adds no
run-time cost.  Each multiply is marked with its site's index
(``node.meta["gatekit_site"]``): gate costs and the inference transforms find it by that
mark.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from . import _graph
from ._errors import GatekitError
from ._graph import ANY_CONV_TYPES
from ._tracing import trace
from .budget import BudgetHead
from .estimators import Gate, get_gate
from .gater import GaterNet
from .head import GaterHead
from .sites import GateSite, SitePolicy, find_sites

__all__ = ["gate_model"]

_PROBE_SIZES = (32, 64, 128, 224, 299)


def _insert_gates(graph_module: fx.GraphModule, sites: list[tuple[GateSite, fx.Node]]) -> None:
    graph = graph_module.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if any(p.target == "gates" for p in placeholders):
        raise GatekitError(
            "the backbone's forward already has an argument named 'gates'; expected a "
            "backbone that takes the input only; rename that argument"
        )
    # Before the first argument with a default, so the generated signature stays valid.
    with_default = [p for p in placeholders if p.args]
    anchor = graph.inserting_before(with_default[0]) if with_default else graph.inserting_after(placeholders[-1])
    with anchor:
        gates = graph.placeholder("gates")
    everything = slice(None)
    for site_index, (site, after) in enumerate(sites):
        ones = (None,) * site.spatial_dims
        chunk_slice = slice(site.offset, site.stop)
        with graph.inserting_after(after):
            if site.group_size == 1:
                index = (everything, chunk_slice, *ones) if site.channel_dim == 1 else (everything, *ones, chunk_slice)
                chunk = graph.call_function(operator.getitem, (gates, index))
            else:
                narrow = graph.call_function(operator.getitem, (gates, (everything, chunk_slice)))
                with graph.inserting_after(narrow):
                    wide = graph.call_method("repeat_interleave", (narrow, site.group_size), {"dim": 1})
                index = (everything, everything, *ones) if site.channel_dim == 1 else (everything, *ones, everything)
                with graph.inserting_after(wide):
                    chunk = graph.call_function(operator.getitem, (wide, index))
            with graph.inserting_after(chunk):
                typed = graph.call_method("type_as", (chunk, after))
            with graph.inserting_after(typed):
                gated = graph.call_function(operator.mul, (after, typed))
            _graph.mark_gate(gated, site_index)
        after.replace_all_uses_with(gated, delete_user_cb=lambda user, keep=(gated, typed): user not in keep)
    graph.lint()
    graph_module.recompile()
    _graph.save_gate_marks(graph_module)


def _probe_features(gater: nn.Module) -> int:
    """Width D of the gater's (N, D) output, from one no-grad eval-mode pass on a dummy batch."""
    conv = next((m for m in gater.modules() if isinstance(m, ANY_CONV_TYPES)), None)
    param = next(gater.parameters(), None)
    if conv is None or param is None:
        raise GatekitError(
            f"could not infer the width of the gater's output ({type(gater).__name__} has no "
            f"conv to size a probe input); pass gater_features=D, D being its output width"
        )
    training = [(m, m.training) for m in gater.modules()]
    gater.eval()
    errors = []
    try:
        for size in _PROBE_SIZES:
            shape = (2, conv.in_channels) + (size,) * len(conv.kernel_size)
            try:
                with torch.no_grad():
                    out = gater(torch.zeros(shape, device=param.device, dtype=param.dtype))
            except Exception as e:  # a too-small input fails in many ways; try the next size
                errors.append(f"{size}: {type(e).__name__}")
                continue
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise GatekitError(
                    f"the gater must map a batch (N, C, ...) to features (N, D), got {got} for "
                    f"an input of shape {shape}; end the gater with pooling and flatten "
                    f"(no classifier), e.g. timm's num_classes=0 or fc = nn.Identity()"
                )
            return int(out.shape[1])
    finally:
        for m, mode in training:
            m.training = mode
    raise GatekitError(
        f"could not run the gater on a dummy input to find its output width (tried sizes "
        f"{', '.join(errors)}); pass gater_features=D, D being its output width"
    )


def _check_arguments(backbone: Any, gater: Any, gater_features: Any) -> None:
    for what, module in (("backbone", backbone), ("gater", gater)):
        if not isinstance(module, nn.Module):
            raise GatekitError(f"{what} must be an nn.Module, got {type(module).__name__}")
    if gater_features is not None and (
        isinstance(gater_features, bool) or not isinstance(gater_features, int) or gater_features < 1
    ):
        raise GatekitError(f"gater_features must be None or an int >= 1, got {gater_features!r}")


def gate_model(
    backbone: nn.Module,
    gater: nn.Module,
    *,
    sites: SitePolicy = "residual",
    estimator: str | type[Gate] | Gate = "semhash",
    bottleneck: int = 8,
    group_size: int = 1,
    head_batchnorm: bool = False,
    init_bias: float = 0.0,
    budget_input: bool = False,
    gater_features: int | None = None,
    check_finite: bool = False,
    leaf_modules: Sequence[type[nn.Module] | str] = (),
    autowrap_functions: Sequence[Callable[..., Any]] = (),
) -> GaterNet:
    """Return a new :class:`GaterNet`: ``backbone`` with its filters gated by ``gater``.

    ``backbone`` and ``gater`` are deep-copied, never modified; the result is in the
    backbone's train/eval mode.  Arguments:

    - ``sites``: which convs to gate, see :func:`gatekit.get_gate_sites` (``"residual"``,
      ``"inner"``, ``"all"``, a list of conv names, or a callable ``(name, module) -> bool``).
    - ``estimator``: a name for :func:`gatekit.get_gate`, a :class:`gatekit.Gate` class or
      instance (copied).  Default: GaterNet's improved SemHash.
    - ``bottleneck``: width b of the head ``D -> b -> ReLU -> num_gates`` (8 in the
      released code); ``head_batchnorm`` puts the paper's BatchNorm before the ReLU;
      ``init_bias`` fills the head's last bias (> 0 starts with gates open).
    - ``budget_input``: the head also reads a per-sample compute budget, and the model is
      called as ``net(x, budget=b)`` (one model for any budget; the head is a
      :class:`~gatekit.budget.BudgetHead`).
    - ``group_size``: one gate switches this many adjacent channels.
    - ``gater_features``: width D of the gater's output; by default found by one no-grad
      eval-mode pass of the gater copy on a zero batch (sizes 32, 64, ... until one runs).
    - ``check_finite``: raise :class:`GatekitError` on non-finite gate logits (eager only).
    - ``leaf_modules`` / ``autowrap_functions``: passed to the fx tracer for code it cannot
      trace (see :func:`gatekit.get_gate_sites`).

    The backbone is traced in train and in eval mode.  Mode-dependent arguments such as
    ``F.dropout(x, training=self.training)`` or torchvision's stochastic depth then follow
    the gated model's own ``.train()``/``.eval()`` (through a ``gatekit_mode`` submodule of
    ``backbone``); a module that runs different operations per mode is kept whole, or
    rejected with a :class:`GatekitError` if it holds convs.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="residual", bottleneck=8)
    >>> net.num_gates, [s.offset for s in net.sites[:4]]
    (336, [0, 16, 32, 48])
    >>> net(torch.randn(4, 3, 32, 32)).shape
    torch.Size([4, 10])
    """
    _check_arguments(backbone, gater, gater_features)
    gate = get_gate(copy.deepcopy(estimator) if isinstance(estimator, Gate) else estimator)
    backbone_copy = copy.deepcopy(backbone)
    gater_copy = copy.deepcopy(gater)
    graph_module = trace(backbone_copy, leaf_modules=leaf_modules, autowrap_functions=autowrap_functions)
    found = find_sites(graph_module, sites, group_size)
    _insert_gates(graph_module, found)
    site_list = [site for site, _ in found]
    num_gates = sum(s.num_gates for s in site_list)
    features = gater_features if gater_features is not None else _probe_features(gater_copy)
    param = next(gater_copy.parameters(), None)  # the head goes where the gater is
    head = (BudgetHead if budget_input else GaterHead)(
        features, num_gates, bottleneck, batchnorm=head_batchnorm, init_bias=init_bias,
        device=None if param is None else param.device,
        dtype=None if param is None else param.dtype,
    )
    net = GaterNet(
        graph_module, gater_copy, head, gate, site_list, in_features=features, check_finite=check_finite
    )
    # The gater keeps its own mode flags; everything gate_model made follows the backbone.
    net.training = backbone.training
    for module in (head, gate):
        module.train(backbone.training)
    return net
