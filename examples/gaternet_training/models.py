"""Backbones and gater trunks by name: gatekit's CIFAR ResNets and torchvision's classifiers,
and the run's model as its config says (:func:`check_names`, :func:`backbone`, :func:`gated`,
:func:`model`, :func:`identity`): the one module that reads the flags naming the model.

A gater trunk is a classifier with its last classification layer replaced by
``nn.Identity``, so it maps images to a feature vector ``(N, D)``.  Nothing here loads
pretrained weights (``weights=None``): nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gatekit
from gatekit import GatekitError
from gatekit.models import cifar_resnet, conv_gater

from .config import RunConfig

CIFAR_DEPTHS = {"resnet20": 20, "resnet56": 56, "resnet110": 110, "resnet164": 164}
# Gater trunks that are not classifiers: ``--gater conv`` is gatekit.models.conv_gater (two
# strided 3x3 convs, 16 and 32 filters, pooled), a gater with a few ops for small backbones.
GATER_ONLY = {"conv": conv_gater}


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_name(name: str, what: str) -> None:
    if name in CIFAR_DEPTHS or (what == "gater" and name in GATER_ONLY):
        return
    names = _torchvision_names()
    if name not in names:
        raise GatekitError(
            f"unknown {what} {name!r}; expected a CIFAR ResNet ({', '.join(CIFAR_DEPTHS)}), "
            + (f"a small gater ({', '.join(GATER_ONLY)}), " if what == "gater" else "")
            + "or a "
            f"torchvision classifier such as resnet18, resnet50, mobilenet_v3_small "
            f"({len(names)} available: `python -c \"import torchvision; "
            f"print(torchvision.models.list_models(module=torchvision.models))\"`)"
        )


def check_names(config: RunConfig) -> None:
    """Check the backbone's name and, for a gated run, the gater trunk's, before any work."""
    check_name(config.arch, "model")
    if not config.no_gate:
        check_name(config.gater, "gater")


def check_cifar(config: RunConfig) -> None:
    """Check that the backbone is a CIFAR ResNet (the CIFAR script's data need one)."""
    if config.arch not in CIFAR_DEPTHS:
        raise GatekitError(f"--arch {config.arch!r} is not a CIFAR ResNet; expected one of "
                           f"{', '.join(CIFAR_DEPTHS)}")


def backbone(config: RunConfig, num_classes: int) -> nn.Module:
    """The run's randomly initialised backbone (``--arch``) with ``num_classes`` outputs."""
    return classifier(config.arch, num_classes)


def label(config: RunConfig, role: str = "backbone") -> str:
    """How messages name a model of the backbone's architecture: ``teacher (resnet20)``."""
    return f"{role} ({config.arch})"


def gated(backbone: nn.Module, config: RunConfig) -> gatekit.GaterNet:
    """``backbone`` gated as the flags say, by the gater trunk they name
    (:func:`gater_trunk`); :mod:`.rebuild` makes a trained run's model with it too."""
    return gatekit.gate_model(
        backbone, gater_trunk(config), sites=config.sites, estimator=config.estimator,
        bottleneck=config.bottleneck, group_size=config.group_size, init_bias=config.init_bias,
        budget_input=config.budgets is not None)


def model(backbone: nn.Module, config: RunConfig) -> nn.Module:
    """The run's model: ``backbone`` gated (:func:`gated`), or alone for a plain run."""
    return backbone if config.no_gate else gated(backbone, config)


def names(config: RunConfig) -> dict[str, Any]:
    """The model's names as ``results.json`` records them: ``arch``, ``gated``, ``gater``."""
    is_gated = not config.no_gate
    return {"arch": config.arch, "gated": is_gated, "gater": config.gater if is_gated else None}


def identity(config: RunConfig) -> dict[str, Any]:
    """The settings that shape the model's weights: what a checkpoint and the run resuming it
    must agree on (with the data's classes and image size)."""
    out = names(config)
    is_gated = out["gated"]
    return {**out,
            "sites": config.sites if is_gated else None,
            "estimator": config.estimator if is_gated else None,
            "bottleneck": config.bottleneck if is_gated else None,
            "group_size": config.group_size if is_gated else None,
            "gater_resolution": config.gater_resolution if is_gated else None,
            "freeze_gater": (config.freeze_gater or None) if is_gated else None,
            "budget_input": (config.budgets is not None) or None if is_gated else None}


def describe(config: RunConfig, model: nn.Module) -> str:
    """``resnet20 gated by resnet20 (9 gates)``, or ``resnet20 plain``."""
    kind = (f"gated by {config.gater} ({model.num_gates} gates)"
            if isinstance(model, gatekit.GaterNet) else "plain")
    return f"{config.arch} {kind}"


def classifier(name: str, num_classes: int) -> nn.Module:
    """A randomly initialised classifier ``name`` with ``num_classes`` outputs."""
    check_name(name, "model")
    if name in CIFAR_DEPTHS:
        return cifar_resnet.CifarResNet(CIFAR_DEPTHS[name], num_classes=num_classes)
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def trunk(name: str) -> nn.Module:
    """A feature extractor ``(N, C, H, W) -> (N, D)``: classifier ``name`` without its last layer."""
    check_name(name, "gater")
    if name in GATER_ONLY:
        return GATER_ONLY[name]()
    if name in CIFAR_DEPTHS:
        return cifar_resnet.CifarResNet(CIFAR_DEPTHS[name], num_classes=0)
    model = classifier(name, num_classes=1000)
    for attr in ("fc", "classifier", "head", "heads"):
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
            return model
    raise GatekitError(f"cannot find the classifier layer of {name!r} (looked for .fc, "
                       ".classifier, .head, .heads); pick another --gater")


class GaterTrunk(nn.Module):
    """A gater trunk that sees a resized image, and/or is frozen.

    ``resolution``: the input is resized to ``resolution x resolution`` (bilinear,
    antialiased) before the trunk: a ResNet-20 trunk at 16x16 costs a quarter of its 32x32
    FLOPs.  ``frozen``: the trunk's parameters take no gradient and the trunk stays in eval
    mode (its BatchNorm statistics do not move), so it runs without autograd: only the
    gater head learns.  The wrapped trunk is ``.trunk`` (its weights are ``gater.trunk.*``).
    """

    def __init__(self, trunk: nn.Module, *, resolution: int | None = None, frozen: bool = False):
        super().__init__()
        if resolution is not None and resolution < 1:
            raise GatekitError(f"--gater-resolution must be >= 1, got {resolution}")
        self.trunk, self.resolution, self.frozen = trunk, resolution, frozen
        if frozen:
            self.trunk.requires_grad_(False)
            self.trunk.eval()

    def train(self, mode: bool = True) -> GaterTrunk:
        super().train(mode)
        if self.frozen:
            self.trunk.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.resolution is not None and tuple(x.shape[-2:]) != (self.resolution,) * 2:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False, antialias=True)
        if self.frozen:
            with torch.no_grad():
                return self.trunk(x)
        return self.trunk(x)

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, frozen={self.frozen}"


def unwrap_trunk(gater: nn.Module) -> nn.Module:
    """The trunk itself, inside a :class:`GaterTrunk` or not."""
    return gater.trunk if isinstance(gater, GaterTrunk) else gater


def gater_trunk(config: RunConfig) -> nn.Module:
    """The gater trunk ``--gater`` names, resized (``--gater-resolution``) or frozen
    (``--freeze-gater``) as asked."""
    gater = trunk(config.gater)
    resolution, frozen = config.gater_resolution, config.freeze_gater
    if resolution is not None or frozen:
        gater = GaterTrunk(gater, resolution=resolution, frozen=frozen)
    return gater


def probe(image_size: int, device: torch.device | str | None = None) -> Tensor:
    """One blank RGB image of the run's size, ``(1, 3, S, S)``: the input on which gate costs
    (the budget's) and FLOPs (the report's) are counted."""
    return torch.zeros(1, 3, image_size, image_size, device=device)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def param_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of the whole model and, when gated, of backbone, gater trunk and head."""
    out = {"total": count_params(model)}
    if isinstance(model, gatekit.GaterNet):
        out.update(backbone=count_params(model.backbone), gater=count_params(model.gater),
                   head=count_params(model.head))
    return out
