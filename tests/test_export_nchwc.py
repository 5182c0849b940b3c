"""The export's blocked path (``nchwc_block``, gatekit/export/_nchwc.py): its ops against
conv2d on einops-rearranged tensors, the blocked GaterNet against the gated model in eager
PyTorch and in ONNX Runtime at batch 1 and at batch 8 with mixed patterns, the choice of
sites, the guard that sends another runtime block to the dense branch, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from einops import rearrange
from test_export import assert_close, build, distinct_patterns, onnx_run, randomise
from torch import nn
from torch.nn import functional as F

import gatekit
from gatekit.export._nchwc import (
    blocked_filter,
    nchwc_block,
    nchwc_conv,
    nchwc_reorder_in,
    nchwc_reorder_out,
)
from gatekit.models import conv_gater
from gatekit.models.cifar_resnet import CifarResNet


def _net(group_size: int) -> gatekit.GaterNet:
    # ResNet-20's blocks, one per stage, randomised so that images keep different filters
    return build("resnet8", "inner", group_size=group_size).eval()


def _bottleneck_net() -> gatekit.GaterNet:
    # Bottleneck blocks: a conv cut on both sides (in and out blocks gathered together)
    # between one cut on its output and one cut on its input, as in ResNet-50; gates in
    # groups of 16 (whole blocks for either runtime block), half of them open in the union
    # of the batch below, five distinct patterns among its eight images.
    torch.manual_seed(0)
    backbone = CifarResNet(11, block="bottleneck", base_width=32)
    return randomise(gatekit.gate_model(backbone, conv_gater(), sites="inner", group_size=16))


def _images(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _closed_blocks(net: gatekit.GaterNet, x: torch.Tensor, block: int) -> int:
    """How many blocks of the batch's union are closed (the test means something if > 0)."""
    with torch.no_grad():
        gates = net.estimator(net.gate_logits(x))
    closed = 0
    for site in net.sites:
        chunk = (gates[:, site.offset:site.stop] != 0).any(0).repeat_interleave(site.group_size)
        closed += int((~chunk.view(-1, block).any(1)).sum())
    return closed


# --------------------------------------------------------------------------------------
# the ops
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [8, 16])
def test_layouts_are_nchwc(block):
    x = torch.randn(2, 2 * block, 5, 3)
    assert torch.equal(nchwc_reorder_in(x, block),
                       rearrange(x, "n (k b) h w -> n k h w b", b=block))
    w = torch.randn(3 * block, 2 * block, 3, 1)
    assert torch.equal(blocked_filter(w, block),
                       rearrange(w, "(o bo) (i bi) h w -> o i h w bi bo", bo=block, bi=block))
    xb = torch.randn(2, 3, 4, 4, block)
    assert torch.equal(nchwc_reorder_out(xb, 3 * block),
                       rearrange(xb, "n k h w b -> n (k b) h w"))
    with pytest.raises(ValueError, match="not"):
        nchwc_reorder_out(xb, 2 * block)


@pytest.mark.parametrize("kernel,stride,padding,dilation", [(3, 1, 1, 1), (1, 2, 0, 1),
                                                             (3, 2, 2, 2)])
def test_nchwc_conv_is_conv2d_on_the_blocks(kernel, stride, padding, dilation):
    block = 8
    x = torch.randn(2, 3 * block, 9, 9)
    w = torch.randn(2 * block, 3 * block, kernel, kernel)
    b = torch.randn(2 * block)
    y = nchwc_conv(rearrange(x, "n (k b) h w -> n k h w b", b=block),
                   rearrange(w, "(o bo) (i bi) h w -> o i h w bi bo", bo=block, bi=block), b,
                   [stride] * 2, [padding] * 2, [dilation] * 2)
    ref = F.conv2d(x, w, b, stride, padding, dilation)
    torch.testing.assert_close(rearrange(y, "n k h w b -> n (k b) h w"), ref)
    assert int(nchwc_block(x, block)) == block


