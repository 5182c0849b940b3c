"""Triton kernels of the gated convolution: implicit GEMM on NHWC with a fused, gate-aware epilogue.

Imported lazily by the dispatcher (``import gatekit`` never imports Triton).  The op is
registered as ``torch.ops.gatekit.gated_conv2d_triton`` through :func:`torch.library.triton_op`
and :func:`torch.library.wrap_triton`, so :func:`torch.compile` sees the kernels; its backward is
the shared PyTorch one of :mod:`gatekit.ops.autograd`.

How the gates save work.  The GEMM is ``M = one sample's output pixels`` by ``N = output
channels`` by ``K = kH * kW * C_in``.  A tile never mixes samples.  Before the convolution a
sample's output channels (per conv group) are ordered with the gated-on ones first, keeping
their order (by the conv kernel itself for up to 64 gate groups, else by a small kernel
before it); the tile ``j`` of a sample computes the channels in
places ``[j * BLOCK_N, (j + 1) * BLOCK_N)`` of that order, so a sample with ``k`` channels on runs
``ceil(k / BLOCK_N)`` channel tiles and the others skip their whole K loop and only store
zeros.  This works for any gate group size; with groups of 32 and ``BLOCK_N = 128`` a sample
with half its groups off computes half the tiles.  With ``in_gate`` (the gate of the previous
layer, ``groups == 1``) the K loop likewise visits only the ``BLOCK_K``-channel input blocks
that have some channel on.

Precision: products in the input dtype on the tensor cores, accumulation and epilogue in
float32, one rounding at the store.  float32 inputs use TF32 when
``torch.backends.cudnn.allow_tf32`` is set (as PyTorch's convolutions do) and IEEE float32
otherwise and under ``TRITON_INTERPRET=1``.

Tile shapes are autotuned per layer shape on CUDA (configurations for Hopper); with
``GATEKIT_TRITON_AUTOTUNE=0`` in the environment at import one fixed configuration is used
(the tests do this, to compile each specialisation once).  The interpreter uses 32x16x16 tiles.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._graph import conv_output_size
from .autograd import register_gated_conv_autograd

# The ops are reached through gatekit.ops.gated_conv2d(op="triton"); their runnable
# examples need CUDA, so they are not part of the documented surface.
__all__: list[str] = []  # internal: reached through gatekit.ops.gated_conv2d

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_ACT = {"none": 0, "relu": 1}



@triton.jit
def _order_kernel(
    gate_ptr, stride_gn, order_ptr, count_ptr,
    C_PG, GROUPS, GATE_GS, N_ITEMS,
    ITEM: tl.constexpr, N_ITEMS_P2: tl.constexpr,
):
    """One row per (sample, conv group): items with some channel gated on first, then the rest."""
    row = tl.program_id(0)
    n = row // GROUPS
    grp = row % GROUPS
    items = tl.arange(0, N_ITEMS_P2)
    sub = tl.arange(0, ITEM)
    ch = items[:, None] * ITEM + sub[None, :]
    valid = (ch < C_PG) & (items[:, None] < N_ITEMS)
    g = tl.load(gate_ptr + n * stride_gn + (grp * C_PG + ch) // GATE_GS, mask=valid, other=0.0)
    on = tl.max((g != 0).to(tl.int32), axis=1)
    off = (items < N_ITEMS).to(tl.int32) - on
    n_on = tl.sum(on, axis=0)
    rank = tl.where(on == 1, tl.cumsum(on, axis=0) - 1, n_on + tl.cumsum(off, axis=0) - 1)
    tl.store(order_ptr + row * N_ITEMS + rank, items, mask=items < N_ITEMS)
    tl.store(count_ptr + row, n_on)


@triton.jit
def _gated_conv_kernel(
    x_ptr, w_ptr, out_ptr, gate_ptr, bias_ptr, scale_ptr, shift_ptr, in_gate_ptr,
    out_order_ptr, out_count_ptr, in_order_ptr, in_count_ptr,
    H, W, H_OUT, W_OUT, C_IN_PG, C_OUT_PG, GROUPS, GATE_GS, IN_GS, N_IN_BLOCKS,
    sxn, sxc, sxh, sxw, swo, swi, swh, sww, son, soc, soh, sow, sgn, sign,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    KH: tl.constexpr, KW: tl.constexpr, ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    HAS_IN_GATE: tl.constexpr, PRECISION: tl.constexpr, CO_VEC: tl.constexpr, G_P2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Channel tiles vary fastest so the tiles that share one input tile run together (L2 reuse).
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(C_OUT_PG, BLOCK_N)
    tiles_m = tl.cdiv(H_OUT * W_OUT, BLOCK_M)
    pid_n = pid % (GROUPS * tiles_n)
    pid_m = pid // (GROUPS * tiles_n)
    n = pid_m // tiles_m
    mt = pid_m % tiles_m
    grp = pid_n // tiles_n
    nt = pid_n % tiles_n
    row = n * GROUPS + grp

    slot = nt * BLOCK_N + tl.arange(0, BLOCK_N)
    slot_ok = slot < C_OUT_PG
    if G_P2 > 0:
        # The order of this sample's gate groups, computed here (no extra launch): group j
        # goes to place rank[j]; the slot s of the tile holds channel offset s % GATE_GS of
        # the group placed at s // GATE_GS.
        j = tl.arange(0, G_P2)
        j_ok = j < C_OUT_PG // GATE_GS
        gv = tl.load(gate_ptr + n * sgn + grp * (C_OUT_PG // GATE_GS) + j, mask=j_ok, other=0.0)
        on = ((gv != 0) & j_ok).to(tl.int32)
        off = j_ok.to(tl.int32) - on
        n_on = tl.sum(on, axis=0)
        rank = tl.where(on == 1, tl.cumsum(on, axis=0) - on, n_on + tl.cumsum(off, axis=0) - off)
        match = (rank[None, :] == (slot // GATE_GS)[:, None]) & j_ok[None, :]
        placed = tl.sum(tl.where(match, j[None, :], 0), axis=1)
        co = grp * C_OUT_PG + placed * GATE_GS + slot % GATE_GS
        n_live = n_on * GATE_GS
    else:
        co = grp * C_OUT_PG + tl.load(out_order_ptr + row * C_OUT_PG + slot, mask=slot_ok,
                                      other=0)
        n_live = tl.load(out_count_ptr + row)
    if CO_VEC > 1:
        # Gate groups stay whole and in order in the channel order, so channels come in
        # aligned runs of CO_VEC: say so, and the epilogue's stores and loads vectorise.
        co = tl.max_contiguous(tl.multiple_of(co, CO_VEC), CO_VEC)
    live = (nt * BLOCK_N < n_live).to(tl.int32)

    m = mt * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < H_OUT * W_OUT
    oh = m // W_OUT
    ow = m % W_OUT
    ih0 = oh * STRIDE_H - PAD_H
    iw0 = ow * STRIDE_W - PAD_W
    x_base = x_ptr + n * sxn
    w_base = w_ptr + co[None, :] * swo
    ks = tl.arange(0, BLOCK_K)

    if HAS_IN_GATE:
        n_kb_on = tl.load(in_count_ptr + n)
        n_iters = KH * KW * n_kb_on * live
        n_kb = tl.maximum(n_kb_on, 1)
    else:
        n_kb = N_IN_BLOCKS
        n_iters = KH * KW * n_kb * live
    # A tile whose channels are all gated off runs no K iteration at all.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(0, n_iters):
        tap = t // n_kb
        kb_i = t % n_kb
        if HAS_IN_GATE:
            kb = tl.load(in_order_ptr + n * N_IN_BLOCKS + kb_i)
        else:
            kb = kb_i
        kh = tap // KW
        kw = tap % KW
        ci_local = kb * BLOCK_K + ks
        ci_ok = ci_local < C_IN_PG
        ci = grp * C_IN_PG + ci_local
        ih = ih0 + kh * DIL_H
        iw = iw0 + kw * DIL_W
        a_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(
            x_base + ih[:, None] * sxh + iw[:, None] * sxw + ci[None, :] * sxc,
            mask=a_ok[:, None] & ci_ok[None, :], other=0.0,
        )
        if HAS_IN_GATE:
            ig = tl.load(in_gate_ptr + n * sign + ci // IN_GS, mask=ci_ok, other=0.0)
            a = a * ig[None, :]
        b = tl.load(
            w_base + ci_local[:, None] * swi + kh * swh + kw * sww,
            mask=ci_ok[:, None] & slot_ok[None, :], other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=slot_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + co, mask=slot_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_SHIFT:
        acc += tl.load(shift_ptr + co, mask=slot_ok, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        acc = tl.maximum(acc, 0.0)
    g = tl.load(gate_ptr + n * sgn + co // GATE_GS, mask=slot_ok, other=0.0).to(tl.float32)
    acc *= g[None, :]
    out = out_ptr + n * son + oh[:, None] * soh + ow[:, None] * sow + co[None, :] * soc
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & slot_ok[None, :])


def _cuda_configs() -> list[triton.Config]:
    # Tiles for Hopper: 128-row tiles on the big feature maps, 64- and 32-row ones for 14x14 and
    # 7x7 (a tile never crosses samples), and narrow channel tiles so small layers still split.
    shapes = [
        (128, 128, 8, 3), (128, 128, 4, 4), (128, 64, 4, 4), (128, 256, 8, 3),
        (64, 128, 4, 4), (64, 64, 4, 4), (128, 32, 4, 4), (64, 256, 8, 3),
        (32, 128, 4, 3), (32, 64, 4, 3),
    ]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in shapes
    ]


def _prune(configs: list, named_args: dict, **kwargs: object) -> list:
    # Tiles much wider than the layer or taller than one sample's output only add masked work.
    c_out_pg, hw = named_args["C_OUT_PG"], named_args["H_OUT"] * named_args["W_OUT"]
    kept = [
        c for c in configs
        if c.kwargs["BLOCK_N"] <= max(32, _pow2(c_out_pg))
        and c.kwargs["BLOCK_M"] <= max(64, _pow2(hw))
        # 32-row tiles only where one sample's output is small (14x14 and below): more, smaller
        # tiles fill the GPU there, and gated-off ones free whole waves.
        and (c.kwargs["BLOCK_M"] >= 64 or hw <= 256)
    ]
    return kept or configs


_KEY = ["H_OUT", "W_OUT", "C_IN_PG", "C_OUT_PG", "GROUPS", "KH", "KW", "STRIDE_H", "BLOCK_K"]
if _INTERPRET:
    # The interpreter runs one small configuration; autotuning would only multiply its cost.
    _conv = _gated_conv_kernel
    _FIXED = {"BLOCK_M": 32, "BLOCK_N": 16}
elif os.environ.get("GATEKIT_TRITON_AUTOTUNE", "1") == "0":
    # One fixed configuration: what tests use, to compile each specialisation once.
    _conv = _gated_conv_kernel
    _FIXED = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
else:
    _conv = triton.autotune(
        configs=_cuda_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune}
    )(_gated_conv_kernel)
    _FIXED = {}


def select_block_k(c_in_per_group: int, in_group_size: int | None) -> int:
    """Input channels per K step: 64 for wide layers, less for narrow ones and for ``in_gate``.

    With ``in_gate`` the block is at most the input gate group, so that a block gated off as
    a whole is skipped.  The interpreter uses 16, the smallest ``tl.dot`` accepts.

    >>> select_block_k(256, None), select_block_k(256, 32), select_block_k(24, None)
    (64, 32, 32)
    """
    if _INTERPRET:
        return 16
    bk = 64
    while bk > 16 and bk // 2 >= c_in_per_group:
        bk //= 2
    if in_group_size is not None:
        while bk > 16 and in_group_size % bk:
            bk //= 2
    return bk


def _precision(dtype: torch.dtype) -> str:
    # Only float32 products have a choice; half-precision ones keep Triton's default.
    if _INTERPRET or (dtype == torch.float32 and not torch.backends.cudnn.allow_tf32):
        return "ieee"
    return "tf32"


# Host-side arithmetic in plain Python: triton.cdiv and friends are constexpr functions whose
# call from Python costs more than a small layer's whole launch.
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(a: int) -> int:
    return 1 << max(a - 1, 0).bit_length()


def _no_wrap(kernel: object) -> object:
    return kernel


# wrap_triton makes compiled kernels traceable; interpreted ones are plain Python functions,
# which some torch versions refuse to wrap.
_WRAP = _no_wrap if _INTERPRET else wrap_triton


def _gated_conv2d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    gate: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    in_gate: torch.Tensor | None,
    activation: str,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """The Triton gated convolution (same schema as ``gatekit::gated_conv2d_reference``).

    Inputs are used in channels-last layout (converted if they are not) and the output is
    channels-last.  Call it through :func:`gatekit.ops.gated_conv2d`, which validates.
    """
    return _launch(
        _WRAP, x, weight, gate, bias, scale, shift, in_gate, activation, stride, padding,
        dilation, groups,
    )


def _launch(wrap: Callable, *args: Any) -> torch.Tensor:
    """Launch the kernels with ``wrap`` (``wrap_triton`` or none) on the op's arguments."""
    x, weight, gate, bias, scale, shift, in_gate, activation, stride, padding, dilation, groups = args
    # Sizes become kernel constants and launch sizes: plain ints (symbolic sizes specialise).
    n, c_in, h, w = (int(v) for v in x.shape)
    c_out, c_in_pg, kh, kw = (int(v) for v in weight.shape)
    c_out_pg = c_out // groups
    h_out, w_out = conv_output_size((h, w), (kh, kw), stride, padding, dilation)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = weight.contiguous(memory_format=torch.channels_last)
    gate = gate.contiguous()
    out = torch.empty(
        (n, c_out, h_out, w_out), device=x.device, dtype=x.dtype, memory_format=torch.channels_last
    )
    gate_gs = c_out // int(gate.shape[1])
    in_gs = 1 if in_gate is None else c_in // int(in_gate.shape[1])
    block_k = select_block_k(c_in_pg, None if in_gate is None else in_gs)
    n_in_blocks = _cdiv(c_in_pg, block_k)

    # Up to 64 gate groups per conv group, the conv kernel orders them itself; more (per-channel
    # gates on wide layers, say) take a separate ordering launch.
    gates_pg = c_out_pg // gate_gs
    g_p2 = _pow2(gates_pg) if c_out_pg % gate_gs == 0 and gates_pg <= 64 else 0
    if g_p2:
        out_order = out_count = gate  # never read
    else:
        out_order = torch.empty((n * groups, c_out_pg), device=x.device, dtype=torch.int32)
        out_count = torch.empty((n * groups,), device=x.device, dtype=torch.int32)
        wrap(_order_kernel)[(n * groups,)](
            gate, int(gate.stride(0)), out_order, out_count, c_out_pg, groups, gate_gs,
            c_out_pg, ITEM=1, N_ITEMS_P2=_pow2(c_out_pg),
        )
    if in_gate is not None:
        in_gate = in_gate.contiguous()
        in_order = torch.empty((n, n_in_blocks), device=x.device, dtype=torch.int32)
        in_count = torch.empty((n,), device=x.device, dtype=torch.int32)
        wrap(_order_kernel)[(n,)](
            in_gate, int(in_gate.stride(0)), in_order, in_count, c_in_pg, 1, in_gs, n_in_blocks,
            ITEM=block_k, N_ITEMS_P2=_pow2(n_in_blocks),
        )
    else:
        in_order, in_count = out_order, out_count  # never read: HAS_IN_GATE is False

    def grid(meta: dict) -> tuple[int]:
        tiles_m = _cdiv(h_out * w_out, meta["BLOCK_M"])
        return (n * tiles_m * groups * _cdiv(c_out_pg, meta["BLOCK_N"]),)

    wrap(_conv)[grid](
        x, weight, out, gate,
        x if bias is None else bias, x if scale is None else scale,
        x if shift is None else shift, gate if in_gate is None else in_gate,
        out_order, out_count, in_order, in_count,
        h, w, h_out, w_out, c_in_pg, c_out_pg, groups, gate_gs, in_gs, n_in_blocks,
        *(int(v) for v in (*x.stride(), *weight.stride(), *out.stride())),
        int(gate.stride(0)), 0 if in_gate is None else int(in_gate.stride(0)),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        KH=kh, KW=kw, ACT=_ACT[activation],
        HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        HAS_IN_GATE=in_gate is not None, PRECISION=_precision(x.dtype), BLOCK_K=block_k,
        CO_VEC=8 if gate_gs % 8 == 0 and c_out_pg % 8 == 0 else 1, G_P2=g_p2,
        **_FIXED,
    )
    return out


