"""skip_compute and fuse_gated_convs against the dense gated model and a hook oracle.

Oracles: the dense GaterNet (every filter computed, then multiplied by its gate), and,
independently of gatekit's transform, the original backbone with forward hooks that zero
the gated channels of each site's ``after`` module.

Tolerances: comparisons run in float64, where the only differences are rounding of the
BatchNorm fold (one rounding per weight) and the order of summation over fewer channels;
relative errors are ~1e-15 per op, so ``rtol=1e-9, atol=1e-9 * max|output|`` is tight.
One float32 check uses ``1e-4`` of the output scale (ResNet-50's depth accumulates ~1e-6
relative error per layer).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import gatekit
from gatekit.models import resnet20, resnet20_gater


def randomise_batchnorm(net: nn.Module, seed: int = 0, *,
                        generator: torch.Generator | None = None) -> None:
    """Non-trivial running statistics and affine parameters, so that folding is exercised
    (drawn from ``generator`` when given, else from a new one seeded with ``seed``)."""
    gen = torch.Generator().manual_seed(seed) if generator is None else generator
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(c, generator=gen) * 0.2 - 0.1)


def random_gates(num: int, width: int, p: float = 0.5, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(num, width, generator=gen) < p).double()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-9) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(scale, 1.0))


BACKBONES = {
    "resnet20": (lambda: resnet20(), 32),
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), 64),
    "resnet50": (lambda: torchvision.models.resnet50(weights=None), 32),
}


@pytest.fixture(scope="module")
def gated_nets():
    cache: dict[tuple, tuple[gatekit.GaterNet, int]] = {}

    def get(name: str, policy: str, group_size: int) -> tuple[gatekit.GaterNet, int]:
        key = (name, policy, group_size)
        if key not in cache:
            torch.manual_seed(0)
            make, size = BACKBONES[name]
            net = gatekit.gate_model(make(), resnet20_gater(), sites=policy, group_size=group_size)
            randomise_batchnorm(net)
            cache[key] = (net.double().eval(), size)
        return cache[key]

    return get


CASES = [
    ("resnet20", "inner", 1),
    ("resnet20", "residual", 1),
    ("resnet20", "all", 4),
    ("resnet18", "inner", 1),
    ("resnet18", "residual", 2),
    ("resnet18", "all", 1),
    ("resnet50", "inner", 8),
    ("resnet50", "all", 1),
]


@pytest.mark.parametrize(("name", "policy", "group_size"), CASES)
def test_skip_matches_dense_with_mixed_patterns(gated_nets, name, policy, group_size):
    net, size = gated_nets(name, policy, group_size)
    fast = gatekit.skip_compute(net)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    gates = random_gates(2, net.num_gates, seed=1)
    assert_close(fast(x, gates=gates), net(x, gates=gates))
    modes = {r.mode for r in fast.routes}
    # Inner sites feed the next conv of their block; residual sites feed the addition.
    expected = {"inner": {"sliced"}, "residual": {"scatter"}, "all": {"sliced", "scatter"}}[policy]
    assert modes == expected


@pytest.mark.parametrize("fill", [0.0, 1.0])
@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_all_gates_on_and_off(gated_nets, name, fill):
    net, size = gated_nets(name, "all", 1)
    fast = gatekit.skip_compute(net)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    gates = torch.full((2, net.num_gates), fill, dtype=torch.float64)
    assert_close(fast(x, gates=gates), net(x, gates=gates))


def test_matches_hook_oracle_on_the_original_backbone():
    torch.manual_seed(0)
    backbone = torchvision.models.resnet18(weights=None)
    randomise_batchnorm(backbone)
    backbone = backbone.double().eval()
    net = gatekit.gate_model(backbone, resnet20_gater().double(), sites="all").eval()
    fast = gatekit.skip_compute(net)
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    gates = random_gates(2, net.num_gates, seed=3)
    modules = dict(backbone.named_modules())
    handles = []
    for site in net.sites:
        chunk = gates[:, site.offset : site.stop].repeat_interleave(site.group_size, 1)
        hook = lambda m, i, out, c=chunk: out * c[:, :, None, None]  # noqa: E731
        handles.append(modules[site.after].register_forward_hook(hook))
    try:
        expected = backbone(x)
    finally:
        for h in handles:
            h.remove()
    assert_close(fast(x, gates=gates), expected)


def test_samples_are_grouped_by_pattern(gated_nets):
    net, size = gated_nets("resnet20", "inner", 1)
    fast = gatekit.skip_compute(net, batching="pattern")
    a, b, c = random_gates(3, net.num_gates, seed=4)
    gates = torch.stack([a, b, a, c, b])
    x = torch.randn(5, 3, size, size, dtype=torch.float64)
    batch_sizes = []
    handle = fast.backbone.graph_module.register_forward_pre_hook(
        lambda m, args, kw: batch_sizes.append(args[0].shape[0]), with_kwargs=True
    )
    out = fast(x, gates=gates)
    handle.remove()
    assert sorted(batch_sizes) == [1, 2, 2]
    assert_close(out, net(x, gates=gates))


def test_union_batching_runs_one_pass(gated_nets):
    net, size = gated_nets("resnet20", "all", 4)
    fast = gatekit.skip_compute(net, batching="union")
    base = random_gates(1, net.num_gates, seed=9)
    flips = random_gates(4, net.num_gates, p=0.1, seed=10)
    gates = (base - flips).abs()  # patterns that mostly agree, as a trained gater's do
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    batch_sizes = []
    hook = lambda m, args, kw: batch_sizes.append(args[0].shape[0])  # noqa: E731
    handle = fast.backbone.graph_module.register_forward_pre_hook(hook, with_kwargs=True)
    out = fast(x, gates=gates)
    handle.remove()
    assert batch_sizes == [4]
    assert_close(out, net(x, gates=gates))
    with pytest.raises(gatekit.GatekitError, match="batching"):
        gatekit.skip_compute(net, batching="per_sample")


class CountingChannels(gatekit.inference.batching.SharedChannels):
    """Shared channels that count the SkipConv calls they run."""

    calls = 0

    def conv(self, conv, x, out_site, in_site, residual):
        CountingChannels.calls += 1
        return super().conv(conv, x, out_site, in_site, residual)


class OneByOne(gatekit.inference.batching.Batching):
    """A batching mode written outside gatekit: each sample alone, with its own Channels."""

    name = "one_by_one"

    def run_mixed(self, backbone, x, gates):
        outputs = [
            backbone.run(x[i : i + 1], gates[i : i + 1], CountingChannels(backbone.open_channels(g)))
            for i, g in enumerate(gates)
        ]
        return torch.cat(outputs)


def test_a_batching_mode_is_one_class(gated_nets, monkeypatch):
    # The seam: a Batching subclass (and, if it needs one, its Channels), listed by name.
    net, size = gated_nets("resnet20", "all", 4)
    monkeypatch.setitem(gatekit.inference.batching.BATCHINGS, OneByOne.name, OneByOne)
    fast = gatekit.skip_compute(net, batching="one_by_one")
    assert fast.backbone.batching == "one_by_one" and "batching='one_by_one'" in repr(fast)
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    gates = random_gates(3, net.num_gates, seed=12)
    assert_close(fast(x, gates=gates), net(x, gates=gates))
    skip_convs = [m for m in fast.modules() if isinstance(m, gatekit.inference.conv.SkipConv)]
    assert CountingChannels.calls == 3 * len(skip_convs)  # every SkipConv asks the run's Channels


@pytest.mark.parametrize("batching", ["pattern", "gather", "masked"])
def test_float32_close_to_dense(batching):
    torch.manual_seed(0)
    net = gatekit.gate_model(
        torchvision.models.resnet50(weights=None), resnet20_gater(), sites="inner"
    )
    randomise_batchnorm(net)
    net.eval()
    fast = gatekit.skip_compute(net, batching=batching)
    x = torch.randn(2, 3, 64, 64)
    gates = random_gates(2, net.num_gates, seed=5).float()
    assert_close(fast(x, gates=gates), net(x, gates=gates), rel=1e-4)


def test_default_gates_come_from_the_gater(gated_nets):
    net, size = gated_nets("resnet20", "inner", 1)
    fast = gatekit.skip_compute(net)
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    assert_close(fast(x), net(x))
    torch.testing.assert_close(fast.last_gates, net.last_gates)


def test_input_net_and_x_unchanged(gated_nets):
    net, size = gated_nets("resnet20", "all", 4)
    before = copy.deepcopy(net.state_dict())
    fast = gatekit.skip_compute(net)
    x = torch.randn(2, 3, size, size, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last
    )
    x_copy = x.clone()
    fast(x, gates=random_gates(2, net.num_gates))
    assert torch.equal(x, x_copy)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not net.training


class TinyNet(nn.Module):
    """Convs that cannot be sliced (depthwise, GroupNorm), a pooled path and a Conv1d head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn_dw = nn.BatchNorm2d(8)
        self.conv_gn = nn.Conv2d(8, 12, 1)
        self.gn = nn.GroupNorm(4, 12)
        self.conv_pool = nn.Conv2d(12, 10, 3, padding=1, bias=False)
        self.bn_pool = nn.BatchNorm2d(10)
        self.pool = nn.MaxPool2d(2)
        self.last = nn.Conv2d(10, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.bn_dw(self.dw(x)))
        x = torch.relu(self.gn(self.conv_gn(x)))
        x = self.pool(torch.relu(self.bn_pool(self.conv_pool(x))))
        x = torch.relu(self.last(x))
        return self.fc(x.mean((2, 3)))


