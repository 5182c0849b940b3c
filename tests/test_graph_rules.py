"""gatekit._graph, the one home of the rules about graph nodes, against torch itself, and
the readers of its rules (gate costs, skip_compute's planner) against each other."""

from __future__ import annotations

import copy
import operator
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import gatekit
from gatekit import GatekitError, _graph


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation"),
    [((9, 7), (3, 1), (2, 1), (1, 0), (1, 1)), ((16, 11), (5, 3), (3, 2), (2, 1), (2, 3)), ((5,), (5,), (1,), (0,), (1,))],
)
def test_conv_output_size_matches_torch(size, kernel, stride, padding, dilation):
    conv = getattr(nn, f"Conv{len(size)}d")(2, 3, kernel, stride, padding, dilation)
    expected = list(conv(torch.zeros(1, 2, *size)).shape[2:])
    assert _graph.conv_output_size(size, kernel, stride, padding, dilation) == expected


def test_adds_in_place_and_not():
    graph = fx.Graph()
    a, b = graph.placeholder("a"), graph.placeholder("b")
    nodes = [
        graph.call_function(operator.add, (a, b)),
        graph.call_function(torch.add, (a, b)),
        graph.call_function(operator.iadd, (a, b)),  # what ``a += b`` is in other tracers
        graph.call_method("add_", (a, b)),
        graph.call_method("add", (a, b)),
        graph.call_function(operator.add, (a, 1)),  # a constant: not a residual addition
        graph.call_function(operator.mul, (a, b)),
    ]
    found = [(_graph.is_add(n), _graph.is_add(n, in_place=False)) for n in nodes]
    assert found == [
        (True, True), (True, True), (True, False), (True, False), (True, True),
        (False, False), (False, False),
    ]  # fmt: skip


def test_convs_and_call_counts():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.up = nn.ConvTranspose2d(3, 3, 2)

        def forward(self, x):
            return self.up(self.conv(self.conv(x)))

    gm = fx.symbolic_trace(Shared())
    modules = dict(gm.named_modules())
    assert _graph.call_counts(gm.graph) == {"conv": 2, "up": 1}
    assert _graph.is_conv(modules["conv"]) and not _graph.is_conv(modules["up"])
    assert isinstance(modules["up"], _graph.ANY_CONV_TYPES)


# --------------------------------------------------------------------------------------
# Zeros: one rule, two readers
# --------------------------------------------------------------------------------------


class Apply(nn.Module):
    """``fn(self, x)``, with ``module`` as ``self.m``: one op to trace."""

    def __init__(self, fn, module: nn.Module | None = None):
        super().__init__()
        self.fn, self.m = fn, module

    def forward(self, x):
        return self.fn(self, x)


def _module(m: nn.Module):
    return lambda self, x: self.m(x), m


# (name, fn, module, keeps zeros, keeps them on a compact tensor of some channels)
ZERO_CASES = [
    ("ReLU", *_module(nn.ReLU()), True, True),
    ("ReLU6", *_module(nn.ReLU6()), True, True),
    ("Hardtanh(0.5, 1)", *_module(nn.Hardtanh(0.5, 1.0)), False, False),
    ("PReLU(4)", *_module(nn.PReLU(4)), True, False),  # where the two readers differ
    ("PReLU(1)", *_module(nn.PReLU()), True, True),
    ("MaxPool2d", *_module(nn.MaxPool2d(3, 1, 1)), True, True),
    ("AvgPool2d", *_module(nn.AvgPool2d(2)), True, True),
    ("AlphaDropout", *_module(nn.AlphaDropout(0.5)), True, True),
    ("Sigmoid", *_module(nn.Sigmoid()), False, False),
    ("BatchNorm2d", *_module(nn.BatchNorm2d(4)), False, False),
    ("F.selu", lambda self, x: F.selu(x), None, True, True),
    ("F.max_pool2d", lambda self, x: F.max_pool2d(x, 2), None, True, True),
    ("F.dropout", lambda self, x: F.dropout(x, 0.5, training=False), None, True, True),
    ("clone", lambda self, x: x.clone(), None, True, True),
    ("contiguous", lambda self, x: x.contiguous(), None, True, True),
    ("sigmoid", lambda self, x: x.sigmoid(), None, False, False),
    ("add", lambda self, x: x + 1, None, False, False),
    ("mul", lambda self, x: x * x, None, False, False),  # a second tensor argument
]


@pytest.mark.parametrize(
    ("fn", "module", "keeps", "compact"),
    [case[1:] for case in ZERO_CASES],
    ids=[case[0] for case in ZERO_CASES],
)
def test_zero_rule_against_torch(fn, module, keeps, compact):
    torch.manual_seed(0)
    gm = fx.symbolic_trace(Apply(fn, module)).eval()
    x_node, node = list(gm.graph.nodes)[:2]
    modules = dict(gm.named_modules())
    found = (
        _graph.keeps_zero_channels(node, x_node, modules),
        _graph.keeps_zero_channels(node, x_node, modules, compact=True),
    )
    assert found == (keeps, compact)
    # What the rule claims, torch does: a zero channel stays zero; on a compact tensor of
    # some channels the op gives those channels of the full result.
    x = torch.randn(2, 4, 6, 6)
    x[:, 1] = 0
    y = gm(x)
    if keeps:
        assert bool((y[:, 1] == 0).all())
    if compact:
        idx = torch.tensor([0, 2, 3])
        torch.testing.assert_close(gm(x[:, idx]), y[:, idx])


