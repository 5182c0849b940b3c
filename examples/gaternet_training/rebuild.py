"""A trained CIFAR run rebuilt from its weights and its ``results.json``, beside what wrote them.

:func:`train` records the command a run was started with (``results["command"]``), whether
it was gated (``gated``) and, for a backbone a script built itself, what it built
(``backbone_build``).  From these, :func:`run_config` parses the run's flags as
``examples/cifar_gaternet.py`` parses them, and :func:`rebuild` makes the run's model and
loads its ``state_dict``; :func:`evaluate_with_stats` then measures it as the run's report
counted it.  A run of the static-pruning baseline (``benchmarks/cifar10_static_pruning.py``)
is a plain CIFAR run whose backbone has pruned widths: its own flags (``--prune-from``,
``--flops``) only chose those widths, and the widths are read from the weights' shapes, so
Torch-Pruning is not needed.

The benchmarks that recheck runs (``cifar10_evaluate``, ``cifar10_calibrate_budget``,
``end_to_end_cpu``) and ``examples/export_gaternet.py`` use this module.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gatekit

from . import cli, models
from .config import CIFAR_DEFAULTS, CifarConfig
from .report import flop_counts
from .train import Data


def load_results(path: Path, root: Path) -> dict[str, Any]:
    """A run's results file; for the file of a calibrated model
    (``benchmarks/cifar10_calibrate_budget.py``), the calibrated run's, with this file's
    ``budget_input`` (the points measured through the calibration).  The calibrated run's
    file is named relative to ``root`` (the repository root, where the results live)."""
    results = json.loads(Path(path).read_text())
    source = results.get("calibrated_from")
    if source is None:
        return results
    run = json.loads((Path(root) / source["file"]).read_text())
    return {**run, "budget_input": results["budget_input"]}


def run_config(results: dict[str, Any], data: Path | None, cache_dir: Path | None,
               root: Path = Path(".")) -> CifarConfig:
    """The run's config, its recorded flags parsed as ``examples/cifar_gaternet.py`` parses
    them (flags of another script built on it, such as the static-pruning baseline's, are
    left out), with this machine's data path (``data``; None: the recorded one, relative to
    ``root``, the directory the run was started from) and the whole test split."""
    argv = shlex.split(results["command"])[1:]
    if not results["gated"] and "--no-gate" not in argv:
        argv.append("--no-gate")  # the static-pruning baseline adds it without recording it
    args, _ = cli.parser(CifarConfig, "", CIFAR_DEFAULTS).parse_known_args(argv)
    config = cli.run_config(CifarConfig, args, CIFAR_DEFAULTS)
    data = data if data is not None else (Path(root) / config.data).resolve()
    return dataclasses.replace(config.on_all_images(), data=data, cache_dir=cache_dir)


def _resize_to(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Give every conv, norm and linear layer of ``model`` the shapes its weights have in ``state``
    (a statically pruned model keeps its layers and their order; only widths change)."""
    for name, module in list(model.named_modules()):
        if not name or f"{name}.weight" not in state:
            continue
        w = state[f"{name}.weight"]
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        if isinstance(module, nn.Conv2d):
            new: nn.Module = nn.Conv2d(w.shape[1] * module.groups, w.shape[0], module.kernel_size,
                                       stride=module.stride, padding=module.padding,
                                       dilation=module.dilation, groups=module.groups,
                                       bias=module.bias is not None)
        elif isinstance(module, nn.BatchNorm2d):
            new = nn.BatchNorm2d(w.shape[0])
        elif isinstance(module, nn.Linear):
            new = nn.Linear(w.shape[1], w.shape[0], bias=module.bias is not None)
        else:
            continue
        setattr(parent, name.rpartition(".")[2], new)
    return model


def rebuild(results: dict[str, Any], config: CifarConfig, state: dict[str, torch.Tensor],
            num_classes: int) -> nn.Module:
    """The run's model with its weights (``load_state_dict`` strict)."""
    backbone = models.backbone(config, num_classes)
    if "backbone_build" in results:
        backbone = _resize_to(backbone, state)
    model = models.gated(backbone, config) if results["gated"] else backbone
    model.load_state_dict(state)
    return model


def evaluate_with_stats(model: nn.Module, results: dict[str, Any], config: CifarConfig,
                        loaded: Data, budget: float | None
                        ) -> tuple[dict[str, float], gatekit.GateStats | None]:
    """The rebuilt ``model`` on the test split of ``loaded`` (at ``budget``, for a model with a
    budget input): its ``test_error`` and FLOPs fractions counted as the run counted them,
    ``backbone_flops_fraction`` (``flops.backbone_fraction``) and
    ``total_flops_fraction_of_plain`` (``flops.at_open_fraction`` / ``flops.backbone_dense``,
    gater included), with ``budget`` when given; and the gate statistics (None for a plain
    model)."""
    is_gated = isinstance(model, gatekit.GaterNet)
    stats = gatekit.GateStats.for_model(model, num_classes=len(loaded.classes)) if is_gated else None
    kw = {} if budget is None else {"budget": budget}
    correct = count = 0
    with torch.no_grad():
        for images, labels in loaded.val:
            logits = model(images, **kw)
            correct += int((logits.argmax(1) == labels).sum())
            count += labels.shape[0]
            if stats is not None:
                stats.update(model.last_gates, labels)
    flops = flop_counts(model, loaded.image_size, stats, config,
                        dense_backbone=models.backbone(config, len(loaded.classes))
                        if "backbone_build" in results else None, budget=budget)
    fraction = flops.get("backbone_fraction", 1.0)
    total = flops.get("at_open_fraction", flops["dense"]) / flops.get("backbone_dense", flops["dense"])
    out = {} if budget is None else {"budget": budget}
    return ({**out, "test_error": 1.0 - correct / count, "backbone_flops_fraction": fraction,
             "total_flops_fraction_of_plain": total}, stats)