def tiny_gated_net() -> gatekit.GaterNet:
    """TinyNet with random BatchNorm statistics, every conv gated, float64, eval mode."""
    torch.manual_seed(0)
    backbone = TinyNet()
    randomise_batchnorm(backbone)
    return gatekit.gate_model(
        backbone.double(), resnet20_gater().double(), sites="all", gater_features=64
    ).eval()


@pytest.mark.parametrize("batching", ["pattern", "gather", "masked"])
def test_unsliceable_sites_run_dense_and_pooling_passes_through(batching):
    net = tiny_gated_net()
    fast = gatekit.skip_compute(net, batching=batching)
    routes = {r.site: (r.mode, r.consumer) for r in fast.routes}
    assert routes["dw"][0] == "dense" and routes["conv_gn"][0] == "dense"
    assert routes["conv_pool"] == ("sliced", "last")  # through ReLU and MaxPool
    assert {r.site: r.batching for r in fast.routes} == {
        "dw": "", "conv_gn": "", "conv_pool": batching, "last": batching,
    }  # fmt: skip
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    for seed in range(3):
        gates = random_gates(3, net.num_gates, seed=seed)
        assert_close(fast(x, gates=gates), net(x, gates=gates))


def test_copies_and_pickling_keep_outputs(gated_nets):
    net, size = gated_nets("resnet20", "inner", 1)
    fast = gatekit.skip_compute(net)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    gates = random_gates(2, net.num_gates, seed=6)
    expected = fast(x, gates=gates)
    for clone in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        assert_close(clone(x, gates=gates), expected, rel=1e-12)