class GateThen(nn.Module):
    """``conv a -> BN -> gate -> op -> conv b``: ``b`` reads ``a``'s gated channels through
    ``op``, so gate costs (``downstream=True``) and skip_compute both ask the zero rule."""

    def __init__(self, fn, module: nn.Module | None = None):
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.op = Apply(fn, module)
        self.b = nn.Conv2d(4, 5, 3, padding=1)

    def forward(self, x):
        return self.b(self.op(self.bn(self.a(x))))


READER_CASES = [
    ("ReLU", *_module(nn.ReLU()), True, True),
    ("PReLU(4)", *_module(nn.PReLU(4)), True, False),
    ("PReLU(1)", *_module(nn.PReLU()), True, True),
    ("MaxPool2d", *_module(nn.MaxPool2d(3, 1, 1)), True, True),
    ("clone", lambda self, x: x.clone(), None, True, True),
    # training=self.training reads the gated model's mode flag at run time: not a tensor.
    ("F.dropout", lambda self, x: F.dropout(x, 0.5, training=self.training), None, True, True),
    ("Sigmoid", *_module(nn.Sigmoid()), False, False),
]


@pytest.mark.parametrize(
    ("fn", "module", "keeps", "compact"),
    [case[1:] for case in READER_CASES],
    ids=[case[0] for case in READER_CASES],
)
def test_gate_costs_and_skip_compute_read_zeros_by_the_one_rule(fn, module, keeps, compact):
    torch.manual_seed(0)
    net = gatekit.gate_model(
        GateThen(fn, module).double(), nn.Flatten(), sites=["a"], gater_features=3 * 8 * 8
    ).eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    # Gate costs count b's work on a's closed channels exactly when zeros reach b.
    extra = gatekit.gate_costs(net, x, downstream=True) - gatekit.gate_costs(net, x)
    b = net.backbone.get_submodule("b")
    per_channel = 2 * 8 * 8 * b.out_channels * 3 * 3
    assert extra.tolist() == [float(per_channel) if keeps else 0.0] * 4
    # skip_compute feeds b the open channels alone exactly when op runs on them unchanged.
    fast = gatekit.skip_compute(net)
    assert fast.routes[0].mode == ("sliced" if compact else "scatter")
    gates = (torch.rand(3, net.num_gates) < 0.5).double()
    torch.testing.assert_close(fast(x, gates=gates), net(x, gates=gates))


# --------------------------------------------------------------------------------------
# Gate marks
# --------------------------------------------------------------------------------------


class Scaled(nn.Module):
    """A multiply of its own between two gates: the ``mul`` nodes' names shift when the
    gated graph is re-traced (unpickled), their order does not."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.a(x)
        z = self.b(y) * torch.sigmoid(y)
        return self.c(z) * 2


def scaled_net() -> gatekit.GaterNet:
    torch.manual_seed(0)
    return gatekit.gate_model(Scaled(), nn.Flatten(), sites=["b", "c"], gater_features=48).eval()


def test_gate_model_marks_each_gate_multiply_with_its_site():
    net = scaled_net()
    muls = _graph.gate_nodes(net.backbone.graph, [s.name for s in net.sites], "test")
    assert [m.meta[_graph.GATE_SITE] for m in muls] == [0, 1]
    assert [m.target for m in muls] == [operator.mul] * 2
    assert [m.args[0].target for m in muls] == [s.after for s in net.sites]
    # The model's own multiplies carry no mark.
    own = [n for n in net.backbone.graph.nodes if n.target is operator.mul and n not in muls]
    assert len(own) == 2 and not any(_graph.GATE_SITE in n.meta for n in own)


def test_gate_marks_survive_copies_and_pickling():
    net = scaled_net()
    x = torch.randn(2, 3, 4, 4)
    gates = (torch.rand(2, net.num_gates) < 0.5).float()
    names = [s.name for s in net.sites]
    for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        muls = _graph.gate_nodes(other.backbone.graph, names, "test")
        assert [m.args[0].target for m in muls] == [s.after for s in net.sites]
        costs = gatekit.gate_costs(other, x, downstream=True)
        assert torch.equal(costs, gatekit.gate_costs(net, x, downstream=True))
        assert gatekit.skip_compute(other).routes == gatekit.skip_compute(net).routes
        torch.testing.assert_close(other(x, gates=gates), net(x, gates=gates))


def test_missing_repeated_and_unknown_marks_raise():
    net = scaled_net()
    graph, names = net.backbone.graph, [s.name for s in net.sites]
    first, second = _graph.gate_nodes(graph, names, "test")
    del second.meta[_graph.GATE_SITE]
    with pytest.raises(GatekitError, match=r"expects each gate multiply.*none for the sites \['c'\]"):
        _graph.gate_nodes(graph, names, "test")
    second.meta[_graph.GATE_SITE] = 1
    own = next(n for n in graph.nodes if n.target is operator.mul and n not in (first, second))
    own.meta[_graph.GATE_SITE] = 0
    with pytest.raises(GatekitError, match=rf"one marked gate .*got site 0 marked on .*{own.name}"):
        _graph.gate_nodes(graph, names, "test")
    own.meta[_graph.GATE_SITE] = 7
    with pytest.raises(GatekitError, match=rf"got mark 7 on {own.name} "):
        _graph.gate_nodes(graph, names, "test")
