"""The convolution that :func:`gatekit.skip_compute` runs: BatchNorm folded, channels sliced.

One module covers every case a conv is in after planning: its output filters computed in
full, only the open ones (*sliced*), or only the open ones placed back into zeros
(*scatter*); its input either full or the compact tensor of a previous site's open
channels.  Which channels are open comes per run of the rewritten graph, as a
:class:`Channels` object made by the batching mode (``batching``); :meth:`SkipConv.forward`
hands the work to it, and the modes whose samples share one set of channels per site run
:meth:`SkipConv.run_shared`, built from the steps below.

Steps: weights are gathered per call with ``index_select`` into contiguous buffers (cheap
next to the convolution itself; :func:`gather_weight`, which the export shares).  A 1x1 conv on a 4-d input runs as one ``addmm`` on the
channels-last view of the activation (the gathered rows are already the GEMM's operand; a
stride first subsamples the input), everything else through
``torch.nn.functional.conv{1,2,3}d``.  Where the output is added to a residual that
nothing reads later, the GEMM accumulates into the residual in place.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._errors import GatekitError
from .._graph import conv_output_size
from ._folding import fold_batchnorm
from .common import SCATTER, SLICED

__all__: list[str] = []

FULL = "full"  # every output filter computed (a conv that is not a sliced site's producer)
_OUT_MODES = (FULL, SLICED, SCATTER)
#: ``torch.nn.functional.conv{1,2,3}d`` by the input's rank minus 3: the one place they are
#: named (the export's convs take them from here).
CONV_FUNCTIONS = (F.conv1d, F.conv2d, F.conv3d)


class Channels(Protocol):
    """What one run of the rewritten graph computes at each site, made per run by the
    batching mode: it runs every :class:`SkipConv` of that run."""

    def conv(self, conv: SkipConv, x: Tensor, out_site: int | None, in_site: int | None,
             residual: Tensor | None) -> Tensor:
        """``conv``'s output for ``x``; ``out_site``/``in_site``: the site whose open
        channels it computes / ``x`` holds (None: all channels)."""
        ...


class SkipConv(nn.Module):
    """``bn(conv(x))`` folded into one conv, computing only the channels it is told to.

    ``out_mode``: ``"full"``, ``"sliced"`` or ``"scatter"`` (see the module docstring);
    ``in_sliced``: ``x`` holds only the open channels of the site before.  In the rewritten
    graph it is called as ``skip(x, channels, out_site, in_site, residual=None)`` and the
    run's :class:`Channels` computes.  :meth:`run_shared` computes given the channels
    themselves: ``out_idx`` (sorted open output channels; used when ``out_mode`` is
    ``"sliced"`` or ``"scatter"``), ``in_idx`` (the original channel numbers of ``x``'s
    channels when ``in_sliced``).  The result of ``"sliced"`` has ``len(out_idx)``
    channels in that order; ``"full"`` and ``"scatter"`` give all ``out_channels``.

    >>> conv = nn.Conv2d(4, 6, 1)
    >>> skip = SkipConv(conv, None, out_mode="sliced", in_sliced=True)
    >>> x = torch.randn(1, 4, 5, 5)
    >>> out_idx, in_idx = torch.tensor([1, 4]), torch.tensor([0, 2])
    >>> y = skip.run_shared(x[:, in_idx], out_idx, in_idx)
    >>> x_gated = x * torch.tensor([1.0, 0, 1, 0])[:, None, None]
    >>> torch.allclose(y, conv(x_gated)[:, out_idx], atol=1e-6)
    True
    """

    def __init__(self, conv: nn.Module, bn: nn.Module | None, *, out_mode: str, in_sliced: bool):
        super().__init__()
        if out_mode not in _OUT_MODES:
            raise GatekitError(
                f"SkipConv expects out_mode to be one of {_OUT_MODES}, got {out_mode!r}; "
                f"pass one of them"
            )
        weight, bias = fold_batchnorm(conv, bn)
        self.out_mode = out_mode
        self.in_sliced = bool(in_sliced)
        self.out_channels, self.in_channels = weight.shape[:2]
        self.kernel_size = tuple(weight.shape[2:])
        self.stride = tuple(conv.stride)
        self.padding = tuple(conv.padding)
        self.dilation = tuple(conv.dilation)
        self.groups = conv.groups
        self.use_mm = (
            weight.ndim == 4
            and self.groups == 1
            and self.kernel_size == (1, 1)
            and self.padding == (0, 0)
        )
        # Store each weight in the layout whose *rows* the per-call gather selects, so
        # index_select copies whole contiguous rows.
        self.transposed = self.use_mm and self.in_sliced and out_mode == FULL
        if self.use_mm:
            weight = weight.flatten(1)
            weight = weight.t() if self.transposed else weight
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("bias", bias)
        self.taps = int(torch.tensor(self.kernel_size).prod())
        self._padded: tuple | None = None  # padded_rows()'s cache

    def forward(self, x: Tensor, channels: Channels, out_site: int | None = None,
                in_site: int | None = None, residual: Tensor | None = None) -> Tensor:
        """The conv's output for this run (``residual``: see :meth:`run_shared`)."""
        return channels.conv(self, x, out_site, in_site, residual)

    def run_shared(
        self,
        x: Tensor,
        out_idx: Tensor | None = None,
        in_idx: Tensor | None = None,
        out_mask: Tensor | None = None,
        residual: Tensor | None = None,
    ) -> Tensor:
        """The output when every sample computes the channels ``out_idx`` from ``in_idx``.

        ``out_mask`` ``(N, len(out_idx))``: per-sample gates of the computed channels, for
        a batch whose samples open different channels (their union is computed).  With
        ``residual``, ``residual + output``, written into ``residual`` where it fits:
        ``residual`` must be a tensor nothing else reads afterwards (the rewrite checks the
        graph); a shape or layout that does not fit falls back to an out-of-place sum.
        """
        w, b = self.weights(out_idx, in_idx)
        if out_mask is None and self.out_mode != SCATTER:
            accumulated = self.accumulate(x, w, b, residual)
            if accumulated is not None:
                return accumulated
        y = self.convolve(x, w, b)
        if out_mask is not None and self.out_mode != FULL:
            y = y * out_mask.to(y.dtype).view(*out_mask.shape, *[1] * (y.ndim - 2))
        if self.out_mode == SCATTER:
            if (
                out_idx is not None
                and isinstance(residual, Tensor)
                and residual.shape == (y.shape[0], self.out_channels, *y.shape[2:])
            ):
                return residual.index_add_(1, out_idx, y)  # no zeros to scatter into
            y = self.scatter(y, out_idx)
        return add_residual(y, residual)

    # ---- steps --------------------------------------------------------------------------

    def weights(
        self, out_idx: Tensor | None, in_idx: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """The folded weight and bias, cut to the output rows ``out_idx`` (when this conv
        computes open filters only) and the input channels ``in_idx`` (when ``in_sliced``),
        in the layout the weight is stored in."""
        cut_out = (
            out_idx is not None and self.out_mode != FULL and out_idx.numel() < self.out_channels
        )
        cut_in = in_idx is not None and self.in_sliced and in_idx.numel() < self.in_channels
        return gather_weight(self.weight, self.bias, out_idx if cut_out else None,
                             in_idx if cut_in else None, in_major=self.transposed)

    def conv_weight(self) -> Tensor:
        """The folded weight in conv layout, ``(out, in / groups, *kernel_size)``, whatever
        layout it is stored in (the 1x1 GEMM paths keep it flat, some transposed).

        >>> skip = SkipConv(nn.Conv2d(4, 3, 1), None, out_mode="full", in_sliced=True)
        >>> tuple(skip.weight.shape), tuple(skip.conv_weight().shape)
        ((4, 3), (3, 4, 1, 1))
        """
        w = self.weight.t() if self.transposed else self.weight
        return w.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def _k_out(self, w: Tensor) -> int:
        return w.shape[1] if self.transposed else w.shape[0]

    def padded_weight(self, *, zero_out: bool = False, zero_in: bool = False,
                      in_major: bool = False) -> tuple[Tensor, Tensor | None]:
        """The folded weight in conv layout and the bias, with a zero filter and a zero input
        channel appended where asked: the one layout every per-call gather of padded indices
        reads (``"gather"``'s per-sample rows, the export's convs).

        ``zero_out``: a row ``out`` of zeros (and a zero bias entry), for an output index
        that computes exactly zero; ``zero_in``: a column ``in`` of zeros, for an input
        channel that reads nothing.  ``in_major``: the weight as ``(in, out, *kernel)``, so
        that a gather of input channels copies whole rows.  A new tensor each call.

        >>> skip = SkipConv(nn.Conv2d(2, 3, 3), None, out_mode="sliced", in_sliced=True)
        >>> w, b = skip.padded_weight(zero_out=True, zero_in=True, in_major=True)
        >>> tuple(w.shape), b.shape[0], bool(w[2].eq(0).all() and w[:, 3].eq(0).all())
        ((3, 4, 3, 3), 4, True)
        """
        w = self.conv_weight()
        out_c, in_c = w.shape[:2]
        padded = w.new_zeros(out_c + int(zero_out), in_c + int(zero_in), *w.shape[2:])
        padded[:out_c, :in_c] = w
        bias = self.bias
        if bias is not None and zero_out:
            bias = torch.cat([bias, bias.new_zeros(1)])
        return (padded.transpose(0, 1) if in_major else padded).contiguous(), bias

    def padded_rows(self) -> tuple[Tensor, Tensor | None]:
        """:meth:`padded_weight` with a zero filter, as rows by output channel:
        ``(out + 1, in * taps)`` and the bias ``(out + 1,)`` (None without a bias).

        For gathering per-sample weight blocks with one ``index_select``: a padded output
        row reads the zero row and computes exactly zero.  Made once and kept (not a
        buffer: not saved); made again when the weight is replaced or modified.

        >>> skip = SkipConv(nn.Conv2d(2, 3, 3), None, out_mode="sliced", in_sliced=False)
        >>> rows, bias = skip.padded_rows()
        >>> tuple(rows.shape), bool(rows[-1].eq(0).all()), skip.padded_rows()[0] is rows
        ((4, 18), True, True)
        """
        w, b = self.weight, self.bias
        key = (w.data_ptr(), w._version, w.dtype, w.device, None if b is None else b._version)
        if self._padded is not None and self._padded[0] == key:
            return self._padded[1], self._padded[2]
        rows, bias = self.padded_weight(zero_out=True)
        rows = rows.reshape(self.out_channels + 1, -1)
        self._padded = (key, rows, bias)
        return rows, bias

    def strided(self, x: Tensor) -> Tensor:
        """A 1x1 conv's input at its output's resolution (a view)."""
        if self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        return x

    @staticmethod
    def _rows(x: Tensor) -> Tensor:
        """GEMM rows ``(N * H * W, C)`` of a 4-d tensor: a view for channels-last input."""
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])

    def accumulate(
        self, x: Tensor, w: Tensor, b: Tensor | None, residual: Tensor | None
    ) -> Tensor | None:
        """``residual += conv(x)`` as one GEMM with beta=1 straight into ``residual`` (no
        output tensor, no extra add), when this is a 1x1 GEMM conv and ``residual`` is a
        channels-last tensor of the output's shape; else None, and nothing is done."""
        if not (self.use_mm and isinstance(residual, Tensor)) or x.shape[1] == 0:
            return None
        x = self.strided(x)
        k_out = self._k_out(w)
        n, _, h, width = x.shape
        if (
            k_out == 0
            or residual.shape != (n, k_out, h, width)
            or not residual.is_contiguous(memory_format=torch.channels_last)
        ):
            return None
        acc = residual.permute(0, 2, 3, 1).view(-1, k_out)
        acc.addmm_(self._rows(x), w if self.transposed else w.t())
        if b is not None:
            acc.add_(b)
        return residual

    def convolve(
        self, x: Tensor, w: Tensor, b: Tensor | None, groups: int | None = None
    ) -> Tensor:
        """The convolution of ``x`` with the gathered ``w`` and ``b``.

        ``groups``: a grouped convolution with ``w`` in conv layout ``(out, in / groups,
        *kernel_size)`` (``"gather"`` runs one group per sample); default: the conv's own
        groups, a 1x1 conv as a GEMM.
        """
        grouped = groups is not None
        k_out = w.shape[0] if grouped else self._k_out(w)
        if x.shape[1] == 0 or k_out == 0:
            # Nothing to convolve (all gates closed): the output is the bias alone.
            size = conv_output_size(
                x.shape[2:], self.kernel_size, self.stride, self.padding, self.dilation
            )
            shape = [x.shape[0], k_out, *size]
            y = (
                x.new_zeros(shape)
                if b is None
                else b.view(1, -1, *[1] * (len(shape) - 2)).expand(shape)
            )
            return y.contiguous(memory_format=memory_format(y))
        if self.use_mm and not grouped:
            x = self.strided(x)
            n, _, h, width = x.shape
            rows, wt = self._rows(x), (w if self.transposed else w.t())
            y = torch.mm(rows, wt) if b is None else torch.addmm(b, rows, wt)
            return y.view(n, h, width, k_out).permute(0, 3, 1, 2)
        conv = CONV_FUNCTIONS[x.ndim - 3]
        return conv(x, w, b, self.stride, self.padding, self.dilation,
                    groups if grouped else self.groups)

    def scatter(self, y: Tensor, out_idx: Tensor | None) -> Tensor:
        """The computed channels ``y`` placed at ``out_idx`` among ``out_channels`` zeros."""
        if out_idx is None or y.shape[1] == self.out_channels:
            return y
        full = y.new_zeros(y.shape[0], self.out_channels, *y.shape[2:])
        full = full.contiguous(memory_format=memory_format(full))
        return full.index_copy_(1, out_idx, y)

    def __getstate__(self) -> dict:
        # padded_rows() is made again on demand: copies and pickles leave it out.
        return {**self.__dict__, "_padded": None}

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, out_mode={self.out_mode!r}, in_sliced={self.in_sliced}, "
            f"use_mm={self.use_mm}"
        )


