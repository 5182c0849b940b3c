"""gatekit._graph, the one home of the rules about graph nodes, against torch itself."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import fx, nn

from gatekit import _graph


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
