"""Recheck a CIFAR-10 run from its committed weights: rebuild, evaluate, print one JSON line.

    python benchmarks/cifar10_evaluate.py benchmarks/results/cifar10/budget_s0.pt \\
        --data ../shared/data/cifar10-jpeg.tar.gz

``WEIGHTS`` is a run's ``state_dict`` (``torch.save(model.state_dict(), path)``, as
``--export-weights`` of this script or the runs' ``checkpoint.pt`` give it); the run's
results file is ``WEIGHTS`` with the suffix ``.json`` (or ``--results``).  The model is
rebuilt from the command recorded there, with the flags of ``examples/cifar_gaternet.py``
(or of ``benchmarks/cifar10_static_pruning.py``, whose pruned widths are read from the
weights' shapes, so Torch-Pruning is not needed), and evaluated on the full test split in
float32 with the run's evaluation batches.  Printed: ``test_error``, and the FLOPs fractions
counted as the run counted them: ``backbone_flops_fraction`` (``flops.backbone_fraction``)
and ``total_flops_fraction_of_plain`` (``flops.at_open_fraction`` / ``flops.backbone_dense``,
gater included).

A run with a budget input (``--budget-range``) is evaluated at ``--budget B`` (repeatable),
by default at every budget its results file evaluated (``budget_input.points``); each
budget prints its own line, with ``"budget"`` added, equal to that point of the file.  The
weights and file that ``cifar10_calibrate_budget.py`` writes (a calibrated budget map in
the head) are evaluated the same way: the model is rebuilt from the run the file names in
``calibrated_from``.

``--export-weights OUT`` instead writes the model weights of a run's ``checkpoint.pt``
(``WEIGHTS``) to ``OUT``, without the optimiser state: what the results folder commits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cifar10_static_pruning
import cifar_gaternet
from gaternet_training import cli, models
from gaternet_training.config import CifarConfig
from gaternet_training.distributed import setup
from gaternet_training.report import flop_counts

import gatekit

STATIC_SCRIPT = "cifar10_static_pruning.py"


def load_results(path: Path) -> dict[str, Any]:
    """A run's results file; for the file of a calibrated model
    (``cifar10_calibrate_budget.py``), the calibrated run's, with this file's ``budget_input``
    (the points measured through the calibration)."""
    results = json.loads(Path(path).read_text())
    source = results.get("calibrated_from")
    if source is None:
        return results
    root = Path(__file__).resolve().parents[1]
    run = json.loads((root / source["file"]).read_text())
    return {**run, "budget_input": results["budget_input"]}


def _run_config(results: dict[str, Any], data: Path, cache_dir: Path | None) -> CifarConfig:
    """The run's config, its flags parsed as its script parsed them, with this machine's data
    path and the whole test split."""
    words = shlex.split(results["command"])
    argv = words[1:]
    if Path(words[0]).name == STATIC_SCRIPT:
        parser = cifar10_static_pruning.parser()
        config_type: type[CifarConfig] = cifar10_static_pruning.StaticPruningConfig
        argv.append("--no-gate")
    else:
        parser, config_type = cifar_gaternet.parser(), CifarConfig
    args, _ = parser.parse_known_args(argv)
    config = cli.run_config(config_type, args, cifar_gaternet.DEFAULTS)
    return dataclasses.replace(config, data=data, cache_dir=cache_dir, limit=None, limit_val=None)


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
    backbone = models.classifier(config.arch, num_classes)
    if "backbone_build" in results:
        backbone = _resize_to(backbone, state)
    model = backbone if not results["gated"] else gatekit.gate_model(
        backbone, models.gater_trunk(config), sites=config.sites, estimator=config.estimator,
        bottleneck=config.bottleneck, group_size=config.group_size,
        budget_input=config.budget_range is not None)
    model.load_state_dict(state)
    return model


def evaluate_run(weights: Path, results_path: Path, data: Path, cache_dir: Path | None,
                 budgets: list[float] | None = None) -> list[dict[str, float]]:
    """One dict per evaluation: one for a run without a budget input; for a run with one,
    one per budget of ``budgets`` (default: those its results file evaluated)."""
    results = load_results(results_path)
    config = _run_config(results, data, cache_dir)
    budget_input = config.budget_range is not None
    if budgets and not budget_input:
        raise gatekit.GatekitError(
            f"--budget is for a run with a budget input (--budget-range); {results_path} has none")
    if budget_input and not budgets:
        budgets = [p["budget"] for p in results["budget_input"]["points"]]
    dist = setup("cpu")
    loaded = cifar_gaternet.load_data(config, dist)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = rebuild(results, config, state, len(loaded.classes)).eval()
    if config.channels_last_on:
        model = model.to(memory_format=torch.channels_last)
    return [_evaluate(model, results, config, loaded, b)
            for b in (budgets if budget_input else [None])]


def _evaluate(model: nn.Module, results: dict[str, Any], config: CifarConfig, loaded: Any,
              budget: float | None) -> dict[str, float]:
    return evaluate_with_stats(model, results, config, loaded, budget)[0]


def evaluate_with_stats(model: nn.Module, results: dict[str, Any], config: CifarConfig,
                        loaded: Any, budget: float | None
                        ) -> tuple[dict[str, float], gatekit.GateStats | None]:
    """The printed numbers of one evaluation, and its gate statistics (None for a plain model)."""
    gated = isinstance(model, gatekit.GaterNet)
    stats = gatekit.GateStats.for_model(model, num_classes=len(loaded.classes)) if gated else None
    kw = {} if budget is None else {"budget": budget}
    correct = count = 0
    with torch.no_grad():
        for images, labels in loaded.val:
            logits = model(images, **kw)
            correct += int((logits.argmax(1) == labels).sum())
            count += labels.shape[0]
            if stats is not None:
                stats.update(model.last_gates, labels)
    flops = flop_counts(model, loaded.image_size, stats, downstream=config.count_downstream,
                        dense_backbone=models.classifier(config.arch, len(loaded.classes))
                        if "backbone_build" in results else None, budget=budget)
    fraction = flops.get("backbone_fraction", 1.0)
    total = flops.get("at_open_fraction", flops["dense"]) / flops.get("backbone_dense", flops["dense"])
    out = {} if budget is None else {"budget": budget}
    return ({**out, "test_error": 1.0 - correct / count, "backbone_flops_fraction": fraction,
             "total_flops_fraction_of_plain": total}, stats)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("weights", type=Path)
    p.add_argument("--data", type=Path, help="the CIFAR-10 data (as for cifar_gaternet.py --data)")
    p.add_argument("--results", type=Path, default=None,
                   help="the run's results JSON (default: WEIGHTS with suffix .json)")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--budget", type=float, action="append", default=None, metavar="B",
                   help="a budget-input run: evaluate at budget B (repeatable; default: the "
                        "budgets of the run's results file)")
    p.add_argument("--export-weights", type=Path, default=None, metavar="OUT")
    args = p.parse_args(argv)
    try:
        if args.export_weights is not None:
            ckpt = torch.load(args.weights, map_location="cpu", weights_only=False)
            torch.save(ckpt["model"], args.export_weights)
            print(f"wrote {args.export_weights} ({args.export_weights.stat().st_size / 1e6:.2f} MB)")
            return 0
        if args.data is None:
            raise gatekit.GatekitError("--data is needed to evaluate (the CIFAR-10 test split)")
        results_path = args.results or args.weights.with_suffix(".json")
        if not results_path.is_file():
            raise gatekit.GatekitError(f"no results file {results_path}; pass --results")
        for line in evaluate_run(args.weights, results_path, args.data, args.cache_dir, args.budget):
            print(json.dumps(line))
    except gatekit.GatekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
