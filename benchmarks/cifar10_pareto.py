"""Accuracy against FLOPs on CIFAR-10: one gated model at every budget against static pruning.

    python -m benchmarks.cifar10_pareto \\
        --plain benchmarks/results/cifar10/vs_plain_s0.json \\
        --static benchmarks/results/cifar10/static_f030_s0.json --static ... \\
        --any-budget benchmarks/results/cifar10/pareto_anyb_s0_calibrated.json --any-budget ... \\
        --dedicated benchmarks/results/cifar10/vs_budget_conv_s0.json --dedicated ...

Writes ``pareto.json`` and two plots: test error against the backbone's FLOPs, and against
the whole model's FLOPs (gater included).  Every number is read from the run files, never
typed, as ``cifar10_gating_vs_pruning.py`` reads them: ``--plain`` and ``--static`` are
``results.json`` files of ``examples/cifar_gaternet.py --no-gate`` and
``benchmarks/cifar10_static_pruning.py`` (a static run's ``budget`` is its ``--flops``, its
``backbone_flops_fraction`` what the pruned model kept); ``--any-budget`` is a budget-input
run, usually as ``cifar10_calibrate_budget.py`` wrote it (its ``budget_input.points``);
``--dedicated`` (optional) a run trained for one budget (``--budget``).  Each file's weights
(``FILE.pt``) must be beside it: ``python -m benchmarks.cifar10_evaluate FILE.pt --data ...``
rechecks it.  All runs must have the same number of epochs.

The targets (means over seeds; each static budget compared with the one model's point
nearest to the FLOPs the pruned model kept, within 0.02 of them) are printed, not stored.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.run_files import (
    OUT,
    POINT_KEYS,
    ROOT,
    budget_run_summary,
    entry,
    final_budget,
    load,
    load_budget_run,
    rel,
)

FLOPS_WINDOW = 0.02  # a static point and the one model's are compared within this


def static_budget(path: Path) -> float:
    """The ``--flops`` a static run was pruned to, read from its command."""
    words = shlex.split(load(path)["command"])
    for i, w in enumerate(words):
        if w == "--flops" and i + 1 < len(words):
            return float(words[i + 1])
        if w.startswith("--flops="):
            return float(w.split("=", 1)[1])
    sys.exit(f"error: {path}'s command has no --flops; expected a cifar10_static_pruning.py run")


def any_budget_entry(path: Path) -> dict[str, Any]:
    """The budget-input run's summary (``run_files.budget_run_summary``: file, weights,
    epochs, points), with its seed, range, whether it is calibrated and its training seconds
    per epoch."""
    summary = budget_run_summary(path)
    r = load_budget_run(path)
    run = load(ROOT / r["calibrated_from"]["file"]) if "calibrated_from" in r else r
    return {**summary, "seed": run["seed"], "budget_range": r["budget_input"]["range"],
            "calibrated": "calibrated_from" in r,
            "train_seconds_per_epoch": run.get("train_seconds_per_epoch")}


def summarise(plain: list[Path], static: list[Path], any_budget: list[Path],
              dedicated: list[Path]) -> dict[str, Any]:
    anyb = [any_budget_entry(p) for p in any_budget]
    epochs = {load(p)["epochs"] for p in (*plain, *static, *dedicated)} | {a["epochs"] for a in anyb}
    if len(epochs) != 1:
        sys.exit(f"error: the runs differ in epochs ({sorted(epochs)}); compare equal training")
    for a in anyb:
        del a["epochs"]
    statics = [{"budget": static_budget(p), **entry(p, "static")} for p in static]
    dedicated_entries = [{"budget": final_budget(p), **entry(p, "budget")} for p in dedicated]
    return {"epochs": epochs.pop(), "plain": [entry(p, "plain") for p in plain],
            "static": sorted(statics, key=lambda s: (s["budget"], s["seed"])),
            "any_budget": anyb, "dedicated": dedicated_entries}


def _by_budget(entries: list[dict[str, Any]]) -> dict[float, list[dict[str, Any]]]:
    out: dict[float, list[dict[str, Any]]] = {}
    for e in entries:
        out.setdefault(e["budget"], []).append(e)
    return out


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.mean(r[key] for r in rows)


def one_model_mean(summary: dict[str, Any]) -> dict[float, dict[str, float]]:
    """The one model's points averaged over its seeds, by requested budget (only budgets that
    every seed was evaluated at)."""
    runs = summary["any_budget"]
    common = set.intersection(*({p["budget"] for p in r["points"]} for r in runs)) if runs else set()
    out = {}
    for b in sorted(common):
        rows = [next(p for p in r["points"] if p["budget"] == b) for r in runs]
        out[b] = {k: _mean(rows, k) for k in POINT_KEYS if k != "budget"}
    return out


MARGIN = 0.003  # the best gated model's error at least this far below static's
ONE_TO_DEDICATED = 0.002  # the one model at most this far above the dedicated runs
TARGET_BUDGETS = (0.3, 0.4, 0.565)  # static --flops where the margin is asked


def dedicated_mean(summary: dict[str, Any]) -> dict[float, dict[str, Any]]:
    """The dedicated runs averaged over seeds, by budget: errors, FLOPs, input dependence,
    the seeds' errors and their spread (max - min)."""
    out = {}
    for b, rows in sorted(_by_budget(summary["dedicated"]).items()):
        errors = [r["test_error"] for r in rows]
        out[b] = {k: _mean(rows, k) for k in ("test_error", "backbone_flops_fraction",
                                              "total_flops_fraction_of_plain",
                                              "input_dependent_fraction_1_99")}
        out[b].update(seeds=len(rows), errors=errors, spread=max(errors) - min(errors))
    return out


