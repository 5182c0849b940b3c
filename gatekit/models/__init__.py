"""Models shared by tests, examples and benchmarks: the CIFAR ResNets of GaterNet's paper.

>>> import torch
>>> from gatekit.models import resnet20, resnet20_gater
>>> resnet20()(torch.randn(1, 3, 32, 32)).shape
torch.Size([1, 10])
"""

from .cifar_resnet import (
    BasicBlock,
    Bottleneck,
    CifarResNet,
    resnet20,
    resnet20_gater,
    resnet56,
    resnet110,
    resnet164,
)
from .small_gater import ConvGater, conv_gater

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ConvGater",
    "conv_gater",
    "resnet20",
    "resnet20_gater",
    "resnet56",
    "resnet110",
    "resnet164",
]
