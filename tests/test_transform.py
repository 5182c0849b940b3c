"""gate_model and GaterNet against the hand-written reference GaterNet and plain-PyTorch
oracles; copies, serialisation, compilation, modes and every bad input."""

from __future__ import annotations

import copy
import io
import pickle
import re

import pytest
import torch
import torchvision
from hook_oracle import hooked_forward, perturb_norms
from torch import nn

import gatekit
from gatekit import GatekitError, gate_model
from gatekit.models import resnet20, resnet20_gater, resnet56
from gatekit.models._reference_gaternet import ReferenceGaterNet, gatekit_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _pair(depth: int = 20) -> tuple[ReferenceGaterNet, gatekit.GaterNet]:
    torch.manual_seed(0)
    # Random norm statistics and affine maps: with identity norms a gate before bn2 would
    # give the same eval output as one after it.
    reference = perturb_norms(ReferenceGaterNet(depth=depth), seed=depth)
    backbone = resnet20() if depth == 20 else resnet56()
    net = gate_model(backbone, resnet20_gater(), sites="residual", bottleneck=8)
    net.load_state_dict(gatekit_state_dict(reference), strict=True)
    return reference, net


def _grads(module: nn.Module, rename=lambda k: k) -> dict[str, torch.Tensor | None]:
    return {rename(k): p.grad for k, p in module.named_parameters()}


def _rename(key: str) -> str:
    for old, new in (
        ("gater.resnet.newfc.", "head.fc1."),
        ("gater.resnet.", "gater."),
        ("gater.fnn.", "head.fc2."),
    ):
        if key.startswith(old):
            return new + key.removeprefix(old)
    return key


@pytest.mark.parametrize("depth", [20, 56])
def test_paper_fidelity_train(depth: int) -> None:
    reference, net = _pair(depth)
    assert net.num_gates == reference.backbone.gate_size
    x = torch.randn(8, 3, 32, 32)
    torch.manual_seed(1)  # the same noise draws: randn_like for SemHash, then one coin per sample
    expected = reference(x)
    torch.manual_seed(1)
    got = net(x)
    assert torch.equal(got, expected)
    assert torch.equal(net.last_gates, reference.last_gates)
    soft = (net.last_gates > 0) & (net.last_gates < 1)
    assert soft.any() and (~soft).any()  # both soft and hard samples were drawn
    got.square().sum().backward()
    expected.square().sum().backward()
    want = _grads(reference, _rename)
    have = _grads(net)
    assert want.keys() == have.keys()
    for k in have:
        assert torch.equal(have[k], want[k]), k


def test_paper_fidelity_eval() -> None:
    reference, net = _pair()
    reference.eval()
    net.eval()
    x = torch.randn(8, 3, 32, 32)
    expected, got = reference(x), net(x)
    assert torch.equal(got, expected)
    assert torch.equal(net.last_gates, reference.last_gates)
    assert set(net.last_gates.unique().tolist()) == {0.0, 1.0}
    got.square().sum().backward()
    expected.square().sum().backward()
    want = _grads(reference, _rename)
    have = _grads(net)
    # In eval mode both pass the saturating sigmoid's gradient through the step to the gater.
    assert want.keys() == have.keys()
    for k in have:
        assert torch.equal(have[k], want[k]), k


@pytest.mark.parametrize("group_size", [1, 4])
@pytest.mark.parametrize("policy", ["residual", "inner", "all"])
def test_hard_gates_equal_hook_oracle(policy: str, group_size: int) -> None:
    torch.manual_seed(0)
    backbone = perturb_norms(resnet20().eval())
    net = gate_model(backbone, resnet20_gater(), sites=policy, group_size=group_size).eval()
    x = torch.randn(3, 3, 32, 32)
    gates = (torch.rand(3, net.num_gates) < 0.5).float()
    with torch.no_grad():
        assert torch.equal(net(x, gates=gates), hooked_forward(backbone, net.sites, gates, x))
        assert torch.equal(net(x, gates=torch.ones(3, net.num_gates)), backbone(x))


