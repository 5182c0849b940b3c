"""How much faster is gatekit.skip_compute than the dense gated model, on the CPU?

ResNet-50 (torchvision, random weights, BatchNorm statistics randomised so that folding is
not trivial) gated with the ``"inner"`` policy (conv1 and conv2 of every bottleneck), gates
given with ``forward(x, gates=g)``: in every sample and site a random ``open`` fraction of
the gates is 1 (exactly ``round(open * channels)``).  Variants, timed side by side in one
process, interleaved round by round, medians over all calls:

- ``dense``: the GaterNet in eval mode, computing everything and multiplying by the gates
  (the baseline of the target);
- ``dense_folded``: the same with every BatchNorm folded into its conv
  (``torch.fx.experimental.optimization.fuse``), still computing everything;
- ``skip``: ``gatekit.skip_compute(net, batching="pattern")`` (samples grouped by gate
  pattern);
- ``skip_union`` (batch > 1): ``skip_compute(net, batching="union")``, one pass over the
  filters open in any sample (pays when patterns agree: see ``--agree``).

Batch 8 has a different pattern per sample; skip_compute groups samples by pattern, so it
runs 8 batch-1 passes (all-open gates are one pattern: one batch-8 pass).  Writes JSON
(``--out``, rewritten after every point) and a PNG of the speed-up curve, prints a table.
The machine (CPU model, threads, torch version) and the exact command go into the JSON.
Example::

    python -m benchmarks.skip_inference_cpu --threads 2 --rounds 10 --rounds-batched 3
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
import torchvision
from torch.fx.experimental.optimization import fuse

import gatekit
from benchmarks.cpu_timing import cpu_model, random_gates, randomise_batchnorm, time_interleaved
from gatekit.models import resnet20_gater


def build(seed: int) -> gatekit.GaterNet:
    torch.manual_seed(seed)
    net = gatekit.gate_model(
        torchvision.models.resnet50(weights=None), resnet20_gater(), sites="inner"
    )
    randomise_batchnorm(net)
    return net.eval()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--open", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds per point")
    p.add_argument(
        "--rounds-batched", type=int, default=3, help="rounds per point for batch > 1"
    )
    p.add_argument("--calls", type=int, default=2, help="timed calls per variant per round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--agree", type=float, default=0.0, help="fraction of open gates shared by all samples"
    )
    p.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "skip_inference_cpu.json"
    )
    p.add_argument("--png", type=Path, default=None, help="default: --out with .png")
    return p


def main() -> None:
    args = parser().parse_args()
    torch.set_num_threads(args.threads)

    net = build(args.seed)
    folded = fuse(net.backbone)
    skip = gatekit.skip_compute(net, batching="pattern")
    skip_union = gatekit.skip_compute(net, batching="union")
    gen = torch.Generator().manual_seed(args.seed)
    machine = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    print(f"{machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}")
    results = []
    header = f"{'batch':>5} {'open':>5} {'dense ms':>9} {'folded ms':>9} {'skip ms':>8} {'x dense':>8} {'x folded':>8} {'max |diff|':>10}"
    print(header)
    with torch.no_grad():
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size, generator=gen)
            for fraction in args.open:
                gates = random_gates(net, batch, fraction, gen, args.agree)
                ref = net(x, gates=gates)
                diff = (skip(x, gates=gates) - ref).abs().max().item()
                fns = {
                    "dense": lambda x=x, g=gates: net(x, gates=g),
                    "dense_folded": lambda x=x, g=gates: folded(x, gates=g),
                    "skip": lambda x=x, g=gates: skip(x, gates=g),
                }
                if batch > 1:
                    fns["skip_union"] = lambda x=x, g=gates: skip_union(x, gates=g)
                for fn in fns.values():  # warm-up: allocator, oneDNN primitive caches
                    fn()
                rounds = args.rounds if batch == 1 else args.rounds_batched
                times = time_interleaved(fns, rounds, args.calls)
                med = {k: statistics.median(v) for k, v in times.items()}
                row = {
                    "batch": batch,
                    "open": fraction,
                    "median_ms": med,
                    "times_ms": times,
                    "speedup_vs_dense": med["dense"] / med["skip"],
                    "speedup_vs_dense_folded": med["dense_folded"] / med["skip"],
                    "union_speedup_vs_dense": med["dense"] / med["skip_union"]
                    if batch > 1
                    else None,
                    "max_abs_diff": diff,
                    "max_abs_output": ref.abs().max().item(),
                    # Other processes competing for the cores inflate every timing.
                    "loadavg_1min": os.getloadavg()[0],
                }
                results.append(row)
                write_report(
                    args, machine, skip, results
                )  # after every point: a killed run keeps its rows
                print(
                    f"{batch:>5} {fraction:>5.2f} {med['dense']:>9.1f} {med['dense_folded']:>9.1f} "
                    f"{med['skip']:>8.1f} {row['speedup_vs_dense']:>8.2f} {row['speedup_vs_dense_folded']:>8.2f} {diff:>10.2e}"
                    + (f"  union {med['skip_union']:.1f} ms" if batch > 1 else "")
                )
    png = args.png or args.out.with_suffix(".png")
    plot(results, machine, png)
    print(f"wrote {args.out} and {png}")


def write_report(
    args: argparse.Namespace, machine: dict, skip: torch.nn.Module, results: list[dict]
) -> None:
    report = {
        "question": "speed-up of gatekit.skip_compute over the dense gated ResNet-50 (inner policy) on the CPU",
        "command": "python -m benchmarks.skip_inference_cpu " + " ".join(sys.argv[1:]),
        "machine": machine,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "routes": [list(r[:3]) for r in skip.routes],
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


def plot(results: list[dict], machine: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for batch in sorted({r["batch"] for r in results}):
        rows = [r for r in results if r["batch"] == batch]
        opens = [100 * r["open"] for r in rows]
        ax.plot(
            opens,
            [r["speedup_vs_dense"] for r in rows],
            "o-",
            label=f"batch {batch}, vs dense gated",
        )
        ax.plot(
            opens,
            [r["speedup_vs_dense_folded"] for r in rows],
            "s--",
            label=f"batch {batch}, vs dense BN-folded",
        )
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("gates open (%)")
    ax.set_ylabel("speed-up of skip_compute")
    ax.set_title(
        f"ResNet-50 inner gates, {machine['threads']} threads\n{machine['cpu']}", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