# --------------------------------------------------------------------------------------
# the exported module in eager PyTorch
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_size,block", [(8, 8), (16, 8), (16, 16)])
def test_blocked_export_equals_the_gated_model(group_size, block):
    net = _net(group_size)
    x = torch.randn(8, 3, 32, 32)
    ready = gatekit.exportable(net, x[:1], dense_above=1.0, nchwc_block=block)
    assert ready.nchwc_block == block and ready.net.backbone.blocks == [block] * len(net.sites)
    convs = [m for m in ready.modules() if isinstance(m, gatekit.export._net.ExportConv)]
    cut = [m for m in convs if m.cut_out or m.in_sliced]
    assert len(cut) == 2 * len(net.sites) and all(m.block == block for m in cut)
    assert _closed_blocks(net, x[:1], block) > 0
    with torch.no_grad():
        for batch in (x[:1], x):
            assert_close(ready(batch), net(batch))


@pytest.mark.parametrize("block", [8, 16])
def test_blocked_bottlenecks_equal_the_gated_model(block):
    net = _bottleneck_net()
    x = _images()
    ready = gatekit.exportable(net, x[:1], dense_above=1.0, nchwc_block=block)
    convs = [m for m in ready.modules() if isinstance(m, gatekit.export._net.ExportConv)]
    both = [m for m in convs if m.block == block and m.cut_out and m.in_sliced]
    cut = [m for m in convs if m.cut_out or m.in_sliced]
    assert len(cut) == 9 and all(m.block == block for m in cut) and len(both) == 3
    assert _closed_blocks(net, x, block) > 0
    with torch.no_grad():
        for n in (1, 8):
            assert_close(ready(x[:n]), net(x[:n]))


def test_the_residual_stream_stays_blocked_between_sites():
    # Bottlenecks in three stages: the stream between them stays blocked, so the shortcuts
    # that read it (stages 2 and 3) run blocked, each block's last conv takes its residual
    # as the conv's sum, the ReLUs after the convs run fused, and one reorder out remains
    # (before the pooling); the result still equals the gated model.
    net = _bottleneck_net()
    x = _images()
    ready = gatekit.exportable(net, x[:1], dense_above=1.0, nchwc_block=16)
    gm = ready.net.backbone.graph_module
    convs = {n: gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"
             and isinstance(gm.get_submodule(n.target), gatekit.export._net.ExportConv)}
    full = [c for c in convs.values() if not (c.cut_out or c.in_sliced)]
    assert [c.block for c in full] == [None, None, 16, 16]  # stem, stage-1 shortcut: not
    assert sum(c.in_blocked for c in convs.values()) == 4  # stage 2-3 conv1s and shortcuts
    summed = [n for n, c in convs.items() if n.kwargs.get("residual") is not None]
    assert len(summed) == 3 and all(convs[n].out_blocked and convs[n].relu for n in summed)
    targets = [n.target for n in gm.graph.nodes]
    assert targets.count(torch.ops.gatekit.nchwc_reorder_out.default) == 1
    assert sum(c.relu for c in convs.values()) == 9  # every ReLU but the stem's
    with torch.no_grad():
        for n in (1, 8):
            assert_close(ready(x[:n]), net(x[:n]))


def test_mixed_patterns_at_batch_eight_leave_blocks_closed():
    # the batch-8 comparison above means something: its union keeps blocks closed
    net = _net(8)
    x = torch.randn(8, 3, 32, 32)
    assert _closed_blocks(net, x, 8) > 0
    with torch.no_grad():
        gates = net.estimator(net.gate_logits(x))
    assert distinct_patterns(gates) >= 2  # images that keep different blocks


def test_sites_not_in_whole_blocks_run_as_before():
    net = _net(4)
    ready = gatekit.exportable(net, torch.randn(1, 3, 32, 32), dense_above=1.0, nchwc_block=8)
    assert ready.nchwc_block is None and ready.net.backbone.blocks == [None] * len(net.sites)
    assert not any(getattr(m, "block", None) for m in ready.modules())


