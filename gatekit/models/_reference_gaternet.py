"""Test oracle: a hand-written CIFAR GaterNet in the style of the released ``gaternet`` code.

Not part of the API (a private module, no ``__all__``).  It is the oracle for paper
fidelity (``tests/test_transform.py`` and ``tests/test_cifar_models.py`` compare
:func:`gatekit.gate_model` against it) and the baseline of
``benchmarks/transform_overhead.py``; it lives in the package, not in ``tests/``, so that
the benchmark can import it.  It is written the way the public
google-research code writes it, not with gatekit's machinery:

- backbone: CIFAR ResNet whose basic blocks take ``(x, gate)``; each block slices its own
  chunk ``gate[:, gate_idx:gate_idx + C]`` and multiplies the output of ``bn2`` by it,
  before the shortcut addition and the final ReLU; stem and shortcuts are not gated
  (ResNet-20: 336 gates at offsets 0, 16, 32, 48, 80, ...);
- gater: ResNet-20 trunk, ``newfc`` (64 -> bottleneck), ReLU, ``fnn`` (bottleneck -> gates);
- improved SemHash written out inline: noise ``randn_like`` (std 1) in training, saturating
  sigmoid, a step function with identity backward, and per sample a coin (``uniform_`` on
  an ``(N, 1)`` tensor, probability 0.5) choosing the hard or the soft gate vector; eval
  uses the step alone.

One deliberate difference: the released step function tests ``gate > 0.49999``; here it is
``gate > 0.5``, the paper's ``1(g_a > 0.5)``, which gatekit implements as ``1(x > 0)``.
The two agree except for pre-activations within about 3e-5 of zero.

Parameter names match :class:`gatekit.models.CifarResNet`; :func:`gatekit_state_dict`
maps this model's state dict onto a ``gate_model(resnet20(), resnet20_gater())``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cifar_resnet import init_weights

__all__: list[str] = []  # a test oracle, not API: import the names directly


class _Block(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, gate_idx: int | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if in_channels != out_channels or stride != 1:
            self.shortcut.add_module("conv", nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False))
            self.shortcut.add_module("bn", nn.BatchNorm2d(out_channels))
        self.gate_idx = gate_idx

    def forward(self, x: Tensor, gate: Tensor | None = None) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        if gate is not None:
            g = gate[:, self.gate_idx : self.gate_idx + y.size(1)]
            y = y * g.unsqueeze(dim=2).unsqueeze(dim=3)
        y += self.shortcut(x)
        return F.relu(y, inplace=True)


class _ResNet(nn.Module):
    """CIFAR ResNet with basic blocks; gated blocks when ``gated``, else a plain trunk."""

    def __init__(self, depth: int, out_features: int, gated: bool, fc_name: str):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        gate_idx, channels = 0, 16
        for i, width in enumerate((16, 32, 64)):
            stage = nn.Sequential()
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.add_module(f"block{j + 1}", _Block(channels, width, stride, gate_idx if gated else None))
                gate_idx += width
                channels = width
            self.add_module(f"stage{i + 1}", stage)
        self.gate_size = gate_idx
        self.fc_name = fc_name
        self.add_module(fc_name, nn.Linear(64, out_features))
        self.apply(init_weights)

    def forward(self, x: Tensor, gate: Tensor | None = None) -> Tensor:
        y = F.relu(self.bn(self.conv(x)), inplace=True)
        for stage in (self.stage1, self.stage2, self.stage3):
            for block in stage:
                y = block(y, gate)
        y = F.adaptive_avg_pool2d(y, 1)
        return getattr(self, self.fc_name)(y.view(y.size(0), -1))


class _StepFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return (x > 0.5).float()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        return grad_output.clone()


class _Gater(nn.Module):
    def __init__(self, depth: int, bottleneck: int, gate_size: int):
        super().__init__()
        self.resnet = _ResNet(depth, bottleneck, gated=False, fc_name="newfc")
        self.fnn = nn.Linear(bottleneck, gate_size)
        self.apply(init_weights)

    def logits(self, x: Tensor) -> Tensor:
        return self.fnn(F.relu(self.resnet(x), inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        preact = self.logits(x)
        if self.training:
            preact = preact + torch.randn_like(preact)
        gate = torch.clamp(1.2 * torch.sigmoid(preact) - 0.1, min=0, max=1)
        discrete_gate = _StepFunction.apply(gate)
        if not self.training:
            return discrete_gate
        mix_mask = gate.new_empty(size=[gate.size(0), 1]).uniform_() < 0.5
        return torch.where(mix_mask, discrete_gate, gate)


class ReferenceGaterNet(nn.Module):
    """Hand-written GaterNet: ResNet-``depth`` backbone, ResNet-20 gater, bottleneck 8.

    ``forward(x)`` returns the logits and keeps the gates in ``last_gates``.

    >>> import torch
    >>> net = ReferenceGaterNet().eval()
    >>> net(torch.randn(2, 3, 32, 32)).shape, net.last_gates.shape
    (torch.Size([2, 10]), torch.Size([2, 336]))
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, bottleneck: int = 8, gater_depth: int = 20):
        super().__init__()
        self.backbone = _ResNet(depth, num_classes, gated=True, fc_name="fc")
        self.gater = _Gater(gater_depth, bottleneck, self.backbone.gate_size)
        self.last_gates: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        gate = self.gater(x)
        self.last_gates = gate
        return self.backbone(x, gate)


def gatekit_state_dict(reference: ReferenceGaterNet) -> dict[str, Tensor]:
    """The reference's weights under the names of ``gate_model(resnet20(), resnet20_gater())``.

    >>> sd = gatekit_state_dict(ReferenceGaterNet())
    >>> sorted(k for k in sd if k.startswith("head."))
    ['head.fc1.bias', 'head.fc1.weight', 'head.fc2.bias', 'head.fc2.weight']
    """
    out = {}
    for key, value in reference.state_dict().items():
        if key.startswith("gater.resnet.newfc."):
            key = "head.fc1." + key.removeprefix("gater.resnet.newfc.")
        elif key.startswith("gater.resnet."):
            key = "gater." + key.removeprefix("gater.resnet.")
        elif key.startswith("gater.fnn."):
            key = "head.fc2." + key.removeprefix("gater.fnn.")
        out[key] = value
    return out