def test_errors(gated_nets):
    net, size = gated_nets("resnet20", "inner", 1)
    with pytest.raises(gatekit.GatekitError, match="eval"):
        gatekit.skip_compute(copy.deepcopy(net).train())
    with pytest.raises(gatekit.GatekitError, match="GaterNet"):
        gatekit.skip_compute(resnet20())
    fast = gatekit.skip_compute(net)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    soft = torch.full((2, net.num_gates), 0.5, dtype=torch.float64)
    with pytest.raises(gatekit.GatekitError, match="binary"):
        fast(x, gates=soft)
    with pytest.raises(gatekit.GatekitError, match="shape"):
        fast(x, gates=soft[:, :10])
    with pytest.raises(gatekit.GatekitError, match=r"\.eval\(\)"):
        copy.deepcopy(fast).train()(x, gates=soft.round())
    with pytest.raises(gatekit.GatekitError, match="eval"):
        gatekit.fuse_gated_convs(copy.deepcopy(net).train())


def test_a_gate_multiply_without_its_mark_is_an_error():
    net = tiny_gated_net()
    gated = next(n for n in net.backbone.graph.nodes if n.meta.get("gatekit_site") == 2)
    del gated.meta["gatekit_site"]
    with pytest.raises(gatekit.GatekitError, match=r"skip_compute expects .*mark.*\['conv_pool'\]"):
        gatekit.skip_compute(net)
    with pytest.raises(gatekit.GatekitError, match=r"fuse_gated_convs expects .*\['conv_pool'\]"):
        gatekit.fuse_gated_convs(net, op="reference")


# ---- fuse_gated_convs ---------------------------------------------------------------


@pytest.mark.parametrize(("policy", "group_size"), [("inner", 1), ("residual", 2), ("all", 4)])
def test_fused_matches_unfused(gated_nets, policy, group_size):
    net, size = gated_nets("resnet20", policy, group_size)
    fused = gatekit.fuse_gated_convs(net, op="reference")
    assert isinstance(fused, gatekit.GaterNet)
    assert fused.routes == tuple(gatekit.inference.SiteRoute(s.name, "fused", None, "") for s in net.sites)
    calls = [
        n
        for n in fused.backbone.graph.nodes
        if n.op == "call_module" and n.target.startswith("fused_")
    ]
    assert len(calls) == len(net.sites)
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    for seed in range(2):
        gates = random_gates(3, net.num_gates, seed=seed)
        assert_close(fused(x, gates=gates), net(x, gates=gates))


def test_fused_passes_producer_gates_as_in_gate(gated_nets):
    net, _ = gated_nets("resnet50", "inner", 8)
    fused = gatekit.fuse_gated_convs(net, op="reference")
    conv2 = fused.backbone.get_submodule("fused_layer1_0_conv2")
    conv1_site = next(s for s in net.sites if s.name == "layer1.0.conv1")
    assert conv2.in_range == (conv1_site.offset, conv1_site.stop)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    gates = random_gates(2, net.num_gates, seed=7)
    assert_close(fused(x, gates=gates), net(x, gates=gates))
    with pytest.raises(gatekit.GatekitError, match="eval"):
        fused.train()(x, gates=gates)


class ResidualReuse(nn.Module):
    """A tensor read by two residual additions: only its last reader may overwrite it."""

    def __init__(self):
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)

    def forward(self, x):
        y = torch.relu(self.bn0(self.conv0(x)))
        a = self.bn1(self.conv1(y)) + y
        b = self.bn2(self.conv2(a)) + y
        return b.mean((2, 3))


def test_residual_accumulates_in_place_only_into_dead_tensors():
    torch.manual_seed(0)
    backbone = ResidualReuse()
    randomise_batchnorm(backbone)
    net = gatekit.gate_model(
        backbone.double(), resnet20_gater().double(), sites="all", gater_features=64
    ).eval()
    fast = gatekit.skip_compute(net)
    nodes = fast.backbone.graph_module.graph.nodes
    adds = [n for n in nodes if n.op == "call_function" and "add" in str(n.target)]
    accumulating = [n for n in nodes if "residual" in n.kwargs]
    assert len(adds) == 1 and len(accumulating) == 1  # the first addition must keep y intact
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gates = random_gates(2, net.num_gates, seed=8)
    assert_close(fast(x, gates=gates), net(x, gates=gates))


# ---- skipping computes fewer channels -------------------------------------------------


def _addmm_inplace_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    # FlopCounterMode counts addmm but not addmm_, which the residual accumulation uses.
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def conv_flops_run(fast: gatekit.SkipComputeNet, x, gates, extra=None) -> dict[str, int]:
    """FLOPs of every conv the skip model ran, by the original conv's name (from aten)."""
    mapping = {torch.ops.aten.addmm_: _addmm_inplace_flops, **(extra or {})}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fast(x, gates=gates)
    prefix = "SkipComputeNet.backbone.graph_module.skip_"
    return {
        name[len(prefix) :]: sum(ops.values())
        for name, ops in counter.get_flop_counts().items()
        if name.startswith(prefix) and "." not in name[len(prefix) :]
    }


def conv_flops_expected(
    net, x, gates, producer: dict[str, str], reduce: str = "union"
) -> dict[str, int]:
    """2 * N * (channels out) * (channels in) * taps * output pixels, per conv of the
    backbone, counting only open output channels of a gated conv and only the open input
    channels of the conv that reads a gated conv (``producer``: reader -> gated conv).
    Open channels of a site: those open in any sample (``reduce="union"``), or the largest
    number any one sample opens (``"max"``: each sample's own, padded to the largest)."""
    convs = {n: m for n, m in net.backbone.named_modules() if isinstance(m, nn.Conv2d)}
    pixels: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda m, i, out, n=n: pixels.__setitem__(n, out[0, 0].numel()))
        for n, m in convs.items()
    ]
    try:
        net(x[:1], gates=gates[:1])
    finally:
        for h in hooks:
            h.remove()
    if reduce == "union":
        union = (gates != 0).any(0)
        open_channels = {
            s.name: int(union[s.offset : s.stop].sum()) * s.group_size for s in net.sites
        }
    else:
        open_channels = {
            s.name: int((gates[:, s.offset : s.stop] != 0).sum(1).max()) * s.group_size
            for s in net.sites
        }
    expected = {}
    for name, conv in convs.items():
        k_out = open_channels.get(name, conv.out_channels)
        k_in = open_channels[producer[name]] if name in producer else conv.in_channels
        taps = conv.kernel_size[0] * conv.kernel_size[1]
        flops = 2 * x.shape[0] * k_out * k_in * taps * pixels[name]
        if flops:  # a conv with no open channel runs no aten op (its output is the bias)
            expected[name.replace(".", "_")] = flops
    return expected