class _PoolBetween(nn.Module):
    """Two gated sites: ``conv1``, with a max-pool before its consumer ``conv2`` (a blocked
    tensor cannot be pooled), and ``conv3``, with a ReLU only before ``conv4``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)  # conv1 reads 16 channels: blockable
        self.conv1, self.bn1 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv4 = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(F.relu(self.stem(x))))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.head(self.conv4(x).mean((2, 3)))


def test_a_site_with_pooling_before_its_consumer_is_not_blocked():
    torch.manual_seed(0)
    net = gatekit.gate_model(_PoolBetween(), conv_gater(), sites=["conv1", "conv3"],
                             group_size=8).eval()
    x = torch.randn(4, 3, 16, 16)
    ready = gatekit.exportable(net, x[:1], dense_above=1.0, nchwc_block=8)
    assert ready.net.backbone.blocks == [None, 8]
    with torch.no_grad():
        assert_close(ready(x), net(x))


class _Widening(nn.Module):
    """A conv cut on both sides whose in and out block counts differ (16 -> 32 -> 48)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 48, 3, padding=1), nn.BatchNorm2d(48)
        self.conv3 = nn.Conv2d(48, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(F.relu(self.stem(x)))))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(self.conv3(x).mean((2, 3)))


def test_a_conv_cut_on_both_sides_with_unequal_widths():
    torch.manual_seed(0)
    net = randomise(gatekit.gate_model(_Widening(), conv_gater(), sites=["conv1", "conv2"],
                                       group_size=8))
    x = torch.randn(4, 3, 16, 16)
    ready = gatekit.exportable(net, x[:1], dense_above=1.0, nchwc_block=8)
    assert ready.net.backbone.blocks == [8, 8]
    assert _closed_blocks(net, x[:1], 8) > 0
    with torch.no_grad():
        for n in (1, 4):
            assert_close(ready(x[:n]), net(x[:n]))


@pytest.mark.parametrize("kwargs,match", [
    ({"nchwc_block": 4}, "one of"),
    ({"nchwc_block": True}, "one of"),
    ({"nchwc_block": 8, "batching": "auto"}, "batching='union'"),
    ({"nchwc_block": 8, "dense_above": None}, "dense branch"),
])
def test_bad_nchwc_block_arguments_say_what_is_expected(kwargs, match):
    net = _net(8)
    kwargs = {"dense_above": 0.75, **kwargs}
    with pytest.raises(gatekit.GatekitError, match=match):
        gatekit.exportable(net, torch.randn(1, 3, 32, 32), **kwargs)


# --------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------


def _runtime_block() -> int:
    """ONNX Runtime's NCHWc block here: the channels ReorderInput pads four channels to."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReorderInput", ["x"], ["y"], domain="com.microsoft.nchwc")], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft.nchwc", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    block = session.run(None, {"x": torch.zeros(1, 4, 1, 1).numpy()})[0].shape[1]
    if block not in gatekit.export.NCHWC_BLOCKS:
        pytest.skip(f"ONNX Runtime's NCHWc block here is {block}")
    return block


def _nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None:
                yield from _nodes(attr.g)


def _export_and_run(net, x, path, block, **kwargs):
    """Export with ``nchwc_block=block``, check the file records the block and that ONNX
    Runtime equals the gated model at batch 1 and at ``x``'s batch; the model and outputs."""
    onnx = pytest.importorskip("onnx")
    gatekit.export_onnx(net, x[:1], path, nchwc_block=block, **kwargs)
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["gatekit.nchwc_block"]) == block
    outs = [onnx_run(path, x[:n]) for n in (1, x.shape[0])]
    with torch.no_grad():
        for out, n in zip(outs, (1, x.shape[0])):
            assert_close(out, net(x[:n]))
    return model, outs


def test_onnx_runtime_runs_the_blocked_convs_as_the_gated_model(tmp_path):
    block = _runtime_block()
    net = _bottleneck_net()
    x = _images()
    with torch.no_grad():
        assert distinct_patterns(net.estimator(net.gate_logits(x))) >= 2
    assert _closed_blocks(net, x, block) > 0
    model, _ = _export_and_run(net, x, tmp_path / "blocked.onnx", block, dense_above=1.0)
    kinds = [(n.domain, n.op_type) for n in _nodes(model.graph)]
    assert kinds.count(("com.microsoft.nchwc", "Conv")) == 11  # and two shortcuts


