"""A gater trunk that costs almost nothing: a few strided 3x3 convs, pooled.

GaterNet's released gater is a ResNet-20 trunk.  On a CIFAR ResNet-20 backbone that is a
second backbone: at batch 1 on a CPU its 19 small convs take about half of the plain
model's time even on an 8-px image, because each op's fixed cost outweighs its arithmetic
(``benchmarks/end_to_end_cpu.py --profile``).  :func:`conv_gater` is the cheap alternative:
``len(widths)`` strided 3x3 convs, each followed by BatchNorm and ReLU, then global average
pooling, so a gater of two convs runs seven ops.  On a 16-px image the two convs of
``conv_gater()`` do 101,376 multiply-adds, 0.25% of a CIFAR ResNet-20's.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .._errors import GatekitError
from .cifar_resnet import init_weights

__all__ = ["ConvGater", "conv_gater"]


class ConvGater(nn.Module):
    """Strided 3x3 conv-BN-ReLU layers, then global average pooling: ``(N, C, H, W) -> (N, D)``.

    ``widths``: the filters of each conv (each halves the resolution); ``num_features`` is
    the last of them.  Weights are initialised as :mod:`gatekit.models.cifar_resnet` does.
    """

    def __init__(self, widths: Sequence[int] = (16, 32), in_channels: int = 3):
        super().__init__()
        widths = tuple(widths)
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise GatekitError(f"conv_gater widths must be positive ints, got {widths!r}")
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.Conv2d(in_channels, w, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            in_channels = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[-1]
        self.apply(init_weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)


def conv_gater(widths: Sequence[int] = (16, 32)) -> ConvGater:
    """A gater trunk of ``len(widths)`` strided 3x3 convs with ``widths`` filters.

    >>> import torch
    >>> conv_gater()(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 32])
    """
    return ConvGater(widths)
