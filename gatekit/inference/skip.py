"""skip_compute: run a GaterNet in eval mode computing only the filters whose gates are open.

The dense gated model computes every filter and multiplies the closed ones by zero.
:func:`skip_compute` rewrites the gated backbone's graph once (see
:mod:`gatekit.inference.plan`): every conv followed by an eval-mode BatchNorm gets the
BatchNorm folded in, each gated conv computes only its open filters, and the conv that
consumes a gated output reads only the matching input channels.  Each forward then groups
the samples by gate pattern and runs the rewritten graph once per group.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .._errors import GatekitError
from ..gater import GaterNet
from .conv import SkipConv
from .folding import foldable_batchnorm
from .plan import SiteRoute, plan_routes

__all__ = ["SkipComputeNet", "skip_compute"]


def _channels_last(x: Any) -> Any:
    # Keep every activation in one layout: mkldnn convs and the 1x1 GEMMs both want NHWC.
    if isinstance(x, Tensor) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _single_bn_user(gm: fx.GraphModule, conv: fx.Node, calls: dict[str, int]) -> fx.Node | None:
    if len(conv.users) != 1:
        return None
    user = next(iter(conv.users))
    if user.op != "call_module" or user.args != (conv,) or user.kwargs or calls[user.target] != 1:
        return None
    return user if foldable_batchnorm(gm.get_submodule(user.target)) else None


def _rewrite(gm: fx.GraphModule, routes: list[SiteRoute]) -> None:
    """Replace convs (and their BatchNorms and gate multiplies) by :class:`SkipConv` calls."""
    graph = gm.graph
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    producers = {r.conv: r for r in routes if r.mode != "dense"}
    consumers = {r.consumer: r for r in routes if r.mode == "sliced"}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    gates = next(p for p in placeholders if p.target == "gates")
    with graph.inserting_after(gates):
        open_channels = graph.placeholder("open_channels")
    with graph.inserting_after(open_channels):
        open_masks = graph.placeholder("open_masks")
    first = placeholders[0]
    with graph.inserting_after(open_masks):
        layout = graph.call_function(_channels_last, (first,))
    first.replace_all_uses_with(layout, delete_user_cb=lambda user: user is not layout)

    for node in list(graph.nodes):
        if node.op != "call_module" or calls.get(node.target) != 1:
            continue
        module = gm.get_submodule(node.target)
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        out_route, in_route = producers.get(node), consumers.get(node)
        if out_route is not None:
            bn_node = out_route.norm
        elif node.args and len(node.args) == 1 and not node.kwargs:
            bn_node = _single_bn_user(gm, node, calls)
        else:
            bn_node = None
        if out_route is None and in_route is None and bn_node is None:
            continue
        bn = None if bn_node is None else gm.get_submodule(bn_node.target)
        out_mode = "full" if out_route is None else out_route.mode
        skip = SkipConv(module, bn, out_mode=out_mode, in_sliced=in_route is not None)
        name = "skip_" + node.target.replace(".", "_")
        gm.add_submodule(name, skip)
        with graph.inserting_before(node):
            idx = [
                None
                if r is None
                else graph.call_function(operator.getitem, (open_channels, r.index))
                for r in (out_route, in_route)
            ]
            mask = None
            if out_route is not None:
                mask = graph.call_function(operator.getitem, (open_masks, out_route.index))
            new = graph.call_module(name, (node.args[0], *idx, mask))
        replaced = out_route.mul if out_route is not None else (bn_node or node)
        replaced.replace_all_uses_with(new)
    graph.eliminate_dead_code()
    _accumulate_residuals(gm)
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    # Unpickling re-traces the generated code with the tracer class that made the graph;
    # gate_model's tracer takes constructor arguments, torch.fx's default one does not.
    gm._tracer_cls = None


_ADDS = (operator.add, torch.add)


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


_FRESH_FUNCTIONS = (*_ADDS, operator.mul, torch.relu, F.relu, F.relu6, F.silu, F.gelu)
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
        if add.op != "call_function" or add.target not in _ADDS or add.kwargs or len(add.args) != 2:
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


class SkipComputeNet(nn.Module):
    """A GaterNet for inference that computes only the filters whose gates are open.

    Made by :func:`gatekit.skip_compute`.  ``forward(x, gates=None)`` returns what the
    gated model returns in eval mode (``gates``: binary, ``(N, num_gates)``; by default
    the gater's eval-mode gates), running without autograd.  ``routes`` lists, per site,
    ``(site name, mode, consumer conv or None, reason)``: mode ``"sliced"`` (output and the
    consumer's input sliced), ``"scatter"`` (output sliced, then placed into zeros) or
    ``"dense"``.  ``last_gates`` holds the gates of the last forward.

    Samples are grouped by gate pattern and each group runs at its own batch size; with
    random patterns every sample is its own group.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="residual").eval()
    >>> fast = gatekit.skip_compute(net)
    >>> fast
    SkipComputeNet(
      num_gates=336, sites=9, batching='pattern', sliced=0, scatter=9, dense=0
      ...
    >>> fast(torch.randn(2, 3, 32, 32)).shape, fast.last_gates.shape
    (torch.Size([2, 10]), torch.Size([2, 336]))
    """

    last_gates: Tensor | None

    def __init__(
        self,
        net: GaterNet,
        backbone: fx.GraphModule,
        routes: list[SiteRoute],
        batching: str = "pattern",
    ):
        super().__init__()
        self.batching = batching
        self.backbone = backbone
        self.gater = copy.deepcopy(net.gater)
        self.head = copy.deepcopy(net.head)
        self.estimator = copy.deepcopy(net.estimator)
        self.sites = net.sites
        self.num_gates = net.num_gates
        self.in_features = net.in_features
        self.check_finite = net.check_finite
        self.routes = tuple(
            (r.site.name, r.mode, None if r.consumer is None else r.consumer.target, r.reason)
            for r in routes
        )
        self._live = [r.mode != "dense" for r in routes]
        self.register_buffer(
            "_starts",
            torch.tensor([s.offset for s in self.sites], dtype=torch.long),
            persistent=False,
        )
        self.register_buffer(
            "_stops", torch.tensor([s.stop for s in self.sites], dtype=torch.long), persistent=False
        )
        self.eval()
        self.last_gates = None

    def gate_logits(self, x: Any) -> Tensor:
        """The gater's gate logits, as :meth:`gatekit.GaterNet.gate_logits`."""
        return GaterNet.gate_logits(self, x)  # type: ignore[arg-type]

    def _open_channels(self, row: Tensor) -> list[Tensor | None]:
        """Per site, the sorted channel numbers whose gate is open in ``row``."""
        open_gates = row.nonzero().squeeze(1)
        bounds = torch.searchsorted(open_gates, torch.cat([self._starts, self._stops])).tolist()
        n = len(self.sites)
        result: list[Tensor | None] = []
        for i, site in enumerate(self.sites):
            if not self._live[i]:
                result.append(None)
                continue
            idx = open_gates[bounds[i] : bounds[n + i]] - site.offset
            if site.group_size > 1:
                span = torch.arange(site.group_size, device=idx.device)
                idx = (idx[:, None] * site.group_size + span).flatten()
            result.append(idx)
        return result

    def _masks(self, gates: Tensor, open_channels: list[Tensor | None]) -> list[Tensor | None]:
        """Per site, the samples' gates ``(N, k)`` of the ``k`` channels computed (None: all 1)."""
        masks: list[Tensor | None] = []
        for site, idx in zip(self.sites, open_channels):
            if idx is None:
                masks.append(None)
                continue
            chunk = gates[:, site.offset : site.stop]
            # Channel c belongs to gate c // group_size.
            mask = chunk.index_select(1, torch.div(idx, site.group_size, rounding_mode="floor"))
            masks.append(None if bool(mask.all()) else mask)
        return masks

    def forward(self, x: Any, gates: Tensor | None = None) -> Any:
        if self.training:
            raise GatekitError(
                "SkipComputeNet runs in eval mode only (got training=True): skipping needs "
                "binary gates and folded BatchNorm; call .eval(), and train the GaterNet instead"
            )
        with torch.no_grad():
            if gates is None:
                gates = self.estimator(self.gate_logits(x))
            else:
                GaterNet._check_gates(self, x, gates)  # type: ignore[arg-type]
            binary = (gates == 0) | (gates == 1)
            if not bool(binary.all()):
                bad = gates[~binary][0].item()
                raise GatekitError(
                    f"skip_compute needs binary gates (0 or 1), got a value {bad}; pass hard "
                    f"gates, e.g. (logits > 0).float(), or use the dense GaterNet for soft gates"
                )
            self.last_gates = gates
            n = gates.shape[0]
            no_masks = [None] * len(self.sites)
            if n == 1 or bool((gates == gates[:1]).all()):
                idx = self._open_channels(gates[0])
                return self.backbone(x, gates=gates, open_channels=idx, open_masks=no_masks)
            if self.batching == "union":
                union = (gates != 0).any(0)
                idx = self._open_channels(union)
                return self.backbone(
                    x, gates=gates, open_channels=idx, open_masks=self._masks(gates, idx)
                )
            patterns, group = torch.unique(gates, dim=0, return_inverse=True)
            outputs, members = [], []
            for p in range(patterns.shape[0]):
                idx = (group == p).nonzero().squeeze(1)
                sub = x.index_select(0, idx)
                outputs.append(
                    self.backbone(
                        sub,
                        gates=gates.index_select(0, idx),
                        open_channels=self._open_channels(patterns[p]),
                        open_masks=no_masks,
                    )
                )
                members.append(idx)
            return _merge(outputs, torch.cat(members), n)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["last_gates"] = None
        return state

    def extra_repr(self) -> str:
        counts = {m: sum(r[1] == m for r in self.routes) for m in ("sliced", "scatter", "dense")}
        return (
            f"num_gates={self.num_gates}, sites={len(self.sites)}, batching={self.batching!r}, "
            + ", ".join(f"{k}={v}" for k, v in counts.items())
        )


def _merge(outputs: list[Any], order: Tensor, n: int) -> Any:
    """Put per-group outputs back in sample order (tensors, and tuples/lists/dicts of them)."""
    first = outputs[0]
    if isinstance(first, Tensor):
        stacked = torch.cat(outputs)
        result = torch.empty_like(stacked)
        result[order] = stacked
        return result
    if isinstance(first, (tuple, list)):
        return type(first)(_merge([o[i] for o in outputs], order, n) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _merge([o[k] for o in outputs], order, n) for k in first}
    raise GatekitError(
        f"skip_compute can merge per-pattern outputs that are tensors, tuples, lists or "
        f"dicts of tensors, got {type(first).__name__}; pass samples that share one gate "
        f"pattern (or one sample) per call"
    )


def skip_compute(net: GaterNet, *, batching: str = "pattern") -> SkipComputeNet:
    """Return a copy of an eval-mode ``net`` that computes only the filters whose gates are open.

    For each sample, or each group of samples sharing a gate pattern: every eval-mode
    BatchNorm that follows a conv is folded into it (once, here); a gated conv computes
    only its open filters; the next conv (reached through ReLU-like, dropout or pooling
    ops) reads only the matching input channels.  Where a gated output goes elsewhere (a
    residual addition, say) the open filters are computed and scattered back into zeros.
    ``result.routes`` says what each site does.  ``net`` is not modified.

    Outputs equal the dense gated model's up to floating-point rounding: folding BatchNorm
    rounds each weight once and a conv over fewer channels sums in another order (float32:
    differences of order 1e-6 of the activations' scale; float64: 1e-13).  Runs best on
    the CPU with 4-d (channels-last) activations; on a GPU see :func:`gatekit.fuse_gated_convs`.

    ``batching`` says how a batch whose samples open different filters runs:
    ``"pattern"`` (default) groups the samples by gate pattern, one pass per group (best
    when patterns differ a lot, and at batch 1); ``"union"`` runs one pass computing, per
    site, the filters open in any sample, zeroing them per sample (best for trained
    gaters whose gates mostly agree across samples: always-off filters are skipped at the
    full batch size).

    Raises :class:`GatekitError` if ``net`` is in training mode or is not a GaterNet, for
    an unknown ``batching``, and at call time for non-binary gates.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner").eval()
    >>> fast = gatekit.skip_compute(net)
    >>> x, g = torch.randn(2, 3, 32, 32), (torch.rand(2, net.num_gates) < 0.5).float()
    >>> torch.allclose(fast(x, gates=g), net(x, gates=g), atol=1e-4)
    True
    >>> fast.routes[0][:3]
    ('stage1.block1.conv1', 'sliced', 'stage1.block1.conv2')
    """
    if not isinstance(net, GaterNet):
        raise GatekitError(
            f"skip_compute expects a GaterNet (from gatekit.gate_model), got {type(net).__name__}"
        )
    training = [name or "the model" for name, m in net.named_modules() if m.training]
    if training:
        raise GatekitError(
            f"skip_compute needs a model in eval mode (binary gates, BatchNorm with running "
            f"statistics), but {training[0]} is in training mode; call net.eval() first"
        )
    if batching not in ("pattern", "union"):
        raise GatekitError(f'batching must be "pattern" or "union", got {batching!r}')
    backbone = copy.deepcopy(net.backbone)
    routes = plan_routes(backbone, net.sites)
    _rewrite(backbone, routes)
    return SkipComputeNet(net, backbone, routes, batching)
