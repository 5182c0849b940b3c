"""Recheck a CIFAR-10 run from its committed weights: rebuild, evaluate, print one JSON line.

    python -m benchmarks.cifar10_evaluate benchmarks/results/cifar10/budget_s0.pt \\
        --data ../shared/data/cifar10-jpeg.tar.gz

``WEIGHTS`` is a run's ``state_dict`` (``torch.save(model.state_dict(), path)``, as
``--export-weights`` of this script or the runs' ``checkpoint.pt`` give it); the run's
results file is ``WEIGHTS`` with the suffix ``.json`` (or ``--results``).  The model is
rebuilt from the command recorded there (``gaternet_training.rebuild``), with the flags of
``examples/cifar_gaternet.py`` (a run of ``benchmarks/cifar10_static_pruning.py`` is a plain
one whose pruned widths are read from the weights' shapes, so Torch-Pruning is not needed),
and evaluated on the full test split in
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
import json
import sys
from pathlib import Path

import torch
from gaternet_training.cifar_data import load_data
from gaternet_training.distributed import setup
from gaternet_training.rebuild import evaluate_with_stats, load_results, rebuild, run_config

import gatekit

ROOT = Path(__file__).resolve().parents[1]


def evaluate_run(weights: Path, results_path: Path, data: Path, cache_dir: Path | None,
                 budgets: list[float] | None = None) -> list[dict[str, float]]:
    """One dict per evaluation: one for a run without a budget input; for a run with one,
    one per budget of ``budgets`` (default: those its results file evaluated)."""
    results = load_results(results_path, ROOT)
    config = run_config(results, data, cache_dir)
    budget_input = config.budget_range is not None
    if budgets and not budget_input:
        raise gatekit.GatekitError(
            f"--budget is for a run with a budget input (--budget-range); {results_path} has none")
    if budget_input and not budgets:
        budgets = [p["budget"] for p in results["budget_input"]["points"]]
    dist = setup("cpu")
    loaded = load_data(config, dist)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = rebuild(results, config, state, len(loaded.classes)).eval()
    if config.channels_last_on:
        model = model.to(memory_format=torch.channels_last)
    return [evaluate_with_stats(model, results, config, loaded, b)[0]
            for b in (budgets if budget_input else [None])]


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
