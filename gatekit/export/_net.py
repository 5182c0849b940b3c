"""The exportable GaterNet: every skip decided inside the graph, no Python branch on data.

:func:`exportable` rewrites a copy of the gated backbone as :func:`gatekit.skip_compute`
does (the same site plans, the same BatchNorm folding, the same graph rewrite), then swaps
each of skip_compute's convolutions for an :class:`ExportConv`, whose channel choice is a
tensor computed in the graph::

    gates = estimator(head(gater(x)))                      # eval-mode hard gates
    open  = (gates != 0).any(0)                            # union over the batch
    idx   = cat([open[site], none_open]).nonzero()         # per sliced site
    y     = conv(x, weight.index_select(0, idx))           # the open filters only
    y     = y * gates[:, site][:, idx]                     # each sample's own gates
    z     = conv(relu(y), weight2_t.index_select(0, idx).transpose(0, 1))  # consumer

When no filter of a site is open, ``idx`` holds one extra index whose weight row (and
consumer column) is zero: the conv computes one zero channel instead of an empty tensor,
which neither PyTorch nor every runtime accepts.

With ``dense_above`` set, one :func:`torch.cond` picks per call between that sliced
backbone and the dense one (every filter computed, closed ones multiplied by 0): when the
batch's union keeps more than ``dense_above`` of the work its gates can skip, slicing
costs more than it saves (gathered weights run slower than a runtime's prepacked ones),
and the dense branch runs::

    kept = (gates != 0).any(0) @ share        # share: each gate's part of the skippable FLOPs
    y    = cond(kept > dense_above, dense_backbone, sliced_backbone, (x, gates))
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils._pytree import tree_map

from .._errors import GatekitError
from .._graph import POOL_FUNCTIONS, POOL_MODULES
from ..costs import gate_costs
from ..estimators import Gate
from ..gater import GaterNet
from ..inference.batching import get_batching
from ..inference.common import (
    DENSE,
    SCATTER,
    SLICED,
    SiteRoute,
    check_eval_net,
    gaternet_parts,
    per_channel,
)
from ..inference.conv import CONV_FUNCTIONS, FULL, SkipConv
from ..inference.plan import plan_sites
from ..inference.rewrite import rewrite
from ..sites import GateSite
from ._gather import per_image_conv, per_image_weight, site_masks, site_rows
from ._nchwc import (
    NCHWC_BLOCKS,
    blocked_filter,
    nchwc_block,
    nchwc_conv,
    nchwc_reorder_in,
    nchwc_reorder_out,
)
from ._ops import conv_weights, sliced_conv

__all__ = ["BATCHING", "BATCHINGS", "DENSE_ABOVE", "GATHER_COST", "NCHWC_BLOCKS",
           "NCHWC_DENSE_ABOVE", "ExportGaterNet", "exportable"]

#: The batchings an exported graph runs (the ``batching`` argument of
#: :func:`gatekit.exportable`, :func:`gatekit.export_program`, :func:`gatekit.export_onnx`):
#: skip_compute's ``"union"`` and ``"gather"`` modes, and ``"auto"``, the cheaper of the
#: two per call.
UNION = get_batching("union", "gatekit.exportable").name
GATHER = get_batching("gather", "gatekit.exportable").name
AUTO = get_batching("auto", "gatekit.exportable").name
BATCHINGS = (UNION, GATHER, AUTO)

#: :func:`gatekit.export_onnx`'s and :func:`gatekit.export_program`'s default ``batching``:
#: ``"union"``.  ``"auto"`` is opt-in: it pays on ResNet-50 at batch 8 (30% open: 1.22x of
#: plain ONNX Runtime against the union's dense fallback) but holds both paths (an ONNX file
#: about five times the plain model's) and, with ``GATHER_COST`` not fitted per model, it
#: picked the slower per-image path for the trained ResNet-20 at batch 32 (0.29x against
#: the union's 0.75x; docs/deploying.rst).
BATCHING = UNION

#: Under ``batching="auto"``, the per-image path's cost per FLOP against the union path's:
#: the graph runs per image when ``GATHER_COST * per_image_share < kept_share``.
GATHER_COST = 1.0

#: What a dense site's route adds to its reason in an exported graph.
_DENSE_NOTE = "runs masked (every filter computed, closed ones multiplied by 0)"

#: :func:`gatekit.export_onnx`'s and :func:`gatekit.export_program`'s default
#: ``dense_above``: the batch runs dense when its union keeps more than this share of the
#: skippable FLOPs.  From one-off checks in ONNX Runtime on the CPU (ResNet-50, one
#: thread, see docs/deploying.rst): sliced beat dense at half the filters open (45.5
#: against 55.5 ms), dense beat sliced with every filter open (412 against 560 ms).
DENSE_ABOVE = 0.75

#: :func:`gatekit.export_onnx`'s default ``dense_above`` with ``nchwc_block``: 1.0, the
#: dense branch only for a runtime whose block differs.  Blocked slices run at the
#: runtime's prepacked rate, so slicing beat the dense branch at every share measured
#: (ResNet-50, gates in groups of 16, one thread: an image keeping 0.84 of the skippable
#: FLOPs ran 0.95x of plain sliced against 0.85x dense; docs/deploying.rst).
NCHWC_DENSE_ABOVE = 1.0


class OpenChannels:
    """One run's channel choice: per site, the channels computed (``index``, None for a
    site run in full) and the samples' gates of those channels (``masks``, ``(N, k)``, None
    when no multiply is needed)."""

    def __init__(self, index: list[Tensor | None], masks: list[Tensor | None],
                 per_image: bool = False):
        self.index = index
        self.masks = masks
        #: ``index[site]`` is ``(N, K)``, each image's own channels (see ``_gather``).
        self.per_image = per_image


class ExportConv(nn.Module):
    """A :class:`gatekit.inference.conv.SkipConv` whose channels come as index tensors.

    Holds the folded weight ``(out + 1, in + 1, *kernel)``: the extra output row (when its
    outputs are cut) and input column (when its input is a cut tensor) are zero, for the
    index of a site with no open filter.  A conv whose input alone is cut holds it
    input-major, ``(in + 1, out, *kernel)`` (``in_major``), so that its gather copies
    rows.  Called in the graph as skip_compute calls its conv:
    ``conv(x, channels, out_site, in_site, residual=None)``.
    """

    def __init__(self, skip: SkipConv):
        super().__init__()
        self.out_mode, self.in_sliced = skip.out_mode, skip.in_sliced
        self.out_channels, self.in_channels = skip.out_channels, skip.in_channels
        self.stride, self.padding, self.dilation = skip.stride, skip.padding, skip.dilation
        self.groups = skip.groups
        self.cut_out = self.out_mode != FULL
        # Gathers copy contiguous rows fast and scattered ones slowly (ONNX Runtime's Gather
        # copies one block per index: a 1x1 conv's input columns are single floats, 20x
        # slower at ResNet-50's last stage).  A conv whose input alone is cut keeps its
        # weight input-major, gathers rows and transposes them back.
        self.in_major = self.in_sliced and not self.cut_out
        weight, bias = skip.padded_weight(zero_out=self.cut_out, zero_in=self.in_sliced,
                                          in_major=self.in_major)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self._conv = CONV_FUNCTIONS[len(skip.kernel_size) - 1]
        #: Run as the opaque ``gatekit::sliced_conv`` op (for AOTInductor) or inline.
        self.opaque = False
        #: The NCHWc channel block when the conv runs blocked (see :meth:`use_blocks`).
        self.block: int | None = None
        #: Blocked only: a full input arrives blocked, a full output leaves blocked (the
        #: residual stream kept blocked, see ``_blocked_stream``), and the ReLU that
        #: followed the conv (after the residual add) runs fused in it (set only on a conv
        #: whose output is cut or leaves blocked, so the residual is added before it).
        self.in_blocked = self.out_blocked = self.relu = False

    def use_blocks(self, block: int) -> None:
        """Run blocked (``gatekit/export/_nchwc.py``): the weight becomes
        ``(O/B [+ 1], I/B [+ 1], kh, kw, B, B)`` with a zero block appended on each cut side
        (for the index of a site with no open block) and the bias ``(O/B [+ 1], B)``; a cut
        input arrives blocked and a cut output leaves blocked."""
        weight = self.weight.transpose(0, 1) if self.in_major else self.weight
        out_c, in_c = self.out_channels, self.in_channels
        blocked = blocked_filter(weight[:out_c, :in_c], block)
        ob, ib = blocked.shape[:2]
        padded = blocked.new_zeros(ob + int(self.cut_out), ib + int(self.in_sliced),
                                   *blocked.shape[2:])
        padded[:ob, :ib] = blocked
        self.weight = padded
        if self.bias is not None:
            bias = self.bias[:out_c].reshape(ob, block)
            self.bias = torch.cat([bias, bias.new_zeros(1, block)]) if self.cut_out else bias
        self.in_major = False
        self.block = block

    def forward(self, x: Tensor, channels: OpenChannels, out_site: int | None = None,
                in_site: int | None = None, residual: Tensor | None = None) -> Tensor:
        # The rewrite passes out_site exactly when outputs are cut, in_site when the input is.
        out_idx = channels.index[out_site] if self.cut_out else None
        in_idx = channels.index[in_site] if self.in_sliced else None
        if self.block is not None:
            return self._blocked(x, channels, out_site, out_idx, in_idx, residual)
        if channels.per_image and (out_idx is not None or in_idx is not None):
            return self._per_image(x, channels, out_site, out_idx, in_idx, residual)
        if self.opaque:
            y = sliced_conv(x, self.weight, self.bias, out_idx, in_idx, list(self.stride),
                            list(self.padding), list(self.dilation), self.groups,
                            self.in_major)
        else:
            w, b = conv_weights(self.weight, self.bias, out_idx, in_idx, self.in_major)
            y = self._conv(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        if out_idx is None:
            return y if residual is None else residual + y
        # The extra index (no filter open) carries a zero channel: adding it to the last
        # channel, closed as well then, changes nothing.
        index = out_idx.clamp(max=self.out_channels - 1)
        return self._finish(y, channels.masks[out_site], residual,
                            lambda target, v: target.index_add(1, index, v))

    def _blocked(self, x: Tensor, channels: OpenChannels, out_site: int | None,
                 out_idx: Tensor | None, in_idx: Tensor | None,
                 residual: Tensor | None) -> Tensor:
        """The blocked path: ``out_idx`` and ``in_idx`` are open *blocks*; whole ``B x B``
        blocks of the weight are gathered, a cut input arrives blocked, a cut output leaves
        blocked with each image's gates applied, a full one is reordered back."""
        block = self.block
        if in_idx is None and not self.in_blocked:
            x = nchwc_reorder_in(x, block)
        w, b = self.weight, self.bias
        if out_idx is not None and in_idx is not None:
            flat = (out_idx.unsqueeze(1) * w.shape[1] + in_idx.unsqueeze(0)).flatten()
            w = w.flatten(0, 1).index_select(0, flat).view(
                out_idx.shape[0], in_idx.shape[0], *w.shape[2:])
        elif out_idx is not None:
            w = w.index_select(0, out_idx)
        elif in_idx is not None:
            w = w.index_select(1, in_idx)
        if b is not None:
            b = (b if out_idx is None else b.index_select(0, out_idx)).flatten()
        summed = residual if self.out_blocked else None  # a blocked residual: the conv's Sum
        y = nchwc_conv(x, w, b, list(self.stride), list(self.padding), list(self.dilation),
                       summed, self.relu)
        if out_idx is None and self.out_blocked:
            return y
        if out_idx is None:
            y = nchwc_reorder_out(y, self.out_channels)
            return y if residual is None else residual + y
        mask = channels.masks[out_site]  # (N, K, B): each image's gates of the open blocks
        if mask is not None:
            y = y * mask.view(mask.shape[0], mask.shape[1], 1, 1, block)
        return y

    def _finish(self, y: Tensor, mask: Tensor | None, residual: Tensor | None,
                scatter: Any) -> Tensor:
        """The computed channels ``y``: each image's gates applied (``mask``), placed into
        zeros or the residual by ``scatter(target, y)`` for a scatter conv, the residual
        added."""
        if mask is not None:
            y = y * mask.view(*mask.shape, *[1] * (y.ndim - 2))
        if self.out_mode == SCATTER:
            target = residual if residual is not None else y.new_zeros(
                y.shape[0], self.out_channels, *y.shape[2:])
            return scatter(target, y)
        return y if residual is None else residual + y

    def _per_image(self, x: Tensor, channels: OpenChannels, out_site: int | None,
                   out_rows: Tensor | None, in_rows: Tensor | None,
                   residual: Tensor | None) -> Tensor:
        """The per-image path: image ``n`` computes the output channels ``out_rows[n]``
        (all when None) from its input channels ``in_rows[n]`` (see ``_gather``)."""
        w, b = per_image_weight(self.weight, self.bias, out_rows, in_rows, self.in_major,
                                x.shape[0])
        y = per_image_conv(x, w, b, tuple(self.weight.shape[2:]), self.stride, self.padding,
                           self.dilation)
        if out_rows is None:
            return y if residual is None else residual + y
        # Padded rows computed exact zeros: adding them to the last channel changes nothing.
        index = out_rows.clamp(max=self.out_channels - 1)
        index = index.view(*index.shape, *[1] * (y.ndim - 2)).expand_as(y)
        return self._finish(y, channels.masks[out_site], residual,
                            lambda target, v: target.scatter_add(1, index, v))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size="
                f"{tuple(self.weight.shape[2:4])}, stride={self.stride}, "
                f"out_mode={self.out_mode!r}, in_sliced={self.in_sliced}, "
                f"in_major={self.in_major}" + ("" if self.block is None else (
                    f", block={self.block}, in_blocked={self.in_blocked}, "
                    f"out_blocked={self.out_blocked}, relu={self.relu}")))