def _nearest(points: dict[float, dict[str, Any]], flops: float) -> tuple[float, dict[str, Any]] | None:
    """The point whose total FLOPs (gater included) is nearest ``flops``, if within the window."""
    if not points:
        return None
    b = min(points, key=lambda k: abs(points[k]["total_flops_fraction_of_plain"] - flops))
    close = abs(points[b]["total_flops_fraction_of_plain"] - flops) <= FLOPS_WINDOW
    return (b, points[b]) if close else None


def _best_within(points: dict[float, dict[str, Any]], flops: float
                 ) -> tuple[float, dict[str, Any]] | None:
    """Of the points whose total FLOPs is within the window of ``flops``, the one with the
    lowest error (dedicated runs of two recipes may stand near one static budget)."""
    close = {b: p for b, p in points.items()
             if abs(p["total_flops_fraction_of_plain"] - flops) <= FLOPS_WINDOW}
    if not close:
        return None
    b = min(close, key=lambda k: close[k]["test_error"])
    return b, close[b]


def matching_flops(points: list[tuple[float, float]], error: float) -> float | None:
    """The fewest FLOPs at which a curve of ``(flops, error)`` points reaches ``error``:
    linear between neighbouring points, None when no point is that good."""
    pts = sorted(points)
    for i, (f, e) in enumerate(pts):
        if e <= error:
            if i == 0:
                return f
            f0, e0 = pts[i - 1]
            return f0 + (f - f0) * (e0 - error) / (e0 - e)
    return None


def targets(summary: dict[str, Any]) -> list[str]:
    """The issue's targets, each with its numbers and MET / MISSED: at each target budget the
    best gated model (the best dedicated budget and the one model's nearest point, compared
    at total FLOPs within ``FLOPS_WINDOW`` of what the pruned model kept) at least ``MARGIN``
    below static pruning, and the one model within ``ONE_TO_DEDICATED`` of those dedicated
    runs."""
    def line(ok: bool, text: str) -> str:
        return f"{'MET   ' if ok else 'MISSED'} {text}"

    one, dedicated = one_model_mean(summary), dedicated_mean(summary)
    statics = _by_budget(summary["static"])
    lines = []
    for b in TARGET_BUDGETS:
        rows = statics.get(b)
        if rows is None:
            lines.append(line(False, f"at {b:g}: no static run"))
            continue
        s_err, s_f = _mean(rows, "test_error"), _mean(rows, "backbone_flops_fraction")
        arms = {}
        o, near = _nearest(one, s_f), _best_within(dedicated, s_f)
        if o is not None:
            arms[f"one model (budget {o[0]:g})"] = o[1]
        if near is not None:
            arms[f"dedicated (budget {near[0]:g}, {near[1]['seeds']} seeds)"] = near[1]
        if not arms:
            lines.append(line(False, f"at {b:g}: no gated model within {FLOPS_WINDOW} of "
                                     f"static's FLOPs {s_f:.3f}"))
            continue
        name, best = min(arms.items(), key=lambda kv: kv[1]["test_error"])
        lines.append(line(
            best["test_error"] <= s_err - MARGIN,
            f"at {b:g}: best gated, {name}, {100 * best['test_error']:.2f}% <= static "
            f"{100 * s_err:.2f}% - {100 * MARGIN:.1f} (total FLOPs "
            f"{best['total_flops_fraction_of_plain']:.3f} vs {s_f:.3f})"))
        if near is not None:
            d = near[1]
            ok = o is not None and o[1]["test_error"] <= d["test_error"] + ONE_TO_DEDICATED
            got = f"{100 * o[1]['test_error']:.2f}%" if o is not None else "no point"
            lines.append(line(ok, f"at {b:g}: one model {got} <= dedicated "
                                  f"{100 * d['test_error']:.2f}% + {100 * ONE_TO_DEDICATED:.1f}"))
    worst = max(((abs(p["backbone_flops_fraction"] - p["budget"]), p["budget"], r["seed"])
                 for r in summary["any_budget"] for p in r["points"]), default=(1.0, None, None))
    lines.append(line(worst[0] <= 0.03, f"achieved backbone FLOPs within 0.03 of every budget "
                                        f"(worst {worst[0]:.4f}, budget {worst[1]}, seed {worst[2]})"))
    return lines


