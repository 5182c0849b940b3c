"""The CIFAR ResNets in gatekit.models against the paper's definitions and the hand-written
reference (which follows the released GaterNet code)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gatekit import GatekitError
from gatekit.models import (
    BasicBlock,
    Bottleneck,
    CifarResNet,
    conv_gater,
    resnet20,
    resnet20_gater,
    resnet56,
    resnet110,
    resnet164,
)
from gatekit.models._reference_gaternet import ReferenceGaterNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _main_path_convs(model: nn.Module) -> int:
    return sum(
        1 for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n
    )


@pytest.mark.parametrize(
    ("build", "depth", "block"),
    [
        (resnet20, 20, BasicBlock),
        (resnet56, 56, BasicBlock),
        (resnet110, 110, BasicBlock),
        (resnet164, 164, Bottleneck),
    ],
)
def test_depth_counts_weighted_layers(build, depth, block) -> None:
    # He et al.: depth = convs on the main path + the classifier; shortcuts do not count.
    model = build()
    assert _main_path_convs(model) + 1 == depth
    assert {type(m) for m in model.modules() if isinstance(m, BasicBlock | Bottleneck)} == {block}
    # Three stages; projections only where the shape changes (two of them for basic blocks,
    # three for bottlenecks whose first block widens 16 -> 64).
    projections = sum(1 for n, m in model.named_modules() if n.endswith("shortcut.conv"))
    assert projections == (2 if block is BasicBlock else 3)


def test_shapes_and_trunk() -> None:
    x = torch.randn(2, 3, 32, 32)
    assert resnet20(num_classes=100)(x).shape == (2, 100)
    trunk = resnet20_gater()
    assert trunk(x).shape == (2, 64) and trunk.num_features == 64 and trunk.fc is None
    assert resnet164(num_classes=0)(x).shape == (2, 256)


def test_resnet20_equals_reference_backbone() -> None:
    # The reference is written like the released code; with the same weights and no gate it
    # must compute the same function as gatekit's ResNet-20.
    torch.manual_seed(0)
    reference = ReferenceGaterNet().backbone
    model = resnet20()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    for train in (True, False):
        reference.train(train)
        model.train(train)
        assert torch.equal(model(x), reference(x, None))


def test_initialisation_follows_released_code() -> None:
    torch.manual_seed(0)
    model = resnet56()
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0)
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * k * k)).  Pool the 3x3 convs
    # of the last stage of ResNet-56 (645,120 weights) so the sample std is within 1%: the
    # relative standard error of a sample std over n normal draws is 1/sqrt(2n) = 0.088%, so
    # 1% is 11 standard errors; that of the mean, in units of std, is 1/sqrt(n) = 0.125%: 1%
    # is 8 (and the seed is fixed).
    weights = torch.cat(
        [
            m.weight.flatten()
            for n, m in model.named_modules()
            if n.startswith("stage3") and isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
        ]
    )
    expected = math.sqrt(2.0 / (64 * 9))
    assert abs(weights.std().item() / expected - 1) < 0.01
    assert abs(weights.mean().item()) < 0.01 * expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 21}, "6n \\+ 2"),
        ({"depth": 30, "block": "bottleneck"}, "9n \\+ 2"),
        ({"depth": 20, "block": "wide"}, "'basic' or 'bottleneck'"),
        ({"depth": 20, "num_classes": -1}, "num_classes"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(GatekitError, match=match):
        CifarResNet(**kwargs)


def test_conv_gater_is_strided_convs_pooled() -> None:
    """conv_gater against the same layers written out with torch.nn.functional."""
    torch.manual_seed(0)
    gater = conv_gater((8, 12)).eval()
    for m in gater.modules():  # BN statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-1, 1)
    x = torch.randn(3, 3, 16, 16)
    convs = [m for m in gater.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in gater.modules() if isinstance(m, nn.BatchNorm2d)]
    y = x
    for conv, bn in zip(convs, bns):
        y = F.conv2d(y, conv.weight, stride=2, padding=1)
        y = F.relu(F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias))
    torch.testing.assert_close(gater(x), y.mean(dim=(2, 3)))
    assert gater(x).shape == (3, 12) and gater.num_features == 12
    assert [c.out_channels for c in convs] == [8, 12] and all(c.stride == (2, 2) for c in convs)
    # the cost the module docstring states: two convs on 16 px, 8x8 then 4x4 outputs
    default = [m for m in conv_gater().modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.out_channels * c.in_channels * 9 * (16 // 2 ** (i + 1)) ** 2
               for i, c in enumerate(default)) == 101_376


@pytest.mark.parametrize("widths", [(), (16, 0), (16.0,)])
def test_conv_gater_refuses_bad_widths(widths) -> None:
    with pytest.raises(GatekitError, match="positive ints"):
        conv_gater(widths)
