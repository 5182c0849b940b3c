"""Summarise the CIFAR-10 "gating that pays" runs: one JSON, one accuracy-against-FLOPs plot.

    python -m benchmarks.cifar10_gating_pays \\
        --plain benchmarks/results/cifar10/finetune10_plain.json \\
        --gated benchmarks/results/cifar10/finetune10_gated.json \\
        --budget benchmarks/results/cifar10/finetune10_budget.json

Every number is read from the runs' ``results.json`` files (as ``examples/cifar_gaternet.py``
writes them), never typed: ``test_error`` is a file's ``val_error``; the input-dependent
fraction is ``gate_stats_1_99.input_dependent / num_gates`` (gates open for more than 1% and
fewer than 99% of the test images); the backbone's FLOPs fraction is
``(flops.at_open_fraction - flops.gater) / flops.backbone_dense``; the total against the
plain model is ``flops.at_open_fraction / plain flops.dense``.  Paths are written relative to
the repository root.  ``--extra-seed NAME=FILE`` adds a run of another seed under
``extra_seeds``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.run_files import OUT, ROOT, rel


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        sys.exit(f"error: {path} does not exist; expected a results.json of examples/cifar_gaternet.py")


def _gated_numbers(r: dict[str, Any], path: Path) -> dict[str, float]:
    for key in ("gate_stats_1_99", "flops"):
        if key not in r:
            sys.exit(f"error: {path} has no {key!r}; expected a gated run of this version of the "
                     "example scripts")
    s = r["gate_stats_1_99"]
    return {"input_dependent_fraction_1_99": s["input_dependent"] / s["num_gates"]}


def summarise(plain_path: Path, gated_path: Path, budget_path: Path,
              extra: list[tuple[str, Path]]) -> dict[str, Any]:
    plain, gated, budget = _load(plain_path), _load(gated_path), _load(budget_path)
    if plain.get("gated"):
        sys.exit(f"error: {plain_path} is a gated run; --plain takes the plain backbone's results")
    f = budget["flops"]
    out: dict[str, Any] = {
        "plain": {"file": rel(plain_path), "test_error": plain["val_error"]},
        "gated": {"file": rel(gated_path), "test_error": gated["val_error"],
                  **_gated_numbers(gated, gated_path)},
        "budget": {"file": rel(budget_path), "test_error": budget["val_error"],
                   "backbone_flops_fraction": (f["at_open_fraction"] - f["gater"]) / f["backbone_dense"],
                   **_gated_numbers(budget, budget_path),
                   "total_flops_fraction_of_plain": f["at_open_fraction"] / plain["flops"]["dense"]},
    }
    # Key order as specified: test_error, backbone fraction, input-dependent, total.
    b = out["budget"]
    out["budget"] = {k: b[k] for k in ("file", "test_error", "backbone_flops_fraction",
                                        "input_dependent_fraction_1_99",
                                        "total_flops_fraction_of_plain")}
    if extra:
        out["extra_seeds"] = [{"run": name, "file": rel(p), "test_error": _load(p)["val_error"]}
                              for name, p in extra]
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    styles = {"plain": ("tab:gray", "o"), "gated": ("tab:blue", "s"), "budget": ("tab:orange", "D")}
    for name, (color, marker) in styles.items():
        r = _load(ROOT / summary[name]["file"])
        flops = r["flops"]
        total = flops.get("at_open_fraction", flops["dense"])
        acc = 100 * (1 - summary[name]["test_error"])
        ax.scatter([total / 1e6], [acc], color=color, marker=marker, s=60, zorder=3,
                   label=f"{name}: {acc:.2f}% at {total / 1e6:.1f} MFLOPs")
        if "gater" in flops:  # the backbone alone, gater left out
            backbone = total - flops["gater"]
            ax.scatter([backbone / 1e6], [acc], facecolors="none", edgecolors=color, marker=marker,
                       s=60, zorder=3, label=f"{name}, backbone only: {backbone / 1e6:.1f} MFLOPs")
            ax.plot([backbone / 1e6, total / 1e6], [acc, acc], color=color, linewidth=0.8)
    ax.set_xlabel("FLOPs per image (millions; gated: at the test set's open gates)")
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    ax.set_title("CIFAR-10, ResNet-20 fine-tuned from one plain start", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plain", type=Path, required=True)
    p.add_argument("--gated", type=Path, required=True)
    p.add_argument("--budget", type=Path, required=True)
    p.add_argument("--extra-seed", action="append", default=[], metavar="NAME=FILE")
    p.add_argument("--out", type=Path, default=OUT / "gating_pays.json")
    p.add_argument("--plot", type=Path, default=OUT / "gating_pays_accuracy_flops.png")
    args = p.parse_args(argv)
    extra = []
    for item in args.extra_seed:
        name, sep, file = item.partition("=")
        if not sep:
            p.error(f"--extra-seed expects NAME=FILE, got {item!r}")
        extra.append((name, Path(file)))
    summary = summarise(args.plain, args.gated, args.budget, extra)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, args.plot)
    print(json.dumps(summary, indent=1))
    print(f"wrote {rel(args.out)} and {rel(args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