def _resnet50_inner_readers(net) -> dict[str, str]:
    # Bottleneck: conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> conv3, the first two gated.
    blocks = {s.name.rsplit(".", 1)[0] for s in net.sites}
    return {f"{b}.conv{i + 1}": f"{b}.conv{i}" for b in blocks for i in (1, 2)}


@pytest.mark.parametrize("batching", ["pattern", "union"])
def test_skip_computes_only_open_channels(gated_nets, batching):
    net, size = gated_nets("resnet50", "inner", 8)
    fast = gatekit.skip_compute(net, batching=batching)
    readers = _resnet50_inner_readers(net)
    assert {r.site: r.consumer for r in fast.routes} == {v: k for k, v in readers.items()}
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    for seed, p in [(0, 0.5), (1, 0.2), (2, 0.0), (3, 1.0)]:
        gates = random_gates(1, net.num_gates, p=p, seed=seed)
        got = conv_flops_run(fast, x, gates)
        assert got == conv_flops_expected(net, x, gates, readers), f"p={p}"
    if batching == "union":  # one pass over the filters open in any sample
        x2 = torch.randn(2, 3, size, size, dtype=torch.float64)
        gates = random_gates(2, net.num_gates, p=0.3, seed=4)
        assert conv_flops_run(fast, x2, gates) == conv_flops_expected(net, x2, gates, readers)


def test_masked_batching_computes_every_filter_and_matches_dense(gated_nets):
    net, size = gated_nets("resnet50", "inner", 8)
    fast = gatekit.skip_compute(net, batching="masked")
    readers = _resnet50_inner_readers(net)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    gates = random_gates(2, net.num_gates, p=0.3, seed=4)
    assert not torch.equal(gates[0], gates[1])  # a mixed batch: the mode runs
    every = conv_flops_expected(net, x, torch.ones_like(gates), readers)
    assert conv_flops_run(fast, x, gates) == every
    assert_close(fast(x, gates=gates), net(x, gates=gates))


def test_skip_computes_only_open_channels_residual_sites(gated_nets):
    # resnet20 "all": conv1 sliced into conv2; conv2 (before the addition) computes only
    # its open filters and scatters them.
    net, size = gated_nets("resnet20", "all", 4)
    fast = gatekit.skip_compute(net)
    readers = {
        s.name.replace("conv1", "conv2"): s.name for s in net.sites if s.name.endswith("conv1")
    }
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    gates = random_gates(1, net.num_gates, p=0.4, seed=5)
    expected = conv_flops_expected(net, x, gates, readers)
    dense = conv_flops_expected(net, x, torch.ones_like(gates), readers)
    assert conv_flops_run(fast, x, gates) == expected
    assert sum(expected.values()) < 0.75 * sum(dense.values())


def test_both_transforms_return_a_gaternet_saying_what_each_site_became():
    net = tiny_gated_net()
    fast, fused = gatekit.skip_compute(net), gatekit.fuse_gated_convs(net, op="reference")
    names = [s.name for s in net.sites]
    for result in (fast, fused):
        assert isinstance(result, gatekit.GaterNet) and result.sites == net.sites
        assert [r.site for r in result.routes] == names
        assert all(isinstance(r, gatekit.inference.SiteRoute) for r in result.routes)
    modes = {r.site: (r.mode, bool(r.reason)) for r in fused.routes}
    # depthwise and GroupNorm sites cannot be folded; the others are one fused call each.
    assert modes == {
        "dw": ("dense", True), "conv_gn": ("dense", True),
        "conv_pool": ("fused", False), "last": ("fused", False),
    }  # fmt: skip
    # The ReLU after the gate (GateSite.activation) is fused into the op, not left behind.
    assert [s.activation for s in net.sites] == ["relu"] * 4
    assert fused.backbone.get_submodule("fused_conv_pool").activation == "relu"
    relus = [n for n in fused.backbone.graph.nodes if n.target is torch.relu]
    assert len(relus) == 3  # after the stem and the two unfused sites
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    gates = random_gates(3, net.num_gates, seed=11)
    assert_close(fused(x, gates=gates), net(x, gates=gates))
    assert_close(fast(x), net(x))
    assert "dense=2" in repr(fast) and "fused=2, dense=2" in repr(fused)


# ---- batching="gather" and "auto" ----------------------------------------------------


def differing_gates(net: gatekit.GaterNet, seed: int) -> torch.Tensor:
    """Four samples whose patterns differ: random at 50% and at 20%; every gate closed;
    every gate open at the first three sites (so those sites' largest open count is all
    channels) and random elsewhere."""
    gates = random_gates(4, net.num_gates, p=0.5, seed=seed)
    gates[1] = random_gates(1, net.num_gates, p=0.2, seed=seed + 100)[0]
    gates[2] = 0.0
    for site in net.sites[:3]:
        gates[3, site.offset : site.stop] = 1.0
    return gates


GATHER_CASES = [
    ("resnet20", "all", 1),
    ("resnet20", "inner", 1),
    ("resnet20", "residual", 2),
    ("resnet50", "inner", 8),
]


