"""What gate_model costs: at run time against a hand-written GaterNet, and at build time.

    python -m benchmarks.transform_overhead                  # CPU
    python -m benchmarks.transform_overhead --device cuda    # on a GPU
    python -m benchmarks.transform_overhead --device cuda --channels-last --amp

1. Training-step time (forward, cross-entropy, backward, SGD step) of
   ``gate_model(resnet20(), resnet20_gater())`` against the hand-written
   :class:`gatekit.models._reference_gaternet.ReferenceGaterNet` written like the released
   GaterNet code, with the same weights, in one process.  Rounds alternate which model
   goes first; each round times ``--steps`` steps of each.  Reported: the median step time
   of each model over rounds and the median of the per-round ratios (gated / reference).
2. The time ``gate_model`` itself takes (deep copies, two fx traces, site search, gate
   insertion, head) on torchvision's ResNet-152 and on a large timm CNN, median of
   ``--build-repeats`` calls, beside the time of one ``copy.deepcopy`` of the backbone.

Writes JSON (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import gatekit
from gatekit.models import resnet20, resnet20_gater
from gatekit.models._reference_gaternet import ReferenceGaterNet, gatekit_state_dict


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _steps(
    model: nn.Module, opt: torch.optim.Optimizer, x, y, n: int, amp: bool
) -> tuple[float, float]:
    """Seconds per step: wall clock, and this process's CPU time (on a shared CPU machine the
    latter does not count the time other processes hold the cores)."""
    device = x.device
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    )
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def run_step_benchmark(args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    reference = ReferenceGaterNet().to(device)
    gated = gatekit.gate_model(resnet20(), resnet20_gater()).to(device)
    gated.load_state_dict(gatekit_state_dict(reference))
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    models = {
        "reference": reference.to(memory_format=memory_format),
        "gate_model": gated.to(memory_format=memory_format),
    }
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    x = torch.randn(args.batch_size, 3, 32, 32, device=device).to(memory_format=memory_format)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    for k, m in models.items():
        m.train()
        _steps(m, opts[k], x, y, args.warmup, args.amp)
    times: dict[str, list[float]] = {k: [] for k in models}
    cpu_times: dict[str, list[float]] = {k: [] for k in models}
    ratios, cpu_ratios = [], []
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        got = {k: _steps(models[k], opts[k], x, y, args.steps, args.amp) for k in order}
        for k, (wall, cpu) in got.items():
            times[k].append(wall)
            cpu_times[k].append(cpu)
        ratios.append(got["gate_model"][0] / got["reference"][0])
        cpu_ratios.append(got["gate_model"][1] / got["reference"][1])
    cpu = (
        {}
        if device.type == "cuda"
        else {
            "median_step_cpu_ms": {k: 1e3 * statistics.median(v) for k, v in cpu_times.items()},
            "cpu_ratio_median": statistics.median(cpu_ratios),
            "cpu_ratio_min": min(cpu_ratios),
            "cpu_ratio_max": max(cpu_ratios),
        }
    )
    return {
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "channels_last": args.channels_last,
        "amp_bf16": args.amp,
        "median_step_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        **cpu,
    }


def _small_gater() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def run_build_benchmark(args: argparse.Namespace) -> list[dict]:
    builders = {}
    try:
        import torchvision

        builders["torchvision resnet152"] = lambda: torchvision.models.resnet152(weights=None)
    except ImportError:
        print("torchvision missing: skipping resnet152", file=sys.stderr)
    try:
        import timm

        builders[f"timm {args.timm_model}"] = lambda: timm.create_model(
            args.timm_model, pretrained=False
        )
    except ImportError:
        print("timm missing: skipping the timm model", file=sys.stderr)
    rows = []
    for name, build in builders.items():
        backbone = build()
        gater = _small_gater()
        copies, builds = [], []
        net = None
        for _ in range(args.build_repeats):
            t0 = time.perf_counter()
            copy.deepcopy(backbone)
            copies.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            net = gatekit.gate_model(backbone, gater, sites=args.build_sites)
            builds.append(time.perf_counter() - t0)
        rows.append(
            {
                "model": name,
                "sites": args.build_sites,
                "parameters_M": sum(p.numel() for p in backbone.parameters()) / 1e6,
                "graph_nodes": len(net.backbone.graph.nodes),
                "gate_sites": len(net.sites),
                "num_gates": net.num_gates,
                "gate_model_s": statistics.median(builds),
                "deepcopy_s": statistics.median(copies),
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 on cuda, 32 on cpu")
    p.add_argument(
        "--steps", type=int, default=None, help="steps per round (default: 20 cuda, 3 cpu)"
    )
    p.add_argument("--rounds", type=int, default=None, help="default: 21 cuda, 11 cpu")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--timm-model", default="efficientnet_b7")
    p.add_argument("--build-sites", default="residual")
    p.add_argument("--build-repeats", type=int, default=3)
    p.add_argument("--skip-build", action="store_true", help="skip the gate_model build timing")
    p.add_argument("--out", default="benchmarks/results/transform_overhead.json")
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (128 if cuda else 32)
    args.steps = args.steps or (20 if cuda else 3)
    args.rounds = args.rounds or (21 if cuda else 11)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True

    print(
        f"training step, ResNet-20 GaterNet, batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps on {device}",
        flush=True,
    )
    step = run_step_benchmark(args, device)
    build = [] if args.skip_build else run_build_benchmark(args)
    result = {
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.transform_overhead",
                             *sys.argv[1:]]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device)
        if cuda
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "train_step": step,
        "gate_model_build": build,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    ms = step["median_step_ms"]
    print(f"\n{'model':<34}{'median step (ms)':>18}")
    print(f"{'hand-written reference GaterNet':<34}{ms['reference']:>18.3f}")
    print(f"{'gate_model(resnet20, gater20)':<34}{ms['gate_model']:>18.3f}")
    print(
        f"ratio gate_model / reference: median {step['ratio_median']:.4f} (min {step['ratio_min']:.4f}, max {step['ratio_max']:.4f})"
    )
    if build:
        print(
            f"\n{'gate_model build':<30}{'params (M)':>11}{'nodes':>7}{'sites':>7}{'gates':>8}{'build (s)':>11}{'deepcopy (s)':>14}"
        )
        for r in build:
            print(
                f"{r['model']:<30}{r['parameters_M']:>11.1f}{r['graph_nodes']:>7}{r['gate_sites']:>7}{r['num_gates']:>8}{r['gate_model_s']:>11.3f}{r['deepcopy_s']:>14.3f}"
            )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