def test_soft_gates_scale_channels() -> None:
    # A gate of 0.5 halves the channel after bn2: compare with a hook that multiplies.
    torch.manual_seed(0)
    backbone = perturb_norms(resnet20().eval())
    net = gate_model(backbone, resnet20_gater()).eval()
    x = torch.randn(2, 3, 32, 32)
    gates = torch.rand(2, net.num_gates)
    modules = dict(backbone.named_modules())
    handles = [
        modules[s.after].register_forward_hook(
            lambda m, i, o, g=gates[:, s.offset : s.stop]: o * g[:, :, None, None]
        )
        for s in net.sites
    ]
    with torch.no_grad():
        expected = backbone(x)
        for h in handles:
            h.remove()
        assert torch.equal(net(x, gates=gates), expected)


def test_ones_equal_backbone_in_train_mode() -> None:
    torch.manual_seed(0)
    backbone = resnet20()
    net = gate_model(backbone, resnet20_gater())
    x = torch.randn(4, 3, 32, 32)
    assert net.training
    assert torch.equal(net(x, gates=torch.ones(4, net.num_gates)), copy.deepcopy(backbone)(x))


class _Tiny(nn.Module):
    """A residual net of Conv{1,2,3}d with a depthwise and a grouped conv."""

    def __init__(self, conv: type, norm: type):
        super().__init__()
        self.stem = conv(3, 8, 3, padding=1)
        self.dw = conv(8, 8, 3, padding=1, groups=8)
        self.bn1 = norm(8)
        self.grouped = conv(8, 8, 1, groups=2)
        self.bn2 = norm(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.bn2(self.grouped(torch.relu(self.bn1(self.dw(x))))))
        return self.head(x.flatten(2).mean(-1))


@pytest.mark.parametrize(
    ("conv", "norm", "shape"),
    [
        (nn.Conv1d, nn.BatchNorm1d, (2, 3, 9)),
        (nn.Conv2d, nn.BatchNorm2d, (2, 3, 6, 6)),
        (nn.Conv3d, nn.BatchNorm3d, (2, 3, 4, 4, 4)),
    ],
)
def test_conv_dims_depthwise_grouped(conv, norm, shape) -> None:
    torch.manual_seed(0)
    backbone = perturb_norms(_Tiny(conv, norm).eval())
    gater = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape[1:]).prod()), 6))
    net = gate_model(backbone, gater, sites="all", gater_features=6).eval()
    assert [s.name for s in net.sites] == ["dw", "grouped"]
    x = torch.randn(shape)
    gates = (torch.rand(2, net.num_gates) < 0.5).float()
    with torch.no_grad():
        assert torch.equal(net(x, gates=gates), hooked_forward(backbone, net.sites, gates, x))


def test_channels_last() -> None:
    torch.manual_seed(0)
    backbone = perturb_norms(resnet20().eval()).to(memory_format=torch.channels_last)
    net = gate_model(backbone, resnet20_gater()).eval()
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    gates = (torch.rand(2, net.num_gates) < 0.5).float()
    seen = []
    net.backbone.stage1.block1.shortcut.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        got = net(x, gates=gates)
        expected = hooked_forward(backbone, net.sites, gates, x)
    assert torch.allclose(
        got, expected, atol=1e-5, rtol=1e-5
    )  # conv algorithms may differ by layout
    assert seen == [True]  # gating kept the layout