def gather_weight(
    weight: Tensor,
    bias: Tensor | None,
    out_idx: Tensor | None,
    in_idx: Tensor | None,
    *,
    in_major: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The rows ``out_idx`` and columns ``in_idx`` of a conv weight (None: all), and the
    entries ``out_idx`` of its bias: what :class:`SkipConv` and the export's conv compute with.

    ``weight``: ``(out, in, *kernel)``, or a 1x1 conv's ``(out, in)``; ``in_major``: stored
    ``(in, out, ...)``, then only ``in_idx`` may be given and the result stays in-major.
    Every gather copies contiguous rows where it can: a runtime copies one block per index
    (ONNX Runtime's ``Gather`` does), and a block of one float is slow.

    >>> w, b = torch.arange(24.0).view(3, 2, 2, 2), torch.tensor([0.0, 1, 2])
    >>> cut_w, cut_b = gather_weight(w, b, torch.tensor([2, 0]), torch.tensor([1]))
    >>> torch.equal(cut_w, w[[2, 0]][:, [1]]), cut_b.tolist()
    (True, [2.0, 0.0])
    """
    if bias is not None and out_idx is not None:
        bias = bias.index_select(0, out_idx)
    if in_major:
        return (weight if in_idx is None else weight.index_select(0, in_idx)), bias
    if out_idx is not None and in_idx is not None and weight.ndim > 2:
        # One gather of (out, in) pairs from the (out * in, taps) view: no intermediate.
        flat = (out_idx[:, None] * weight.shape[1] + in_idx[None, :]).flatten()
        w = weight.flatten(2).flatten(0, 1).index_select(0, flat)
        return w.view(out_idx.shape[0], in_idx.shape[0], *weight.shape[2:]), bias
    if out_idx is not None:
        weight = weight.index_select(0, out_idx)
    if in_idx is not None:
        weight = weight.index_select(1, in_idx)
    return weight, bias


def add_residual(y: Tensor, residual: Tensor | None) -> Tensor:
    """``residual + y``, written into ``residual`` when the shapes match (see
    :meth:`SkipConv.run_shared` for when that is allowed)."""
    if residual is None:
        return y
    if isinstance(residual, Tensor) and residual.shape == y.shape:
        return residual.add_(y)
    return residual + y


def memory_format(t: Tensor) -> torch.memory_format:
    """The channels-last format of a 4-d or 5-d tensor, else contiguous."""
    if t.ndim == 4:
        return torch.channels_last
    if t.ndim == 5:
        return torch.channels_last_3d
    return torch.contiguous_format