def report(summary: dict[str, Any]) -> list[str]:
    """What the results page reads, beside the targets: each dedicated budget's mean, spread
    and input dependence, and the FLOPs at which the gated curves reach static's error at 0.40."""
    out = []
    for b, d in dedicated_mean(summary).items():
        out.append(f"dedicated {b:g}: {100 * d['test_error']:.2f}% (seeds "
                   f"{', '.join(f'{100 * e:.2f}' for e in d['errors'])}; spread "
                   f"{100 * d['spread']:.2f}), total FLOPs {d['total_flops_fraction_of_plain']:.3f}, "
                   f"input-dependent {100 * d['input_dependent_fraction_1_99']:.0f}% of gates")
    rows = _by_budget(summary["static"]).get(0.4)
    if rows:
        s_err = _mean(rows, "test_error")
        one = one_model_mean(summary)
        curves = {"one model": [(p["total_flops_fraction_of_plain"], p["test_error"])
                                for p in one.values()],
                  "dedicated runs": [(d["total_flops_fraction_of_plain"], d["test_error"])
                                     for d in dedicated_mean(summary).values()]}
        for name, pts in curves.items():
            f = matching_flops(pts, s_err)
            out.append(f"{name} reaches static's error at 0.40 ({100 * s_err:.2f}%) at "
                       + (f"{f:.3f} of the FLOPs" if f is not None else "no measured FLOPs"))
    return out


def plot(summary: dict[str, Any], x_key: str, path: Path) -> None:
    """Test error against FLOPs (``x_key``: backbone or total), every arm of the summary."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    total = x_key == "total_flops_fraction_of_plain"

    def x_of(row: dict[str, Any]) -> float:  # a static or plain model has no gater
        return row.get(x_key, row.get("backbone_flops_fraction", 1.0))

    statics = _by_budget(summary["static"])
    ax.scatter([x_of(s) for s in summary["static"]], [100 * s["test_error"] for s in summary["static"]],
               color="tab:green", marker="^", s=28, alpha=0.6, label="static pruning (each seed)")
    xs = sorted(statics)
    ax.plot([statistics.mean(x_of(s) for s in statics[b]) for b in xs],
            [100 * _mean(statics[b], "test_error") for b in xs], "^-", color="tab:green",
            label="static pruning (mean)")
    for r in summary["any_budget"]:
        pts = sorted(r["points"], key=lambda p: p["budget"])
        ax.plot([p[x_key] for p in pts], [100 * p["test_error"] for p in pts], ".:",
                color="tab:blue", alpha=0.6, label=f"one model, seed {r['seed']}")
    one = one_model_mean(summary)
    ax.plot([one[b][x_key] for b in one], [100 * one[b]["test_error"] for b in one], "o-",
            color="tab:blue", label="one model (mean of seeds)")
    if summary["dedicated"]:
        ax.scatter([x_of(d) for d in summary["dedicated"]],
                   [100 * d["test_error"] for d in summary["dedicated"]], color="tab:orange",
                   marker="D", s=36, zorder=3, label="a run trained for its one budget")
    for p in summary["plain"]:
        ax.scatter([1.0], [100 * p["test_error"]], color="tab:gray", marker="s", s=44, zorder=3,
                   label=f"plain (seed {p['seed']})")
    ax.set_ylabel("CIFAR-10 test error (%)")
    # errors far above the rest (a budget a model cannot serve) would flatten the curve
    errors = sorted(100 * p["test_error"] for r in summary["any_budget"] for p in r["points"])
    errors += [100 * r["test_error"] for k in ("static", "dedicated", "plain") for r in summary[k]]
    top = min(max(errors), statistics.median(errors) + 12.0)
    ax.set_ylim(min(errors) - 0.5, top + 0.5)
    what = "the whole model, gater included" if total else "the backbone"
    ax.set_xlabel(f"FLOPs per image of {what}, fraction of the dense ResNet-20")
    ax.set_title(f"ResNet-20, {summary['epochs']} epochs from one plain start: one gated model "
                 "at every budget against static pruning", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper right")
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    for kind in ("plain", "static", "any-budget"):
        p.add_argument(f"--{kind}", type=Path, action="append", required=True, metavar="FILE.json")
    p.add_argument("--dedicated", type=Path, action="append", default=[], metavar="FILE.json")
    p.add_argument("--out", type=Path, default=OUT / "pareto.json")
    p.add_argument("--plot", type=Path, default=OUT / "pareto_backbone_flops.png",
                   help="against backbone FLOPs; the plot against total FLOPs is written beside "
                        "it with 'backbone' replaced by 'total' in the name")
    args = p.parse_args(argv)
    summary = summarise(args.plain, args.static, args.any_budget, args.dedicated)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, "backbone_flops_fraction", args.plot)
    total = args.plot.with_name(args.plot.name.replace("backbone", "total"))
    if total == args.plot:
        total = args.plot.with_name(args.plot.stem + "_total" + args.plot.suffix)
    plot(summary, "total_flops_fraction_of_plain", total)
    print(json.dumps(summary, indent=1))
    print("\n".join(report(summary)))
    print("\n".join(targets(summary)))
    print(f"wrote {rel(args.out)}, {rel(args.plot)} and {rel(total)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
