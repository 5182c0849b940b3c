"""Batching mode ``"gather"``: one pass for the whole batch, each sample on its own channels.

Per site, sample ``n``'s open channels come first in an index row, padded to the batch's
largest open count ``K`` with closed channels (so a row never repeats a channel).  A
convolution then runs once per site for the whole batch:

- a 1x1 conv is one batched GEMM (``bmm``) of each sample's channels-last rows with its own
  gathered weight block ``(K_in, K_out)``;
- any other conv is one grouped convolution, ``groups = N``: the samples' compact inputs
  side by side, ``N`` weight blocks stacked.

Weights are gathered with one ``index_select`` of whole rows from the layout the conv
keeps (:meth:`~.conv.SkipConv.padded_rows`): the folded weight with a row of zeros
appended, ``(out + 1, in * taps)``, also read as ``((out + 1) * in, taps)`` when both
dimensions are gathered.  Every convolution runs through the conv's own
:meth:`~.conv.SkipConv.convolve` (grouped, one group per sample).  A
padded output row reads the zero row (and a zero bias), so its output is exactly zero,
stays zero through the ReLU/pooling chain, and contributes nothing where the consumer
reads it: no masks.  At a scatter site the compact output is added straight into the
residual (``scatter_add_``) when the graph lets it, else scattered into zeros.

Costs: ``N * K_out * K_in`` weight elements copied per conv per call, against ``N * K_out *
K_in * pixels`` multiply-adds: pays when samples differ and maps are not tiny; ``"auto"``'s rule
(``_rule``) weighs it against the other modes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from .batching import Backbone, Batching, GateCounts, Runs, register
from .common import SCATTER, channel_index, per_channel
from .conv import SkipConv, add_residual, memory_format

__all__: list[str] = []


class Gathered(NamedTuple):
    """One site's channels in a gathered run.

    ``idx`` ``(N, K)``: per sample, its open channels (ascending), then closed ones as
    padding (when ``K`` is every channel: all channels in order, closed ones the padding); ``rows`` ``(N, K)``: the same with padding replaced by ``out_channels`` (the
    zero row of :meth:`~.conv.SkipConv.padded_rows`); ``k``: ``K``, the batch's largest open count.
    """

    idx: Tensor
    rows: Tensor
    k: int


def gathered_sites(backbone: Backbone, gates: Tensor) -> list[Gathered | None]:
    """Per site, its :class:`Gathered` channels for the batch ``gates`` (None: dense site).

    One stable sort of every sample's gates (keyed by site, then closed) puts each site's
    open gates first; one host sync reads every site's ``K``.

    >>> from types import SimpleNamespace
    >>> site = SimpleNamespace(offset=0, stop=4, group_size=1, num_gates=4)
    >>> gates = torch.tensor([[0.0, 1, 0, 1], [1, 0, 0, 0]])
    >>> g = gathered_sites(SimpleNamespace(sites=(site,), live=[True]), gates)[0]
    >>> g.idx.tolist(), g.rows.tolist(), g.k
    ([[1, 3], [0, 1]], [[1, 3], [0, 4]], 2)
    """
    sites, live = backbone.sites, backbone.live
    n = gates.shape[0]
    site_of = torch.cat(
        [torch.full((s.num_gates,), i, dtype=torch.long) for i, s in enumerate(sites)]
    ).to(gates.device)
    closed = (gates == 0).long()
    order = torch.argsort(site_of * 2 + closed, dim=1, stable=True)
    counts = torch.zeros(n, len(sites), dtype=torch.long, device=gates.device)
    counts.index_add_(1, site_of, 1 - closed)
    kmax = counts.amax(0).tolist() if n else [0] * len(sites)
    result: list[Gathered | None] = []
    for i, site in enumerate(sites):
        if not live[i]:
            result.append(None)
            continue
        k = kmax[i]
        if k == site.num_gates:  # some sample opens every gate: keep channels in place
            idx = torch.arange(k, device=gates.device).expand(n, k)
            pad = closed[:, site.offset : site.stop].bool()
        else:
            idx = order[:, site.offset : site.offset + k] - site.offset
            pad = torch.arange(k, device=gates.device) >= counts[:, i : i + 1]
        idx, pad = channel_index(idx, site.group_size), per_channel(pad, site.group_size)
        channels = site.num_gates * site.group_size
        rows = idx.masked_fill(pad, channels)
        result.append(Gathered(idx, rows, idx.shape[1]))
    return result


class GatherChannels:
    """A run in which each sample computes its own channels (see the module docstring)."""

    def __init__(self, sites: list[Gathered | None]):
        self.sites = sites

    def conv(self, conv: SkipConv, x: Tensor, out_site: int | None, in_site: int | None,
             residual: Tensor | None) -> Tensor:
        out = None if out_site is None else self.sites[out_site]
        inp = None if in_site is None or not conv.in_sliced else self.sites[in_site]
        if out is None and inp is None:
            return conv.run_shared(x, None, None, None, residual)
        return run_gathered(conv, x, out, inp, residual)


def _bias(conv: SkipConv, out: Gathered | None, n: int) -> Tensor | None:
    """Per-sample biases ``(N, K_out)``, or ``(1, out_channels)`` for all outputs; None."""
    if conv.bias is None:
        return None
    if out is None:
        return conv.bias.view(1, -1)
    return conv.padded_rows()[1].index_select(0, out.rows.flatten()).view(n, out.k)


def _weights(conv: SkipConv, out: Gathered | None, inp: Gathered | None, n: int) -> Tensor:
    """Per-sample weight blocks ``(N, K_out, K_in * taps)``, one ``index_select`` of rows."""
    padded = conv.padded_rows()[0]
    c_in, taps = conv.in_channels, conv.taps
    if inp is None:  # whole rows of the (out + 1, in * taps) layout
        return padded.index_select(0, out.rows.flatten()).view(n, out.k, c_in * taps)
    # (out, in) pairs of the ((out + 1) * in, taps) view
    rows = (
        torch.arange(conv.out_channels, device=inp.idx.device).expand(n, -1)
        if out is None
        else out.rows
    )
    flat = (rows[:, :, None] * c_in + inp.idx[:, None, :]).flatten()
    return padded.view(-1, taps).index_select(0, flat).view(n, rows.shape[1], inp.k * taps)


def run_gathered(
    conv: SkipConv, x: Tensor, out: Gathered | None, inp: Gathered | None, residual: Tensor | None
) -> Tensor:
    """``conv``'s output when sample ``n`` computes output channels ``out.idx[n]`` (all when
    None) from its input channels ``inp.idx[n]`` (``x`` holds them; all when None)."""
    n = x.shape[0]
    k_out = conv.out_channels if out is None else out.k
    if k_out and x.shape[1] and conv.use_mm:
        into = residual if conv.out_mode != SCATTER or out is None else None
        y = _bmm(conv, x, out, inp, into)
        if into is not None and y is into:
            return y
    else:  # one grouped convolution, a group per sample (no channel at all: the bias alone)
        w = _weights(conv, out, inp, n).view(n * k_out, x.shape[1], *conv.kernel_size)
        b = _bias(conv, out, n)
        b = None if b is None else b.expand(n, k_out).reshape(-1)
        y = conv.convolve(x.reshape(1, n * x.shape[1], *x.shape[2:]), w, b, groups=n)
        y = y.reshape(n, k_out, *y.shape[2:])
    if conv.out_mode == SCATTER and out is not None and k_out < conv.out_channels:
        index = out.idx.view(n, k_out, *[1] * (y.ndim - 2)).expand_as(y)
        if isinstance(residual, Tensor) and residual.shape == (n, conv.out_channels, *y.shape[2:]):
            return residual.scatter_add_(1, index, y)  # padding adds exact zeros
        full = y.new_zeros(n, conv.out_channels, *y.shape[2:])
        full = full.contiguous(memory_format=memory_format(full)).scatter_(1, index, y)
        return add_residual(full, residual)
    return add_residual(y, residual)


def _bmm(
    conv: SkipConv, x: Tensor, out: Gathered | None, inp: Gathered | None, residual: Tensor | None
) -> Tensor:
    """A 1x1 conv as one batched GEMM; accumulates into ``residual`` when it fits."""
    x = conv.strided(x)
    n, k_in, h, width = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n, h * width, k_in)
    if out is None and conv.transposed:  # weight stored (in, out): gather input rows
        w = conv.weight.index_select(0, inp.idx.flatten()).view(n, k_in, conv.out_channels)
    else:
        w = _weights(conv, out, inp, n).transpose(1, 2)
    k_out = w.shape[2]
    b = _bias(conv, out, n)
    b = None if b is None else b.unsqueeze(1)  # (N or 1, 1, K_out)
    if (
        isinstance(residual, Tensor)
        and residual.shape == (n, k_out, h, width)
        and residual.is_contiguous(memory_format=torch.channels_last)
    ):
        acc = residual.permute(0, 2, 3, 1).view(n, h * width, k_out)
        acc.baddbmm_(rows, w)
        if b is not None:
            acc.add_(b)
        return residual
    y = torch.bmm(rows, w) if b is None else torch.baddbmm(b, rows, w)
    return y.view(n, h, width, k_out).permute(0, 3, 1, 2)


@register
class GatherBatching(Batching):
    """Run the graph once; each sample computes its own open channels, padded to the
    batch's largest open count per site (grouped convs and batched GEMMs)."""

    name = "gather"
    candidate = True
    summary = ("one pass in which each sample computes its own open filters, padded per "
               "site to the batch's largest open count, as one grouped convolution (or "
               "batched GEMM for a 1x1 conv) per site; best when patterns differ and the "
               "batch is large")

    def runs(self, counts: GateCounts) -> Runs:
        return Runs.one(counts.batch, counts.batch_max, copies=float(counts.batch),
                        blocks=counts.batch)

    def run_mixed(self, backbone: Backbone, x: Any, gates: Tensor) -> Any:
        return backbone.run(x, gates, GatherChannels(gathered_sites(backbone, gates)))