@pytest.mark.parametrize(("name", "policy", "group_size"), GATHER_CASES)
def test_gather_matches_dense_in_one_pass(gated_nets, name, policy, group_size):
    net, size = gated_nets(name, policy, group_size)
    fast = gatekit.skip_compute(net, batching="gather")
    assert {r.batching for r in fast.routes} == {"gather"}  # every site is live here
    assert fast.backbone.batching == "gather" and "batching='gather'" in repr(fast)
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    batch_sizes = []
    hook = lambda m, args, kw: batch_sizes.append(args[0].shape[0])  # noqa: E731
    handle = fast.backbone.graph_module.register_forward_pre_hook(hook, with_kwargs=True)
    for seed in (20, 21):
        gates = differing_gates(net, seed)
        assert_close(fast(x, gates=gates), net(x, gates=gates))
    handle.remove()
    assert batch_sizes == [4, 4]
    # A site where no sample opens a gate, and one where every sample opens all of them.
    gates = differing_gates(net, 22)
    gates[:, net.sites[0].offset : net.sites[0].stop] = 0.0
    gates[:, net.sites[1].offset : net.sites[1].stop] = 1.0
    assert_close(fast(x, gates=gates), net(x, gates=gates))


def test_gather_weights_come_from_one_layout_per_conv(gated_nets):
    net, size = gated_nets("resnet20", "all", 1)
    fast = gatekit.skip_compute(net, batching="gather")
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    gates = differing_gates(net, 23)[:3]
    fast(x, gates=gates)
    skips = [m for m in fast.modules() if isinstance(m, gatekit.inference.conv.SkipConv)]
    layouts = {id(m): m._padded for m in skips}
    assert sum(lay is not None for lay in layouts.values()) == len(net.sites)  # site producers
    fast(x, gates=differing_gates(net, 24)[:3])
    assert all(m._padded is layouts[id(m)] for m in skips)  # kept
    for lay in layouts.values():
        if lay is not None:
            rows = lay[1]
            assert torch.equal(rows[-1], torch.zeros_like(rows[-1]))  # the padding row
    again = fast.double()  # a new weight tensor: the layout is made again from it
    assert_close(again(x, gates=gates), net(x, gates=gates))


def _baddbmm_inplace_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    # FlopCounterMode counts baddbmm but not baddbmm_ (the gathered residual accumulation).
    return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]


def test_gather_computes_only_open_channels_padded_to_the_batch_max(gated_nets):
    # Per conv: 2 * N * (largest open output count) * (largest open input count) * taps *
    # pixels; FLOPs from aten (grouped convolution, bmm/baddbmm).
    net, size = gated_nets("resnet50", "inner", 8)
    fast = gatekit.skip_compute(net, batching="gather")
    readers = _resnet50_inner_readers(net)
    mapping = {torch.ops.aten.baddbmm_: _baddbmm_inplace_flops}
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    for seed, p in [(30, 0.5), (31, 0.2)]:
        gates = random_gates(3, net.num_gates, p=p, seed=seed)
        gates[2, net.sites[4].offset : net.sites[4].stop] = 0.0  # one sample closes a site
        got = conv_flops_run(fast, x, gates, mapping)
        expected = conv_flops_expected(net, x, gates, readers, reduce="max")
        assert got == expected, f"p={p}"
        dense = conv_flops_expected(net, x, torch.ones_like(gates), readers)
        assert sum(got.values()) < (0.75 if p == 0.5 else 0.5) * sum(dense.values())


CANDIDATES = ("pattern", "union", "gather", "masked")


@pytest.fixture
def rule():
    """Sets a process-wide batching rule for one test, then restores the default."""
    yield gatekit.inference.set_batching_rule
    gatekit.inference.set_batching_rule(None)


def _spy(monkeypatch) -> list[str]:
    """The names of the modes whose run_mixed runs, in order."""
    ran: list[str] = []
    for name in CANDIDATES:
        cls = gatekit.inference.batching.BATCHINGS[name]
        original = cls.run_mixed
        monkeypatch.setattr(cls, "run_mixed",
                            lambda self, *a, n=name, f=original: (ran.append(n), f(self, *a))[1])
    return ran


def _only(cheap: str) -> gatekit.inference.BatchingRule:
    """A fake cost table: ``cheap`` costs nothing, every other mode one second per call."""
    costs = {n: gatekit.inference.ModeCost(0.0 if n == cheap else 1.0, 0.0, 0.0, 0.0)
             for n in CANDIDATES}
    return gatekit.inference.BatchingRule(costs=costs)


@pytest.mark.parametrize("cheap", CANDIDATES)
def test_auto_runs_the_mode_the_rule_estimates_cheapest(gated_nets, monkeypatch, rule, cheap):
    net, size = gated_nets("resnet20", "all", 4)
    fast = gatekit.skip_compute(net, batching="auto")
    assert {r.batching for r in fast.routes} == {"auto"}
    rule(_only(cheap))
    ran = _spy(monkeypatch)
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    for seed in (40, 41):
        gates = differing_gates(net, seed)[:3]
        assert_close(fast(x, gates=gates), net(x, gates=gates))
        choice = fast.batching_choice(x, gates)
        assert choice.mode == cheap and cheap in choice.reason
        assert choice.estimates == {n: 0.0 if n == cheap else 1.0 for n in CANDIDATES}
    assert ran == [cheap, cheap]  # one run per call: nothing timed, no candidate tried
    fast(x[:1], gates=differing_gates(net, 42)[:1])  # one pattern: one pass, nothing to choose
    assert ran == [cheap, cheap]
    assert fast.batching_choice(x[:1], differing_gates(net, 42)[:1]).estimates == {}


