"""Exported GaterNets (torch.export and ONNX Runtime) against the eager dense gated model.

The oracle is the GaterNet itself in eval mode: every filter computed, closed ones
multiplied by zero, no BatchNorm folded.  Gates come from the gater inside the exported
graph, so each test checks that the patterns the eager model picks are the ones the
exported model runs, on inputs other than the example it was exported with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from test_inference import randomise_batchnorm
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import gatekit
from gatekit.budget import BudgetMap
from gatekit.models import CifarResNet, conv_gater, resnet20

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

pytestmark = pytest.mark.usefixtures("one_thread")


def randomise(net: gatekit.GaterNet, seed: int = 0) -> gatekit.GaterNet:
    """Non-trivial BatchNorm statistics (folding is exercised) and a head whose gates
    differ between images, about half of them open."""
    gen = torch.Generator().manual_seed(seed)
    randomise_batchnorm(net, generator=gen)
    with torch.no_grad():
        head = net.head
        head.fc1.weight.copy_(torch.randn(head.fc1.weight.shape, generator=gen))
        head.fc2.weight.copy_(torch.randn(head.fc2.weight.shape, generator=gen))
        head.fc2.bias.copy_(torch.randn(head.fc2.bias.shape, generator=gen) * 0.3)
    return net.eval()


def build(name: str, sites: str = "inner", **kw) -> gatekit.GaterNet:
    torch.manual_seed(0)
    backbone = {
        "resnet8": lambda: CifarResNet(8),  # ResNet-20's blocks, one per stage: quick to export
        "resnet20": resnet20,
        "resnet18": lambda: torchvision.models.resnet18(weights=None),
        "resnet50": lambda: torchvision.models.resnet50(weights=None),
        "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None),
    }[name]()
    return randomise(gatekit.gate_model(backbone, conv_gater(), sites=sites, **kw))


def assert_close(actual, expected) -> None:
    actual = torch.as_tensor(actual)
    scale = max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def onnx_run(path, x, budget=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    if budget is not None:
        feed["budget"] = budget.numpy()
    return torch.from_numpy(session.run(None, feed)[0])


def eager(net, x, budget=None):
    with torch.no_grad():
        out = net(x) if budget is None else net(x, budget=budget)
        return out, net.last_gates


def distinct_patterns(gates: torch.Tensor) -> int:
    return len({tuple(row.tolist()) for row in gates})


# ---- equality on the zoo ------------------------------------------------------------

# branch=True: a dense branch whose threshold lies between the batch's kept share and its
# first image's, so that the batch of 5 runs dense and its first image sliced; False
# (dense_above=None: a program half the size, exported three times faster): every call
# runs sliced.
CASES = [
    ("resnet20", "inner", True),
    ("resnet20", "all", False),
    ("resnet18", "inner", True),
    ("mobilenet_v2", "all", False),  # grouped and depthwise convs
    pytest.param("resnet50", "inner", True, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "sites", "branch"), CASES)
def test_program_and_onnx_equal_eager(name, sites, branch, tmp_path):
    net = build(name, sites)
    example = torch.randn(1, 3, 32, 32)
    x = torch.randn(5, 3, 32, 32)
    expected, gates = eager(net, x)
    assert distinct_patterns(gates) == 5  # the batch mixes patterns: the union is exercised
    dense_above = None
    if branch:
        costs = gatekit.gate_costs(net, example, downstream=True)
        batch, first = ((costs * (gates[:n] != 0).any(0)).sum() / costs.sum() for n in (5, 1))
        assert batch > first
        dense_above = ((batch + first) / 2).item()
    program = gatekit.export_program(net, example, dense_above=dense_above)
    routes = gatekit.export_onnx(net, example, tmp_path / "m.onnx", dense_above=dense_above)
    with torch.no_grad():
        assert_close(program.module()(x), expected)
        assert_close(program.module()(x[:1]), net(x[:1]))
    assert_close(onnx_run(tmp_path / "m.onnx", x), expected)
    assert_close(onnx_run(tmp_path / "m.onnx", x[3:4]), eager(net, x[3:4])[0])
    assert any(r.mode in ("sliced", "scatter") for r in routes)
    # Sites that cannot be sliced run masked, and say why, in the routes and the file.
    dense = [r for r in routes if r.mode == "dense"]
    assert bool(dense) == (name == "mobilenet_v2")
    assert all("grouped" in r.reason and "masked" in r.reason for r in dense)
    stored = onnx.load(str(tmp_path / "m.onnx")).metadata_props
    stored = json.loads(next(p.value for p in stored if p.key == "gatekit.routes"))
    assert [tuple(r.values()) for r in stored] == [tuple(r) for r in routes]


def test_group_size_and_static_batch_one(tmp_path):
    net = build("resnet20", "all", group_size=4)
    example = torch.randn(1, 3, 32, 32)
    program = gatekit.export_program(net, example, dynamic_batch=False, dense_above=None)
    gatekit.export_onnx(net, example, tmp_path / "m.onnx", dynamic_batch=False, dense_above=None)
    for seed in range(3):
        x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        expected = eager(net, x)[0]
        with torch.no_grad():
            assert_close(program.module()(x), expected)
        assert_close(onnx_run(tmp_path / "m.onnx", x), expected)


# ---- the gates are computed per input, not frozen -----------------------------------

def test_patterns_are_not_frozen_at_the_example(tmp_path):
    net = build("resnet20", "inner")
    example = torch.randn(1, 3, 32, 32)
    program = gatekit.export_program(net, example, dense_above=None)
    gatekit.export_onnx(net, example, tmp_path / "m.onnx", dense_above=None)
    _, example_gates = eager(net, example)
    for seed in range(4):
        x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(100 + seed))
        expected, gates = eager(net, x)
        assert not torch.equal(gates, example_gates)  # another pattern than the example's
        with torch.no_grad():
            assert_close(program.module()(x), expected)
        assert_close(onnx_run(tmp_path / "m.onnx", x), expected)


def test_sites_with_every_filter_closed_and_every_filter_open(tmp_path):
    net = build("resnet20", "all")
    closed, open_ = net.sites[0], net.sites[1]  # an inner (sliced) and a residual site
    with torch.no_grad():
        for site, value in ((closed, -1e4), (open_, 1e4)):
            net.head.fc2.weight[site.offset : site.stop] = 0
            net.head.fc2.bias[site.offset : site.stop] = value
    # The sliced path (the dense branch would take an all-open batch): dense_above=None.
    example = torch.randn(1, 3, 32, 32)
    program = gatekit.export_program(net, example, dense_above=None)
    gatekit.export_onnx(net, example, tmp_path / "m.onnx", dense_above=None)
    x = torch.randn(3, 3, 32, 32)
    expected, gates = eager(net, x)
    assert not gates[:, closed.offset : closed.stop].any()
    assert gates[:, open_.offset : open_.stop].all()
    with torch.no_grad():
        assert_close(program.module()(x), expected)
        assert_close(program.module()(x[:1]), net(x[:1]))
    assert_close(onnx_run(tmp_path / "m.onnx", x), expected)


def test_every_gate_closed_and_every_gate_open():
    net = build("resnet20", "all")
    x = torch.randn(2, 3, 32, 32)
    for value in (-1e4, 1e4):
        with torch.no_grad():
            net.head.fc2.weight.zero_()
            net.head.fc2.bias.fill_(value)
        program = gatekit.export_program(net, x[:1], dense_above=None)
        expected, gates = eager(net, x)
        assert bool(gates.all()) == (value > 0) and bool(gates.any()) == (value > 0)
        with torch.no_grad():
            assert_close(program.module()(x), expected)


# ---- budget-input models ----------------------------------------------------------------

def test_budget_input_model_at_two_budgets(tmp_path):
    net = build("resnet20", "inner", budget_input=True)
    with torch.no_grad():
        net.head.budget_scale.fill_(3.0)
    example = torch.randn(1, 3, 32, 32)
    program = gatekit.export_program(net, example, budget=0.5, dense_above=None)
    gatekit.export_onnx(net, example, tmp_path / "m.onnx", budget=0.5, dense_above=None)
    x = torch.randn(5, 3, 32, 32)
    opened = []
    for value in (0.3, 0.9):
        b = torch.full((5,), value)
        expected, gates = eager(net, x, b)
        opened.append(gates.mean().item())
        with torch.no_grad():
            assert_close(program.module()(x, b), expected)
            assert_close(program.module()(x[:1], b[:1]), eager(net, x[:1], b[:1])[0])
        assert_close(onnx_run(tmp_path / "m.onnx", x, b), expected)
    assert opened[0] < opened[1]  # the budget reached the gates
    mixed = torch.tensor([0.3, 0.9, 0.5, 1.0, 0.2])
    assert_close(onnx_run(tmp_path / "m.onnx", x, mixed), eager(net, x, mixed)[0])


# Knots far enough apart that a budget between two of them is not near either.
KNOTS = (0.3, 0.5, 0.7, 1.0)


def calibrated(net: gatekit.GaterNet, knots=KNOTS) -> BudgetMap:
    """Calibrate a budget-input net on random images (the map's numbers, not their
    meaning, are what an export must keep); returns the installed map."""
    costs = gatekit.gate_costs(net, torch.zeros(1, 3, 32, 32))
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return gatekit.calibrate_budget(net, [images], costs, budgets=torch.tensor(knots))


def test_calibrated_budget_model_at_knots_between_them_and_at_the_ends(tmp_path):
    # The calibrated map (BudgetMap) used to be torch.searchsorted, which the ONNX
    # exporter does not lower: export_onnx of any calibrated model failed.
    net = build("resnet20", "inner", budget_input=True)
    with torch.no_grad():
        net.head.budget_scale.fill_(3.0)
    m = calibrated(net)
    # One budget per image: below the first knot, on each knot, between knots (the top
    # knot is 1.0, the largest budget there is).
    b = torch.tensor([0.05, 0.3, 0.4, 0.5, 0.61, 0.7, 0.85, 1.0])
    x = torch.randn(8, 3, 32, 32)
    expected, gates = eager(net, x, b)
    # The map is in use: it moves the head input, and the outputs with it.
    assert (m(b) - b).abs().max() > 0.05
    net.head.budget_map = None
    assert not torch.allclose(eager(net, x, b)[0], expected, atol=1e-3)
    net.head.budget_map = m
    assert gates[0].mean() < gates[-1].mean()  # the budget reached the gates
    example = torch.randn(1, 3, 32, 32)
    program = gatekit.export_program(net, example, budget=0.5, dense_above=None)
    gatekit.export_onnx(net, example, tmp_path / "m.onnx", budget=0.5, dense_above=None)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("searchsorted" in t for t in targets)
    with torch.no_grad():
        assert_close(program.module()(x, b), expected)
    assert_close(onnx_run(tmp_path / "m.onnx", x, b), expected)
    for i in (0, 1, 2, 7):  # batch 1: the image's own budget, below, on, between, top
        one = eager(net, x[i : i + 1], b[i : i + 1])[0]
        with torch.no_grad():
            assert_close(program.module()(x[i : i + 1], b[i : i + 1]), one)
        assert_close(onnx_run(tmp_path / "m.onnx", x[i : i + 1], b[i : i + 1]), one)


# Every kind of model gate_model builds, exported to ONNX: each estimator, group size 1
# and 2, no budget input / a budget input / a calibrated one, and each site policy above.
# The full product is 48 exports of ~5 to 10 s each; these 12 rows hold every pair of two
# factors' values at least once (a pairwise covering array).  The first five hold each
# value of each factor and run by default; the other seven complete the pairs (slow).
KINDS = [
    ("semhash", 1, "none", "inner"),
    ("st_sigmoid", 2, "calibrated", "inner"),
    ("gumbel", 2, "calibrated", "all"),
    ("hard_concrete", 1, "budget", "all"),
    ("hard_concrete", 1, "calibrated", "inner"),
    *(pytest.param(*row, marks=pytest.mark.slow) for row in [
        ("semhash", 2, "budget", "all"),
        ("semhash", 1, "calibrated", "all"),
        ("st_sigmoid", 2, "none", "all"),
        ("st_sigmoid", 1, "budget", "inner"),
        ("gumbel", 1, "none", "all"),
        ("gumbel", 2, "budget", "inner"),
        ("hard_concrete", 2, "none", "inner"),
    ]),
]


@pytest.mark.parametrize(("estimator", "group_size", "budget", "sites"), KINDS)
def test_every_kind_of_model_exports_to_onnx(estimator, group_size, budget, sites, tmp_path):
    net = build("resnet8", sites, estimator=estimator, group_size=group_size,
                budget_input=budget != "none")
    assert gatekit.get_gate(estimator).name == net.estimator.name
    calls = [None]
    if budget != "none":
        with torch.no_grad():
            net.head.budget_scale.fill_(3.0)
        if budget == "calibrated":
            calibrated(net)
        # For the calibrated map (KNOTS): on a knot, between two, below the first, the top.
        calls = [torch.tensor([0.3, 0.6]), torch.tensor([0.05, 1.0])]
    assert (getattr(net.head, "budget_map", None) is not None) == (budget == "calibrated")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    gatekit.export_onnx(net, x[:1], tmp_path / "m.onnx", dense_above=None,
                        budget=None if budget == "none" else 0.5)
    opened = []
    for b in calls:
        expected, gates = eager(net, x, b)
        opened.append((gates != 0).float().mean().item())
        assert_close(onnx_run(tmp_path / "m.onnx", x, b), expected)
        one = None if b is None else b[:1]
        assert_close(onnx_run(tmp_path / "m.onnx", x[:1], one), eager(net, x[:1], one)[0])
    assert all(0 < share < 1 for share in opened)  # gates close and open: both paths run


# ---- fewer open gates, fewer FLOPs ----------------------------------------------------

def conv_flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return sum(v for op, v in counter.get_flop_counts()["Global"].items()
               if "convolution" in str(op))


def executed_conv_flops(fn) -> int:
    """Conv FLOPs of the kernels that ran (the profiler's count): FlopCounterMode counts
    both branches of a torch.cond, whichever runs."""
    with torch.no_grad(), torch.profiler.profile(with_flops=True) as prof:
        fn()
    return sum(e.flops for e in prof.events() if "conv" in e.name and e.flops)


def test_fewer_open_gates_run_fewer_conv_flops():
    # The budget shifts every logit alike: a lower budget opens a subset of the gates.
    net = build("resnet20", "inner", budget_input=True)
    with torch.no_grad():
        net.head.budget_scale.fill_(3.0)
    x = torch.randn(1, 3, 32, 32)
    program = gatekit.export_program(net, x, budget=0.5, dense_above=None)
    costs = gatekit.gate_costs(net, x, downstream=True)
    # Every filter of the backbone (gates given: the gater does not run), and the gater.
    dense = conv_flops(lambda: net(x, gates=torch.ones(1, net.num_gates)))
    dense += conv_flops(lambda: net.gater(x))
    counted, expected, kept = [], [], []
    for value in (0.2, 0.5, 0.8):
        b = torch.tensor([value])
        gates = eager(net, x, b)[1]
        # Inner sites of basic blocks: a closed gate saves exactly its downstream cost.
        expected.append(dense - int((costs * (1 - gates[0].double())).sum().item()))
        kept.append((costs * gates[0].double()).sum().item() / costs.sum().item())
        counted.append(conv_flops(lambda b=b: program.module()(x, b)))
        assert counted[-1] == expected[-1]
    assert counted[0] < counted[1] < counted[2] < dense
    # The dense branch: a batch whose union keeps more than dense_above of the skippable
    # FLOPs runs every filter, one below it the sliced backbone.  The threshold lies
    # between the kept shares at budgets 0.5 and 0.8, so both branches run.
    threshold = (kept[1] + kept[2]) / 2
    branched = gatekit.export_program(net, x, budget=0.5, dense_above=threshold).module()
    for value, kept_share, sliced in zip((0.2, 0.5, 0.8), kept, expected):
        b = torch.tensor([value])
        assert executed_conv_flops(lambda b=b: branched(x, b)) == (
            dense if kept_share > threshold else sliced), (value, kept_share)
        with torch.no_grad():
            assert_close(branched(x, b), eager(net, x, b)[0])


def test_the_dense_branch_runs_only_above_its_share():
    # The comparison is strict, at both ends of the range dense_above takes: with 0.0 a
    # batch with every gate closed (kept share 0) still runs sliced, any open gate dense;
    # with 1.0 nothing runs dense.
    net = build("resnet8", "inner")
    x = torch.randn(1, 3, 32, 32)
    sliced_flops = {}
    for value in (-1e4, 1e4):  # every gate closed, every gate open
        with torch.no_grad():
            net.head.fc2.weight.zero_()
            net.head.fc2.bias.fill_(value)
        plain = gatekit.export_program(net, x, dense_above=None).module()
        sliced_flops[value] = executed_conv_flops(lambda p=plain: p(x))
    dense_flops = sliced_flops[1e4]  # all open: the sliced graph computes every filter
    assert sliced_flops[-1e4] < dense_flops
    for dense_above, value, expected in ((0.0, -1e4, sliced_flops[-1e4]), (0.0, 1e4, dense_flops),
                                         (1.0, -1e4, sliced_flops[-1e4])):
        with torch.no_grad():
            net.head.fc2.bias.fill_(value)
        ready = gatekit.exportable(net, x, dense_above=dense_above)
        program = gatekit.export_program(net, x, dense_above=dense_above).module()
        with torch.no_grad():
            assert abs(ready.kept_share(eager(net, x)[1]).item() - (value > 0)) < 1e-6
            assert executed_conv_flops(lambda p=program: p(x)) == expected, (dense_above, value)
            assert_close(program(x), eager(net, x)[0])


def test_static_batch_of_several_images_zeroes_each_ones_closed_filters():
    # dynamic_batch=False at batch 4: the union runs, each image's closed filters zeroed
    # (only a batch of one drops that multiply).
    net = build("resnet20", "inner")
    x = torch.randn(4, 3, 32, 32)
    expected, gates = eager(net, x)
    assert distinct_patterns(gates) == 4
    program = gatekit.export_program(net, x, dynamic_batch=False, dense_above=None)
    with torch.no_grad():
        assert_close(program.module()(x), expected)
    assert gatekit.exportable(net, x, batch_one=False).net.backbone.masked


def test_a_batch_of_one_runs_no_gate_multiply():
    # Binary gates at batch 1: a sliced site computes exactly the open filters, so the
    # export drops the per-sample multiply there (not for estimators outside the Gate
    # contract, whose eval-mode values need not be 0 or 1).
    net = build("resnet20", "inner")
    x = torch.randn(1, 3, 32, 32)

    def muls(**kw):
        program = gatekit.export_program(net, x, dense_above=None, **kw)
        return sum(n.target is torch.ops.aten.mul.Tensor for n in program.graph.nodes)

    assert muls(dynamic_batch=False) + len(net.sites) <= muls(dynamic_batch=True)
    assert not gatekit.exportable(net, batch_one=True).net.backbone.masked


def test_a_dense_site_computes_no_channel_index():
    # A site that cannot be sliced (a depthwise conv) runs masked: the graph picks no
    # channels for it (one nonzero per skipping site), and the output still equals eager.
    torch.manual_seed(0)

    def block(i, o, **kw):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False, **kw), nn.BatchNorm2d(o), nn.ReLU()]

    backbone = nn.Sequential(*block(3, 8), *block(8, 8, groups=8), *block(8, 16),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    net = randomise(gatekit.gate_model(backbone, conv_gater(), sites="all"))
    x = torch.randn(3, 3, 32, 32)
    program = gatekit.export_program(net, x[:1], dense_above=None)
    routes = gatekit.exportable(net).routes
    skipping = sum(r.mode != "dense" for r in routes)
    assert 0 < skipping < len(routes)
    assert sum(n.target is torch.ops.aten.nonzero.default for n in program.graph.nodes) == skipping
    with torch.no_grad():
        assert_close(program.module()(x), eager(net, x)[0])


def test_a_conv_whose_input_alone_is_cut_gathers_rows():
    # ONNX Runtime's Gather copies one block per index: a consumer conv (input cut, output
    # full) keeps its weight input-major so that its gather copies whole rows; a conv whose
    # output is cut keeps its filters as rows.
    from gatekit.export import ExportGaterNet  # noqa: F401  (the public module)
    ready = gatekit.exportable(build("resnet20", "inner"))
    convs = {n: m for n, m in ready.net.backbone.graph_module.named_modules()
             if type(m).__name__ == "ExportConv"}
    consumers = [m for m in convs.values() if m.in_sliced and not m.cut_out]
    producers = [m for m in convs.values() if m.cut_out]
    assert consumers and producers
    for m in consumers:
        assert m.in_major and m.weight.shape[:2] == (m.in_channels + 1, m.out_channels)
    for m in producers:
        assert not m.in_major and m.weight.shape[0] == m.out_channels + 1


def test_kept_share_is_the_cost_weighted_union():
    net = build("resnet20", "all")
    x = torch.randn(4, 3, 32, 32)
    ready = gatekit.exportable(net, x[:1], dense_above=0.5)
    gates = eager(net, x)[1]
    costs = gatekit.gate_costs(net, x[:1], downstream=True)
    union = (gates != 0).any(0).double()
    expected = (costs * union).sum() / costs.sum()
    assert abs(ready.kept_share(gates).item() - expected.item()) < 1e-6
    assert 0.0 < expected.item() < 1.0


def test_branch_weights_move_into_their_if_branch():
    helper = onnx.helper
    f32 = onnx.TensorProto.FLOAT

    def const(name):
        return onnx.numpy_helper.from_array(torch.ones(2).numpy(), name)

    def branch(name, reads):  # the sum of the values it reads
        nodes, acc = [], reads[0]
        for i, other in enumerate(reads[1:]):
            out = f"{name}_out" if i == len(reads) - 2 else f"{name}_{i}"
            nodes.append(helper.make_node("Add", [acc, other], [out]))
            acc = out
        return helper.make_graph(nodes, name, [],
                                 [helper.make_tensor_value_info(f"{name}_out", f32, [2])])

    # w_then: only the then branch; w_else: only the else branch; shared: both branches;
    # top: a main-graph node and a branch; out: the then branch and a graph output; c: the
    # condition.
    if_node = helper.make_node("If", ["c"], ["y"],
                               then_branch=branch("then", ["w_then", "shared", "out"]),
                               else_branch=branch("else", ["w_else", "shared", "top", "loop_w"]))
    top_node = helper.make_node("Identity", ["top"], ["t"])
    # loop_w: the else branch and the body of a Loop in the main graph (a subgraph that is
    # not an If branch reads it, so it stays outside).
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v", "loop_w"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", f32, [2])],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", f32, [2])])
    loop_node = helper.make_node("Loop", ["trips", "", "top"], ["looped"], body=body)
    trips = onnx.numpy_helper.from_array(torch.tensor(1).numpy(), "trips")
    graph = helper.make_graph(
        [if_node, top_node, loop_node], "g",
        [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", f32, [2]), helper.make_tensor_value_info("t", f32, [2]),
         helper.make_tensor_value_info("out", f32, [2]),
         helper.make_tensor_value_info("looped", f32, [2])],
        [const(n) for n in ("w_then", "w_else", "shared", "top", "out", "loop_w", "unread")]
        + [trips])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    from gatekit.export._api import drop_unread_initializers, move_branch_initializers

    assert drop_unread_initializers(model.graph) == 1  # "unread": no node reads it
    assert move_branch_initializers(model) == 2
    onnx.checker.check_model(model)
    names = lambda g: sorted(t.name for t in g.initializer)  # noqa: E731
    assert names(model.graph) == ["loop_w", "out", "shared", "top", "trips"]
    branches = {a.name: a.g for a in model.graph.node[0].attribute}
    assert names(branches["then_branch"]) == ["w_then"]
    assert names(branches["else_branch"]) == ["w_else"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for cond, total in ((True, 3.0), (False, 4.0)):
        y, looped = session.run(["y", "looped"], {"c": torch.tensor(cond).numpy()})
        assert y.tolist() == [total, total] and looped.tolist() == [2.0, 2.0]


def test_onnx_dense_branch_holds_its_weights(tmp_path):
    net = build("resnet20", "inner")
    gatekit.export_onnx(net, torch.randn(1, 3, 32, 32), tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    branch_ifs = [n for n in model.graph.node if n.op_type == "If"]
    assert len(branch_ifs) == 1
    held = {a.name: len(a.g.initializer) for a in branch_ifs[0].attribute}
    # The dense backbone's convs (stem, 18 block convs, and the BatchNorms or folded
    # biases) read weights of their own; none is left in the main graph for them.
    assert max(held.values()) >= 19
    stored = {p.key: p.value for p in model.metadata_props}
    assert json.loads(stored["gatekit.dense_above"]) == gatekit.export.DENSE_ABOVE


# ---- errors ---------------------------------------------------------------------------

def test_errors(monkeypatch, tmp_path):
    net = build("resnet20", "inner")
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(gatekit.GatekitError, match=r"eval mode.*call net\.eval\(\)"):
        gatekit.export_program(net.train(), x)
    with pytest.raises(gatekit.GatekitError, match=r"gatekit\.exportable.*eval mode"):
        gatekit.exportable(net.train())
    net.eval()
    with pytest.raises(gatekit.GatekitError, match=r"expects a GaterNet.*got ResNet"):
        gatekit.export_onnx(torchvision.models.resnet18(), x, tmp_path / "m.onnx")
    with pytest.raises(gatekit.GatekitError, match="without a budget input"):
        gatekit.export_program(net, x, budget=0.5)
    budgeted = build("resnet20", "inner", budget_input=True)
    with pytest.raises(gatekit.GatekitError, match=r"needs an example budget.*budget=b"):
        gatekit.export_program(budgeted, x)
    with pytest.raises(gatekit.GatekitError, match=r"in \(0, 1\]"):
        gatekit.export_program(budgeted, x, budget=1.5)
    with pytest.raises(gatekit.GatekitError, match=r"dense_above as a share in \[0, 1\].*got 1\.5"):
        gatekit.export_program(net, x, dense_above=1.5)
    with pytest.raises(gatekit.GatekitError, match=r"needs an example input.*dense_above=None"):
        gatekit.exportable(net, dense_above=0.5)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(gatekit.GatekitError, match=r'onnxscript.*pip install "gatekit\[export\]"'):
        gatekit.export_onnx(net, x, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_the_example_budget_is_checked_as_the_model_checks_it():
    # The export runs the model's own budget check: what the model refuses, it refuses,
    # with the model's reason in its message.
    net = build("resnet20", "inner", budget_input=True)
    x = torch.randn(2, 3, 32, 32)
    for bad in (1.5, 0.0, torch.tensor([0.5, 0.5, 0.5]), torch.tensor(1), "0.5"):
        with pytest.raises(gatekit.GatekitError) as by_model:
            net(x, budget=bad)
        with pytest.raises(gatekit.GatekitError, match="does not take") as by_export:
            gatekit.export_program(net, x, budget=bad)
        assert str(by_model.value) in str(by_export.value)


def test_exportable_keeps_the_nets_settings():
    # The exportable copy is made as skip_compute's is: check_finite comes along.
    net = build("resnet20", "inner", check_finite=True)
    ready, fast = gatekit.exportable(net), gatekit.skip_compute(net)
    assert ready.net.check_finite and fast.check_finite
    x = torch.full((1, 3, 32, 32), float("nan"))
    for model in (net, fast, ready):
        with pytest.raises(gatekit.GatekitError, match="non-finite"):
            model(x)


# ---- the example script -------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "results" / "cifar10" / "vs_budget_conv_s0.pt"
DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def run_example(run_path, tmp_path, *args):
    """examples/export_gaternet.py on a committed run, 20 test images: the process and the
    file it wrote."""
    out = tmp_path / "model.onnx"
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "export_gaternet.py"),
                          str(run_path), "--out", str(out), "--images", "20", *args,
                          "--data", str(DATA)],
                         capture_output=True, text=True, timeout=600, check=False)
    return run, out


def test_example_script_help():
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "export_gaternet.py"), "--help"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and "--out" in run.stdout, run.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (RUN.is_file() and DATA.is_file()), reason="needs the run and CIFAR-10")
def test_example_script_checks_the_committed_run(tmp_path):
    run, out = run_example(RUN, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "same class 20/20" in run.stdout and out.is_file()


GROUPED_RUN = ROOT / "benchmarks" / "results" / "cifar10" / "rank_f040_g16_s0.pt"


@pytest.mark.slow
@pytest.mark.skipif(not (GROUPED_RUN.is_file() and DATA.is_file()),
                    reason="needs the run in groups of 16 and CIFAR-10")
def test_example_script_exports_a_grouped_run_on_the_blocked_path(tmp_path):
    run, out = run_example(GROUPED_RUN, tmp_path, "--nchwc-block", "auto")
    if "no NCHWc kernels" in run.stderr:
        pytest.skip("this ONNX Runtime has no NCHWc kernels")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "same class 20/20" in run.stdout and "each image alone" in run.stdout
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["gatekit.nchwc_block"]) == gatekit.export.runtime_nchwc_block()


CALIBRATED_RUN = ROOT / "benchmarks" / "results" / "cifar10" / "pareto_anyb_s0_calibrated.pt"


@pytest.mark.slow
@pytest.mark.skipif(not (CALIBRATED_RUN.is_file() and DATA.is_file()),
                    reason="needs the calibrated run and CIFAR-10")
def test_example_script_exports_a_calibrated_run(tmp_path):
    # The run's map has knots 0.3, 0.319, 0.4, 0.5, ...: 0.45 lies between two of them.
    run, out = run_example(CALIBRATED_RUN, tmp_path, "--budget", "0.45")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "same class 20/20" in run.stdout and out.is_file()


# ---- the sliced conv as one custom op, for AOTInductor ---------------------------------

def test_sliced_conv_op_equals_a_conv_on_the_indexed_weight():
    from gatekit.export._ops import sliced_conv

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 5, 3, 3, generator=gen)
    bias = torch.randn(6, generator=gen)
    out_idx, in_idx = torch.tensor([0, 2, 5]), torch.tensor([1, 4])
    x = torch.randn(2, 2, 8, 8, generator=gen)
    conv = dict(stride=[2, 1], padding=[1, 0], dilation=[1, 1], groups=1)
    cases = [  # (weight as stored, out_idx, in_idx, in_major, input) -> oracle
        (weight, out_idx, in_idx, False, x, weight[out_idx][:, in_idx], bias[out_idx]),
        (weight, out_idx, None, False, torch.randn(2, 5, 8, 8), weight[out_idx], bias[out_idx]),
        (weight.transpose(0, 1).contiguous(), None, in_idx, True, x, weight[:, in_idx], bias),
    ]
    for stored, o, i, major, inp, w, b in cases:
        expected = torch.nn.functional.conv2d(inp, w, b, conv["stride"], conv["padding"])
        got = sliced_conv(inp, stored, bias, o, i, in_major=major, **conv)
        torch.testing.assert_close(got, expected)
        torch.library.opcheck(torch.ops.gatekit.sliced_conv.default,
                              (inp, stored, bias, o, i, conv["stride"], conv["padding"],
                               conv["dilation"], 1, major))


def test_program_for_inductor_runs_the_custom_op_and_equals_eager():
    net = build("resnet20", "inner")
    program = gatekit.export_program(net, torch.randn(1, 3, 32, 32), for_inductor=True,
                                     dense_above=None)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    # Every backbone conv (BatchNorm folded) is the opaque op; Inductor lowers the gater's.
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    gater_convs = [n for n in convs if n.startswith("gater.")]
    assert targets.count("gatekit.sliced_conv.default") == len(convs) - len(gater_convs) == 21
    assert targets.count("aten.conv2d.default") == len(gater_convs) > 0
    x = torch.randn(5, 3, 32, 32)
    expected, gates = eager(net, x)
    assert distinct_patterns(gates) == 5
    with torch.no_grad():
        assert_close(program.module()(x), expected)
        assert_close(program.module()(x[2:3]), eager(net, x[2:3])[0])


@pytest.mark.slow
def test_aot_inductor_package_equals_eager(tmp_path):
    # Compiling takes minutes on a loaded CPU: hence slow.
    net = build("resnet20", "inner")
    program = gatekit.export_program(net, torch.randn(1, 3, 32, 32), for_inductor=True)
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "m.pt2"))
    compiled = torch._inductor.aoti_load_package(path)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    expected, gates = eager(net, x)
    assert distinct_patterns(gates) == 3
    with torch.no_grad():
        assert_close(compiled(x), expected)
        for i in range(3):  # batch 1: each image's own pattern
            assert_close(compiled(x[i : i + 1]), eager(net, x[i : i + 1])[0])