class ExportBackbone(nn.Module):
    """The rewritten gated backbone, called as ``backbone(x, gates)``: it turns the gates
    into each site's channel index (the union over the batch) in the graph and runs."""

    def __init__(self, graph_module: fx.GraphModule, sites: tuple[GateSite, ...],
                 live: list[bool], *, union: bool, masked: bool, binary: bool = True,
                 blocks: list[int | None] | None = None):
        super().__init__()
        self.graph_module = graph_module
        self.sites = sites
        self.live = list(live)
        #: Per site, its NCHWc block when its convs run blocked (its index is then open
        #: blocks, its masks ``(N, K, B)``), else None.
        self.blocks = list(blocks) if blocks is not None else [None] * len(sites)
        self.union = union
        self.masked = masked
        #: The gates are exactly 0 or 1 (a :class:`~gatekit.estimators.Gate`'s): the
        #: per-image path needs no multiply.
        self.binary = binary

    def open_channels(self, gates: Tensor) -> OpenChannels:
        """Per live site, the channels open in any sample (union) and their gates."""
        is_open = (gates != 0).any(0) if self.union else gates[0] != 0
        index: list[Tensor | None] = []
        masks: list[Tensor | None] = []
        for site, live, block in zip(self.sites, self.live, self.blocks):
            if not live:
                index.append(None)
                masks.append(None)
                continue
            chunk = per_channel(is_open[site.offset : site.stop], site.group_size)
            if block is not None:  # whole blocks (group_size is a multiple of the block)
                chunk = chunk.view(-1, block).any(1)
            idx = torch.cat([chunk, ~chunk.any(0, keepdim=True)]).nonzero().squeeze(1)
            index.append(idx)
            if not self.masked:
                masks.append(None)
                continue
            values = per_channel(gates[:, site.offset : site.stop], site.group_size)
            pad = 1 if block is None else block
            values = torch.cat([values, values.new_zeros(values.shape[0], pad)], 1)
            if block is not None:
                values = values.view(values.shape[0], -1, block)
            masks.append(values.index_select(1, idx))
        return OpenChannels(index, masks)

    def per_image_channels(self, gates: Tensor) -> OpenChannels:
        """Per live site, each sample's own open channels, padded to the batch's largest
        count (``(N, K)``, see ``_gather``), and their gates where not binary."""
        index: list[Tensor | None] = []
        masks: list[Tensor | None] = []
        for site, live in zip(self.sites, self.live):
            rows = site_rows(site, gates) if live else None
            index.append(rows)
            masks.append(None if rows is None or self.binary else site_masks(site, gates, rows))
        return OpenChannels(index, masks, per_image=True)

    def forward(self, x: Tensor, gates: Tensor) -> Any:
        return self.graph_module(x, gates=gates, channels=self.open_channels(gates))

    def per_image(self, x: Tensor, gates: Tensor) -> Any:
        """The backbone with each sample computing its own open filters (``"gather"``)."""
        return self.graph_module(x, gates=gates, channels=self.per_image_channels(gates))

    def extra_repr(self) -> str:
        return f"union={self.union}, masked={self.masked}, binary={self.binary}"


