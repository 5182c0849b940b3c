"""What :func:`gatekit.skip_compute` and :func:`gatekit.fuse_gated_convs` share, and
:func:`gatekit.exportable` with them: the checks they start with, the graph clean-up they
end with, the GaterNet they return (built from :func:`gaternet_parts`), and how a site's
gates map to its channels (:func:`channel_index`, :func:`per_channel`).

Each transform: ``check_eval_net(net)`` -> copy ``net.backbone`` -> plan the sites
(:mod:`.plan`) -> rewrite the graph -> ``finish_graph`` -> :class:`InferenceGaterNet`
(or :class:`gatekit.SkipComputeNet`) with one :class:`SiteRoute` per site in ``routes``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, fx, nn

from .. import _graph
from .._errors import GatekitError
from ..gater import GaterNet

__all__ = ["InferenceGaterNet", "SiteRoute"]

# What a gate site became under a transform (``SiteRoute.mode``); each name is written here
# once.  skip_compute: SLICED, SCATTER or DENSE; fuse_gated_convs: FUSED or DENSE.
SLICED = "sliced"  # only the open filters computed; the consumer conv reads only them
SCATTER = "scatter"  # only the open filters computed, then placed into zeros
DENSE = "dense"  # computed as in the gated model
FUSED = "fused"  # one gatekit.ops.gated_conv2d call


class SiteRoute(NamedTuple):
    """What one gate site became under an inference transform.

    ``site``: the gated conv's name; ``mode``: under :func:`gatekit.skip_compute`
    ``"sliced"`` (only the open filters computed, and the ``consumer`` conv reads only
    their input channels), ``"scatter"`` (only the open filters computed, then placed
    into zeros) or ``"dense"`` (computed as in the gated model); under
    :func:`gatekit.fuse_gated_convs` ``"fused"`` (one :func:`gatekit.ops.gated_conv2d`
    call) or ``"dense"``.  ``reason`` says why a site is not ``"sliced"``/``"fused"``.
    ``batching``: under :func:`gatekit.skip_compute`, the batching mode that runs a
    ``"sliced"`` or ``"scatter"`` site when the samples of a batch open different
    filters, as ``skip_compute(net, batching=...)`` took it (the docs' ops page lists the
    registered modes); under ``"auto"`` a rule picks one per batch, and
    :meth:`gatekit.SkipComputeNet.batching_choice` says which and why.  ``""`` for a
    dense site and under :func:`gatekit.fuse_gated_convs`.

    >>> import gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="residual").eval()
    >>> route = gatekit.skip_compute(net).routes[0]
    >>> route.site, route.mode, route.consumer
    ('stage1.block1.conv2', 'scatter', None)
    >>> route.reason, route.batching
    ('gated output feeds a non-conv op', 'auto')
    """

    site: str
    mode: str
    consumer: str | None
    reason: str
    batching: str = ""


class InferenceGaterNet(GaterNet):
    """A GaterNet whose backbone was rewritten for inference; eval mode only.

    Made by :func:`gatekit.fuse_gated_convs` (and, as its subclass
    :class:`gatekit.SkipComputeNet`, by :func:`gatekit.skip_compute`).  It computes what
    the GaterNet it was made from computes in eval mode; ``routes`` (a tuple of
    :class:`SiteRoute`, in the order of ``sites``) says what each gate site became.
    Calling it in training mode raises :class:`gatekit.GatekitError`.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner").eval()
    >>> fused = gatekit.fuse_gated_convs(net, op="reference")
    >>> isinstance(fused, gatekit.GaterNet), {r.mode for r in fused.routes}
    (True, {'fused'})
    """

    routes: tuple[SiteRoute, ...]

    def __init__(self, net: GaterNet, backbone: nn.Module, routes: Sequence[SiteRoute]):
        super().__init__(backbone, **gaternet_parts(net))
        self.routes = tuple(routes)
        self.input_spec = net.input_spec  # the rewritten backbone's first conv may be fused
        self.eval()

    def forward(self, x: Any, gates: Tensor | None = None, *, budget: float | Tensor | None = None) -> Any:
        if self.training:
            raise GatekitError(
                f"{type(self).__name__} runs in eval mode only (got training=True): its "
                f"BatchNorms are folded with their running statistics and its gates must be "
                f"the eval-mode ones; call .eval(), and train the GaterNet it was made from"
            )
        return super().forward(x, gates, budget=budget)

    #: The route modes this transform gives, counted in the repr.
    _MODES: tuple[str, ...] = (FUSED, DENSE)

    def _repr_fields(self) -> list[str]:
        """What the repr adds to GaterNet's: one count per route mode (subclasses extend)."""
        return [f"{m}={sum(r.mode == m for r in self.routes)}" for m in self._MODES]

    def extra_repr(self) -> str:
        return ", ".join([super().extra_repr(), *self._repr_fields()])


