"""fuse_gated_convs: run each gated conv + BatchNorm + ReLU + gate as one gated_conv2d call.

In the gated backbone's graph a site reads ``relu(bn(conv(x)) * g)``.  For binary (or any
non-negative) gates that equals ``relu(conv(x) * scale + shift) * g``, BatchNorm written as
its eval-mode per-channel ``scale``/``shift``: exactly what :func:`gatekit.ops.gated_conv2d`
computes in one call.  On CUDA the op's Triton kernel skips the work of closed output tiles
and of closed input channels of the previous gated layer (passed as ``in_gate``); on the
CPU it dispatches to the plain PyTorch reference.
"""

from __future__ import annotations

import copy

from torch import Tensor, fx, nn

from .. import _graph
from .._errors import GatekitError
from ..gater import GaterNet
from ..sites import GateSite
from ._folding import batchnorm_scale_shift
from .common import DENSE, FUSED, InferenceGaterNet, SiteRoute, check_eval_net, finish_graph
from .plan import SitePlan, plan_sites

__all__ = ["FusedGatedConv2d", "fuse_gated_convs"]


class FusedGatedConv2d(nn.Module):
    """One gate site as a single :func:`gatekit.ops.gated_conv2d` call (eval mode only).

    ``forward(x, gates, in_gates=None)`` takes the whole gate vector ``(N, num_gates)``
    and uses this site's chunk; ``in_gates`` (the producer site's chunk is taken from the
    same vector) tells the op which input channels are already zero.

    >>> import torch
    >>> conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4).eval()
    >>> site = GateSite("conv", "bn", channels=4, offset=1, norm="bn")
    >>> fused = FusedGatedConv2d(conv, bn, site, relu=True).eval()
    >>> x, gates = torch.randn(2, 3, 6, 6), torch.tensor([[1.0, 0, 1, 1, 0], [0, 1, 1, 0, 1]])
    >>> expected = torch.relu(bn(conv(x)) * gates[:, 1:5, None, None])
    >>> torch.allclose(fused(x, gates), expected, atol=1e-6)
    True
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.Module | None,
        site: GateSite,
        *,
        relu: bool,
        in_site: GateSite | None = None,
        op: str | None = None,
    ):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        scale, shift = (None, None) if bn is None else batchnorm_scale_shift(bn)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.start, self.stop = site.offset, site.stop
        self.in_range = None if in_site is None else (in_site.offset, in_site.stop)
        self.activation = "relu" if relu else None
        self.stride, self.padding = tuple(conv.stride), tuple(conv.padding)
        self.dilation, self.groups = tuple(conv.dilation), conv.groups
        self.op = op

    def forward(self, x: Tensor, gates: Tensor) -> Tensor:
        if self.training:
            raise GatekitError(
                "a fused gated conv runs in eval mode only (its BatchNorm is folded into "
                "fixed scale/shift); call .eval(), or train the unfused GaterNet"
            )
        from ..ops import gated_conv2d  # the ops package loads Triton lazily, on CUDA only

        gate = gates[:, self.start : self.stop].to(x.dtype).contiguous()
        in_gate = None
        if self.in_range is not None:
            in_gate = gates[:, self.in_range[0] : self.in_range[1]].to(x.dtype).contiguous()
        return gated_conv2d(
            x, self.weight, gate, bias=self.bias, scale=self.scale, shift=self.shift,
            activation=self.activation, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups, in_gate=in_gate, op=self.op,
        )  # fmt: skip

    def extra_repr(self) -> str:
        c_out, c_in = self.weight.shape[:2]
        return (
            f"{c_in * self.groups}, {c_out}, kernel_size={tuple(self.weight.shape[2:])}, "
            f"stride={self.stride}, gates=[{self.start}:{self.stop}], activation={self.activation}, "
            f"in_gates={self.in_range}, op={self.op}"
        )


def _relu_user(gm: fx.GraphModule, plan: SitePlan) -> fx.Node | None:
    """The site's activation (:attr:`gatekit.GateSite.activation`) when it is a plain ReLU
    that alone reads the gate multiply, with no other tensor argument."""
    user = _graph.only_user(plan.mul)
    if plan.site.activation is None or user is None:
        return None
    modules = dict(gm.named_modules())
    if _graph.activation_name(user, modules) != plan.site.activation:
        return None
    if user.args[:1] != (plan.mul,) or any(isinstance(a, fx.Node) for a in user.args[1:]):
        return None
    return user if _graph.is_relu(user, modules) else None


def _fuse(gm: fx.GraphModule, plans: list[SitePlan], op: str | None) -> list[SiteRoute]:
    graph = gm.graph
    gates = next(n for n in graph.nodes if n.op == "placeholder" and n.target == "gates")
    fused_output: dict[fx.Node, SitePlan] = {}
    routes = []
    for plan in plans:
        conv = gm.get_submodule(plan.conv.target) if plan.conv is not None else None
        if plan.mode == DENSE or type(conv) is not nn.Conv2d:
            reason = plan.reason if plan.mode == DENSE else "not a plain nn.Conv2d"
            routes.append(SiteRoute(plan.site.name, DENSE, None, reason))
            continue
        relu = _relu_user(gm, plan)
        source = plan.conv.args[0]
        in_site = fused_output[source].site if source in fused_output else None
        bn = None if plan.norm is None else gm.get_submodule(plan.norm.target)
        module = FusedGatedConv2d(conv, bn, plan.site, relu=relu is not None, in_site=in_site, op=op)
        name = "fused_" + plan.site.name.replace(".", "_")
        gm.add_submodule(name, module.eval())
        with graph.inserting_before(plan.conv):
            new = graph.call_module(name, (source, gates))
        end = relu if relu is not None else plan.mul
        end.replace_all_uses_with(new)
        if relu is not None:
            fused_output[new] = plan
        routes.append(SiteRoute(plan.site.name, FUSED, None, ""))
    finish_graph(gm)
    return routes


def fuse_gated_convs(net: GaterNet, *, op: str | None = None) -> InferenceGaterNet:
    """Return a copy of an eval-mode ``net`` running each gate site through the fused op.

    Each gated ``Conv2d`` with its eval-mode BatchNorm (or none), the gate multiply and a
    ReLU right after it become one :func:`gatekit.ops.gated_conv2d` call; when the conv's
    input is the output of another fused site, that site's gates go in as ``in_gate``.
    Sites that do not read ``conv -> [BatchNorm] -> gate`` (other norms, grouped or shared
    convs) stay as they are.  ``op`` picks the implementation (``None``: the best that
    fits, Triton on CUDA).  The result is an :class:`~gatekit.inference.InferenceGaterNet`
    (a :class:`gatekit.GaterNet` whose backbone is the rewritten graph); its ``routes``
    say per site ``"fused"`` or ``"dense"`` (with the reason).  It runs in eval mode only
    (the BatchNorm statistics are frozen into it); ``net`` is not modified.

    Outputs equal the unfused model's for gates >= 0 (in eval mode they are 0 or 1), up to
    the rounding of the BatchNorm written as scale and shift (float32: ~1e-6 relative).

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner").eval()
    >>> fused = gatekit.fuse_gated_convs(net, op="reference")
    >>> x = torch.randn(2, 3, 32, 32)
    >>> torch.allclose(fused(x), net(x), atol=1e-5), [r.mode for r in fused.routes].count("fused")
    (True, 9)
    """
    check_eval_net(net, "fuse_gated_convs", "BatchNorm is folded with its running statistics")
    backbone = copy.deepcopy(net.backbone)
    routes = _fuse(backbone, plan_sites(backbone, net.sites, "fuse_gated_convs"), op)
    return InferenceGaterNet(net, backbone, routes)