class ExportGaterNet(nn.Module):
    """A GaterNet made for export: image (and budget) in, the backbone's output out.

    Made by :func:`gatekit.exportable`.  ``forward(x)`` (``forward(x, budget)`` for a
    budget-input model, ``budget`` an ``(N,)`` tensor) runs the gater, the head and the
    eval-mode gates, then the backbone computing only open filters, as ``batching`` says:

    - ``"union"``: per site, the filters open in some sample of the batch; each sample's
      closed ones among them are zeroed;
    - ``"gather"``: each sample its own open filters, padded to the batch's largest open
      count per site (one batched ``MatMul`` per conv, each sample on its own weights);
    - ``"auto"``: per call, whichever of the two computes the smaller share of the
      skippable FLOPs (:meth:`kept_share` against :meth:`per_image_share`, the latter
      times ``gather_cost``; ties run the union, so a batch of one does).

    Every choice is a tensor operation, so :func:`torch.export.export` keeps it per input.
    ``routes`` (one :class:`gatekit.inference.SiteRoute` per site) says what each site
    became: ``"sliced"`` and ``"scatter"`` skip, ``"dense"`` runs masked (every filter
    computed, the closed ones multiplied by 0), with the reason.  ``net`` holds the gater,
    head and estimator copies.

    With a dense branch (``dense_above`` not None), ``dense`` holds the eval-mode gated
    backbone, which computes every filter and multiplies the closed ones by 0.  ``share``
    holds each gate's part of the FLOPs the gates can skip (from :func:`gatekit.gate_costs`
    with ``downstream=True``, summing to 1).  A call whose sliced path (the cheaper one
    under ``"auto"``) keeps more than ``dense_above`` of them runs ``dense``: one
    :func:`torch.cond` per choice, an ``If`` node in ONNX.
    """

    def __init__(self, net: GaterNet, routes: list[SiteRoute], *,
                 dense: nn.Module | None = None, share: Tensor | None = None,
                 dense_above: float | None = None, batching: str = UNION,
                 gather_cost: float = 1.0, nchwc_block: int | None = None,
                 per_image_loop: bool = False):
        super().__init__()
        self.net = net
        #: Each image runs alone through the batch-1 graph (``batching="gather"`` on the
        #: blocked path: a Python loop here, an ONNX ``Loop`` in the file, ``_loop``).
        self.per_image_loop = per_image_loop
        #: The NCHWc block the blocked sites were made for (None: none blocked); a runtime
        #: with another block runs the dense branch.
        self.nchwc_block = nchwc_block
        self.routes = tuple(routes)
        self.budget_input = net.budget_input
        self.dense = dense
        self.dense_above = dense_above
        self.batching = batching
        self.gather_cost = float(gather_cost)
        self.register_buffer("share", share)
        site_gates, site_share = None, None
        if share is not None:
            sites = net.sites
            site_gates = torch.zeros(share.shape[0], len(sites), dtype=share.dtype)
            for i, site in enumerate(sites):
                site_gates[site.offset : site.stop, i] = 1
            # Per site, the share of one open gate of the per-image path: the site's share
            # over its gates (a per-image run computes K gates of each sample).
            site_share = (share @ site_gates) / site_gates.sum(0)
        self.register_buffer("site_gates", site_gates)
        self.register_buffer("site_share", site_share)

    def forward(self, x: Tensor, budget: Tensor | None = None) -> Any:
        if self.per_image_loop and not isinstance(x.shape[0], int):
            raise GatekitError(
                f"this ExportGaterNet runs each image alone through its batch-1 graph "
                f"(batching={GATHER!r} with nchwc_block={self.nchwc_block}), a loop over the "
                f"batch that torch.export cannot trace with a dynamic batch (got batch "
                f"{x.shape[0]}); export it with gatekit.export_onnx, which writes the loop as "
                f"an ONNX Loop, or trace it at a fixed batch")
        if self.per_image_loop and x.shape[0] != 1:
            outs = [self._call(x[i : i + 1], None if budget is None else budget[i : i + 1])
                    for i in range(x.shape[0])]
            return tree_map(lambda *items: torch.cat(items), *outs)
        return self._call(x, budget)

    def _call(self, x: Tensor, budget: Tensor | None) -> Any:
        logits = self.net.gate_logits(x, budget)
        gates = self.net.estimator(logits)
        if self.dense is None:
            return self._sliced(x, gates)
        dense = self.sliced_share(gates) > self.dense_above
        if self.nchwc_block is not None:
            dense = dense | (nchwc_block(x, self.nchwc_block) != self.nchwc_block)
        return torch.cond(dense, self._dense, self._sliced, (x, gates))

    def kept_share(self, gates: Tensor) -> Tensor:
        """The share of the skippable FLOPs that a batch with ``gates`` computes on the
        union path: the cost-weighted union of its open gates."""
        return (gates != 0).any(0).to(self.share.dtype) @ self.share

    def per_image_share(self, gates: Tensor) -> Tensor:
        """The share of the skippable FLOPs that the per-image path computes per sample:
        per site, the batch's largest open count times one gate's share of the site."""
        counts = (gates != 0).to(self.site_gates.dtype) @ self.site_gates  # (N, sites)
        return counts.amax(0) @ self.site_share

    def sliced_share(self, gates: Tensor) -> Tensor:
        """What ``forward`` compares with ``dense_above``: the kept share of the path that
        ``batching`` runs (under ``"auto"``, the cheaper one, ``gather_cost`` applied)."""
        if self.batching == UNION or self.per_image_loop:
            return self.kept_share(gates)
        if self.batching == GATHER:
            return self.per_image_share(gates)
        return torch.minimum(self.kept_share(gates), self.gather_cost * self.per_image_share(gates))

    def _dense(self, x: Tensor, gates: Tensor) -> Any:
        return self.dense(x, gates=gates)

    def _sliced(self, x: Tensor, gates: Tensor) -> Any:
        if self.batching == UNION or self.per_image_loop:
            return self._union(x, gates)
        if self.batching == GATHER:
            return self._gather(x, gates)
        return torch.cond(self.per_image_cheaper(gates), self._gather, self._union, (x, gates))

    def per_image_cheaper(self, gates: Tensor) -> Tensor:
        """Whether ``"auto"`` runs a batch per image: ``gather_cost`` times
        :meth:`per_image_share` below the union's share, both counted per site (open gates
        times one gate's share), so that a batch of one, whose counts are equal, ties
        exactly and runs the union."""
        is_open = (gates != 0).to(self.site_gates.dtype)
        union = (is_open.amax(0) @ self.site_gates) @ self.site_share
        return self.gather_cost * self.per_image_share(gates) < union

    def _union(self, x: Tensor, gates: Tensor) -> Any:
        return self.net.backbone(x, gates)

    def _gather(self, x: Tensor, gates: Tensor) -> Any:
        return self.net.backbone.per_image(x, gates)

    def extra_repr(self) -> str:
        counts = ", ".join(f"{m}={sum(r.mode == m for r in self.routes)}"
                           for m in (SLICED, SCATTER, DENSE))
        blocked = "" if self.nchwc_block is None else f", nchwc_block={self.nchwc_block}"
        return (f"budget_input={self.budget_input}, {counts}, batching={self.batching!r}, "
                f"dense_above={self.dense_above}{blocked}")