def test_autocast_keeps_activation_dtype() -> None:
    torch.manual_seed(0)
    backbone = resnet20().eval()
    net = gate_model(backbone, resnet20_gater()).eval()
    x = torch.randn(2, 3, 32, 32)
    dtypes = []
    net.backbone.stage1.block1.relu.register_forward_pre_hook(
        lambda m, a: dtypes.append(a[0].dtype)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out = net(x)
    assert out.dtype == torch.bfloat16 and set(dtypes) == {torch.bfloat16}


def test_inputs_not_modified_and_modes_kept() -> None:
    torch.manual_seed(0)
    backbone, gater = resnet20().eval(), resnet20_gater()
    gater.stage1.train(False)
    before = copy.deepcopy((backbone.state_dict(), gater.state_dict()))
    gater_flags = [m.training for m in gater.modules()]
    estimator = gatekit.ImprovedSemHash(noise_std=0.5)
    net = gate_model(backbone, gater, estimator=estimator)
    assert not net.training and not net.head.training and not net.estimator.training
    assert [m.training for m in net.gater.modules()] == gater_flags
    assert not backbone.training and [m.training for m in gater.modules()] == gater_flags
    assert net.estimator is not estimator and net.estimator.noise_std == 0.5
    for sd, want in zip((backbone.state_dict(), gater.state_dict()), before):
        assert all(torch.equal(sd[k], v) for k, v in want.items())
    ours = {id(p) for p in net.parameters()}
    assert not ours & {id(p) for p in [*backbone.parameters(), *gater.parameters()]}
    net.train()
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert net.estimator.training and net.backbone.training


def test_train_eval_switch_estimator() -> None:
    _, net = _pair()
    x = torch.randn(16, 3, 32, 32)
    torch.manual_seed(0)
    net.train()
    net(x)
    assert ((net.last_gates > 0) & (net.last_gates < 1)).any()  # SemHash's soft samples
    net.eval()
    net(x)
    assert torch.equal(net.last_gates, (net.last_logits > 0).float())
    assert not net.estimator.training
    net.estimator = gatekit.get_gate("st_sigmoid")  # any estimator plugs in
    net(x)
    assert torch.equal(net.last_gates, (net.last_logits > 0).float())


def test_head_options() -> None:
    torch.manual_seed(0)
    net = gate_model(resnet20(), resnet20_gater(), bottleneck=4, head_batchnorm=True, init_bias=3.0)
    assert (net.head.fc1.in_features, net.head.fc1.out_features, net.head.fc2.out_features) == (
        64,
        4,
        336,
    )
    assert isinstance(net.head.bn, nn.BatchNorm1d)
    assert torch.all(net.head.fc1.bias == 0) and torch.all(net.head.fc2.bias == 3.0)
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    net(x)
    # A positive initial bias starts with gates open: the open fraction was 0.79-1.0 over
    # seeds 0-19, so 0.5 has a margin of 0.29.  Exactly: the logits are those of the same
    # head with bias 0, shifted by 3.
    assert net.last_gates.mean() > 0.5
    zero = copy.deepcopy(net)
    with torch.no_grad():
        zero.head.fc2.bias.zero_()
    torch.testing.assert_close(net.gate_logits(x), zero.gate_logits(x) + 3.0)
    plain = gate_model(resnet20(), resnet20_gater())
    assert isinstance(plain.head.bn, nn.Identity) and torch.all(plain.head.fc2.bias == 0)
    assert "num_gates=336" in repr(plain)


def _trained(net: gatekit.GaterNet) -> gatekit.GaterNet:
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.randn(4, 3, 32, 32)).square().mean().backward()
    opt.step()
    return net.eval()


def test_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    net = _trained(gate_model(resnet20(), resnet20_gater(), estimator="gumbel"))
    net.estimator.tau = 0.3
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    fresh = gate_model(resnet20(), resnet20_gater(), estimator="gumbel").eval()
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fresh(x), net(x)) and fresh.estimator.tau == pytest.approx(0.3)


def test_deepcopy_and_pickle() -> None:
    torch.manual_seed(0)
    net = _trained(gate_model(resnet20(), resnet20_gater()))
    net.train()
    net(torch.randn(2, 3, 32, 32))  # last_gates now carries an autograd graph
    assert net.last_gates.grad_fn is not None
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert clone.last_gates is None and clone.last_logits is None
        assert clone.sites == net.sites and clone.num_gates == net.num_gates
        assert torch.equal(clone(x), net(x))
        assert not clone.training


