"""gate_costs against two independent oracles: torch.utils.flop_counter.FlopCounterMode run on
each conv alone (and on the whole backbone), and the conv output-size formula written out by
hand for strided, dilated, grouped, depthwise, 1-d and 3-d convs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import gatekit
from gatekit import GatekitError, gate_costs
from gatekit.models import resnet20, resnet20_gater

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
SIZES = {1: (17,), 2: (17, 14), 3: (12, 11, 13)}


class Toy(nn.Module):
    """A strided conv, a dilated grouped conv, a depthwise conv (multiplier 2), a pointwise
    conv with bias read directly, and a conv read through a max-pool."""

    def __init__(self, dim: int):
        super().__init__()
        conv = CONV[dim]
        self.stem = conv(4, 8, 3, padding=1)
        self.a = conv(8, 12, 3, stride=2, padding=1, bias=False)
        self.bn_a = BN[dim](12)
        self.b = conv(12, 12, 3, dilation=2, padding=2, groups=3, bias=False)
        self.c = conv(12, 24, 5, padding=2, groups=12, bias=False)
        self.d = conv(24, 6, 1)
        self.pool = POOL[dim](2)
        self.e = conv(24, 10, 3, stride=(2,) + (1,) * (dim - 1))

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.relu(self.bn_a(self.a(x)))
        x = F.relu(self.b(x))
        y = self.c(x)
        return self.d(y).mean() + self.e(self.pool(y)).mean()


class PoolGater(nn.Module):
    def forward(self, x):
        return x.flatten(2).mean(2)


def toy_net(dim: int, sites="all", **kw) -> gatekit.GaterNet:
    torch.manual_seed(0)
    return gatekit.gate_model(Toy(dim), PoolGater(), sites=sites, gater_features=4, **kw)


def out_size(size, k, s=1, p=0, d=1):
    """PyTorch's conv output size, per spatial dim."""
    return [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n in size]