def exportable(net: GaterNet, example: Tensor | None = None, *, batch_one: bool = False,
               opaque_convs: bool = False, dense_above: float | None = None,
               batching: str = UNION, nchwc_block: int | None = None) -> ExportGaterNet:
    """A copy of an eval-mode ``net`` ready for :func:`torch.export.export`: the gater,
    head, hard gates and compute skipping all in the graph (see :class:`ExportGaterNet`).

    ``batching`` says how a batch whose samples open different filters runs:
    ``"union"`` (default) computes, per site, the union of its samples' open filters and
    zeroes each sample's closed ones with a multiply; ``"gather"`` computes each sample's
    own, padded to the batch's largest count; ``"auto"`` picks the cheaper per call (see
    :class:`ExportGaterNet`; it costs the gates at ``example``'s size, which it then
    needs).  A batch of one computes exactly its own filters whatever the mode.
    ``batch_one=True`` promises batch 1 only: it runs the union and drops the multiply
    where the gates are binary.  ``opaque_convs=True`` runs every sliced conv as the
    custom op ``gatekit::sliced_conv`` (what AOTInductor needs, see
    :func:`gatekit.export_program`; union batching only).  ``dense_above`` (a share in
    [0, 1], None: no branch) adds the dense branch: a batch whose sliced path keeps more
    than that share of the skippable FLOPs runs every filter, masked; the shares are
    costed at ``example``'s size, which it then needs.  ``nchwc_block`` (8 or 16; None:
    off) runs the sliced convs of every site that allows it in ONNX Runtime's blocked NCHWc
    layout (see :data:`NCHWC_BLOCKS`; a dense branch needed).  With it, ``"gather"``
    runs each image alone through the batch-1 graph (its own blocks, no gate multiply,
    its own dense-or-sliced choice): a Python loop here, an ONNX ``Loop`` in
    :func:`gatekit.export_onnx`'s file (``torch.export`` cannot trace it: export it to
    ONNX, not to a program); ``"auto"`` is refused.  ``net`` is not modified.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, conv_gater
    >>> net = gatekit.gate_model(resnet20(), conv_gater(), sites="inner").eval()
    >>> ready = gatekit.exportable(net)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> torch.allclose(ready(x), net(x), atol=1e-4)
    True
    >>> ready.routes[0]
    SiteRoute(site='stage1.block1.conv1', mode='sliced', consumer='stage1.block1.conv2', reason='', batching='union')
    >>> per_image = gatekit.exportable(net, x[:1], batching="gather")
    >>> torch.allclose(per_image(x), net(x), atol=1e-4)
    True
    """
    fn = "gatekit.exportable"
    check_eval_net(net, fn, "hard gates, BatchNorm folded with running statistics")
    batching = check_batching(batching, fn, opaque_convs=opaque_convs)
    if batch_one:
        batching = UNION  # one sample: every mode computes exactly its filters
    check_nchwc_block(nchwc_block, fn, batching=batching, opaque_convs=opaque_convs,
                      dense_above=dense_above)
    # Blocked and per image: the batch-1 graph run on each image (a Loop in ONNX, _loop).
    loop = nchwc_block is not None and batching == GATHER
    one = batch_one or loop
    share = _shares(net, example, dense_above, batching)
    graph = copy.deepcopy(net.backbone)
    plans = plan_sites(graph, net.sites, fn)
    candidates = set() if nchwc_block is None else _block_candidates(graph, plans, nchwc_block)
    rewrite(graph, plans, layout=False)  # an exported graph's layout is the runtime's choice
    _to_export_convs(graph)
    for module in graph.modules():
        if isinstance(module, ExportConv):
            module.opaque = opaque_convs
    blocked = _use_blocks(graph, candidates, nchwc_block) if candidates else set()
    blocks = [nchwc_block if p.index in blocked else None for p in plans]
    live = [p.mode != DENSE for p in plans]
    # A Gate's eval-mode gates are exactly 0 or 1 (its contract: binarize): then a single
    # image needs no gate multiply at a sliced site (its closed filters are not computed),
    # nor does the per-image path.
    binary = isinstance(net.estimator, Gate)
    masked = not (one and binary)
    if blocked:
        _blocked_stream(graph, nchwc_block, fuse_masked=binary or not masked)
    backbone = ExportBackbone(graph, net.sites, live, union=not one, masked=masked,
                              binary=binary, blocks=blocks)
    inner = GaterNet(backbone, **gaternet_parts(net))
    inner.input_spec = net.input_spec
    dense = None if dense_above is None else copy.deepcopy(net.backbone).eval()
    routes = [p.route(batching, _DENSE_NOTE) for p in plans]
    ready = ExportGaterNet(inner, routes, dense=dense, share=share, dense_above=dense_above,
                           batching=batching, gather_cost=GATHER_COST,
                           nchwc_block=nchwc_block if blocked else None, per_image_loop=loop)
    return ready.eval()