def test_another_runtime_block_runs_the_dense_branch(tmp_path):
    # A file made for the other block: its blocked weights would be read wrongly, so every
    # call must take the dense branch and still equal the gated model.
    block = _runtime_block()
    other = 8 if block == 16 else 16
    net = _bottleneck_net()
    x = _images()
    _export_and_run(net, x, tmp_path / "other.onnx", other, dense_above=1.0)


def test_sites_with_no_block_open_and_every_block_open(tmp_path):
    # A site with nothing open computes one zero block (the padded index); one with every
    # block open gathers them all.
    block = _runtime_block()
    net = _bottleneck_net()
    closed, open_ = net.sites[0], net.sites[3]
    with torch.no_grad():
        for site, value in ((closed, -1e4), (open_, 1e4)):
            net.head.fc2.weight[site.offset : site.stop] = 0
            net.head.fc2.bias[site.offset : site.stop] = value
    x = _images()
    ready = gatekit.exportable(net, x[:1], dense_above=1.0, nchwc_block=block)
    _export_and_run(net, x, tmp_path / "edges.onnx", block, dense_above=1.0)
    with torch.no_grad():
        gates = net.estimator(net.gate_logits(x))
        assert not gates[:, closed.offset : closed.stop].any()
        assert gates[:, open_.offset : open_.stop].all()
        for n in (1, 8):
            assert_close(ready(x[:n]), net(x[:n]))
        # batch one: no gate multiply, so the padded block itself must compute zeros
        one = gatekit.exportable(net, x[:1], batch_one=True, dense_above=1.0, nchwc_block=block)
        assert not one.net.backbone.masked
        for i in range(3):
            assert_close(one(x[i : i + 1]), net(x[i : i + 1]))


# --------------------------------------------------------------------------------------
# per image: the batch-1 graph in a Loop (batching="gather")
# --------------------------------------------------------------------------------------


def test_each_image_alone_equals_the_gated_model_in_eager():
    net = _bottleneck_net()
    x = _images()
    ready = gatekit.exportable(net, x[:1], dense_above=1.0, batching="gather", nchwc_block=16)
    assert ready.per_image_loop and ready.batching == "gather"
    assert not ready.net.backbone.masked  # an image alone keeps whole blocks: no multiply
    with torch.no_grad():
        assert distinct_patterns(net.estimator(net.gate_logits(x))) >= 2
        assert_close(ready(x), net(x))
        assert_close(ready(x[:1]), net(x[:1]))


def test_onnx_runtime_loops_the_batch_one_graph_over_the_batch(tmp_path):
    block = _runtime_block()
    net = _bottleneck_net()
    x = _images()
    assert _closed_blocks(net, x, block) > 0
    model, _ = _export_and_run(net, x, tmp_path / "loop.onnx", block, dense_above=1.0,
                               batching="gather")
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["gatekit.batching"]) == "gather"
    assert {r["batching"] for r in json.loads(meta["gatekit.routes"])} == {"gather"}
    (loop,) = [n for n in model.graph.node if n.op_type == "Loop"]
    kinds = [(n.domain, n.op_type) for n in _nodes(loop.attribute[0].g)]
    assert kinds.count(("com.microsoft.nchwc", "Conv")) == 11  # and two shortcuts
    with torch.no_grad():
        assert_close(onnx_run(tmp_path / "loop.onnx", x[:3]), net(x[:3]))