def test_batching_choice_of_a_fixed_mode_and_of_one_pattern(gated_nets):
    net, size = gated_nets("resnet20", "all", 4)
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    gates = differing_gates(net, 46)[:3]
    for name in CANDIDATES:
        choice = gatekit.skip_compute(net, batching=name).batching_choice(x, gates)
        assert choice == (name, f"fixed by skip_compute(batching={name!r})", {})
    fast = gatekit.skip_compute(net, batching="auto")
    same = gates[:1].expand(3, -1)
    assert fast.batching_choice(x, same).reason == "one gate pattern in the batch: one pass"
    with pytest.raises(gatekit.GatekitError, match="binary"):
        fast.batching_choice(x, gates * 0.5)


def _hand_work(net, gates: torch.Tensor, size: int, reduce: str, weights: bool = False) -> float:
    """Multiply-adds of the convs that read or write a site's channels, counted by hand from
    the dense model's conv shapes (hooks), each site's channels reduced over the batch
    (``"union"``, ``"max"``, ``"all"``) and the batch counted N times; with ``weights``, the
    weight elements of those channels instead (no pixels, once for the batch)."""
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, a, y, name=name: shapes.__setitem__(name, y.shape))
             for name, m in net.backbone.named_modules() if isinstance(m, torch.nn.Conv2d)]
    net(torch.zeros(1, 3, size, size, dtype=torch.float64), gates=gates[:1])
    for h in hooks:
        h.remove()
    routes = gatekit.skip_compute(net).routes
    counts = {}
    for site, route in zip(net.sites, routes):
        g = gates[:, site.offset : site.stop] != 0
        per = {"union": g.any(0).sum(), "max": g.sum(1).max(), "all": torch.tensor(g.shape[1])}[reduce]
        counts[site.name] = float(per) * site.group_size
        if route.consumer is not None:
            counts[("in", route.consumer)] = counts[site.name]
    total = 0.0
    for name, m in net.backbone.named_modules():
        if not isinstance(m, torch.nn.Conv2d):
            continue
        k_out, k_in = counts.get(name), counts.get(("in", name))
        if k_out is None and k_in is None:
            continue
        pixels = 1 if weights else shapes[name][2] * shapes[name][3]
        k_out = m.out_channels if k_out is None else k_out  # 0: a site every sample closes
        k_in = m.in_channels if k_in is None else k_in
        total += k_out * k_in * m.kernel_size[0] * m.kernel_size[1] * pixels
    return total if weights else gates.shape[0] * total


def _one_term_estimates(gated_nets, rule, term: str, gates_of) -> tuple:
    """The auto rule's estimates for ResNet-20 (every site, groups of 4) with one cost
    term at 1 and the others 0 (``term``: a :class:`gatekit.inference.ModeCost` field);
    ``gates_of(net)`` gives the batch's gates.  Returns (net, size, gates, estimates)."""
    net, size = gated_nets("resnet20", "all", 4)
    fast = gatekit.skip_compute(net, batching="auto")
    cost = gatekit.inference.ModeCost(**{f: float(f == term)
                                         for f in gatekit.inference.ModeCost._fields})
    rule(gatekit.inference.BatchingRule(costs={n: cost for n in CANDIDATES}))
    gates = gates_of(net)
    x = torch.randn(gates.shape[0], 3, size, size, dtype=torch.float64)
    return net, size, gates, fast.backbone.mode.choose(fast.backbone, x, gates).estimates


def test_the_rule_counts_each_mode_s_work_as_counted_by_hand(gated_nets, rule):
    net, size, gates, est = _one_term_estimates(gated_nets, rule, "mac_s",
                                                lambda net: differing_gates(net, 43)[:3])
    threads = torch.get_num_threads() ** gatekit.inference._rule.THREAD_SCALING
    for mode, reduce in [("union", "union"), ("gather", "max"), ("masked", "all")]:
        assert est[mode] * threads == pytest.approx(_hand_work(net, gates, size, reduce)), mode
    # pattern: each sample on its own channels (all three patterns differ here)
    per_sample = sum(_hand_work(net, gates[i : i + 1], size, "max")
                     for i in range(3))
    assert est["pattern"] * threads == pytest.approx(per_sample)


def test_the_rule_counts_each_mode_s_convolution_blocks(gated_nets, rule):
    # conv_s alone: each mode's estimate is its blocks per conv times the conv calls of a
    # pass, counted by hand: one block for union and masked, one per distinct pattern,
    # one group per sample for gather (its grouped convolutions).
    def five(net):  # 5 samples, 4 distinct patterns
        four = differing_gates(net, 43)
        return torch.cat([four, four[3:]])

    net, _, _, est = _one_term_estimates(gated_nets, rule, "conv_s", five)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.backbone.modules())
    blocks = {"union": 1, "masked": 1, "pattern": 4, "gather": 5}
    assert {m: est[m] for m in blocks} == pytest.approx({m: b * convs for m, b in blocks.items()})


def test_auto_chooses_per_budget_at_one_batch_shape(rule):
    # A budget-input model served at two budgets with the same batch shape: the choice
    # follows the gates (the union of open filters), not the shape.
    torch.manual_seed(0)
    net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner", budget_input=True)
    with torch.no_grad():
        net.head.budget_scale.fill_(6.0)
        net.head.fc2.weight.mul_(20.0)
    net.eval()
    fast = gatekit.skip_compute(net, batching="auto")
    x = torch.randn(4, 3, 32, 32)
    mode = fast.backbone.mode
    unions = {}
    for b in (0.2, 1.0):
        gates = fast.estimator(fast.gate_logits(x, b))
        counts = gatekit.inference.batching.GateCounts.of(fast.backbone, gates)
        unions[b] = float(counts.union.sum())
    assert unions[0.2] < unions[1.0]
    # union costs its multiply-adds; masked a fixed amount, between union's at the two budgets
    costs = {n: gatekit.inference.ModeCost(1e9, 0.0, 0.0, 0.0) for n in CANDIDATES}
    costs["union"] = gatekit.inference.ModeCost(0.0, 0.0, 0.0, 1.0)
    rule(gatekit.inference.BatchingRule(costs=costs))
    union = {b: mode.choose(fast.backbone, x, fast.estimator(fast.gate_logits(x, b))).estimates["union"]
             for b in (0.2, 1.0)}
    assert union[0.2] < union[1.0]
    costs["masked"] = gatekit.inference.ModeCost((union[0.2] + union[1.0]) / 2, 0.0, 0.0, 0.0)
    rule(gatekit.inference.BatchingRule(costs=costs))
    with torch.no_grad():
        for b, expected in ((0.2, "union"), (1.0, "masked"), (0.2, "union")):
            gates = fast.estimator(fast.gate_logits(x, b))
            assert mode.choose(fast.backbone, x, gates).mode == expected, b
            assert fast.batching_choice(x, budget=b).mode == expected, b
            torch.testing.assert_close(fast(x, budget=b), net(x, budget=b), rtol=1e-4, atol=1e-4)


