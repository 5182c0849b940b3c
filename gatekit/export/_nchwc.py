"""The blocked path of an exported graph: sliced convs in ONNX Runtime's NCHWc layout.

ONNX Runtime on x86 runs a ``Conv`` whose weight is a constant in its blocked NCHWc layout
(channels in blocks of ``B``: 8 with AVX2, 16 with AVX-512); a conv on weights gathered at
run time, as the union path computes them, runs about 1.3-1.5x slower on 3x3 kernels
(``benchmarks/results/ort_blocked_conv.json``).  Its own ``com.microsoft.nchwc`` ``Conv``
takes the filter as a run-time input already blocked and runs at the prepacked rate.  So
with gates in groups of ``B`` channels (``group_size``), a site's open channels are whole
blocks, and its sliced convs can gather whole ``B x B`` blocks of a weight kept blocked::

    weight  (O/B, I/B, kh, kw, B_in, B_out)          # OIhw{B}i{B}o, an initializer
    w       = weight[out_blocks][:, in_blocks]        # (Ko, Ki, kh, kw, B, B), one Gather
    y       = nchwc.Conv(x, w, bias[out_blocks])      # x, y blocked: (N, K, H, W, B)

The activations between the sliced convs of a site stay blocked, ``(N, K, H, W, B)``
in eager PyTorch, which is the memory of ONNX Runtime's NCHWc tensor ``(N, K * B, H, W)``;
each op's ONNX translation reshapes between the two views (no arithmetic; the graph's
``Reshape`` nodes together take 1.3 ms of 70 in
``benchmarks/results/export_cpu_nchwc_profile.json``).  The tensors between sites stay
blocked too (``_blocked_stream`` in ``_net``): a block's last conv adds its residual as
the NCHWc ``Conv``'s ``Sum`` input and applies the ReLU that follows as its
``activation``, a shortcut conv reading the blocked stream runs blocked, and only a
tensor read by something else (a pooling, the classifier) is reordered out
(``ReorderOutput``); a full tensor entering a blocked conv is reordered in
(``ReorderInput``).

The filter layout depends on the block of the machine that runs the file: a graph made for
``B = 16`` computes garbage with ``B = 8``.  :func:`nchwc_block` reads the runtime's block
in the graph (the channel count ``ReorderInput`` pads four channels to), and the exported
graph runs its dense branch when it differs (``gatekit/export/_net.py``).

Each op's eager body is its specification (plain :func:`torch.nn.functional.conv2d` on
the unblocked tensors); :data:`ONNX_TRANSLATIONS` maps each to the ``com.microsoft.nchwc``
nodes that ONNX Runtime runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._graph import conv_output_size

__all__ = ["NCHWC_BLOCKS", "NCHWC_DOMAIN", "blocked_filter", "from_blocked", "nchwc_block", "nchwc_conv",
           "nchwc_reorder_in", "nchwc_reorder_out", "onnx_translations", "runtime_nchwc_block",
           "to_blocked"]

#: ONNX Runtime's domain of its blocked-layout operators.
NCHWC_DOMAIN = "com.microsoft.nchwc"

#: The NCHWc channel blocks of ONNX Runtime's x86 CPU kernels (8 with AVX2, 16 with
#: AVX-512): ``nchwc_block`` of :func:`gatekit.exportable` and :func:`gatekit.export_onnx`.
#: The file then runs in ONNX Runtime alone (``com.microsoft.nchwc`` operators), and its
#: blocked path only where the runtime's block is the same: elsewhere every call takes the
#: dense branch (correct, not faster).  Sites whose ``group_size`` is a multiple of the
#: block, sliced (not scatter), between 2-d convs whose channel counts are multiples of the
#: block, with only element-wise ops between them, run blocked; the rest as before.
NCHWC_BLOCKS = (8, 16)


def blocked_filter(weight: Tensor, block: int) -> Tensor:
    """A conv weight ``(O, I, kh, kw)`` in the NCHWc filter layout ``OIhw{B}i{B}o``:
    ``(O / B, I / B, kh, kw, B_in, B_out)``.

    >>> w = torch.randn(32, 16, 3, 3)
    >>> wb = blocked_filter(w, 8)
    >>> wb.shape, bool(wb[1, 0, 2, 1, 3, 5] == w[1 * 8 + 5, 0 * 8 + 3, 2, 1])
    (torch.Size([4, 2, 3, 3, 8, 8]), True)
    """
    o, i, kh, kw = weight.shape
    return (weight.reshape(o // block, block, i // block, block, kh, kw)
            .permute(0, 2, 4, 5, 3, 1).contiguous())


def unblocked_filter(weight: Tensor) -> Tensor:
    """The inverse of :func:`blocked_filter`: ``(O, I, kh, kw)``."""
    ko, ki, kh, kw, bi, bo = weight.shape
    return weight.permute(0, 5, 1, 4, 2, 3).reshape(ko * bo, ki * bi, kh, kw)


def to_blocked(x: Tensor, block: int) -> Tensor:
    """``(N, C, H, W)`` as ``(N, C / B, H, W, B)`` (contiguous: NCHWc's memory)."""
    n, c, h, w = x.shape
    return x.reshape(n, c // block, block, h, w).permute(0, 1, 3, 4, 2).contiguous()


def from_blocked(x: Tensor) -> Tensor:
    """``(N, K, H, W, B)`` as ``(N, K * B, H, W)``."""
    n, k, h, w, b = x.shape
    return x.permute(0, 1, 4, 2, 3).reshape(n, k * b, h, w)


@torch.library.custom_op("gatekit::nchwc_reorder_in", mutates_args=())
def nchwc_reorder_in(x: Tensor, block: int) -> Tensor:
    """``x`` ``(N, C, H, W)``, ``C`` a multiple of ``block``, as the blocked ``(N, C / B, H, W,
    B)`` (ONNX Runtime: ``ReorderInput``)."""
    return to_blocked(x, block)


@nchwc_reorder_in.register_fake
def _(x, block):
    n, c, h, w = x.shape
    return x.new_empty(n, c // block, h, w, block)


@torch.library.custom_op("gatekit::nchwc_reorder_out", mutates_args=())
def nchwc_reorder_out(x: Tensor, channels: int) -> Tensor:
    """The blocked ``x`` ``(N, K, H, W, B)`` as ``(N, channels, H, W)``, ``channels == K * B``
    (ONNX Runtime: ``ReorderOutput``, whose channel count is a constant)."""
    if x.shape[1] * x.shape[4] != channels:
        raise ValueError(f"nchwc_reorder_out: {x.shape[1]} blocks of {x.shape[4]} channels "
                         f"are not {channels} channels")
    return from_blocked(x).contiguous()


@nchwc_reorder_out.register_fake
def _(x, channels):
    n, _, h, w, _ = x.shape
    return x.new_empty(n, channels, h, w)


@torch.library.custom_op("gatekit::nchwc_conv", mutates_args=())
def nchwc_conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int],
               padding: list[int], dilation: list[int], sum: Tensor | None = None,
               relu: bool = False) -> Tensor:
    """A 2-d convolution of the blocked ``x`` ``(N, Ki, H, W, B)`` with the blocked
    ``weight`` ``(Ko, Ki, kh, kw, B, B)`` and ``bias`` ``(Ko * B,)``, plus the blocked
    ``sum`` ``(N, Ko, H', W', B)`` if given, then ReLU if ``relu``: the blocked
    ``(N, Ko, H', W', B)`` (ONNX Runtime: the NCHWc ``Conv`` with a run-time filter, its
    ``Sum`` input and ``activation``)."""
    y = torch.nn.functional.conv2d(from_blocked(x), unblocked_filter(weight), bias, stride,
                                   padding, dilation)
    if sum is not None:
        y = y + from_blocked(sum)
    return to_blocked(torch.relu(y) if relu else y, x.shape[4])


@nchwc_conv.register_fake
def _(x, weight, bias, stride, padding, dilation, sum=None, relu=False):
    spatial = conv_output_size(x.shape[2:4], weight.shape[2:4], stride, padding, dilation)
    return x.new_empty(x.shape[0], weight.shape[0], *spatial, x.shape[4])


@torch.library.custom_op("gatekit::nchwc_block", mutates_args=())
def nchwc_block(like: Tensor, block: int) -> Tensor:
    """The channel block of the runtime, an int64 scalar: ``block`` in PyTorch (whose ops
    here take any block), in ONNX Runtime the count ``ReorderInput`` pads four channels to.
    ``like`` only places the op in the graph."""
    return torch.tensor(block, dtype=torch.int64, device=like.device)


@nchwc_block.register_fake
def _(like, block):
    return like.new_empty((), dtype=torch.int64)


def runtime_nchwc_block() -> int | None:
    """ONNX Runtime's NCHWc channel block on this machine (16 with AVX-512, 8 with AVX2):
    the ``nchwc_block`` to export for a file that runs here.  None where the runtime has
    no blocked kernels (its CPU provider cannot run ``ReorderInput``, or pads to another
    block than :data:`gatekit.export.NCHWC_BLOCKS`).  Needs onnx and onnxruntime.

    >>> import gatekit
    >>> gatekit.export.runtime_nchwc_block() in (8, 16, None)
    True
    """
    import onnxruntime
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC_DOMAIN)], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(NCHWC_DOMAIN, 1)])
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {"x": torch.zeros(1, 4, 1, 1).numpy()})
    except Exception:  # no NCHWc kernels in this build or on this CPU
        return None
    return int(out.shape[1]) if out.shape[1] in NCHWC_BLOCKS else None