def check_nchwc_block(block: Any, fn: str, *, batching: str, opaque_convs: bool,
                      dense_above: float | None) -> None:
    """A :class:`GatekitError` unless ``block`` is None or one of :data:`NCHWC_BLOCKS` with
    what the blocked path needs (union or per-image batching, no opaque convs, a dense
    branch)."""
    if block is None:
        return
    if isinstance(block, bool) or block not in NCHWC_BLOCKS:
        raise GatekitError(
            f"{fn} expects nchwc_block to be None or one of {NCHWC_BLOCKS} (ONNX Runtime's "
            f"channel block on the machine that runs the file: 16 with AVX-512, 8 with "
            f"AVX2), got {block!r}")
    if batching not in (UNION, GATHER) or opaque_convs:
        got = "for_inductor=True" if opaque_convs else f"batching={batching!r}"
        raise GatekitError(
            f"{fn} runs nchwc_block={block} for ONNX Runtime only, with batching={UNION!r} "
            f"(one set of blocks per batch) or {GATHER!r} (each image alone through the "
            f"batch-1 graph, an ONNX Loop), got {got}; pass one of them and "
            f"for_inductor=False, or nchwc_block=None")
    if dense_above is None:
        raise GatekitError(
            f"{fn} with nchwc_block={block} needs a dense branch (dense_above a share in [0, "
            f"1]): a runtime whose block is not {block} runs that branch instead of reading "
            f"the blocked weights wrongly; got dense_above=None")


