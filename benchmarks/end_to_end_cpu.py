"""Does gating pay on the CPU end to end, gater included?  Batch 1 to 32.

Two models, each timed side by side in one process (interleaved round by round, medians):

- ``resnet50``: torchvision ResNet-50 gated with the ``"inner"`` policy at ``--size``
  (224), with a ResNet-18 trunk gater that reads the image resized to
  ``--resnet50-gater-size`` (112);
- ``resnet20``: CIFAR ResNet-20, ``"inner"`` policy, 32 px, with the gater ``--cifar-gater``:
  ``tiny`` (two strided 3x3 convs, 16 and 32 filters, on the image resized to 16 px:
  under 1% of ResNet-20's FLOPs; built here) or ``resnet20`` (a 16-px ResNet-20 trunk);
- ``resnet20_run``: a trained CIFAR GaterNet rebuilt from a run's committed weights,
  ``--cifar-run WEIGHTS`` (with ``WEIGHTS.json``, as ``benchmarks/cifar10_evaluate.py``
  rebuilds it; by default the budget run ``benchmarks/results/cifar10/vs_budget_s0.pt``,
  whose gater is a ResNet-20 trunk at 8 px), on the first test images of ``--cifar-data``
  (the CIFAR-10 data, as for ``cifar_gaternet.py --data``; random images without it).
  Besides the drawn gates, its rows with ``open == "trained"`` use the model's own gates.

Weights of ``resnet50`` and ``resnet20`` are random (BatchNorm statistics randomised so
that folding is not trivial).

Variants, each the whole forward from image to output:

- ``plain``: the backbone without gates (what gating has to beat);
- ``dense``: the gated model, gater and head included, computing every filter;
- ``skip_<mode>``: the gater and head, then ``gatekit.skip_compute(net, batching=mode)``'s
  backbone, for each ``--modes`` (at batch 1 every mode runs the same single pass, so only
  ``skip_pattern`` is timed);
- ``gater``: the gater and head alone (for reading the others).

Gates are drawn per sample: in every sample and site exactly ``round(open * gates)`` of
the gates are 1, chosen independently per sample (``--agree`` shares a fraction of them).
Each timed call of a gated variant runs the gater on the batch (its output is then
replaced by the drawn gates, which is what the speed-up depends on).

Output: JSON (``--out``, rewritten after every point, with the machine, the command and
the load average) and a PNG of the end-to-end speed-ups over ``plain``; a table on
stdout.  Timings need a quiet machine: run nothing else meanwhile.  The issue's grid::

    python -m benchmarks.end_to_end_cpu --threads 1 2 --batches 1 8 32 --open 0.3 0.5 0.7

A smoke run (seconds)::

    python -m benchmarks.end_to_end_cpu --models resnet20 --batches 1 2 --open 0.5 \\
        --threads 1 --rounds 1 --out /tmp/e2e.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

import gatekit
from benchmarks.cpu_timing import (  # the same timing and models for the CPU benchmarks
    build_model,
    build_run,
    cpu_model,
    random_gates,
    test_images,
    time_interleaved,
)

MODES = ("pattern", "union", "gather", "masked", "auto")
ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "results" / "cifar10" / "vs_budget_s0.pt"


def _shown(path: Path) -> str:
    """A path as the JSON records it: as given, or relative to the repository root if it is
    an absolute path inside it (as the default ``--cifar-run`` is)."""
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else str(path)


def flops(module: nn.Module, *inputs, **kwargs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs, **kwargs)
    return counter.get_total_flops()


def variants(plain, net, skips, x, gates, batch, folded=None):
    """The timed functions for one point; ``gates`` None: the gater's own gates.
    ``folded``: the plain backbone with its BatchNorms folded into the convs, as the skip
    path folds them (the fair plain baseline: a user can fold BatchNorm without gating)."""

    def gater():
        return net.estimator(net.gate_logits(x))

    fns = {"plain": lambda: plain(x), "gater": gater}
    if folded is not None:
        fns["plain_folded"] = lambda: folded(x)
    if gates is None:
        fns["dense"] = lambda: net(x)
        for mode, skip in skips.items():
            if batch > 1 or mode == "pattern":
                fns[f"skip_{mode}"] = lambda s=skip: s(x)
        return fns
    fns["dense"] = lambda: (gater(), net.backbone(x, gates=gates))[1]
    for mode, skip in skips.items():
        if batch > 1 or mode == "pattern":
            fns[f"skip_{mode}"] = lambda s=skip: (gater(), s.backbone(x, gates))[1]
    return fns


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["resnet50", "resnet20", "resnet20_run"],
                        choices=["resnet50", "resnet20", "resnet20_run"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--open", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--size", type=int, default=224, help="ResNet-50 image size")
    p.add_argument("--resnet50-gater-size", type=int, default=112)
    p.add_argument("--cifar-gater", choices=["tiny", "resnet20"], default="tiny")
    p.add_argument("--cifar-run", type=Path, default=RUN,
                        help="model resnet20_run: a CIFAR run's weights, its results file beside "
                             "them with suffix .json (default: %(default)s)")
    p.add_argument("--cifar-data", type=Path, default=None,
                        help="CIFAR-10 data for resnet20_run's test images (default: random images)")
    p.add_argument("--agree", type=float, default=0.0)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per point")
    p.add_argument("--calls", type=int, default=2, help="timed calls per variant per round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "end_to_end_cpu.json"
    )
    p.add_argument("--png", type=Path, default=None, help="default: --out with .png")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="also profile (torch.profiler) plain and skip-compute with the gater "
                             "at batch 1, 1 thread, 50%% open; tables written to DIR")
    return p


def main() -> None:
    args = parser().parse_args()

    machine = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    print(f"{machine['cpu']}, torch {machine['torch']}")
    results: list[dict] = []
    models: dict[str, dict] = {}
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for model in args.models:
            if model == "resnet20_run":
                plain, net, config = build_run(args.cifar_run)
                size, images = 32, test_images(config, args.cifar_data, max(args.batches), gen)
            else:
                plain, net, size = build_model(model, args)
                images = None
            skips = {mode: gatekit.skip_compute(net, batching=mode) for mode in args.modes}
            if "pattern" not in skips:
                skips["pattern"] = gatekit.skip_compute(net, batching="pattern")
            probe = torch.randn(1, 3, size, size)
            models[model] = {
                "plain_flops": flops(plain, probe),
                "gater_flops": flops(net.gate_logits, probe),
                "sites": len(net.sites),
                "num_gates": net.num_gates,
                "routes": [list(r) for r in skips["pattern"].routes],
            }
            if model == "resnet20_run":
                models[model]["weights"] = _shown(args.cifar_run)
                models[model]["images"] = "CIFAR-10 test" if args.cifar_data else "random"
            share = models[model]["gater_flops"] / models[model]["plain_flops"]
            print(f"\n{model}: gater {100 * share:.1f}% of the plain backbone's FLOPs")
            opens: list = list(args.open)
            if images is not None:
                opens.append("trained")
            for threads in args.threads:
                torch.set_num_threads(threads)
                for batch in args.batches:
                    if images is not None:
                        x = images[:batch]
                    else:
                        x = torch.randn(batch, 3, size, size, generator=gen)
                    for fraction in opens:
                        gates = None if fraction == "trained" else random_gates(
                            net, batch, fraction, gen, args.agree
                        )
                        row = point(args, model, plain, net, skips, x, gates, batch, threads, fraction)
                        if args.profile is not None and batch == 1 and threads == 1 and fraction == 0.5:
                            row["profile"] = profile(plain, net, skips["pattern"], x, gates, args.profile, model)
                        results.append(row)
                        write_report(args, machine, models, results)
                        print_row(row)
    png = args.png or args.out.with_suffix(".png")
    plot(results, png)
    print(f"wrote {args.out} and {png}")


def point(args, model, plain, net, skips, x, gates, batch, threads, fraction) -> dict:
    ref = net(x) if gates is None else net(x, gates=gates)
    used = net.last_gates
    diffs = {}
    for mode, skip in skips.items():
        out = skip(x) if gates is None else skip(x, gates=gates)
        diffs[mode] = (out - ref).abs().max().item()
    from torch.fx.experimental.optimization import fuse  # conv+BN folding for eval

    fns = variants(plain, net, skips, x, gates, batch, folded=fuse(plain))
    for fn in fns.values():  # warm-up: allocator, oneDNN caches, auto's measurement
        fn()
        fn()
    times = time_interleaved(fns, args.rounds, args.calls)
    med = {k: statistics.median(v) for k, v in times.items()}
    auto = skips.get("auto")
    return {
        "model": model,
        "threads": threads,
        "batch": batch,
        "open": fraction,
        "open_measured": used.mean().item(),
        "median_ms": med,
        "times_ms": times,
        "speedup_vs_plain": {k: med["plain"] / v for k, v in med.items() if k.startswith("skip") or k == "dense"},
        "speedup_vs_dense": {k: med["dense"] / v for k, v in med.items() if k.startswith("skip")},
        "speedup_vs_plain_folded": {k: med["plain_folded"] / v for k, v in med.items()
                                    if k.startswith("skip") or k == "dense"},
        # the rule's choice for this point's gates, its reason and estimates, beside the
        # measured best of the modes timed (the check: within 10% of it)
        **rule_check(auto, x, used, med),
        "max_abs_diff": diffs,
        "max_abs_output": ref.abs().max().item(),
        # Other processes competing for the cores inflate every timing.
        "loadavg_1min": os.getloadavg()[0],
    }


def rule_check(auto, x, gates, med: dict) -> dict:
    """``"auto"``'s choice for ``gates`` against the measured modes: the chosen mode, why,
    its estimates, the fastest measured mode and the chosen mode's time over the fastest."""
    if auto is None or x.shape[0] == 1:
        return {"auto_choice": None}
    choice = auto.backbone.mode.choose(auto.backbone, x, gates)
    timed = {k[5:]: v for k, v in med.items()
             if k.startswith("skip_") and k != "skip_auto"}
    best = min(timed, key=timed.__getitem__)
    return {"auto_choice": choice.mode, "auto_reason": choice.reason,
            "auto_estimates_ms": {k: 1e3 * v for k, v in choice.estimates.items()},
            "best_mode": best,
            "choice_over_best": timed[choice.mode] / timed[best] if choice.mode in timed else None,
            "auto_over_dense": med["skip_auto"] / med["dense"] if "skip_auto" in med else None}


