"""The convolution that :func:`gatekit.skip_compute` runs: BatchNorm folded, channels sliced.

One module covers every case a conv is in after planning: its output filters computed in
full, only the open ones (*sliced*), or only the open ones placed back into zeros
(*scatter*); its input either full or the compact tensor of a previous site's open
channels.  Weights are gathered per call with ``index_select`` into contiguous buffers
(cheap next to the convolution itself).  A 1x1 conv on a 4-d input runs as one ``addmm``
on the channels-last view of the activation (the gathered rows are already the GEMM's
operand; a stride first subsamples the input), everything else through
``torch.nn.functional.conv{1,2,3}d``.  Where the output is added to a residual that
nothing reads later, the GEMM accumulates into the residual in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._errors import GatekitError
from .._graph import conv_output_size
from ._folding import fold_batchnorm

__all__: list[str] = []

_OUT_MODES = ("full", "sliced", "scatter")
_CONV_FUNCTIONS = (F.conv1d, F.conv2d, F.conv3d)


class SkipConv(nn.Module):
    """``bn(conv(x))`` folded into one conv, computing only the channels it is told to.

    ``forward(x, out_idx, in_idx)``: ``out_idx`` (sorted open output channels; used when
    ``out_mode`` is ``"sliced"`` or ``"scatter"``), ``in_idx`` (the original channel
    numbers of ``x``'s channels when ``in_sliced``; ``x`` then holds only those).  Both
    are ``None`` otherwise.  The result of ``"sliced"`` has ``len(out_idx)`` channels in
    that order; ``"full"`` and ``"scatter"`` give all ``out_channels``.

    >>> conv = nn.Conv2d(4, 6, 1)
    >>> skip = SkipConv(conv, None, out_mode="sliced", in_sliced=True)
    >>> x = torch.randn(1, 4, 5, 5)
    >>> out_idx, in_idx = torch.tensor([1, 4]), torch.tensor([0, 2])
    >>> y = skip(x[:, in_idx], out_idx, in_idx)
    >>> x_gated = x * torch.tensor([1.0, 0, 1, 0])[:, None, None]
    >>> torch.allclose(y, conv(x_gated)[:, out_idx], atol=1e-6)
    True
    """

    def __init__(self, conv: nn.Module, bn: nn.Module | None, *, out_mode: str, in_sliced: bool):
        super().__init__()
        if out_mode not in _OUT_MODES:
            raise GatekitError(f"out_mode must be one of {_OUT_MODES}, got {out_mode!r}")
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
        self.transposed = self.use_mm and self.in_sliced and out_mode == "full"
        if self.use_mm:
            weight = weight.flatten(1)
            weight = weight.t() if self.transposed else weight
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("bias", bias)
        self._taps = int(torch.tensor(self.kernel_size).prod())

    def _weights(
        self, out_idx: Tensor | None, in_idx: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        w, b = self.weight, self.bias
        cut_out = (
            out_idx is not None and self.out_mode != "full" and out_idx.numel() < self.out_channels
        )
        cut_in = in_idx is not None and self.in_sliced and in_idx.numel() < self.in_channels
        if cut_out and b is not None:
            b = b.index_select(0, out_idx)
        if self.transposed:
            return (w.index_select(0, in_idx) if cut_in else w), b
        if cut_out and cut_in and not self.use_mm:
            # One gather of (out, in) pairs from the (out * in, taps) view: no intermediate.
            flat = (out_idx[:, None] * self.in_channels + in_idx[None, :]).flatten()
            w = w.view(-1, self._taps).index_select(0, flat)
            return w.view(out_idx.numel(), in_idx.numel(), *self.kernel_size), b
        if cut_out:
            w = w.index_select(0, out_idx)
        if cut_in:
            w = w.index_select(1, in_idx)
        return w, b

    def forward(
        self,
        x: Tensor,
        out_idx: Tensor | None = None,
        in_idx: Tensor | None = None,
        out_mask: Tensor | None = None,
        residual: Tensor | None = None,
    ) -> Tensor:
        """The conv's output; with ``residual``, ``residual + output`` written into ``residual``.

        ``out_mask`` ``(N, len(out_idx))``: per-sample gates of the computed channels, for
        a batch whose samples open different channels (their union is computed).
        ``residual`` must be a tensor nothing else reads afterwards (the rewrite checks the
        graph); a shape or layout that does not fit falls back to an out-of-place sum.
        """
        w, b = self._weights(out_idx, in_idx)
        k_out = w.shape[1] if self.transposed else w.shape[0]
        k_in = x.shape[1]
        if k_in == 0 or k_out == 0:
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
            y = y.contiguous(memory_format=_memory_format(y))
        elif self.use_mm:
            if self.stride != (1, 1):
                x = x[:, :, :: self.stride[0], :: self.stride[1]]
            n, c, h, width = x.shape
            rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view for channels-last input
            wt = w if self.transposed else w.t()
            if (
                isinstance(residual, Tensor)
                and out_mask is None
                and self.out_mode != "scatter"
                and residual.shape == (n, k_out, h, width)
                and residual.is_contiguous(memory_format=torch.channels_last)
            ):
                # GEMM with beta=1 straight into the residual: no output tensor, no extra add.
                acc = residual.permute(0, 2, 3, 1).view(-1, k_out)
                acc.addmm_(rows, wt)
                if b is not None:
                    acc.add_(b)
                return residual
            y = torch.mm(rows, wt) if b is None else torch.addmm(b, rows, wt)
            y = y.view(n, h, width, k_out).permute(0, 3, 1, 2)
        else:
            conv = _CONV_FUNCTIONS[x.ndim - 3]
            y = conv(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        if out_mask is not None and self.out_mode != "full":
            y = y * out_mask.to(y.dtype).view(*out_mask.shape, *[1] * (y.ndim - 2))
        if self.out_mode == "scatter" and k_out < self.out_channels:
            full = y.new_zeros(y.shape[0], self.out_channels, *y.shape[2:])
            full = full.contiguous(memory_format=_memory_format(full))
            y = full.index_copy_(1, out_idx, y)
        if residual is None:
            return y
        if isinstance(residual, Tensor) and residual.shape == y.shape:
            return residual.add_(y)
        return residual + y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, out_mode={self.out_mode!r}, in_sliced={self.in_sliced}, "
            f"use_mm={self.use_mm}"
        )


def _memory_format(t: Tensor) -> torch.memory_format:
    if t.ndim == 4:
        return torch.channels_last
    if t.ndim == 5:
        return torch.channels_last_3d
    return torch.contiguous_format
