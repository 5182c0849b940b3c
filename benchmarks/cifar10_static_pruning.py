"""The baseline a user would pick instead of gating: static channel pruning with Torch-Pruning.

    pip install -e ".[examples,baselines]"
    python -m benchmarks.cifar10_static_pruning --data ../shared/data/cifar10-jpeg.tar.gz \\
        --prune-from ../shared/checkpoints/cifar10-resnet20-plain-30ep/checkpoint.pt \\
        --flops 0.56 --epochs 10 --workers 0 --output-dir runs/static

Starts from a trained plain CIFAR ResNet (``--prune-from``: a run's ``checkpoint.pt`` or a
``state_dict``, every key checked), prunes it once with Torch-Pruning (DepGraph) to the
requested fraction of its FLOPs, then fine-tunes the smaller dense model with exactly the
training loop, recipe and augmentation of ``examples/cifar_gaternet.py`` (all of its flags
apply: ``--epochs``, ``--lr``, ``--distill-from``, ...).

Pruning: magnitude (L1) importance, every conv pruned by the same ratio (Torch-Pruning's
local pruning), channels coupled through the residual additions as its dependency graph
finds them, the classifier kept whole.  The ratio is found by bisection so that the pruned
model's FLOPs, counted by ``FlopCounterMode`` as the example scripts count them, are within
``--flops-tolerance`` (default 0.005) of ``--flops`` times the dense model's; where the
uniform ratio's steps are coarser than that (ResNet-20 reaches 0.278 or 0.319 near 0.30, and
0.702 or 0.767 near 0.75: a whole 16-channel group goes at once), widen the tolerance and the
closest reachable width is used, the fraction it reached recorded.  ``results.json`` records, as the example
scripts do, ``flops.backbone_dense`` (the dense model), ``flops.at_open_fraction`` (the pruned
model) and ``flops.backbone_fraction`` (their ratio), and ``backbone_build`` (the ratio and
each conv's width).  ``benchmarks/cifar10_evaluate.py`` rebuilds the pruned model from its
state_dict alone.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

import torch
from gaternet_training import cli, models
from gaternet_training.cifar_data import load_data
from gaternet_training.config import CIFAR_DEFAULTS, CifarConfig, flag
from gaternet_training.main import main
from gaternet_training.train import Backbone
from gaternet_training.warm_start import load_into, read_state_dict
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gatekit import GatekitError

TOLERANCE = 0.005

# The CIFAR script's config and this script's three flags.  Made with make_dataclass, from types
# rather than annotations: a dataclass statement here would need this file in sys.modules to
# read its (postponed) annotations, which a file loaded by path (the docs' flag tables) is not.
StaticPruningConfig = dataclasses.make_dataclass("StaticPruningConfig", [
    ("prune_from", Path, flag("static pruning", "the trained plain model to prune: a run's "
                              "checkpoint.pt or a state_dict", type=Path, metavar="PATH",
                              required=True)),
    ("flops", float, flag("static pruning", "keep this fraction of the dense model's FLOPs, in "
                          "(0, 1)", type=float, metavar="F", required=True)),
    ("flops_tolerance", float, flag("static pruning", "accept the closest reachable width "
                                    f"within T of --flops (default {TOLERANCE})", TOLERANCE,
                                    type=float, metavar="T")),
], bases=(CifarConfig,), frozen=True, kw_only=True)


def parser() -> argparse.ArgumentParser:
    return cli.parser(StaticPruningConfig, __doc__, CIFAR_DEFAULTS)


def config(argv: list[str] | None = None) -> CifarConfig:
    """The run's config (a ``StaticPruningConfig``) from ``argv``."""
    return cli.run_config(StaticPruningConfig, parser().parse_args(argv), CIFAR_DEFAULTS)


def flops(model: nn.Module, image_size: int = 32) -> int:
    model = copy.deepcopy(model).float().cpu().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(models.probe(image_size))
    return int(counter.get_total_flops())


def _prune(dense: nn.Module, ratio: float, image_size: int) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(dense).eval()
    pruner = tp.pruner.MagnitudePruner(
        model, models.probe(image_size),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio, ignored_layers=[model.fc], global_pruning=False,
    )
    pruner.step()
    return model


def prune_to_flops(dense: nn.Module, fraction: float, image_size: int = 32,
                   tolerance: float = TOLERANCE) -> tuple[nn.Module, float]:
    """The model pruned to ``fraction`` of ``dense``'s FLOPs (within ``tolerance``), and the ratio.

    Bisects the uniform ratio; the closest fraction any tried ratio reached is kept, so that a
    target between two reachable widths gets the nearer one when it lies within ``tolerance``.
    """
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        raise GatekitError("the static-pruning baseline needs Torch-Pruning: pip install -e "
                           "\".[baselines]\"") from None
    if not 0.0 < fraction < 1.0:
        raise GatekitError(f"--flops must lie in (0, 1), got {fraction}")
    full = flops(dense, image_size)
    low, high = 0.0, 0.95
    best = None
    for _ in range(40):
        ratio = (low + high) / 2
        pruned = _prune(dense, ratio, image_size)
        got = flops(pruned, image_size) / full
        if best is None or abs(got - fraction) < abs(best[2] - fraction):
            best = (pruned, ratio, got)
        if abs(got - fraction) <= min(tolerance, TOLERANCE):
            break
        low, high = (ratio, high) if got > fraction else (low, ratio)
    pruned, ratio, got = best
    if abs(got - fraction) <= tolerance:
        return pruned, ratio
    raise GatekitError(f"could not prune to {fraction:.3f} of the FLOPs within {tolerance} "
                       f"(closest {got:.4f}); channel counts are too coarse: pick another --flops "
                       "or widen --flops-tolerance")


def backbone(config: StaticPruningConfig) -> Backbone:
    if not config.no_gate:
        raise GatekitError("the static-pruning baseline trains a plain model: add --no-gate")
    if config.init_from is not None:
        raise GatekitError("--prune-from gives the starting weights; drop --init-from")
    state, _ = read_state_dict(config.prune_from, flag="--prune-from")

    def build(config: StaticPruningConfig, num_classes: int) -> nn.Module:
        dense = models.classifier(config.arch, num_classes)
        load_into(dense, state, what=f"model ({config.arch})",
                  source=f"--prune-from {config.prune_from}")
        pruned, ratio = prune_to_flops(dense, config.flops, tolerance=config.flops_tolerance)
        widths = {name: m.out_channels for name, m in pruned.named_modules()
                  if isinstance(m, nn.Conv2d)}
        print(f"pruned {config.arch} with Torch-Pruning (L1, ratio {ratio:.4f}): "
              f"{flops(pruned) / flops(dense):.4f} of its FLOPs", flush=True)
        result.info.update(pruning="torch-pruning MagnitudePruner, L1, local", ratio=ratio,
                           conv_widths=widths)
        return pruned

    result = Backbone(build=build, dense=lambda n: models.classifier(config.arch, n))
    return result


def cli_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--no-gate" not in argv:
        argv.append("--no-gate")  # the baseline is a plain model; said in the results' command
    return main(config, load_data, argv, backbone=backbone)


if __name__ == "__main__":
    sys.exit(cli_main())