def _block_candidates(gm: fx.GraphModule, plans: list[Any], block: int) -> set[int]:
    """Sites that can run blocked on their own: sliced, gates in groups that are whole
    blocks, a 2-d producer and consumer, element-wise ops between (no pooling, which a
    blocked tensor cannot run)."""
    out: set[int] = set()
    for plan in plans:
        if plan.mode != SLICED or plan.site.group_size % block:
            continue
        convs = [gm.get_submodule(n.target) for n in (plan.conv, plan.consumer)]
        if any(not isinstance(c, nn.Conv2d) for c in convs):
            continue
        if any((n.op == "call_module" and isinstance(gm.get_submodule(n.target), POOL_MODULES))
               or (n.op == "call_function" and n.target in POOL_FUNCTIONS)
               for n in plan.chain):
            continue
        out.add(plan.index)
    return out


def _use_blocks(gm: fx.GraphModule, candidates: set[int], block: int) -> set[int]:
    """Switch to the blocked path every conv whose cut sides are all blocked sites, keeping
    a site blocked only while its producer and consumer both can run blocked (a conv's
    full side needs a channel count that is a multiple of the block); returns the sites."""
    calls = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ExportConv):
            conv = gm.get_submodule(node.target)
            out_site = node.args[2] if conv.cut_out else None
            in_site = node.args[3] if conv.in_sliced else None
            calls.append((conv, out_site, in_site))
    sites = set(candidates)
    while True:
        drop = set()
        for conv, out_site, in_site in calls:
            cut = [s for s in (out_site, in_site) if s is not None]
            full_ok = ((out_site is not None or conv.out_channels % block == 0)
                       and (in_site is not None or conv.in_channels % block == 0))
            if cut and (not full_ok or not all(s in sites for s in cut)):
                drop.update(s for s in cut if s in sites)
        if not drop:
            break
        sites -= drop
    for conv, out_site, in_site in calls:
        if any(s is not None and s in sites for s in (out_site, in_site)):
            conv.use_blocks(block)
    return sites


