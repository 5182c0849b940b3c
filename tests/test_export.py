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
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import gatekit
from gatekit.models import conv_gater, resnet20

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

pytestmark = pytest.mark.usefixtures("one_thread")


def randomise(net: gatekit.GaterNet, seed: int = 0) -> gatekit.GaterNet:
    """Non-trivial BatchNorm statistics (folding is exercised) and a head whose gates
    differ between images, about half of them open."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(c, generator=gen) * 0.2 - 0.1)
        head = net.head
        head.fc1.weight.copy_(torch.randn(head.fc1.weight.shape, generator=gen))
        head.fc2.weight.copy_(torch.randn(head.fc2.weight.shape, generator=gen))
        head.fc2.bias.copy_(torch.randn(head.fc2.bias.shape, generator=gen) * 0.3)
    return net.eval()


def build(name: str, sites: str = "inner", **kw) -> gatekit.GaterNet:
    torch.manual_seed(0)
    backbone = {
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

CASES = [
    ("resnet20", "inner"),
    ("resnet20", "all"),
    ("resnet18", "inner"),
    ("mobilenet_v2", "all"),  # grouped and depthwise convs
    pytest.param("resnet50", "inner", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "sites"), CASES)
def test_program_and_onnx_equal_eager(name, sites, tmp_path):
    net = build(name, sites)
    example = torch.randn(1, 3, 32, 32)
    program = gatekit.export_program(net, example)
    routes = gatekit.export_onnx(net, example, tmp_path / "m.onnx")
    x = torch.randn(5, 3, 32, 32)
    expected, gates = eager(net, x)
    assert distinct_patterns(gates) == 5  # the batch mixes patterns: the union is exercised
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
    program = gatekit.export_program(net, example, dynamic_batch=False)
    gatekit.export_onnx(net, example, tmp_path / "m.onnx", dynamic_batch=False)
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
    program = gatekit.export_program(net, example)
    gatekit.export_onnx(net, example, tmp_path / "m.onnx")
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
    example = torch.randn(1, 3, 32, 32)
    program = gatekit.export_program(net, example)
    gatekit.export_onnx(net, example, tmp_path / "m.onnx")
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
        program = gatekit.export_program(net, x[:1])
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
    program = gatekit.export_program(net, example, budget=0.5)
    gatekit.export_onnx(net, example, tmp_path / "m.onnx", budget=0.5)
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


# ---- fewer open gates, fewer FLOPs ----------------------------------------------------

def conv_flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return sum(v for op, v in counter.get_flop_counts()["Global"].items()
               if "convolution" in str(op))


def test_fewer_open_gates_run_fewer_conv_flops():
    # The budget shifts every logit alike: a lower budget opens a subset of the gates.
    net = build("resnet20", "inner", budget_input=True)
    with torch.no_grad():
        net.head.budget_scale.fill_(3.0)
    x = torch.randn(1, 3, 32, 32)
    program = gatekit.export_program(net, x, budget=0.5)
    costs = gatekit.gate_costs(net, x, downstream=True)
    # Every filter of the backbone (gates given: the gater does not run), and the gater.
    dense = conv_flops(lambda: net(x, gates=torch.ones(1, net.num_gates)))
    dense += conv_flops(lambda: net.gater(x))
    counted = []
    for value in (0.2, 0.5, 0.8):
        b = torch.tensor([value])
        gates = eager(net, x, b)[1]
        # Inner sites of basic blocks: a closed gate saves exactly its downstream cost.
        expected = dense - int((costs * (1 - gates[0].double())).sum().item())
        counted.append(conv_flops(lambda b=b: program.module()(x, b)))
        assert counted[-1] == expected
    assert counted[0] < counted[1] < counted[2] < dense


# ---- errors ---------------------------------------------------------------------------

def test_errors(monkeypatch, tmp_path):
    net = build("resnet20", "inner")
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(gatekit.GatekitError, match=r"eval mode.*call net\.eval\(\)"):
        gatekit.export_program(net.train(), x)
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
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(gatekit.GatekitError, match=r'onnxscript.*pip install "gatekit\[export\]"'):
        gatekit.export_onnx(net, x, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


# ---- the example script -------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "results" / "cifar10" / "vs_budget_conv_s0.pt"
DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def test_example_script_help():
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "export_gaternet.py"), "--help"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and "--out" in run.stdout, run.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (RUN.is_file() and DATA.is_file()), reason="needs the run and CIFAR-10")
def test_example_script_checks_the_committed_run(tmp_path):
    out = tmp_path / "model.onnx"
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "export_gaternet.py"), str(RUN),
                          "--out", str(out), "--images", "20", "--data", str(DATA)],
                         capture_output=True, text=True, timeout=600, check=False)
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
    program = gatekit.export_program(net, torch.randn(1, 3, 32, 32), for_inductor=True)
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
