"""What the CPU timing benchmarks share: the machine's name, interleaved timing, gates drawn
per sample, and the models ``end_to_end_cpu`` times (``export_cpu`` times them too, and
``fit_batching_rule`` rebuilds their geometry).

Weights are random with BatchNorm statistics randomised (so that folding is not trivial),
except for a trained CIFAR run rebuilt from its committed weights (:func:`build_run`).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import gatekit
from gatekit.models import conv_gater, resnet20, resnet20_gater


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform.processor()`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_interleaved(fns: dict, rounds: int, calls: int) -> dict[str, list[float]]:
    """Milliseconds of each of ``calls`` calls of every function in each of ``rounds`` rounds,
    the functions interleaved round by round, so that a slow spell of the machine falls on
    all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def random_gates(
    net: gatekit.GaterNet, batch: int, fraction: float, gen: torch.Generator, agree: float = 0.0
) -> torch.Tensor:
    """Per sample and site, exactly round(fraction * num_gates) random gates open.

    With ``agree`` > 0 each sample keeps that fraction of a shared pattern's open gates
    and draws the rest at random among the others (a trained gater's gates mostly agree
    across samples).  ``agree=0`` draws every sample independently.
    """
    gates = torch.zeros(batch, net.num_gates)
    for site in net.sites:
        k = round(fraction * site.num_gates)
        shared = torch.randperm(site.num_gates, generator=gen)
        keep = round(agree * k)
        for i in range(batch):
            rest = shared[keep:][torch.randperm(site.num_gates - keep, generator=gen)]
            pick = torch.cat([shared[:keep], rest[: k - keep]])
            gates[i, site.offset + pick] = 1.0
    return gates


class Resized(nn.Module):
    """A gater trunk that reads the image resized to ``size`` x ``size`` (bilinear)."""

    def __init__(self, trunk: nn.Module, size: int):
        super().__init__()
        self.trunk, self.size = trunk, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.trunk(x)


def tiny_gater(size: int = 16) -> nn.Module:
    """``gatekit.models.conv_gater()`` (two strided 3x3 convs, 16 and 32 filters, BatchNorm,
    ReLU, pooled: features ``(N, 32)``) on the image resized to ``size`` px."""
    return Resized(conv_gater((16, 32)), size)


def resnet18_trunk(size: int) -> nn.Module:
    trunk = torchvision.models.resnet18(weights=None)
    trunk.fc = nn.Identity()
    return Resized(trunk, size)


def randomise_batchnorm(net: nn.Module) -> None:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)


def build_model(model: str, args: argparse.Namespace) -> tuple[nn.Module, gatekit.GaterNet, int]:
    """The plain backbone, the gated model (eval mode) and the image size."""
    torch.manual_seed(args.seed)
    if model == "resnet50":
        plain, gater, size = torchvision.models.resnet50(weights=None), resnet18_trunk(
            args.resnet50_gater_size
        ), args.size
    elif model == "resnet20":
        plain = resnet20()
        gater = tiny_gater() if args.cifar_gater == "tiny" else resnet20_gater()
        size = 32
    else:
        raise SystemExit(f"unknown model {model!r}")
    randomise_batchnorm(plain)
    randomise_batchnorm(gater)
    net = gatekit.gate_model(plain, gater, sites="inner").eval()
    return plain.eval(), net, size


def build_run(weights: Path) -> tuple[nn.Module, gatekit.GaterNet, Any]:
    """A trained CIFAR run rebuilt from its weights and results file (as
    ``cifar10_evaluate.py`` does, with ``gaternet_training.rebuild``), and the plain ResNet-20 with its backbone's weights."""
    from gaternet_training.rebuild import rebuild, run_config

    results_path = weights.with_suffix(".json")
    if not results_path.is_file():
        raise SystemExit(f"--cifar-run {weights}: no results file {results_path} beside it")
    results = json.loads(results_path.read_text())
    if not results.get("gated"):
        raise SystemExit(f"--cifar-run {weights}: expected a gated run, {results_path} is not one")
    config = run_config(results, Path("."), None)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net = rebuild(results, config, state, num_classes=10).eval()
    if net.budget_input:
        raise SystemExit(f"--cifar-run {weights}: a budget-input run is not timed here")
    plain = resnet20(num_classes=10)
    plain.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    return plain.eval(), net, config


def test_images(config: Any, data: Path | None, batch: int, gen: torch.Generator) -> torch.Tensor:
    """The first ``batch`` CIFAR-10 test images, normalised as the runs evaluate them
    (random images without ``data``)."""
    if data is None:
        return torch.randn(batch, 3, 32, 32, generator=gen)
    import dataclasses

    from gaternet_training.cifar_data import load_data
    from gaternet_training.distributed import setup

    loaded = load_data(dataclasses.replace(config, data=data), setup("cpu"))
    images, _ = next(iter(loaded.val))
    return images[:batch].contiguous()