def onnx_translations() -> dict[Any, Any]:
    """The ops' ONNX translations (``torch.onnx.export``'s ``custom_translation_table``);
    imports onnx and onnxscript."""
    import onnxscript
    from onnx.defs import OpSchema
    from onnxscript import opset18 as op

    domain = onnxscript.values.Opset(NCHWC_DOMAIN, 1)
    param, attr, kinds = OpSchema.FormalParameter, OpSchema.Attribute, OpSchema.AttrType
    optional = OpSchema.FormalParameterOption.Optional

    def schema(name: str, inputs: list[Any], attributes: list[Any]) -> Any:
        return OpSchema(name, NCHWC_DOMAIN, 1, inputs=inputs, outputs=[param("Y", "T")],
                        type_constraints=[("T", ["tensor(float)"], "")], attributes=attributes)

    reorder_input = onnxscript.values.Op(domain, "ReorderInput", schema(
        "ReorderInput", [param("X", "T")], []))
    reorder_output = onnxscript.values.Op(domain, "ReorderOutput", schema(
        "ReorderOutput", [param("X", "T")], [attr("channels", kinds.INT, "")]))
    conv = onnxscript.values.Op(domain, "Conv", schema(
        "Conv", [param("X", "T"), param("W", "T"), param("B", "T", param_option=optional),
                 param("Sum", "T", param_option=optional)],
        [*(attr(name, kinds.INTS, "", required=False)
           for name in ("strides", "pads", "dilations")),
         attr("activation", kinds.STRING, "", required=False)]))
    to_4d = [0, -1, 0, 0]  # (N, K, H, W, B) -> (N, K * B, H, W): dims 0, 2, 3 kept

    def reorder_in(x: Any, block: int) -> Any:
        return op.Reshape(reorder_input(x), op.Constant(value_ints=[*to_4d, block]))

    def reorder_out(x: Any, channels: int) -> Any:
        return reorder_output(op.Reshape(x, op.Constant(value_ints=to_4d)), channels=channels)

    def blocked_conv(x: Any, weight: Any, bias: Any, stride: list[int], padding: list[int],
                     dilation: list[int], sum: Any = None, relu: bool = False) -> Any:
        shape = op.Shape(weight)  # (Ko, Ki, kh, kw, B, B) -> (Ko * B, Ki * B, kh, kw)
        block = op.Shape(x, start=4, end=5)
        w = op.Reshape(weight, op.Concat(op.Mul(op.Shape(weight, start=0, end=1), block),
                                         op.Mul(op.Shape(weight, start=1, end=2), block),
                                         op.Slice(shape, [2], [4]), axis=0))
        extra = {"activation": "Relu"} if relu else {}
        total = None if sum is None else op.Reshape(sum, op.Constant(value_ints=to_4d))
        y = conv(op.Reshape(x, op.Constant(value_ints=to_4d)), w, bias, total, strides=stride,
                 pads=[*padding, *padding], dilations=dilation, **extra)
        return op.Reshape(y, op.Concat(op.Constant(value_ints=to_4d), block, axis=0))

    def runtime_block(like: Any, block: int) -> Any:
        one = op.ConstantOfShape(op.Constant(value_ints=[1, 4, 1, 1]))  # a multiple of 4
        return op.Squeeze(op.Shape(reorder_input(one), start=1, end=2))

    ops = torch.ops.gatekit
    return {ops.nchwc_reorder_in.default: reorder_in, ops.nchwc_reorder_out.default: reorder_out,
            ops.nchwc_conv.default: blocked_conv, ops.nchwc_block.default: runtime_block}