#: The ReLUs the blocked residual stream runs on blocked tensors (element-wise) or fuses.
_RELU_FUNCTIONS = (torch.relu, torch.relu_, torch.nn.functional.relu)


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.ReLU)
    return ((node.op == "call_function" and node.target in _RELU_FUNCTIONS)
            or (node.op == "call_method" and node.target in ("relu", "relu_")))


def _blocked_stream(gm: fx.GraphModule, block: int, fuse_masked: bool) -> None:
    """Keep the blocked path's tensors blocked between sites: a blocked conv's full output
    stays blocked, a ReLU of a blocked tensor runs on it as it is, a full conv (a
    shortcut) whose input is blocked runs blocked too, a blocked conv reads a blocked full
    input without reordering it and takes a residual blocked (ONNX Runtime's ``Sum``
    input); a ReLU that alone follows a blocked conv runs fused in it (where the conv's
    output is multiplied by gates afterwards, only if ``fuse_masked``: gates >= 0, so that
    ``relu(y) * g == relu(y * g)``).  Every other reader of a blocked tensor gets it
    reordered out; a residual that is not blocked is reordered in."""
    graph = gm.graph
    channels: dict[fx.Node, int] = {}  # each blocked value: its channel count
    for node in list(graph.nodes):
        conv = gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(conv, ExportConv):
            x = node.args[0]
            if conv.block is None:
                full_ok = (conv.groups == 1 and len(conv.weight.shape) == 4
                           and conv.in_channels % block == 0 and conv.out_channels % block == 0)
                if x not in channels or not full_ok or conv.opaque:
                    continue
                conv.use_blocks(block)
            conv.in_blocked = not conv.in_sliced and x in channels
            if not conv.cut_out:
                conv.out_blocked = True
                residual = node.kwargs.get("residual")
                if residual is not None and residual not in channels:
                    with graph.inserting_before(node):
                        moved = graph.call_function(torch.ops.gatekit.nchwc_reorder_in.default,
                                                  (residual, block))
                    node.update_kwarg("residual", moved)
            channels[node] = conv.out_channels
        elif _is_relu(gm, node) and node.args and node.args[0] in channels:
            channels[node] = channels[node.args[0]]
    for value, count in channels.items():
        for user in list(value.users):
            if user in channels and (user.args[0] is value or user.kwargs.get("residual") is value):
                continue  # a blocked conv's input or residual, or a ReLU on it
            with graph.inserting_before(user):
                out = graph.call_function(torch.ops.gatekit.nchwc_reorder_out.default, (value, count))
            user.replace_input_with(value, out)
    for node in list(graph.nodes):  # ReLU fused into the blocked conv it alone follows
        producer = node.args[0] if node.args else None
        if not (_is_relu(gm, node) and producer in channels and producer.op == "call_module"
                and len(producer.users) == 1):
            continue
        conv = gm.get_submodule(producer.target)
        if isinstance(conv, ExportConv) and (not conv.cut_out or fuse_masked):
            conv.relu = True
            node.replace_all_uses_with(producer)
            graph.erase_node(node)
    graph.lint()
    gm.recompile()


