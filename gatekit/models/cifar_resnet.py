"""CIFAR ResNets (He et al. 2016) as GaterNet's released code builds them.

The layout follows the public ``gaternet`` code (google-research): a 3x3 stem conv with 16
filters, three stages of 16/32/64 channels (x4 for bottleneck blocks), post-activation
blocks (conv-BN-ReLU-conv-BN, add, ReLU), a projection shortcut (1x1 conv + BN, "option B")
wherever the shape changes, global average pooling and one linear classifier.  Weights are
initialised as that code does: convs Kaiming-normal with ``mode="fan_out"``, BN weight 1 and
bias 0, linear biases 0 (linear weights keep PyTorch's default).

``num_classes=0`` gives the trunk without classifier: ``forward`` returns the pooled
features ``(N, num_features)``.  That trunk with depth 20 is the released code's gater.

The released code has ResNet-20/56 only.  ResNet-110 uses the same basic blocks;
ResNet-164 uses bottleneck blocks (1x1, 3x3, 1x1 with expansion 4), post-activation like
the others here (He et al.'s ResNet-164 is pre-activation; that variant is not provided).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from .._errors import GatekitError

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "init_weights",
    "resnet20",
    "resnet20_gater",
    "resnet56",
    "resnet110",
    "resnet164",
]


def init_weights(module: nn.Module) -> None:
    """Initialise one module as the released GaterNet code does (use with ``Module.apply``).

    >>> import torch
    >>> lin = torch.nn.Linear(4, 2)
    >>> init_weights(lin)
    >>> bool((lin.bias == 0).all())
    True
    """
    if isinstance(module, nn.Linear):
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    # Named like the released code's shortcut so state dicts line up.
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            bn=nn.BatchNorm2d(out_channels),
        )
    )


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    >>> import torch
    >>> BasicBlock(16, 32, stride=2)(torch.randn(1, 16, 8, 8)).shape
    torch.Size([1, 32, 4, 4])
    """

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = _shortcut(in_channels, width, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN (x4 channels), plus the shortcut, then ReLU.

    >>> import torch
    >>> Bottleneck(16, 16)(torch.randn(1, 16, 8, 8)).shape
    torch.Size([1, 64, 8, 8])
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet: stem, three stages (``stage1..3``, blocks ``block1..n``), pool, ``fc``.

    ``depth`` is 6n+2 for basic blocks and 9n+2 for bottleneck blocks.  With
    ``num_classes=0`` there is no ``fc`` and ``forward`` returns ``(N, num_features)``.

    >>> import torch
    >>> CifarResNet(20, num_classes=10)(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        block: str = "basic",
        base_width: int = 16,
        in_channels: int = 3,
    ):
        super().__init__()
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}.get(block)
        if block_cls is None:
            raise GatekitError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        per_block = 2 if block_cls is BasicBlock else 3
        if not isinstance(depth, int) or depth < 2 + 3 * per_block or (depth - 2) % (3 * per_block):
            raise GatekitError(
                f"a CIFAR ResNet with {block} blocks needs depth = {3 * per_block}n + 2 "
                f"(e.g. {3 * per_block + 2}, {9 * per_block + 2}), got {depth!r}"
            )
        if not isinstance(num_classes, int) or num_classes < 0:
            raise GatekitError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
        n = (depth - 2) // (3 * per_block)
        self.depth = depth
        self.conv = nn.Conv2d(in_channels, base_width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        channels = base_width
        for i, width in enumerate((base_width, base_width * 2, base_width * 4)):
            stage = nn.Sequential()
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.add_module(f"block{j + 1}", block_cls(channels, width, stride))
                channels = width * block_cls.expansion
            self.add_module(f"stage{i + 1}", stage)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes) if num_classes > 0 else None
        self.apply(init_weights)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn(self.conv(x)))
        y = self.stage3(self.stage2(self.stage1(y)))
        y = self.pool(y).flatten(1)
        return y if self.fc is None else self.fc(y)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (basic blocks, 3 per stage, 0.27M parameters with 10 classes).

    >>> sum(p.numel() for p in resnet20().parameters())
    272474
    """
    return CifarResNet(20, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (basic blocks, 9 per stage).

    >>> resnet56().depth
    56
    """
    return CifarResNet(56, num_classes)


def resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 (basic blocks, 18 per stage).

    >>> resnet110().depth
    110
    """
    return CifarResNet(110, num_classes)


def resnet164(num_classes: int = 10) -> CifarResNet:
    """ResNet-164 (post-activation bottleneck blocks, 18 per stage, 64/128/256 outputs).

    >>> resnet164(num_classes=0).num_features
    256
    """
    return CifarResNet(164, num_classes, block="bottleneck")


def resnet20_gater() -> CifarResNet:
    """The released code's gater trunk: ResNet-20 without classifier, features ``(N, 64)``.

    >>> import torch
    >>> resnet20_gater()(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 64])
    """
    return CifarResNet(20, num_classes=0)
