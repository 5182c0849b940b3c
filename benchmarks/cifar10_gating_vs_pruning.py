"""Gating against static pruning on CIFAR-10: one JSON, one accuracy-against-FLOPs plot.

    python -m benchmarks.cifar10_gating_vs_pruning \\
        --plain benchmarks/results/cifar10/vs_plain_s0.json \\
        --static benchmarks/results/cifar10/vs_static_s0.json --static ...s1.json \\
        --budget benchmarks/results/cifar10/vs_budget_s0.json --budget ...s1.json

Each ``FILE.json`` is a run's ``results.json`` (``examples/cifar_gaternet.py`` or
``benchmarks/cifar10_static_pruning.py``) and ``FILE.pt`` beside it the run's weights
(``python -m benchmarks.cifar10_evaluate FILE.pt --data ...`` rechecks them).  Every number
is read from those files, never typed: ``test_error`` is ``val_error``;
``backbone_flops_fraction`` is ``(flops.at_open_fraction - flops.gater) / flops.backbone_dense``
(no gater for a static run); ``total_flops_fraction_of_plain`` is
``flops.at_open_fraction / flops.backbone_dense``, gater included;
``input_dependent_fraction_1_99`` is ``gate_stats_1_99.input_dependent / num_gates``.  All runs
must have the same number of epochs.  The targets (budget against static and plain) are
printed, not stored.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.run_files import OUT, entry, finish_plot, load, rel


def summarise(plain: list[Path], static: list[Path], budget: list[Path]) -> dict[str, Any]:
    epochs = {load(p)["epochs"] for p in (*plain, *static, *budget)}
    if len(epochs) != 1:
        sys.exit(f"error: the runs differ in epochs ({sorted(epochs)}); compare equal training")
    return {"epochs": epochs.pop(),
            "plain": [entry(p, "plain") for p in plain],
            "static": [entry(p, "static") for p in static],
            "budget": [entry(p, "budget") for p in budget]}


def targets(summary: dict[str, Any]) -> list[str]:
    """The issue's four targets, each with its numbers and MET / MISSED."""
    mean = {k: statistics.mean(r["test_error"] for r in summary[k]) for k in ("plain", "static", "budget")}
    budget, static = summary["budget"], summary["static"]
    fb = statistics.mean(r["backbone_flops_fraction"] for r in budget)
    fs = statistics.mean(r["backbone_flops_fraction"] for r in static)
    total = max(r["total_flops_fraction_of_plain"] for r in budget)
    dep = min(r["input_dependent_fraction_1_99"] for r in budget)

    def line(ok: bool, text: str) -> str:
        return f"{'MET   ' if ok else 'MISSED'} {text}"

    pts = 100
    return [
        line(mean["budget"] <= mean["static"] - 0.005 and abs(fb - fs) <= 0.02,
             f"budget error {pts * mean['budget']:.2f}% <= static {pts * mean['static']:.2f}% - 0.5 "
             f"at equal backbone FLOPs ({fb:.3f} vs {fs:.3f}, within 0.02)"),
        line(mean["budget"] <= mean["plain"] + 0.005 and fb <= 0.60,
             f"budget error {pts * mean['budget']:.2f}% <= plain {pts * mean['plain']:.2f}% + 0.5 "
             f"with backbone FLOPs {fb:.3f} <= 0.60"),
        line(total <= 0.70, f"whole gated model at {total:.3f} <= 0.70 of the plain backbone's FLOPs"),
        line(dep >= 0.20, f"input-dependent gates (1%/99%) {dep:.3f} >= 0.20"),
    ]


def plot(summary: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    styles = {"plain": ("tab:gray", "o"), "static": ("tab:green", "^"), "budget": ("tab:orange", "D")}
    for kind, (color, marker) in styles.items():
        for r in summary[kind]:
            acc = 100 * (1 - r["test_error"])
            x = r.get("backbone_flops_fraction", 1.0)
            label = f"{kind} (seed {r['seed']}): {acc:.2f}%"
            ax.scatter([x], [acc], color=color, marker=marker, s=60, zorder=3,
                       label=label + f" at {x:.3f}" if kind != "plain" else label)
            if "total_flops_fraction_of_plain" in r:  # the gater's cost, drawn as a line
                total = r["total_flops_fraction_of_plain"]
                ax.scatter([total], [acc], facecolors="none", edgecolors=color, marker=marker, s=60,
                           zorder=3, label=f"{kind} (seed {r['seed']}), gater included: {total:.3f}")
                ax.plot([x, total], [acc, acc], color=color, linewidth=0.8)
    finish_plot(fig, ax, f"ResNet-20, {summary['epochs']} epochs from one plain start: gating vs "
                "static pruning", path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    for kind in ("plain", "static", "budget"):
        p.add_argument(f"--{kind}", type=Path, action="append", required=True, metavar="FILE.json")
    p.add_argument("--out", type=Path, default=OUT / "gating_vs_pruning.json")
    p.add_argument("--plot", type=Path, default=OUT / "gating_vs_pruning_accuracy_flops.png")
    args = p.parse_args(argv)
    summary = summarise(args.plain, args.static, args.budget)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, args.plot)
    print(json.dumps(summary, indent=1))
    print("\n".join(targets(summary)))
    print(f"wrote {rel(args.out)} and {rel(args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