def gaternet_parts(net: GaterNet) -> dict[str, Any]:
    """What a GaterNet around a rewritten backbone takes from ``net``, as keyword
    arguments of :class:`gatekit.GaterNet` besides the backbone: copies of its gater, head
    and estimator, its sites and its settings.  (Set ``input_spec`` from ``net`` too: the
    rewritten backbone's first conv may no longer be a conv.)

    >>> import gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), check_finite=True).eval()
    >>> parts = gaternet_parts(net)
    >>> sorted(parts), parts["gater"] is net.gater, parts["check_finite"]
    (['check_finite', 'estimator', 'gater', 'head', 'in_features', 'sites'], False, True)
    """
    return {
        "gater": copy.deepcopy(net.gater),
        "head": copy.deepcopy(net.head),
        "estimator": copy.deepcopy(net.estimator),
        "sites": net.sites,
        "in_features": net.in_features,
        "check_finite": net.check_finite,
    }


def check_eval_net(net: Any, fn: str, why: str) -> None:
    """The common start: ``net`` is a GaterNet, and every module of it is in eval mode."""
    if not isinstance(net, GaterNet):
        raise GatekitError(
            f"{fn} expects a GaterNet (from gatekit.gate_model), got {type(net).__name__}"
        )
    training = [name or "the model" for name, m in net.named_modules() if m.training]
    if training:
        raise GatekitError(
            f"{fn} needs a model in eval mode ({why}), but {training[0]} is in training "
            f"mode; call net.eval() first"
        )


def check_binary(gates: Tensor, fn: str) -> None:
    """Gates must be exactly 0 or 1 (what the estimators give in eval mode)."""
    binary = (gates == 0) | (gates == 1)
    if not bool(binary.all()):
        bad = gates[~binary][0].item()
        raise GatekitError(
            f"{fn} needs binary gates (0 or 1), got a value {bad}; pass hard gates, e.g. "
            f"(logits > 0).float(), or use the dense GaterNet for soft gates"
        )


def channel_index(gate_idx: Tensor, group_size: int) -> Tensor:
    """The channels that a site's gates ``gate_idx`` switch, ``(..., K)`` ->
    ``(..., K * group_size)``: gate ``g`` switches channels ``g * group_size`` up to
    ``(g + 1) * group_size - 1`` (:attr:`gatekit.GateSite.group_size`).

    >>> import torch
    >>> channel_index(torch.tensor([0, 2]), 2).tolist()
    [0, 1, 4, 5]
    """
    if group_size == 1:
        return gate_idx
    span = torch.arange(group_size, device=gate_idx.device)
    return (gate_idx.unsqueeze(-1) * group_size + span).flatten(-2)


def per_channel(values: Tensor, group_size: int) -> Tensor:
    """A site's per-gate values ``(..., G)`` as per-channel ones ``(..., G * group_size)``:
    each repeated for the channels its gate switches (see :func:`channel_index`).

    >>> import torch
    >>> per_channel(torch.tensor([[1.0, 0.0]]), 2).tolist()
    [[1.0, 1.0, 0.0, 0.0]]
    """
    if group_size == 1:
        return values
    wide = values.unsqueeze(-1).expand(*values.shape, group_size)
    return wide.reshape(*values.shape[:-1], values.shape[-1] * group_size)


def finish_graph(gm: fx.GraphModule) -> None:
    """The common end: drop what the rewrite left unused, check and regenerate the code."""
    # The gate marks' pickling record describes gate_model's graph, not this rewrite.
    gm.__dict__.pop(_graph.GATE_MARKS_ATTR, None)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    # Unpickling re-traces the generated code with the tracer class that made the graph;
    # gate_model's tracer takes constructor arguments, torch.fx's default one does not.
    gm._tracer_cls = None