# What the dispatcher calls in eager mode when no gradient is needed: the kernels launched
# directly, without the custom op's dispatch (no autograd, no tracing), which saves the op's
# per-call overhead, large next to the kernels of small layers.  Arguments as the op's.
gated_conv2d_triton_eager = functools.partial(_launch, _no_wrap)


if not _INTERPRET:
    gated_conv2d_triton = triton_op("gatekit::gated_conv2d_triton", mutates_args=())(
        _gated_conv2d_triton
    )
else:
    # triton_op traces its own body for fake tensors and torch.compile, which needs the
    # compiled kernels that wrap_triton makes traceable; interpreted kernels are plain Python
    # reading tensors' data.  So under the interpreter the op is an opaque custom op with an
    # explicit shape function.
    gated_conv2d_triton = torch.library.custom_op(
        "gatekit::gated_conv2d_triton", _gated_conv2d_triton, mutates_args=()
    )

    @gated_conv2d_triton.register_fake
    def _(x, weight, gate, bias, scale, shift, in_gate, activation, stride, padding, dilation,
          groups):
        h_out, w_out = conv_output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
        return torch.empty(
            (x.shape[0], weight.shape[0], h_out, w_out), device=x.device, dtype=x.dtype,
            memory_format=torch.channels_last,
        )


# CustomOpDef carries torch's generic docstring; the API reference should show this op's.
gated_conv2d_triton.__doc__ = _gated_conv2d_triton.__doc__
register_gated_conv_autograd(gated_conv2d_triton)