def check_batching(batching: Any, fn: str, *, opaque_convs: bool = False) -> str:
    """``batching`` if the export runs it (:data:`BATCHINGS`), else a :class:`GatekitError`
    that says what is accepted."""
    if not isinstance(batching, str) or batching not in BATCHINGS:
        names = ", ".join(repr(b) for b in BATCHINGS)
        raise GatekitError(
            f"{fn} expects batching to be one of {names} (how a batch whose images open "
            f"different filters runs), got {batching!r}; pass one of them")
    if opaque_convs and batching != UNION:
        raise GatekitError(
            f"{fn} runs the opaque gatekit::sliced_conv (for_inductor=True) with batching="
            f"{UNION!r} only (the op computes one set of channels per batch), got "
            f"batching={batching!r}; pass batching={UNION!r} or for_inductor=False")
    return batching


def _shares(net: GaterNet, example: Tensor | None, dense_above: float | None,
            batching: str) -> Tensor | None:
    """Each gate's share of the skippable FLOPs at ``example``'s size (None: neither a
    dense branch nor a per-call choice needs them)."""
    if dense_above is not None and (isinstance(dense_above, bool) or not isinstance(
            dense_above, int | float) or not 0.0 <= dense_above <= 1.0):
        raise GatekitError(f"gatekit.exportable expects dense_above as a share in [0, 1] of "
                           f"the skippable FLOPs (or None: no dense branch), got {dense_above!r}")
    if dense_above is None and batching != AUTO:
        return None
    if not isinstance(example, Tensor):
        why = (f"dense_above={dense_above}" if dense_above is not None
               else f"batching={AUTO!r}")
        raise GatekitError(
            f"gatekit.exportable(net, example, {why}) needs an example input to cost the "
            f"gates for the dense branch or the per-call choice, got "
            f"{type(example).__name__}; pass an image batch like the ones the model runs "
            f"on, or dense_above=None and batching={UNION!r}")
    costs = gate_costs(net, example[:1], downstream=True)
    return (costs / costs.sum()).float()


def _to_export_convs(gm: fx.GraphModule) -> None:
    """skip_compute's convs -> :class:`ExportConv`."""
    for name, module in list(gm.named_children()):
        if isinstance(module, SkipConv):
            setattr(gm, name, ExportConv(module))
    leftover = [n for n, m in gm.named_modules() if isinstance(m, SkipConv)]
    if leftover:
        raise GatekitError(f"gatekit.exportable left convs {leftover} unconverted; expected "
                           f"every rewritten conv at the graph's top level")
    gm.recompile()

