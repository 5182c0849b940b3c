"""One model for any budget on CIFAR-10: its points, one JSON, one accuracy-against-FLOPs plot.

    python -m benchmarks.cifar10_any_budget benchmarks/results/cifar10/any_budget_s0.json \\
        --budget benchmarks/results/cifar10/vs_budget_s0.json --budget ...s1.json \\
        --static benchmarks/results/cifar10/vs_static_s0.json --static ...s1.json \\
        --plain benchmarks/results/cifar10/vs_plain_s0.json

``RUN.json`` is the ``results.json`` of a run trained with ``--budget-range`` (one model whose
gater reads the budget) and ``RUN.pt`` beside it its weights
(``python -m benchmarks.cifar10_evaluate RUN.pt --data ...`` rechecks every point).  Its
points are read from ``budget_input.points`` of that file, never typed.  The separately
trained budget runs (``--budget B`` or ``--budget A:B:K``), the statically pruned runs and
the plain runs are read as ``cifar10_gating_vs_pruning.py`` reads them, for the comparison:
all runs must have the same number of epochs.  The targets are printed, not stored.

``RUN.json`` may be what ``cifar10_calibrate_budget.py`` wrote (the run with a calibrated
budget map, its weights ``RUN.pt``); ``--before FILE.json`` then draws the run before
calibration as well, in grey.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.run_files import (  # the same reading of run files
    OUT,
    budget_run_summary,
    entry,
    final_budget,
    finish_plot,
    load,
    load_budget_run,
    rel,
)


def targets(summary: dict[str, Any], budget: list[dict[str, Any]], budget_at: float,
            plain: list[dict[str, Any]]) -> list[str]:
    """The issue's four targets, each with its numbers and MET / MISSED."""

    def line(ok: bool, text: str) -> str:
        return f"{'MET   ' if ok else 'MISSED'} {text}"

    points = sorted(summary["points"], key=lambda p: p["budget"])
    off = max(points, key=lambda p: abs(p["backbone_flops_fraction"] - p["budget"]))
    lines = [line(all(abs(p["backbone_flops_fraction"] - p["budget"]) <= 0.03 for p in points),
                  f"achieved backbone FLOPs within 0.03 of every budget (worst: "
                  f"{off['backbone_flops_fraction']:.3f} at budget {off['budget']:g})")]
    at = [p for p in points if abs(p["budget"] - budget_at) < 1e-9]
    mean_budget = statistics.mean(r["test_error"] for r in budget)
    if at:
        lines.append(line(abs(at[0]["test_error"] - mean_budget) <= 0.003,
                          f"at budget {budget_at:g}: {100 * at[0]['test_error']:.2f}% within 0.3 of "
                          f"the budget runs' {100 * mean_budget:.2f}%"))
    else:
        lines.append(line(False, f"no point at the budget runs' budget {budget_at:g}: "
                                 "add it to --eval-budgets"))
    full = [p for p in points if p["budget"] == 1.0]
    mean_plain = statistics.mean(r["test_error"] for r in plain)
    if full:
        lines.append(line(full[0]["test_error"] <= mean_plain + 0.003,
                          f"at budget 1: {100 * full[0]['test_error']:.2f}% <= plain "
                          f"{100 * mean_plain:.2f}% + 0.3"))
    worst = max((b["test_error"] - a["test_error"], a["budget"], b["budget"])
                for i, a in enumerate(points) for b in points[i + 1:])
    lines.append(line(worst[0] <= 0.003,
                      f"monotone: more budget never costs over 0.3 points (worst: {100 * worst[0]:+.2f} "
                      f"from budget {worst[1]:g} to {worst[2]:g})"))
    return lines


def plot(summary: dict[str, Any], budget_range: str, others: dict[str, list[dict[str, Any]]],
         path: Path, before: dict[str, Any] | None = None) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    points = sorted(summary["points"], key=lambda p: p["budget"])
    acc = [100 * (1 - p["test_error"]) for p in points]
    ax.plot([p["backbone_flops_fraction"] for p in points], acc, "o-", color="tab:blue",
            label=f"one model, budget range {budget_range}: backbone")
    ax.plot([p["total_flops_fraction_of_plain"] for p in points], acc, "o--", color="tab:blue",
            mfc="none", linewidth=0.8, label="one model, gater included")
    if before is not None:
        old = sorted(before["points"], key=lambda p: p["budget"])
        ax.plot([p["backbone_flops_fraction"] for p in old], [100 * (1 - p["test_error"]) for p in old],
                ".:", color="tab:gray", label="the same model before calibration: backbone")
    for p, a in zip(points, acc):
        ax.annotate(f"{p['budget']:g}", (p["backbone_flops_fraction"], a), fontsize=6,
                    textcoords="offset points", xytext=(3, -8))
    styles = {"budget": ("tab:orange", "D", "budget run"), "static": ("tab:green", "^", "static"),
              "plain": ("tab:gray", "s", "plain")}
    for kind, (color, marker, name) in styles.items():
        for r in others[kind]:
            a = 100 * (1 - r["test_error"])
            ax.scatter([r.get("backbone_flops_fraction", 1.0)], [a], color=color, marker=marker,
                       s=50, zorder=3, label=f"{name} (seed {r['seed']}): {a:.2f}%")
    # a point far below the others (a budget the model cannot serve) would flatten the
    # rest: the axis stops 2 points below the lowest of the others and marks it at the edge
    others_acc = sorted(acc)
    floor = min(a for a in others_acc if a >= others_acc[-1] - 10.0) - 2.0
    below = [(p, a) for p, a in zip(points, acc) if a < floor]
    if below:
        ax.set_ylim(bottom=floor)
        for p, a in below:
            x = p["backbone_flops_fraction"]
            ax.scatter([x], [floor], marker="v", color="tab:blue", s=60, zorder=4, clip_on=False)
            ax.annotate(f"budget {p['budget']:g}: {a:.1f}% (off the axis)", (x, floor),
                        textcoords="offset points", xytext=(6, 6), fontsize=7, color="tab:blue")
    finish_plot(fig, ax, f"ResNet-20, {summary['epochs']} epochs from one plain start: one model "
                "for any budget", path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("run", type=Path, metavar="RUN.json")
    for kind in ("budget", "static", "plain"):
        p.add_argument(f"--{kind}", type=Path, action="append", required=True, metavar="FILE.json")
    p.add_argument("--before", type=Path, default=None, metavar="FILE.json",
                   help="the run before calibration, drawn in grey")
    p.add_argument("--out", type=Path, default=OUT / "any_budget.json")
    p.add_argument("--plot", type=Path, default=OUT / "any_budget_accuracy_flops.png")
    args = p.parse_args(argv)
    summary = budget_run_summary(args.run)
    others = {kind: [entry(f, kind) for f in getattr(args, kind)] for kind in ("budget", "static", "plain")}
    epochs = {summary["epochs"], *(load(f)["epochs"] for k in others for f in getattr(args, k))}
    if len(epochs) != 1:
        sys.exit(f"error: the runs differ in epochs ({sorted(epochs)}); compare equal training")
    at = {final_budget(f) for f in args.budget}
    if len(at) != 1:
        sys.exit(f"error: the budget runs end at different budgets ({sorted(at)})")
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    before = budget_run_summary(args.before) if args.before is not None else None
    plot(summary, load_budget_run(args.run)["budget_input"]["range"], others, args.plot, before)
    print(json.dumps(summary, indent=1))
    print("\n".join(targets(summary, others["budget"], at.pop(), others["plain"])))
    print(f"wrote {rel(args.out)} and {rel(args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