def test_a_copied_or_pickled_auto_model_carries_no_timings_and_chooses_alike(gated_nets):
    net, size = gated_nets("resnet20", "all", 4)
    fast = gatekit.skip_compute(net, batching="auto")
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    gates = [differing_gates(net, s)[:3] for s in (44, 45)]
    fast(x, gates=gates[0])
    for other in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        mode = other.backbone.mode
        assert vars(mode) == {"_geometry": {}}  # nothing measured, nothing of this machine
        for g in gates:
            assert mode.choose(other.backbone, x, g) == fast.backbone.mode.choose(fast.backbone, x, g)


def test_tune_batching_measures_fits_and_applies_process_wide(gated_nets, monkeypatch, rule):
    net, size = gated_nets("resnet20", "all", 4)
    fast = gatekit.skip_compute(net, batching="auto")
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    gates = differing_gates(net, 46)[:3]
    clock = [0.0]
    monkeypatch.setattr(gatekit.inference._rule.time, "perf_counter", lambda: clock[0])
    # pattern slow twice and fast once (noise only adds time): its minimum, 0.5, is kept
    durations = {"pattern": iter([9.0, 3.0, 0.5, 3.0]), "union": iter([1.0] * 4),
                 "gather": iter([2.0] * 4), "masked": iter([1.5] * 4)}
    for name in CANDIDATES:
        cls = gatekit.inference.batching.BATCHINGS[name]
        original = cls.run_mixed

        def timed(self, *args, n=name, f=original):
            clock[0] += next(durations[n])
            return f(self, *args)

        monkeypatch.setattr(cls, "run_mixed", timed)
    before = copy.deepcopy(vars(fast.backbone.mode))
    tuned = gatekit.tune_batching(fast, x, gates)
    assert tuned.measured == {"pattern": 0.5, "union": 1.0, "gather": 2.0, "masked": 1.5}
    assert gatekit.inference._rule.current_rule() is tuned  # process-wide
    choice = fast.backbone.mode.choose(fast.backbone, x, gates)
    assert choice.mode == "pattern"
    assert choice.estimates == pytest.approx(tuned.measured)  # fitted to what it measured
    assert vars(fast.backbone.mode).keys() == before.keys()  # nothing timed kept in the model
    fixed = gatekit.tune_batching(fast, fix="gather")
    assert fixed.fixed == "gather" and fixed.measured == {}
    assert fast.backbone.mode.choose(fast.backbone, x, gates).mode == "gather"


@pytest.mark.parametrize("kwargs, match", [
    ({"fix": "auto"}, "fix to be one of"),
    ({"repeats": 0}, "repeats"),
    ({}, "an example batch"),
    ({"same": True}, "share one gate pattern"),
])
def test_bad_tune_batching_arguments(gated_nets, kwargs, match):
    net, size = gated_nets("resnet20", "all", 4)
    fast = gatekit.skip_compute(net, batching="auto")
    if kwargs.pop("same", False):
        g = differing_gates(net, 47)[:1].expand(2, -1)
        kwargs = {"example": torch.randn(2, 3, size, size, dtype=torch.float64), "gates": g}
    elif "repeats" in kwargs:
        kwargs["example"] = torch.randn(2, 3, size, size, dtype=torch.float64)
    with pytest.raises(gatekit.GatekitError, match=match):
        gatekit.tune_batching(fast, **kwargs)
    with pytest.raises(gatekit.GatekitError, match="skip_compute"):
        gatekit.tune_batching(net, fix="union")


# --------------------------------------------------------------------------------------
# The rule's blind spots found by the mutation pass over _rule.py (issue 35): each test
# below failed with one change of the rule's code that the tests above let through.


def test_the_rule_counts_the_weights_each_mode_copies(gated_nets, rule):
    # copy_s alone: union cuts the union's weights once, masked copies none, pattern once
    # per pattern (all three differ here), gather once per sample, padded to the batch's
    # largest open count per site; counted by hand.
    net, size, gates, est = _one_term_estimates(gated_nets, rule, "copy_s",
                                                lambda net: differing_gates(net, 43)[:3])
    per_sample = sum(_hand_work(net, gates[i : i + 1], size, "max", weights=True) for i in range(3))
    assert est == pytest.approx({"union": _hand_work(net, gates, size, "union", weights=True),
                                 "masked": 0.0, "pattern": per_sample,
                                 "gather": 3 * _hand_work(net, gates, size, "max", weights=True)})


def _fake_clock(monkeypatch, seconds: dict[str, float]) -> list[str]:
    """Each mode's run takes ``seconds[mode]`` on a fake clock; returns the runs, in order."""
    clock, ran = [0.0], []
    monkeypatch.setattr(gatekit.inference._rule.time, "perf_counter", lambda: clock[0])
    for name in CANDIDATES:
        cls = gatekit.inference.batching.BATCHINGS[name]
        original = cls.run_mixed

        def timed(self, *args, n=name, f=original):
            ran.append(n)
            clock[0] += seconds[n]
            return f(self, *args)

        monkeypatch.setattr(cls, "run_mixed", timed)
    return ran


