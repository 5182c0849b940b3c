"""Start the gates where static pruning stands: the gater's head set from a filter ranking.

Static channel pruning ranks each layer's filters (by weight magnitude, say) and keeps the
top fraction.  :func:`init_gates_` starts a :class:`~gatekit.GaterNet` there: at step 0
every image keeps exactly the filters that ranking keeps at the budget, so the gated model
*is* the statically pruned one, and training can only move it by learning per-image swaps.

Data flow: ``scores (num_gates,) -> rank within each site -> thresholds t in (0, 1) ->
head: logit_j = margin * sign(budget - t_j)`` for every image (the head's last weight
zeroed), or, for a budget-input head, ``logit_j = s_j * (b - t_j)`` so that a requested
budget ``b`` keeps the top ``b`` of every site (nested masks, as slimmable networks keep).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._errors import GatekitError
from .budget import BudgetHead
from .gater import GaterNet

__all__ = ["filter_l1_norms", "init_gates_", "ranking_thresholds"]


def _check_net(net: object, fn: str) -> GaterNet:
    if not isinstance(net, GaterNet):
        raise GatekitError(f"{fn} expects a GaterNet (from gatekit.gate_model), got "
                           f"{type(net).__name__}")
    return net


def filter_l1_norms(net: GaterNet) -> Tensor:
    """Each gate's filters' L1 norm, ``(num_gates,)`` float32: the magnitude ranking of
    static pruning (Li et al. 2017; Torch-Pruning's ``MagnitudeImportance(p=1)`` on the
    conv alone).

    Gate ``j`` of site ``s`` switches output channels ``j*g .. j*g+g-1`` of the conv
    ``s.name`` (``g = s.group_size``); its score is the sum of ``|w|`` over those filters.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner")
    >>> conv = net.backbone.get_submodule(net.sites[0].name)
    >>> scores = gatekit.filter_l1_norms(net)
    >>> scores.shape, torch.allclose(scores[0], conv.weight[0].abs().sum())
    (torch.Size([336]), True)
    """
    net = _check_net(net, "filter_l1_norms")
    parts = []
    with torch.no_grad():
        for site in net.sites:
            weight = net.backbone.get_submodule(site.name).weight
            per_filter = weight.detach().float().abs().flatten(1).sum(1)
            parts.append(per_filter[: site.num_gates * site.group_size]
                         .view(site.num_gates, site.group_size).sum(1).cpu())
    return torch.cat(parts)


def _check_scores(net: GaterNet, scores: object, fn: str) -> Tensor:
    if not isinstance(scores, Tensor) or scores.shape != (net.num_gates,):
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise GatekitError(f"{fn}: scores must be a tensor of shape ({net.num_gates},), one per "
                           f"gate (e.g. gatekit.filter_l1_norms(net)), got {got}")
    if scores.is_floating_point() and not bool(torch.isfinite(scores).all()):
        bad = int((~torch.isfinite(scores)).nonzero()[0, 0])
        raise GatekitError(f"{fn}: scores must be finite, got {scores[bad].item()} at gate {bad}")
    return scores.detach().double().cpu()


def ranking_thresholds(net: GaterNet, scores: Tensor) -> Tensor:
    """Where each gate enters the ranking, ``(num_gates,)`` float64 in (0, 1).

    Within each site, gates are ranked by ``scores``, highest first (ties: the lower channel
    first); the gate of rank ``r`` among the site's ``C`` gates gets ``(r + 0.5) / C``.  Keeping
    the gates whose threshold is below ``b`` keeps the top ``b * C`` gates of every site (to the
    nearest integer, a half rounded down): the same fraction everywhere, as uniform static pruning does,
    so the kept share of every site's FLOPs, and so of the gated FLOPs, is ``b`` up to rounding.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner")
    >>> t = gatekit.ranking_thresholds(net, gatekit.filter_l1_norms(net))
    >>> int((t[:16] < 0.5).sum()), float(t[:16].min()), float(t[:16].max())
    (8, 0.03125, 0.96875)
    """
    net = _check_net(net, "ranking_thresholds")
    scores = _check_scores(net, scores, "ranking_thresholds")
    thresholds = torch.empty(net.num_gates, dtype=torch.float64)
    for site in net.sites:
        chunk = scores[site.offset:site.stop]
        order = torch.sort(-chunk, stable=True).indices  # highest first, ties by channel
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(site.num_gates)
        thresholds[site.offset:site.stop] = (ranks.double() + 0.5) / site.num_gates
    return thresholds


def init_gates_(net: GaterNet, scores: Tensor, budget: float | None = None, *,
                margin: float = 3.0) -> Tensor:
    """Set ``net``'s head so that every image's gates are those a static ranking keeps; in place.

    ``scores`` ranks the filters (``(num_gates,)``, higher kept first; e.g.
    :func:`filter_l1_norms`).  For a model without a budget input, ``budget`` in (0, 1] is the
    fraction kept at every site (see :func:`ranking_thresholds`): the head's last layer gets
    weight 0 and bias ``+margin`` for a kept gate, ``-margin`` for the others, so the logits are
    the same for every image and the evaluation gates (``logit > 0``) are the ranking's mask
    exactly.  With the estimator's training noise (SemHash adds N(0, 1)) a margin of 3 flips a
    gate with probability 0.13%.  From there training moves the head's weights (and so the
    gater) only as far as per-image swaps pay under the losses.

    For a model built with ``budget_input=True`` leave ``budget`` out: the head learns no
    image term either, and gate ``j`` gets ``logit = s * (b - t_j)`` at requested budget ``b``
    (``budget_gate``'s slope and the bias; ``s = 2 * margin * C`` for a site of ``C`` gates, so a
    budget halfway between two thresholds is ``margin`` from both): budget ``b`` keeps the top
    ``b * C`` filters of every site (to the nearest integer), nested as the budget grows.  A map installed by
    :func:`gatekit.calibrate_budget` is removed (it belonged to the old head); calibrate again
    after training.

    Returns the mask kept at ``budget`` (bool, ``(num_gates,)``), or for a budget-input model
    the thresholds.  Only the head changes; the gater trunk and backbone are untouched.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner")
    >>> keep = gatekit.init_gates_(net, gatekit.filter_l1_norms(net), 0.25)
    >>> _ = net.eval()(torch.randn(3, 3, 32, 32))
    >>> bool((net.last_gates == keep).all()), int(keep[:16].sum()), int(keep.sum())
    (True, 4, 84)
    """
    net = _check_net(net, "init_gates_")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0:
        raise GatekitError(f"init_gates_: margin must be a number > 0, got {margin!r}")
    thresholds = ranking_thresholds(net, scores)
    head = net.head
    if isinstance(head, BudgetHead):
        if budget is not None:
            raise GatekitError(
                f"init_gates_: this model reads its budget per call (budget_input=True), so the "
                f"ranking is set for every budget at once; got budget={budget!r}: leave it out")
        sizes = torch.cat([torch.full((s.num_gates,), float(s.num_gates)) for s in net.sites])
        slope = 2.0 * float(margin) * sizes.double()
        # u = 2b - 1 is the head's budget feature: s*(b - t) = (s/2) u + s*(1/2 - t).
        _set_head(head.fc2, bias=slope * (0.5 - thresholds))
        with torch.no_grad():
            head.budget_gate.weight.copy_((slope / 2).unsqueeze(1).to(head.budget_gate.weight))
            head.budget_scale.zero_()
            head.budget_embed.weight.zero_()
            head.budget_embed.bias.zero_()
        head.budget_map = None
        return thresholds
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise GatekitError(f"init_gates_: budget must be a fraction in (0, 1] of each site's "
                           f"filters to keep, got {budget!r}")
    keep = thresholds < budget
    _set_head(head.fc2, bias=torch.where(keep, float(margin), -float(margin)))
    return keep


def _set_head(fc2: nn.Linear, *, bias: Tensor) -> None:
    with torch.no_grad():
        fc2.weight.zero_()
        fc2.bias.copy_(bias.to(fc2.bias))
