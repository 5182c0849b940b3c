"""Fit the constants of ``batching="auto"``'s rule to committed end-to-end measurements.

For every point of the given ``end_to_end_cpu.py`` results (batch > 1, drawn gates: the
``"trained"`` rows' gates are not recorded), the rule's features are rebuilt: the model's
conv geometry (ResNet-50 at 224 px or CIFAR ResNet-20 at 32 px, inner sites, as the
benchmark builds them) and gates drawn as the benchmark draws them (exactly
``round(open * gates)`` open per sample and site, independent samples).  Each mode's
backbone time (its skip variant's median less the gater's) is then fitted as::

    call_s + passes * convs * conv_s + weights * copy_s
           + multiply_adds * mac_s / threads ** THREAD_SCALING

by non-negative least squares on relative error, one mode at a time.  Prints the
constants to three significant digits and, per point, the rule's choice against the
measured best.  Times nothing.  On the committed files (:data:`COMMITTED`, the default:
84 points, an AMD EPYC's and an Intel Xeon's) it prints the default rule's constants,
:class:`gatekit.inference.BatchingRule`'s ``costs`` (``tests/test_rule_fit.py`` checks it)::

    python -m benchmarks.fit_batching_rule benchmarks/results/end_to_end_cpu.json \\
        benchmarks/results/end_to_end_cpu_conv_gater.json benchmarks/results/end_to_end_cpu_grid.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import gatekit
from benchmarks.cpu_timing import build_model, random_gates  # end_to_end_cpu's models and gates
from gatekit.inference._rule import THREAD_SCALING, BatchingRule, ModeCost, conv_geometry
from gatekit.inference.batching import BATCHINGS, GateCounts, candidates

MODELS = {"resnet50": "resnet50", "resnet20": "resnet20", "resnet20_run": "resnet20"}
RESULTS = Path(__file__).resolve().parent / "results"
# The measurements the default rule's constants were fitted to.
COMMITTED = tuple(RESULTS / name for name in (
    "end_to_end_cpu.json", "end_to_end_cpu_conv_gater.json", "end_to_end_cpu_grid.json"))


def features(path: Path) -> list[dict]:
    """Per measured point and mode: the rule's three features and the measured seconds."""
    report = json.loads(path.read_text())
    nets: dict[str, tuple] = {}
    rows = []
    gen = torch.Generator().manual_seed(0)
    for r in report["results"]:
        if r["batch"] == 1 or not isinstance(r["open"], float):
            continue
        arch = MODELS[r["model"]]
        if arch not in nets:
            args = argparse.Namespace(seed=0, size=224, resnet50_gater_size=112, cifar_gater="tiny")
            _, net, size = build_model(arch, args)
            nets[arch] = (net, gatekit.skip_compute(net, batching="auto"), size)
        net, fast, size = nets[arch]
        gates = random_gates(net, r["batch"], r["open"], gen, 0.0)
        x = torch.zeros(r["batch"], 3, size, size)
        geometry = conv_geometry(fast.backbone, x, gates)
        counts = GateCounts.of(fast.backbone, gates)
        med = r["median_ms"]
        point = {"where": f"{path.name}: {r['model']} t{r['threads']} b{r['batch']} open {r['open']}",
                 "geometry": geometry, "counts": counts, "threads": r["threads"], "modes": {}}
        for name in candidates():
            key = f"skip_{name}"
            if key not in med:
                continue
            runs = BATCHINGS[name]().runs(counts)
            point["modes"][name] = {
                "x": [1.0, runs.passes * geometry.convs, geometry.weights(runs),
                      geometry.work(runs) / r["threads"] ** THREAD_SCALING],
                "seconds": (med[key] - med["gater"]) / 1e3,
            }
        rows.append(point)
    return rows


def fit(points: list[dict]) -> dict[str, ModeCost]:
    from scipy.optimize import nnls

    costs = {}
    for name in candidates():
        a, b = [], []
        for p in points:
            m = p["modes"].get(name)
            if m is not None and m["seconds"] > 0:
                a.append([v / m["seconds"] for v in m["x"]])
                b.append(1.0)
        solution, _ = nnls(torch.tensor(a, dtype=torch.float64).numpy(),
                           torch.tensor(b, dtype=torch.float64).numpy())
        costs[name] = ModeCost(*(float(v) for v in solution))
    return costs


def rounded(cost: ModeCost) -> ModeCost:
    """``cost`` to three significant digits, as printed (and as ``DEFAULT_COSTS`` holds it)."""
    return ModeCost(*(float(f"{v:.3g}") for v in cost))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="*", default=list(COMMITTED),
                        help="end_to_end_cpu.py results files (default: the committed ones "
                             "the default rule was fitted to)")
    args = parser.parse_args()
    points = [p for path in args.results for p in features(path)]
    costs = fit(points)
    print("DEFAULT_COSTS = {")
    for name, c in costs.items():
        print(f'    "{name}": ModeCost({", ".join(f"{v:.3g}" for v in rounded(c))}),')
    print("}")
    rule = BatchingRule(costs=costs)
    within = 0
    for p in points:
        measured = {n: m["seconds"] for n, m in p["modes"].items()}
        best = min(measured, key=measured.__getitem__)
        chosen = rule.choose(p["geometry"], p["counts"], p["threads"]).mode
        ratio = measured[chosen] / measured[best]
        within += ratio <= 1.10
        print(f"{p['where']}: rule {chosen} ({1e3 * measured[chosen]:.1f} ms), best {best} "
              f"({1e3 * measured[best]:.1f} ms), {ratio:.2f}x")
    print(f"rule's choice within 10% of the measured best at {within} of {len(points)} points")


if __name__ == "__main__":
    main()