def test_tune_batching_warms_each_mode_up_once_then_times_it_repeats_times(
        gated_nets, monkeypatch, rule):
    net, size = gated_nets("resnet20", "all", 4)
    fast = gatekit.skip_compute(net, batching="auto")
    ran = _fake_clock(monkeypatch, dict.fromkeys(CANDIDATES, 1.0))
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    gatekit.tune_batching(fast, x, differing_gates(net, 46)[:3], repeats=2, apply=False)
    # each mode three times in a row (a warm-up, then two timed), every mode once
    assert [ran[i : i + 3] for i in range(0, len(ran), 3)] == [[n] * 3 for n in ran[::3]]
    assert sorted(ran[::3]) == sorted(CANDIDATES)
    with pytest.raises(gatekit.GatekitError, match="repeats"):
        gatekit.tune_batching(fast, x, differing_gates(net, 46)[:3], repeats=True)


def test_tune_batching_with_apply_false_leaves_the_process_rule(gated_nets, monkeypatch, rule):
    net, size = gated_nets("resnet20", "all", 4)
    fast = gatekit.skip_compute(net, batching="auto")
    _fake_clock(monkeypatch, dict.fromkeys(CANDIDATES, 1.0))
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    default = gatekit.inference._rule.current_rule()
    assert gatekit.tune_batching(fast, x, differing_gates(net, 46)[:3], apply=False).measured
    assert gatekit.tune_batching(fast, fix="gather", apply=False).fixed == "gather"
    assert gatekit.inference._rule.current_rule() is default


def test_tuning_after_a_fixed_mode_chooses_by_estimate_again(gated_nets, monkeypatch, rule):
    net, size = gated_nets("resnet20", "all", 4)
    fast = gatekit.skip_compute(net, batching="auto")
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    gates = differing_gates(net, 46)[:3]
    gatekit.tune_batching(fast, fix="gather")
    _fake_clock(monkeypatch, {"pattern": 4.0, "union": 1.0, "gather": 3.0, "masked": 2.0})
    tuned = gatekit.tune_batching(fast, x, gates)
    assert tuned.fixed is None
    assert fast.backbone.mode.choose(fast.backbone, x, gates).mode == "union"


def test_tuning_scales_the_rule_in_force_and_keeps_a_mode_estimated_at_zero(
        gated_nets, monkeypatch, rule):
    # From a rule set by hand (multiply-adds only; masked free), each mode's constants are
    # scaled by measured / estimated: what the rule did not count stays uncounted, and a
    # mode it estimates at zero keeps its constants.
    net, size = gated_nets("resnet20", "all", 4)
    fast = gatekit.skip_compute(net, batching="auto")
    mine = {n: gatekit.inference.ModeCost(0.0, 0.0, 0.0, 1e-9) for n in CANDIDATES}
    mine["masked"] = gatekit.inference.ModeCost(0.0, 0.0, 0.0, 0.0)
    rule(gatekit.inference.BatchingRule(costs=mine))
    _fake_clock(monkeypatch, dict.fromkeys(CANDIDATES, 1.0))
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    tuned = gatekit.tune_batching(fast, x, differing_gates(net, 46)[:3])
    assert tuned.costs["masked"] == mine["masked"]
    for name in ("pattern", "union", "gather"):
        call_s, conv_s, copy_s, mac_s = tuned.costs[name]
        assert (call_s, conv_s, copy_s) == (0.0, 0.0, 0.0) and mac_s > 0, name


def test_set_batching_rule_takes_a_rule_or_none():
    for wrong in ("union", {"union": gatekit.inference.ModeCost(0.0, 0.0, 0.0, 0.0)}):
        with pytest.raises(gatekit.GatekitError, match="a BatchingRule or None"):
            gatekit.inference.set_batching_rule(wrong)


def test_tune_batching_needs_both_parts_of_a_skip_compute_backbone():
    from types import SimpleNamespace

    for backbone in (SimpleNamespace(run=None), SimpleNamespace(open_channels=None)):
        with pytest.raises(gatekit.GatekitError, match="skip_compute"):
            gatekit.tune_batching(SimpleNamespace(backbone=backbone), fix="union")


class _GroupedNet(nn.Module):
    """Gated at every conv+BN (``"all"``), the middle conv grouped (skip_compute slices no
    grouped conv: its site stays dense); ``tail=False`` ends at the grouped conv, and no
    site is live."""

    def __init__(self, tail: bool = True) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.tail = tail
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        if self.tail:
            x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def _grouped_net(tail: bool = True) -> gatekit.GaterNet:
    torch.manual_seed(0)
    net = gatekit.gate_model(_GroupedNet(tail), resnet20_gater(), sites="all")
    randomise_batchnorm(net)
    return net.double().eval()


@pytest.mark.parametrize("batching", ["auto", *CANDIDATES])
def test_a_model_with_nothing_to_skip_runs_in_every_mode(batching):
    # the grouped conv's site feeds only the classifier: no live site; "auto" counted the
    # gates of no column and failed in torch.unique before it was handled
    net = _grouped_net(tail=False)
    fast = gatekit.skip_compute(net, batching=batching)
    assert not any(fast.backbone.live)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    gates = random_gates(3, net.num_gates, p=0.5, seed=7)  # three different patterns
    assert len({tuple(g.tolist()) for g in gates}) == 3
    torch.testing.assert_close(fast.backbone(x, gates=gates), net.backbone(x, gates=gates))
    torch.testing.assert_close(fast(x), net(x))
