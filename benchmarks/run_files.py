"""Reading the CIFAR-10 runs' files, for the benchmarks that summarise them.

A run is its ``results.json`` (as ``examples/cifar_gaternet.py`` or
``benchmarks/cifar10_static_pruning.py`` write it, committed as ``FILE.json``) with its weights
``FILE.pt`` beside it; a calibrated budget-input run is the file
``cifar10_calibrate_budget.py`` writes, which names the run it calibrated in
``calibrated_from``.  Every number the summaries report is read from these files, never
typed; a file that is not what a summary needs ends the summary with a message saying why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "cifar10"
POINT_KEYS = ("budget", "test_error", "backbone_flops_fraction", "total_flops_fraction_of_plain")


def rel(path: Path) -> str:
    """Relative to the repository root (where the results live), else absolute."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def load(path: Path) -> dict[str, Any]:
    """A run's results file, with the keys the summaries read and its weights beside it."""
    try:
        r = json.loads(path.read_text())
    except FileNotFoundError:
        sys.exit(f"error: {path} does not exist; expected a run's results.json")
    for key in ("command", "epochs", "val_error", "flops", "seed"):
        if key not in r:
            sys.exit(f"error: {path} has no {key!r}; expected a results.json of the example scripts")
    if not path.with_suffix(".pt").is_file():
        sys.exit(f"error: {path.with_suffix('.pt')} does not exist; commit the run's weights "
                 "beside its results (benchmarks/cifar10_evaluate.py --export-weights)")
    return r


def backbone_fraction(r: dict[str, Any]) -> float:
    """``(flops.at_open_fraction - flops.gater) / flops.backbone_dense`` (no gater for a plain
    or static run)."""
    f = r["flops"]
    return (f["at_open_fraction"] - f.get("gater", 0)) / f["backbone_dense"]


def entry(path: Path, kind: str) -> dict[str, Any]:
    """A run's row in a summary: ``kind`` is ``plain`` (the dense backbone), ``static`` (a
    statically pruned run) or ``budget`` (a gated run trained for a budget)."""
    r = load(path)
    out: dict[str, Any] = {"file": rel(path), "weights": rel(path.with_suffix(".pt")),
                           "seed": r["seed"], "test_error": r["val_error"]}
    if kind == "plain":
        if r["gated"] or "backbone_build" in r:
            sys.exit(f"error: {path} is not a plain run of the dense backbone")
        return out
    if kind == "static" and (r["gated"] or "backbone_build" not in r):
        sys.exit(f"error: {path} is not a statically pruned run (cifar10_static_pruning.py)")
    if kind == "budget" and not r["gated"]:
        sys.exit(f"error: {path} is not a gated run")
    out["backbone_flops_fraction"] = backbone_fraction(r)
    if kind == "budget":
        s = r["gate_stats_1_99"]
        out["total_flops_fraction_of_plain"] = r["flops"]["at_open_fraction"] / r["flops"]["backbone_dense"]
        out["input_dependent_fraction_1_99"] = s["input_dependent"] / s["num_gates"]
    return out


def load_budget_run(path: Path) -> dict[str, Any]:
    """A budget-input run's results file, or the file of its calibration
    (``cifar10_calibrate_budget.py``: ``calibrated_from`` names the run, whose own file and
    weights must be there too)."""
    try:
        r = json.loads(path.read_text())
    except FileNotFoundError:
        sys.exit(f"error: {path} does not exist; expected a run's results.json")
    if "calibrated_from" not in r:
        return load(path)
    load(ROOT / r["calibrated_from"]["file"])
    if not path.with_suffix(".pt").is_file():
        sys.exit(f"error: {path.with_suffix('.pt')} does not exist; commit the calibrated "
                 "weights beside the calibration's results")
    return r


def budget_run_summary(run: Path) -> dict[str, Any]:
    """A budget-input run's points (``budget_input.points``: :data:`POINT_KEYS` of each),
    with its file, weights and epochs."""
    r = load_budget_run(run)
    info = r.get("budget_input")
    if not info or not info.get("points"):
        sys.exit(f"error: {run} has no budget_input.points; expected a run trained with "
                 "--budget-range (examples/cifar_gaternet.py)")
    return {"file": rel(run), "weights": rel(run.with_suffix(".pt")), "epochs": r["epochs"],
            "points": [{k: p[k] for k in POINT_KEYS} for p in info["points"]]}


def final_budget(path: Path) -> float:
    """The budget a separately trained budget run ends at (``--budget B`` or ``A:B:K``)."""
    text = load(path).get("gate_losses", {}).get("budget")
    if text is None:
        sys.exit(f"error: {path} was not trained with --budget")
    parts = str(text).split(":")
    return float(parts[1] if len(parts) >= 2 else parts[0])  # A:B and A:B:K end at B


def finish_plot(fig: Any, ax: Any, title: str, path: Path) -> None:
    """The axes, title, grid and legend of an accuracy-against-FLOPs plot, saved to ``path``."""
    ax.set_xlabel("FLOPs per image, fraction of the dense ResNet-20")
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower right")
    fig.savefig(path, dpi=120)