def profile(plain, net, skip, x, gates, out: Path, model: str, calls: int = 20) -> dict:
    """Where the time goes at batch 1: ``torch.profiler`` over ``calls`` calls of the plain
    backbone and of the gater plus skip-compute backbone, tables by self CPU time (written
    to ``out``), and each side's total split by operator."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    def run(fn) -> dict:
        for _ in range(3):
            fn()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                fn()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / calls / 1e3
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
        return {"table": events.table(sort_by="self_cpu_time_total", row_limit=25),
                "ms_per_call": total,
                "top_ops_ms": {e.key: e.self_cpu_time_total / calls / 1e3 for e in top},
                "op_calls_per_call": sum(e.count for e in events) / calls}

    gater = lambda: net.estimator(net.gate_logits(x))  # noqa: E731
    sides = {"plain": run(lambda: plain(x)), "gater": run(gater),
             "skip_backbone": run(lambda: skip.backbone(x, gates if gates is not None else gater()))}
    out.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(f"== {model}, batch 1, 1 thread: {k} ({v['ms_per_call']:.2f} ms of op time "
                        f"per call, {v['op_calls_per_call']:.0f} op calls)\n{v['table']}"
                        for k, v in sides.items())
    (out / f"profile_{model}_b1.txt").write_text(text)
    return {k: {kk: vv for kk, vv in v.items() if kk != "table"} for k, v in sides.items()}


def print_row(row: dict) -> None:
    med = row["median_ms"]
    skips = "  ".join(
        f"{k[5:]} {v:.1f} ms ({row['speedup_vs_plain'][k]:.2f}x)" for k, v in med.items() if k.startswith("skip")
    )
    opened = row["open"] if isinstance(row["open"], str) else f"{row['open']:.2f}"
    print(
        f"{row['model']:>8} t{row['threads']} b{row['batch']:<3} open {opened:>7}: plain "
        f"{med['plain']:.1f} ms (BN folded {med.get('plain_folded', float('nan')):.1f} ms), gater {med['gater']:.1f} ms, dense {med['dense']:.1f} ms "
        f"({row['speedup_vs_plain']['dense']:.2f}x); {skips}; auto chose {row['auto_choice']}"
    )


def write_report(args: argparse.Namespace, machine: dict, models: dict, results: list[dict]) -> None:
    report = {
        "question": "end-to-end CPU inference (gater included) of skip_compute vs the plain "
        "backbone and the dense gated model, batch 1 to 32",
        "command": "python -m benchmarks.end_to_end_cpu " + " ".join(sys.argv[1:]),
        "machine": machine,
        "config": {k: (_shown(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "models": models,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


def speedup(row: dict, name: str) -> float | None:
    """``name``'s speed-up over plain; at batch 1 every skip mode is the one pass timed
    as ``skip_pattern``."""
    got = row["speedup_vs_plain"]
    if name not in got and row["batch"] == 1 and name.startswith("skip_"):
        return got.get("skip_pattern")
    return got.get(name)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["threads"]) for r in results})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (model, threads) in zip(axes[0], panels):
        rows = [r for r in results if r["model"] == model and r["threads"] == threads]
        opens = sorted({r["open"] for r in rows}, key=lambda o: (isinstance(o, str), o))
        variants_ = sorted({k for r in rows for k in r["speedup_vs_plain"]})
        for fraction, style in zip(opens, ["o-", "s--", "^:", "d-."]):
            for name in variants_:
                pts = [(r["batch"], speedup(r, name)) for r in rows
                       if r["open"] == fraction and speedup(r, name) is not None]
                if pts:
                    ax.plot(*zip(*pts), style, label=f"{name}, open {fraction}", ms=4)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch")
        ax.set_ylabel("speed-up over plain (gater included)")
        ax.set_title(f"{model}, {threads} thread(s)", fontsize=9)
        ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