def toy_hand_costs(dim: int) -> dict[str, tuple[int, int]]:
    """Per output channel of each gated conv: (own FLOPs, FLOPs of its direct readers)."""
    size = SIZES[dim]
    sa = out_size(size, 3, s=2, p=1)
    sb = out_size(sa, 3, p=2, d=2)
    sc = out_size(sb, 5, p=2)
    sd = sc
    pooled = [n // 2 for n in sc]
    se = [out_size([n], 3, s=2 if i == 0 else 1)[0] for i, n in enumerate(pooled)]
    k = lambda n: n**dim  # noqa: E731  (kernel volume)
    p = math.prod
    own = {
        "a": 2 * p(sa) * 8 * k(3),
        "b": 2 * p(sb) * (12 // 3) * k(3),
        "c": 2 * p(sc) * (12 // 12) * k(5),
        "d": 2 * p(sd) * 24 * k(1),
        "e": 2 * p(se) * 24 * k(3),
    }
    readers = {
        "a": 2 * p(sb) * (12 // 3) * k(3),  # a -> bn_a -> gate -> relu -> b (b's groups: 3)
        "b": 2 * p(sc) * (24 // 12) * k(5),  # b -> gate -> relu -> c (depthwise, multiplier 2)
        "c": 2 * p(sd) * 6 * k(1),  # c -> gate -> d directly; the pooled path to e is not counted
        "d": 0,
        "e": 0,
    }
    return {name: (own[name], readers[name]) for name in own}


def site_costs(net: gatekit.GaterNet, costs: torch.Tensor) -> dict[str, list[float]]:
    return {s.name: costs[s.offset : s.stop].tolist() for s in net.sites}


def conv_inputs(net: gatekit.GaterNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each conv's input in one all-open pass (captured by the test, not by gate_costs)."""
    seen, handles = {}, []
    for name, m in net.backbone.named_modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            handles.append(m.register_forward_pre_hook(lambda m, a, name=name: seen.setdefault(name, a[0])))
    with torch.no_grad():
        net.eval().backbone(x, gates=torch.ones(x.shape[0], net.num_gates))
    for h in handles:
        h.remove()
    return seen


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as mode, torch.no_grad():
        fn()
    return mode.get_total_flops()


# --------------------------------------------------------------------------------------
# Against FlopCounterMode, one conv at a time
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_toy_site_costs_sum_to_flop_counter_of_the_conv_alone(dim):
    net = toy_net(dim)
    x = torch.randn(3, 4, *SIZES[dim])
    costs = gate_costs(net, x)
    assert costs.shape == (net.num_gates,) and costs.dtype == torch.float64
    inputs = conv_inputs(net, x)
    convs = dict(net.backbone.named_modules())
    for site in net.sites:
        per_image = counted_flops(lambda s=site: convs[s.name](inputs[s.name])) / x.shape[0]
        assert costs[site.offset : site.stop].sum().item() == per_image, site.name
        assert len(set(costs[site.offset : site.stop].tolist())) == 1  # all channels cost the same


@pytest.mark.parametrize("sites", ["residual", "inner", "all"])
def test_resnet20_site_costs_sum_to_flop_counter_of_the_conv_alone(sites):
    net = gatekit.gate_model(resnet20(), resnet20_gater(), sites=sites)
    x = torch.randn(2, 3, 32, 32)
    costs = gate_costs(net, x)
    inputs = conv_inputs(net, x)
    convs = dict(net.backbone.named_modules())
    for site in net.sites:
        per_image = counted_flops(lambda s=site: convs[s.name](inputs[s.name])) / 2
        assert costs[site.offset : site.stop].sum().item() == per_image, site.name


# --------------------------------------------------------------------------------------
# Against hand formulas
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("downstream", [False, True])
def test_toy_costs_match_hand_formulas(dim, downstream):
    # Every conv gated: each reader is a gate site itself, so downstream adds nothing.
    net = toy_net(dim)
    assert [s.name for s in net.sites] == ["a", "b", "c", "d", "e"]
    got = site_costs(net, gate_costs(net, torch.randn(2, 4, *SIZES[dim]), downstream=downstream))
    for name, (own, _) in toy_hand_costs(dim).items():
        assert got[name] == [float(own)] * len(got[name]), name


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("downstream", [False, True])
def test_toy_downstream_counts_the_ungated_readers(dim, downstream):
    # a's reader b and c's reader d are not gated: their input channels count.
    net = toy_net(dim, sites=["a", "c", "e"])
    got = site_costs(net, gate_costs(net, torch.randn(2, 4, *SIZES[dim]), downstream=downstream))
    hand = toy_hand_costs(dim)
    for name in ("a", "c", "e"):
        own, readers = hand[name]
        expected = own + readers if downstream else own
        assert got[name] == [float(expected)] * len(got[name]), name


@pytest.mark.parametrize("downstream", [False, True])
def test_group_size_two_costs_twice_a_channel(downstream):
    net1, net2 = toy_net(2, sites=["a", "c", "e"]), toy_net(2, sites=["a", "c", "e"], group_size=2)
    x = torch.randn(1, 4, *SIZES[2])
    c1 = site_costs(net1, gate_costs(net1, x, downstream=downstream))
    c2 = site_costs(net2, gate_costs(net2, x, downstream=downstream))
    assert gate_costs(net2, x).shape == (net2.num_gates,) == (net1.num_gates // 2,)
    for name in c1:
        assert c2[name] == [2 * v for v in c1[name][::2]], name
    assert gate_costs(net2, x, downstream=downstream).sum() == gate_costs(net1, x, downstream=downstream).sum()


def test_costs_of_a_conv_do_not_depend_on_the_policy_and_name_lists_work():
    x = torch.randn(1, 3, 32, 32)
    every = gatekit.gate_model(resnet20(), resnet20_gater(), sites="all")
    by_name = site_costs(every, gate_costs(every, x))
    names = ["stage3.block3.conv2", "stage2.block1.shortcut.conv", "stage1.block2.conv1"]
    for policy in ("residual", "inner", names):
        net = gatekit.gate_model(resnet20(), resnet20_gater(), sites=policy)
        for name, values in site_costs(net, gate_costs(net, x)).items():
            assert values == by_name[name], (policy, name)
    # stage2.block1.shortcut.conv: 1x1, stride 2, 16 -> 32 channels at 16x16
    assert by_name["stage2.block1.shortcut.conv"][0] == 2 * 16 * 16 * 16 * 1


# --------------------------------------------------------------------------------------
# Whole backbones and downstream savings
# --------------------------------------------------------------------------------------


def test_resnet20_all_sites_plus_stem_equal_the_backbone_conv_flops():
    net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="all")
    x = torch.randn(4, 3, 32, 32)
    with FlopCounterMode(display=False) as mode, torch.no_grad():
        net.eval().backbone(x, gates=torch.ones(4, net.num_gates))
    conv_flops = mode.get_flop_counts()["Global"][torch.ops.aten.convolution] / 4
    stem = 2 * 32 * 32 * 3 * 3 * 3 * 16  # conv 3 -> 16, 3x3, 32x32, per output channel x 16
    assert gate_costs(net, x).sum().item() + stem == conv_flops


def test_resnet20_inner_downstream_adds_the_next_conv_per_input_channel():
    x = torch.randn(2, 3, 32, 32)
    net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner")
    plain, down = gate_costs(net, x), gate_costs(net, x, downstream=True)
    inputs = conv_inputs(net, x)
    convs = dict(net.backbone.named_modules())
    for site in net.sites:  # stageS.blockB.conv1 -> bn1 -> gate -> relu -> conv2
        reader = site.name.replace("conv1", "conv2")
        whole = counted_flops(lambda r=reader: convs[r](inputs[r])) / 2
        per_input_channel = whole / convs[reader].in_channels
        extra = (down - plain)[site.offset : site.stop]
        assert extra.tolist() == [per_input_channel] * site.num_gates, site.name


def test_residual_sites_save_nothing_downstream():
    # The gate sits before the residual addition: the shortcut keeps the channel alive.
    x = torch.randn(1, 3, 32, 32)
    net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="residual")
    assert torch.equal(gate_costs(net, x), gate_costs(net, x, downstream=True))


def test_result_is_per_image_and_model_state_is_kept():
    net = toy_net(2)
    net.train()
    net.gater.eval()  # a mixed state must come back as it was
    modes = {name: m.training for name, m in net.named_modules()}
    one = gate_costs(net, torch.randn(1, 4, *SIZES[2]))
    many = gate_costs(net, torch.randn(5, 4, *SIZES[2]))
    assert torch.equal(one, many)
    assert not one.requires_grad
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert net.last_gates is None and net.last_logits is None


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_a_gate_multiply_without_its_mark_is_an_error():
    # downstream=True reads each site's gate multiply by its mark; none is guessed.
    net = toy_net(2, sites=["a", "c", "e"])
    x = torch.randn(1, 4, *SIZES[2])
    gated = next(n for n in net.backbone.graph.nodes if n.meta.get("gatekit_site") == 1)
    del gated.meta["gatekit_site"]
    assert gate_costs(net, x).shape == (net.num_gates,)  # a conv's own cost needs no mark
    with pytest.raises(GatekitError, match=r"gate_costs expects each gate multiply.*sites \['c'\]"):
        gate_costs(net, x, downstream=True)


BAD = [
    (lambda: gate_costs(resnet20(), torch.zeros(1, 3, 32, 32)), "GaterNet"),
    (lambda: gate_costs(toy_net(2), [[0.0]]), "batched tensor"),
    (lambda: gate_costs(toy_net(2), torch.zeros(4)), "batched tensor"),
    (lambda: gate_costs(toy_net(2), torch.zeros(0, 4, 8, 8)), "batched tensor"),
    (lambda: gate_costs(toy_net(2), torch.zeros(1, 3, 8, 8)), "could not run the backbone"),
]


@pytest.mark.parametrize("call,word", BAD, ids=[f"{i}-{w}" for i, (_, w) in enumerate(BAD)])
def test_bad_inputs_raise_gatekit_error(call, word):
    with pytest.raises(GatekitError, match=word) as info:
        call()
    assert "got" in str(info.value) or "shape" in str(info.value)