def test_torch_compile_matches_eager() -> None:
    # A small backbone keeps compilation fast; resnet20 with inductor is in the slow set.
    torch.manual_seed(0)
    gater = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 6))
    net = gate_model(_Tiny(nn.Conv2d, nn.BatchNorm2d), gater, sites="all", gater_features=6).eval()
    x = torch.randn(2, 3, 6, 6)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        expected = net(x)
        got = compiled(x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(net.last_gates, (net.last_logits > 0).float())  # set by the compiled call
    net.train()
    torch.manual_seed(1)
    compiled(x).sum().backward()
    assert net.last_gates.shape == (2, net.num_gates) and net.gater[1].weight.grad is not None


@pytest.mark.slow
def test_torch_compile_inductor() -> None:
    torch.manual_seed(0)
    net = gate_model(resnet20(), resnet20_gater()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.compile(net)(x), net(x), atol=1e-4, rtol=1e-4)
    # Training mode draws SemHash noise: inductor's own RNG differs from eager unless told.
    net.train()
    with torch._inductor.config.patch(fallback_random=True):
        torch.manual_seed(1)
        expected = net(x)
        torch.manual_seed(1)
        got = torch.compile(net)(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net() -> gatekit.GaterNet:
    torch.manual_seed(0)
    return gate_model(resnet20(), resnet20_gater()).eval()


@pytest.mark.parametrize(
    ("gates", "match"),
    [
        (
            torch.ones(2, 335),
            r"shape \(N, 336\) \(stage1.block1.conv2: 16, .*9 sites\)\), got \(2, 335\)",
        ),
        (torch.ones(2, 336, 1), r"got \(2, 336, 1\)"),
        (torch.ones(3, 336), "3 rows for a batch of 2"),
        (torch.ones(2, 336, dtype=torch.long), "floating point.*torch.int64"),
        (torch.ones(2, 336, device="meta"), "gates are on meta but the input is on cpu"),
        ([[1.0] * 336] * 2, "must be a tensor"),
    ],
)
def test_bad_gates(net, gates, match) -> None:
    with pytest.raises(GatekitError, match=match):
        net(torch.randn(2, 3, 32, 32), gates=gates)


# ResNet-20's residual sites, written out by hand: (name, gates) in the order they run.
_RESNET20_RESIDUAL = [(f"stage{s}.block{b}.conv2", 16 * 2 ** (s - 1)) for s in (1, 2, 3) for b in (1, 2, 3)]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(("sample", "column"), [(0, 0), (1, 20), (1, 47), (0, 48), (1, 335)])
def test_non_finite_gates(net, value, sample, column) -> None:
    gates = torch.ones(2, 336)
    gates[sample, column] = value
    gates[1, 335] = value  # a later bad value: the message names the first one
    starts = [sum(n for _, n in _RESNET20_RESIDUAL[:i]) for i in range(len(_RESNET20_RESIDUAL))]
    i = max(i for i, start in enumerate(starts) if start <= column)
    name, local = _RESNET20_RESIDUAL[i][0], column - starts[i]
    count = 1 if (sample, column) == (1, 335) else 2
    with pytest.raises(GatekitError, match=(
        rf"got {value} for sample {sample}, gate {column} \(site {re.escape(name)}, its gate "
        rf"{local}\) and {count} non-finite values in all")):
        net(torch.randn(2, 3, 32, 32), gates=gates)


def test_non_finite_gates_unchecked_when_compiled(net) -> None:
    # The documented rule for checks that need the values: skipped inside torch.compile
    # (fullgraph=True would fail on the data-dependent branch if it were not).
    compiled = torch.compile(net.eval(), backend="eager", fullgraph=True)
    gates = torch.ones(2, 336)
    gates[0, 5] = float("nan")
    out = compiled(torch.randn(2, 3, 32, 32), gates=gates)
    assert out.shape == (2, 10)


class _CountingGater(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.inner = resnet20_gater()

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((3, 32, 32), r"expects a 4-d input \(N, 3, H, W\) \(its backbone's conv reads it\), got "
                      r"shape \(3, 32, 32\); add the batch dimension with x.unsqueeze\(0\)"),
        ((2, 1, 32, 32), r"expects an input with 3 channels \(N, 3, H, W\) \(its backbone's conv has "
                         r"in_channels=3\), got 1 channels in shape \(2, 1, 32, 32\)$"),
        ((2, 32, 32, 3), r"got 32 channels in shape \(2, 32, 32, 3\); the channels look last"),
        ((2, 3, 1, 32, 32), r"expects a 4-d input .*got shape \(2, 3, 1, 32, 32\)$"),
    ],
)
def test_bad_input_shape(shape, match) -> None:
    net = gate_model(resnet20(), _CountingGater())
    net.gater.calls = 0
    with pytest.raises(GatekitError, match=match) as info:
        net(torch.randn(shape))
    # Also the RuntimeError torch's conv raised before, so old handlers still catch it.
    assert isinstance(info.value, RuntimeError)
    assert net.gater.calls == 0  # checked on entry, before the gater runs
    with pytest.raises(RuntimeError, match=match):  # the same with given gates
        net(torch.randn(shape), gates=torch.ones(shape[0], 336))


def test_input_shape_other_backbones() -> None:
    tv = gate_model(torchvision.models.resnet18(num_classes=10), resnet20_gater())
    with pytest.raises(GatekitError, match=r"its backbone's conv1 has in_channels=3\), got 4 channels"):
        tv(torch.randn(1, 4, 64, 64))
    one_d = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Conv1d(4, 4, 3))
    gater_1d = nn.Sequential(nn.Conv1d(2, 8, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten())
    net = gate_model(one_d, gater_1d, sites="all")
    assert net(torch.randn(2, 2, 16)).shape == (2, 4, 12)
    with pytest.raises(GatekitError, match=r"expects a 3-d input \(N, 2, L\) \(its backbone's 0 reads"):
        net(torch.randn(2, 2, 4, 4))
    # A backbone whose input goes through something else first says nothing of the shape:
    # no check, so nothing a model could accept is refused.
    scaled = nn.Sequential(nn.Upsample(scale_factor=2), resnet20())
    net = gate_model(scaled, resnet20_gater())
    assert net.input_spec is None
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


class _Features(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.conv(x))


def test_bad_gater_output() -> None:
    with pytest.raises(GatekitError, match=r"features \(N, D\), got \(2, 4, 30, 30\)"):
        gate_model(resnet20(), _Features(lambda y: y))
    wrong_width = gate_model(resnet20(), resnet20_gater(), gater_features=32)
    with pytest.raises(
        GatekitError,
        match=r"shape \(N, 32\), got \(2, 64\).*336 gate logits \(stage1.block1.conv2: 16",
    ):
        wrong_width(torch.randn(2, 3, 32, 32))
    doubled = gate_model(
        resnet20(), _Features(lambda y: y.mean((2, 3)).repeat(2, 1)), gater_features=4
    )
    with pytest.raises(GatekitError, match="4 feature rows for a batch of 2"):
        doubled(torch.randn(2, 3, 32, 32))
    with pytest.raises(GatekitError, match="gater_features=D"):
        gate_model(resnet20(), nn.Flatten())
    with pytest.raises(GatekitError, match="gater_features must be None or an int"):
        gate_model(resnet20(), resnet20_gater(), gater_features=0)


def test_non_finite_logits() -> None:
    torch.manual_seed(0)
    net = gate_model(resnet20(), resnet20_gater()).eval()
    with torch.no_grad():
        net.head.fc2.bias[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    x = torch.randn(2, 3, 32, 32)
    net(x)  # documented default: passed through; in eval NaN and -inf close, +inf opens
    assert net.last_gates[:, :3].tolist() == [[0.0, 1.0, 0.0]] * 2
    net.check_finite = True
    with pytest.raises(GatekitError, match="6 non-finite values"):
        net(x)
    checked = gate_model(resnet20(), resnet20_gater(), check_finite=True)
    assert checked.check_finite


def test_bad_arguments() -> None:
    with pytest.raises(GatekitError, match="unknown gate estimator 'semhashh'"):
        gate_model(resnet20(), resnet20_gater(), estimator="semhashh")
    with pytest.raises(GatekitError, match="unknown gate-site policy 'resid'"):
        gate_model(resnet20(), resnet20_gater(), sites="resid")
    with pytest.raises(GatekitError, match=r"'stage1\.block1\.conv9' is not a module"):
        gate_model(resnet20(), resnet20_gater(), sites=["stage1.block1.conv9"])
    with pytest.raises(GatekitError, match="no residual additions"):
        gate_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), resnet20_gater())
    with pytest.raises(GatekitError, match=r"backbone must be an nn\.Module"):
        gate_model(lambda x: x, resnet20_gater())
    with pytest.raises(GatekitError, match="bottleneck must be an int >= 1"):
        gate_model(resnet20(), resnet20_gater(), bottleneck=0)


def test_gate_logits(net) -> None:
    x = torch.randn(2, 3, 32, 32)
    logits = net.gate_logits(x)
    assert torch.equal(logits, net.head(net.gater(x)))
    net(x, gates=torch.ones(2, 336))
    assert net.last_logits is None and torch.equal(net.last_gates, torch.ones(2, 336))


def test_distributed_data_parallel(tmp_path) -> None:
    # One gloo process: DDP runs the module's forward, so last_gates lands on ddp.module
    # and a gate loss built from it backpropagates through DDP's reducer.
    import torch.distributed as dist

    torch.manual_seed(0)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        net = gate_model(resnet20(), resnet20_gater())
        ddp = nn.parallel.DistributedDataParallel(net)
        out = ddp(torch.randn(2, 3, 32, 32))
        loss = out.square().mean() + gatekit.gate_l1_loss(ddp.module.last_gates, 1e-2)
        loss.backward()
        assert net.head.fc1.weight.grad is not None and net.backbone.fc.weight.grad is not None
    finally:
        dist.destroy_process_group()
