"""Cost of each gate estimator against a plain sigmoid, forward + backward, side by side.

    python -m benchmarks.estimator_cost                     # CPU, writes benchmarks/results/estimator_cost.json
    python -m benchmarks.estimator_cost --device cuda       # on a GPU

Every estimator runs in training mode (noise, straight-through) on logits of shape
(batch, gates); the baseline is ``torch.sigmoid`` on the same tensor.  Timings are
interleaved (one repeat of every candidate per round) and the median over rounds is
reported as a ratio to the baseline's median.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import gatekit


def _time_once(fn, x: torch.Tensor, iters: int) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        x.grad = None
        fn(x).sum().backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--gates", type=int, default=4096, help="gates per sample (ResNet-50 inner policy: 7,296)")
    p.add_argument("--dtypes", default="float32,bfloat16,float16")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/estimator_cost.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    candidates = {
        "sigmoid (baseline)": torch.sigmoid,
        "semhash": gatekit.ImprovedSemHash().train(),
        "st_sigmoid": gatekit.StraightThroughSigmoid().train(),
        "gumbel": gatekit.GumbelSigmoid().train(),
        "hard_concrete": gatekit.HardConcrete().train(),
    }
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        x = torch.randn(args.batch, args.gates, device=args.device, dtype=dtype, requires_grad=True)
        for fn in candidates.values():  # warm-up
            _time_once(fn, x, 3)
        times: dict[str, list[float]] = {k: [] for k in candidates}
        for _ in range(args.rounds):
            for name, fn in candidates.items():
                times[name].append(_time_once(fn, x, args.iters))
        base = statistics.median(times["sigmoid (baseline)"])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append({"dtype": dtype_name, "estimator": name, "median_us": med * 1e6, "ratio": med / base})

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "machine": machine, "rows": rows}, indent=2))
    print(f"estimator cost, forward+backward, logits {args.batch}x{args.gates}, {machine['device']}, "
          f"{machine['threads']} threads, median of {args.rounds} rounds x {args.iters} iters")
    print(f"{'dtype':<10}{'estimator':<22}{'median us':>12}{'x sigmoid':>12}")
    for r in rows:
        print(f"{r['dtype']:<10}{r['estimator']:<22}{r['median_us']:>12.1f}{r['ratio']:>12.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