def test_the_loop_with_the_dense_branch_per_image_and_a_budget_per_image(tmp_path):
    # Each image takes its own branch: with dense_above between the images' shares, some
    # run dense and some blocked in one call; a budget-input model slices its budgets too.
    block = _runtime_block()
    torch.manual_seed(0)
    backbone = CifarResNet(11, block="bottleneck", base_width=32)
    net = randomise(gatekit.gate_model(backbone, conv_gater(), sites="inner", group_size=16,
                                       budget_input=True))
    with torch.no_grad():
        net.head.budget_scale.fill_(3.0)
    x = _images()
    budget = torch.tensor([0.2, 0.9, 0.5, 1.0, 0.3, 0.7, 0.1, 0.6])
    ready = gatekit.exportable(net, x[:1], dense_above=0.5, batching="gather",
                               nchwc_block=block)
    with torch.no_grad():
        gates = net.estimator(net.gate_logits(x, budget))
        shares = [ready.kept_share(gates[i : i + 1]).item() for i in range(8)]
        expected = net(x, budget=budget)
    assert min(shares) < 0.5 < max(shares)  # both branches run in the one call
    assert_close(ready(x, budget), expected)
    gatekit.export_onnx(net, x[:1], tmp_path / "b.onnx", budget=budget[:1], dense_above=0.5,
                        batching="gather", nchwc_block=block)
    assert_close(onnx_run(tmp_path / "b.onnx", x, budget), expected)


def test_loop_over_batch_keeps_the_items_apart():
    # A batch-1 graph that couples everything it sees (y = x * sum(x)): run on the whole
    # batch it would mix the items; looped, each item is scaled by its own sum.
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, checker, helper

    from gatekit.export._loop import loop_over_batch

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["image"], ["total"], keepdims=0),
         helper.make_node("Mul", ["image", "total"], ["output"])], "one",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])])
    one = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    looped = loop_over_batch(one)
    checker.check_model(looped)
    session = ort.InferenceSession(looped.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3)
    (out,) = session.run(None, {"image": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), x * x.sum(1, keepdim=True))
    clash = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["image"], ["image_i"]),
         helper.make_node("Identity", ["image_i"], ["output"])], "one", graph.input,
        graph.output), opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ValueError, match="image_i"):
        loop_over_batch(clash)


def test_a_blocked_file_defaults_to_the_dense_branch_only_for_another_block(tmp_path):
    onnx = pytest.importorskip("onnx")
    net = _net(16)
    gatekit.export_onnx(net, _images(1), tmp_path / "d.onnx", nchwc_block=16)
    gatekit.export_onnx(net, _images(1), tmp_path / "p.onnx")
    shares = [json.loads({p.key: p.value for p in onnx.load(str(tmp_path / f)).metadata_props}
                         ["gatekit.dense_above"]) for f in ("d.onnx", "p.onnx")]
    assert shares == [gatekit.export.NCHWC_DENSE_ABOVE, gatekit.export.DENSE_ABOVE] == [1.0, 0.75]


def test_the_runtime_block_follows_the_cpu():
    # ONNX Runtime's x86 kernels block channels by 16 with AVX-512, by 8 with AVX2
    pytest.importorskip("onnxruntime")
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    expected = 16 if "avx512f" in flags else 8 if "avx2" in flags else None
    assert gatekit.export.runtime_nchwc_block() == expected
    assert _runtime_block() == expected


def test_the_per_image_loop_is_for_onnx_only_with_a_dynamic_batch(tmp_path):
    net = _net(16)
    x = _images(4)
    ready = gatekit.exportable(net, x[:1], dense_above=1.0, batching="gather", nchwc_block=16)
    batch = torch.export.Dim("batch", min=1)
    with pytest.raises(gatekit.GatekitError, match=r"export it with gatekit\.export_onnx, which writes"):
        torch.export.export(ready, (x,), dynamic_shapes={"x": {0: batch}}, strict=False)
    # a static batch of several images: the file still loops (and takes any batch)
    block = _runtime_block()
    gatekit.export_onnx(net, x, tmp_path / "s.onnx", dynamic_batch=False, dense_above=1.0,
                        batching="gather", nchwc_block=block)
    with torch.no_grad():
        for n in (4, 2):
            assert_close(onnx_run(tmp_path / "s.onnx", x[:n]), net(x[:n]))
