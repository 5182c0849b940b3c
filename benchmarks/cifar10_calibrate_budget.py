"""Calibrate a CIFAR-10 budget-input run so that its budget is the backbone FLOPs it keeps.

    python -m benchmarks.cifar10_calibrate_budget benchmarks/results/cifar10/any_budget_s0.pt \\
        --data ../shared/data/cifar10-jpeg.tar.gz \\
        --out benchmarks/results/cifar10/any_budget_s0_calibrated

``WEIGHTS`` is the state_dict of a run trained with ``--budget-range`` and ``WEIGHTS`` with
the suffix ``.json`` its results file (or ``--results``).  The model is rebuilt as
``cifar10_evaluate.py`` rebuilds it (``gaternet_training.rebuild``), and :func:`gatekit.calibrate_budget` measures, on
``--images`` training images drawn with ``--seed`` (evaluation transform: no crop or flip;
never a test image), the mean backbone FLOPs fraction at each head input, counted as the
run's report counts it (its gate costs, ``downstream`` as the run counted, of the dense
backbone's FLOPs).  The inverse, installed in the head as a ``BudgetMap``, is saved with the
weights as ``OUT.pt``; ``OUT.json`` records the command, the run it calibrated
(``calibrated_from``), the map, and ``budget_input.points``: the full test split evaluated at
each budget (default: the run's own evaluation budgets), in the run's format.
``python -m benchmarks.cifar10_evaluate OUT.pt --data ...`` rechecks every point and
``cifar10_any_budget.py OUT.json`` summarises them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from gaternet_training import models
from gaternet_training.cifar_data import (
    CIFAR_MEAN,
    CIFAR_STD,
    default_cache_dir,
    load_cifar,
    load_data,
)
from gaternet_training.distributed import setup
from gaternet_training.rebuild import evaluate_with_stats, load_results, rebuild, run_config
from gaternet_training.report import flop_counts, gate_report_1_99
from gaternet_training.tensor_data import TensorBatches

import gatekit
from benchmarks.run_files import ROOT, rel


def calibration_batches(config: Any, images: int, seed: int, dist: Any) -> TensorBatches:
    """``images`` training images, a fixed draw, with the evaluation transform."""
    arrays = load_cifar(config.data, dataset=config.dataset,
                        cache_dir=config.cache_dir or default_cache_dir(), download=False,
                        workers=config.workers, train_dir=config.train_dir, val_dir=config.val_dir)
    x, y = arrays["train_x"], arrays["train_y"]
    if not 2 <= images <= len(x):
        raise gatekit.GatekitError(f"--images must lie in [2, {len(x)}] (the training split), "
                                   f"got {images}")
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:images]
    return TensorBatches(x[keep], y[keep], batch_size=1000, train=False, dist=dist,
                         mean=CIFAR_MEAN, std=CIFAR_STD, seed=seed,
                         channels_last=config.channels_last_on)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("weights", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--results", type=Path, default=None,
                   help="the run's results JSON (default: WEIGHTS with suffix .json)")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.pt and OUT.json")
    p.add_argument("--images", type=int, default=5000, help="calibration images (training split)")
    p.add_argument("--seed", type=int, default=0, help="which training images")
    p.add_argument("--budget", type=float, action="append", default=None, metavar="B",
                   help="evaluate the test split at budget B (repeatable; default: the run's)")
    p.add_argument("--cache-dir", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        results_path = args.results or args.weights.with_suffix(".json")
        if not results_path.is_file() or not args.weights.is_file():
            missing = args.weights if not args.weights.is_file() else results_path
            raise gatekit.GatekitError(f"no file {missing}; expected a run's weights and its "
                                       f"results file beside them (or --results)")
        results = load_results(results_path, ROOT)
        if "calibrated_from" in json.loads(results_path.read_text()):
            raise gatekit.GatekitError(f"{results_path} is calibrated already; pass the run's own")
        config = run_config(results, args.data, args.cache_dir)
        if config.budget_range is None:
            raise gatekit.GatekitError(f"{results_path} is not a budget-input run (--budget-range)")
        budgets = args.budget or [q["budget"] for q in results["budget_input"]["points"]]
        dist = setup("cpu")
        loaded = load_data(config, dist)
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        model = rebuild(results, config, state, len(loaded.classes)).eval()
        if config.channels_last_on:
            model = model.to(memory_format=torch.channels_last)
        probe = models.probe(loaded.image_size)
        costs = gatekit.gate_costs(model, probe, downstream=config.count_downstream)
        dense = flop_counts(model, loaded.image_size, None, config, budget=1.0)["backbone_dense"]
        calib = calibration_batches(config, args.images, args.seed, dist)
        m = gatekit.calibrate_budget(model, calib, costs, dense_flops=dense)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.out.with_suffix(".pt"))
        points = []
        for b in budgets:
            numbers, stats = evaluate_with_stats(model, results, config, loaded, b)
            s = gate_report_1_99(stats)
            points.append({**numbers, "open_fraction": float(stats.open_fraction.mean()),
                           "input_dependent_fraction_1_99": s["input_dependent"] / s["num_gates"],
                           "gate_stats_1_99": s})
            print(f"budget {b:g}: {100 * numbers['test_error']:.2f}% test error, backbone at "
                  f"{numbers['backbone_flops_fraction']:.3f} of its dense FLOPs", flush=True)
        out = {
            "command": " ".join(["cifar10_calibrate_budget.py", *(argv if argv is not None
                                                                  else sys.argv[1:])]),
            "calibrated_from": {"file": rel(results_path), "weights": rel(args.weights)},
            "epochs": results["epochs"],
            "calibration": {"images": args.images, "split": "train", "seed": args.seed,
                            "downstream": config.count_downstream, "dense_flops": dense,
                            "map": {k: getattr(m, k).tolist()
                                    for k in ("requested", "knob", "achieved")}},
            "budget_input": {"range": results["budget_input"]["range"], "points": points},
        }
        args.out.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {rel(args.out.with_suffix('.pt'))} and {rel(args.out.with_suffix('.json'))}")
    except gatekit.GatekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
