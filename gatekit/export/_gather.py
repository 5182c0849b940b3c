"""The per-image path of an exported graph: skip_compute's ``"gather"`` batching as tensors.

Per live site, each image's open channels come first in a row, in ascending order, padded
to the batch's largest open count ``K`` with the index of the zero filter of
:meth:`~gatekit.inference.conv.SkipConv.padded_weight` (``rows``, ``(N, K)``)::

    open  = per_channel(gates[:, site] != 0)                   # (N, C)
    pos   = where(open, cumsum(open) - 1, C)                    # each open channel's place
    rows  = full((N, C + 1), C).scatter(1, pos, where(open, arange(C), C))
    rows  = rows.index_select(1, (arange(C) < max(count.max(), 1)).nonzero())   # (N, K)

No sort and no host read: ``K`` is ``nonzero``'s data-dependent size, as the union's
channel count is.  A site with no open filter in any image keeps one padded column (a zero
channel), as the union path does.

Each conv then gathers one weight block per image (``(N, K_out, K_in * taps)``, one
``index_select`` of whole rows or of (out, in) pairs, as ``"gather"`` does) and runs as one
batched ``MatMul``: a 1x1 conv on ``x`` viewed as ``(N, C, H * W)``, any other on the
image's patches (``im2col``, see :func:`patches`).  A grouped
convolution with ``groups = N`` would say the same, but ONNX's ``Conv`` takes ``group``
as a constant attribute and the batch is dynamic.  A padded output row reads the zero
filter and a zero bias, computes exactly zero and stays zero through the ReLU chain; the
consumer's padded input column is zero as well.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..inference.common import per_channel
from ..inference.conv import CONV_FUNCTIONS
from ..sites import GateSite

__all__: list[str] = []


def per_image_rows(open_: Tensor) -> Tensor:
    """Per image, its open channels (ascending) padded to the batch's largest open count
    with ``C`` (the zero filter's index); at least one column.

    >>> per_image_rows(torch.tensor([[False, True, False, True], [True, False, False, False]])).tolist()
    [[1, 3], [0, 4]]
    >>> per_image_rows(torch.zeros(2, 3, dtype=torch.bool)).tolist()
    [[3], [3]]
    """
    n, c = open_.shape
    arange = torch.arange(c, device=open_.device)
    counts = open_.long().cumsum(1)
    pad = torch.full_like(arange, c)
    pos = torch.where(open_, counts - 1, pad)  # closed channels all write C into column C
    src = torch.where(open_, arange.expand(n, c), pad)
    rows = torch.full((n, c + 1), c, dtype=torch.long, device=open_.device).scatter(1, pos, src)
    k = counts[:, -1].amax(0).clamp(min=1)
    cols = (arange < k).nonzero().squeeze(1)
    return rows.index_select(1, cols)


def site_rows(site: GateSite, gates: Tensor) -> Tensor:
    """:func:`per_image_rows` of one site's channels for the batch's ``gates``."""
    return per_image_rows(per_channel(gates[:, site.offset : site.stop] != 0, site.group_size))


def site_masks(site: GateSite, gates: Tensor, rows: Tensor) -> Tensor:
    """Each image's gate values of its computed channels ``(N, K)`` (0 at padding)."""
    values = per_channel(gates[:, site.offset : site.stop], site.group_size)
    values = torch.cat([values, values.new_zeros(values.shape[0], 1)], 1)
    return values.gather(1, rows)


def per_image_weight(weight: Tensor, bias: Tensor | None, out_rows: Tensor | None,
                     in_rows: Tensor | None, in_major: bool, n: int
                     ) -> tuple[Tensor, Tensor | None]:
    """Per image, its weight as a GEMM operand ``(N, K_out, K_in * taps)`` and its bias
    ``(N, K_out)``.

    ``weight`` is the export's padded weight: ``(out [+ 1], in [+ 1], *kernel)``, or
    ``(in + 1, out, *kernel)`` when ``in_major`` (then only ``in_rows`` is given).  Every
    gather copies whole rows, or (out, in) pairs of the ``(out * in, taps)`` view.  An
    in-major 1x1 weight comes back as a transposed view (a ``MatMul`` reads it as it is).
    """
    taps = math.prod(weight.shape[2:])
    if in_major:
        k_in, out_c = in_rows.shape[1], weight.shape[1]
        w = weight.index_select(0, in_rows.flatten())
        b = None if bias is None else bias.view(1, out_c).expand(n, out_c)
        if taps == 1:
            return w.view(n, k_in, out_c).transpose(1, 2), b
        w = w.view(n, k_in, out_c, taps).transpose(1, 2)
        return w.reshape(n, out_c, k_in * taps), b
    b = None
    if bias is not None:
        b = (bias.view(1, -1).expand(n, bias.shape[0]) if out_rows is None
             else bias.index_select(0, out_rows.flatten()).view(n, out_rows.shape[1]))
    if out_rows is not None and in_rows is not None:
        k_out, k_in = out_rows.shape[1], in_rows.shape[1]
        flat = (out_rows.unsqueeze(2) * weight.shape[1] + in_rows.unsqueeze(1)).flatten()
        w = weight.reshape(weight.shape[0] * weight.shape[1], taps).index_select(0, flat)
        return w.view(n, k_out, k_in * taps), b
    if out_rows is not None:
        k_out = out_rows.shape[1]
        w = weight.reshape(weight.shape[0], weight.shape[1] * taps)
        return w.index_select(0, out_rows.flatten()).view(n, k_out, weight.shape[1] * taps), b
    w = weight.reshape(weight.shape[0], weight.shape[1] * taps)
    return w.unsqueeze(0).expand(n, *w.shape), b


def patches(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
            padding: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[Tensor, list[int]]:
    """``x`` ``(N, C, *spatial)`` as the columns a convolution reads, ``(N, C * taps, L)``
    (channel-major, taps in kernel order, as a conv weight flattens), and the output size.

    A 1x1 conv without padding reads ``x`` itself (strided); any other kernel runs one
    convolution of every channel with the constant identity filters ``(taps, 1,
    *kernel)`` (``im2col`` as a conv: one op to trace, and a constant weight that a
    runtime prepacks; ``unfold`` exports as gathers along the last axis, a float each).

    >>> x = torch.randn(2, 3, 5, 5)
    >>> cols, out = patches(x, (3, 3), (2, 2), (1, 1), (1, 1))
    >>> torch.allclose(cols, torch.nn.functional.unfold(x, 3, padding=1, stride=2)), out
    (True, [3, 3])
    """
    spatial = x.shape[2:]
    out = [(s + 2 * p - d * (k - 1) - 1) // st + 1
           for s, k, st, p, d in zip(spatial, kernel, stride, padding, dilation)]
    if all(k == 1 for k in kernel) and not any(padding):
        if any(st != 1 for st in stride):
            x = x[(slice(None), slice(None), *[slice(0, (o - 1) * st + 1, st)
                                                for o, st in zip(out, stride)])]
        return x.flatten(2), out
    taps = math.prod(kernel)
    eye = torch.eye(taps, dtype=x.dtype, device=x.device).view(taps, 1, *kernel)
    n, c = x.shape[:2]
    cols = CONV_FUNCTIONS[len(kernel) - 1](x.reshape(n * c, 1, *spatial), eye, None, stride,
                                           padding, dilation)
    return cols.reshape(n, c * taps, math.prod(out)), out


def per_image_conv(x: Tensor, weight: Tensor, bias: Tensor | None, kernel: tuple[int, ...],
                   stride: tuple[int, ...], padding: tuple[int, ...],
                   dilation: tuple[int, ...]) -> Tensor:
    """Image ``n`` convolved with its own ``weight[n]`` (``(N, K_out, C * taps)``, from
    :func:`per_image_weight`) and ``bias[n]``: one batched ``MatMul`` (see the module
    docstring)."""
    n, k_out = weight.shape[:2]
    cols, out = patches(x, kernel, stride, padding, dilation)
    y = torch.matmul(weight, cols)
    if bias is not None:
        y = y + bias.unsqueeze(2)
    return y.view(n, k_out, *out)
