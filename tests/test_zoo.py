"""gate_model over the torchvision and timm CNN zoos, against independent oracles.

For every model and every policy that applies to it:

- all gates 1: the gated model's output equals the original backbone's output exactly
  (eval mode; the fx graph runs the same modules and functions in the same order and
  ``x * 1.0 == x`` exactly, so bit equality is expected);
- random hard gates: the output equals the original backbone with forward hooks on each
  site's ``after`` module that zero the gated-off channels (an oracle written without fx);
- training mode: one backward pass reaches every parameter of gater, head and backbone.

A representative subset runs by default on tiny inputs; the full zoo is marked slow.
Which policies apply is written down here per family (an independent expectation), and a
policy that does not apply must raise GatekitError.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hook_oracle import hooked_forward, perturb_norms
from torch import nn

import gatekit

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

RESIDUAL = ("residual", "inner", "all")
PLAIN = ("all",)

# Families with residual additions whose branches hold several convs get every policy;
# ConvNeXt blocks hold one conv (so "inner" finds none); the others have no additions.
_TV_POLICIES = {
    "resnet": RESIDUAL, "resnext": RESIDUAL, "wide_resnet": RESIDUAL, "regnet": RESIDUAL,
    "mobilenet": RESIDUAL, "efficientnet": RESIDUAL, "mnasnet": RESIDUAL,
    "convnext": ("residual", "all"), "alexnet": PLAIN, "vgg": PLAIN, "densenet": PLAIN,
    "squeezenet": PLAIN, "shufflenet": PLAIN, "googlenet": PLAIN, "inception": PLAIN,
}  # fmt: skip
_TV_NOT_CNN = ("vit", "swin", "maxvit")

TV_DEFAULT = [
    "resnet18", "resnext50_32x4d", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
    "vgg11", "convnext_tiny", "shufflenet_v2_x0_5", "squeezenet1_1", "regnet_x_400mf",
    "mnasnet0_5", "googlenet",
]  # fmt: skip
TIMM_DEFAULT = {"resnet18d": RESIDUAL, "mobilenetv3_small_050": RESIDUAL, "convnext_atto": RESIDUAL}
# The default run checks resnet18 under every policy and the others under their first one.
DEFAULT_POLICIES = {n: _ps[:1] for n, _ps in TIMM_DEFAULT.items()}
TIMM_SLOW = {
    "resnet26d": RESIDUAL, "seresnext26d_32x4d": RESIDUAL, "efficientnet_b0": RESIDUAL,
    "tf_efficientnet_b0": RESIDUAL, "mixnet_s": RESIDUAL, "regnety_002": RESIDUAL,
    "rexnet_100": RESIDUAL, "ghostnet_050": RESIDUAL, "dla34": RESIDUAL, "cspresnet50": RESIDUAL,
    "hrnet_w18_small": RESIDUAL, "resnetv2_50": RESIDUAL, "dpn68": RESIDUAL, "xception41": RESIDUAL,
    "efficientnetv2_rw_t": RESIDUAL, "densenet121": PLAIN, "vgg11": PLAIN, "inception_v3": PLAIN,
    "lcnet_050": PLAIN,
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tv_policies(name: str) -> tuple[str, ...]:
    family = max((f for f in _TV_POLICIES if name.startswith(f)), key=len)
    return _TV_POLICIES[family]


def _tv_all() -> list[str]:
    names = torchvision.models.list_models(module=torchvision.models)
    return [n for n in names if not n.startswith(_TV_NOT_CNN)]


def _size(name: str) -> int:
    # Inception-v3 needs at least 75x75 inputs, AlexNet 63x63.
    return {"inception_v3": 80, "alexnet": 64}.get(name, 32)


@functools.lru_cache(maxsize=2)
def _build(source: str, name: str) -> nn.Module:
    torch.manual_seed(0)
    if source == "timm":
        return perturb_norms(timm.create_model(name, pretrained=False, num_classes=10).eval())
    kwargs: dict = {"weights": None, "num_classes": 10}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    return perturb_norms(torchvision.models.get_model(name, **kwargs).eval())


def _gater() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def _check(source: str, name: str, policy: str) -> None:
    backbone = _build(source, name)
    size = _size(name)
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size)
    net = gatekit.gate_model(backbone, _gater(), sites=policy).eval()
    assert net.num_gates == sum(s.num_gates for s in net.sites) > 0
    with torch.no_grad():
        expected = backbone(x)
        assert torch.equal(net(x, gates=torch.ones(2, net.num_gates)), expected)
        gates = (torch.rand(2, net.num_gates) < 0.5).float()
        got = net(x, gates=gates)
        oracle = hooked_forward(backbone, net.sites, gates, x)
    # Zeroing by masked_fill and by multiplying by 0 agree exactly (up to the sign of 0).
    assert torch.equal(got, oracle)
    assert not torch.equal(got, expected)  # the gates did something

    net.train()
    out = net(x)
    out.float().square().mean().backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert net.last_gates.shape == (2, net.num_gates)


def _cases(models: dict[str, tuple[str, ...]], source: str, marks=()) -> list:
    return [
        pytest.param(source, n, p, marks=marks, id=f"{source}-{n}-{p}")
        for n, ps in models.items()
        for p in ps
    ]


_TV_DEFAULT = {n: _tv_policies(n) if n == "resnet18" else _tv_policies(n)[:1] for n in TV_DEFAULT}
DEFAULT_CASES = _cases(_TV_DEFAULT, "tv") + _cases(DEFAULT_POLICIES, "timm")
SLOW_CASES = (
    _cases(
        {
            n: tuple(p for p in _tv_policies(n) if p not in _TV_DEFAULT.get(n, ()))
            for n in _tv_all()
        },
        "tv",
        marks=pytest.mark.slow,
    )
    + _cases({n: p[1:] for n, p in TIMM_DEFAULT.items()}, "timm", marks=pytest.mark.slow)
    + _cases(TIMM_SLOW, "timm", marks=pytest.mark.slow)
)


@pytest.mark.parametrize(("source", "name", "policy"), DEFAULT_CASES + SLOW_CASES)
def test_zoo(source: str, name: str, policy: str) -> None:
    _check(source, name, policy)


NOT_APPLICABLE = [
    ("tv", "alexnet", "residual"), ("tv", "densenet121", "inner"), ("tv", "googlenet", "residual"),
    ("tv", "squeezenet1_1", "residual"), ("tv", "shufflenet_v2_x0_5", "residual"),
    ("tv", "convnext_tiny", "inner"),
]  # fmt: skip


@pytest.mark.parametrize(("source", "name", "policy"), NOT_APPLICABLE)
def test_zoo_policy_that_does_not_apply(source: str, name: str, policy: str) -> None:
    with pytest.raises(gatekit.GatekitError, match=r"sites=.all.|no gate sites"):
        gatekit.get_gate_sites(_build(source, name), policy)


def _timm_expected(name: str, policy: str) -> list[tuple[str, str]]:
    """(gated conv, module multiplied) written from timm's block classes and their attributes."""
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
    from timm.models.convnext import ConvNeXtBlock
    from timm.models.resnet import BasicBlock

    model = _build("timm", name)
    blocks = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (BasicBlock, InvertedResidual, DepthwiseSeparableConv, ConvNeXtBlock))]
    out = []
    for n, m in blocks:
        if isinstance(m, BasicBlock):  # conv1-bn1-act-conv2-bn2, + shortcut
            out += [(f"{n}.conv2", f"{n}.bn2")] if policy == "residual" else [(f"{n}.conv1", f"{n}.bn1")]
        elif isinstance(m, InvertedResidual):  # pw-bn1, dw-bn2, (se), pwl-bn3; residual if has_skip
            if m.has_skip:
                out += ([(f"{n}.conv_pwl", f"{n}.bn3")] if policy == "residual"
                        else [(f"{n}.conv_pw", f"{n}.bn1"), (f"{n}.conv_dw", f"{n}.bn2")])
        elif isinstance(m, DepthwiseSeparableConv):  # dw-bn1, (se), pw-bn2
            if m.has_skip:
                out += ([(f"{n}.conv_pw", f"{n}.bn2")] if policy == "residual"
                        else [(f"{n}.conv_dw", f"{n}.bn1")])
        else:  # ConvNeXt with conv_mlp: dw-norm, 1x1 fc1-act-fc2 (no norm), gamma, + shortcut
            out += ([(f"{n}.mlp.fc2", f"{n}.mlp.fc2")] if policy == "residual"
                    else [(f"{n}.conv_dw", f"{n}.norm"), (f"{n}.mlp.fc1", f"{n}.mlp.fc1")])
    return out


@pytest.mark.parametrize("policy", ["residual", "inner"])
@pytest.mark.parametrize("name", list(TIMM_DEFAULT))
def test_timm_sites_pinned_by_name(name: str, policy: str) -> None:
    # The oracle in hook_oracle.py takes the sites from gatekit; pin them here, by block.
    expected = _timm_expected(name, policy)
    assert expected, "the expectation found no blocks"
    sites = gatekit.get_gate_sites(_build("timm", name), policy)
    assert [(s.name, s.after) for s in sites] == expected
