"""Fused gated convolution (Triton) against cuDNN conv + eager BatchNorm, ReLU and gate multiply.

Question: how much faster is ``gatekit.ops.gated_conv2d(op="triton")`` than what a gated
ResNet runs today, on ResNet-50 bottleneck layers at batch 64 in bfloat16 on a CUDA GPU?

Both sides get channels-last tensors.  The baseline is ``conv`` (cuDNN, ``benchmark=True``)
followed by an eval-mode ``BatchNorm2d``, an in-place ReLU and an in-place multiply by the
per-channel gate (already expanded to channels, which favours the baseline).  The fused op gets
the BatchNorm folded into ``scale``/``shift`` and the gate grouped by 32 channels.  Gate patterns:

- ``on``: every gate on;
- ``half``: half of each sample's 32-channel gate groups off, chosen at random per sample;
- ``half+in``: as ``half``, and the input is the output of a layer gated the same way, passed
  as ``in_gate`` so the kernel also skips the gated-off input channel blocks (the baseline does
  the same work as in ``half``).

Each time is the median of ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs;
host overhead counts where it exceeds the flush) and of ``do_bench_cudagraph`` (the same calls
replayed from a CUDA graph: GPU time alone), both sides measured in this process one after the
other; the ratio is baseline / fused.  Before
timing, the fused output is checked against the baseline's.  Run::

    python -m benchmarks.gated_conv_gpu --out benchmarks/results/gated_conv_gpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import gatekit
from gatekit.ops import gated_conv2d

# (name, C_in, C_out, kernel, stride, input size): ResNet-50 bottleneck layers.
SHAPES = [
    ("1x1 256->64 @56", 256, 64, 1, 1, 56),
    ("3x3 64->64 @56", 64, 64, 3, 1, 56),
    ("1x1 64->256 @56", 64, 256, 1, 1, 56),
    ("3x3 128->128 @28", 128, 128, 3, 1, 28),
    ("3x3 256->256 @14", 256, 256, 3, 1, 14),
    ("3x3 512->512 @7", 512, 512, 3, 1, 7),
    ("1x1 1024->256 @14", 1024, 256, 1, 1, 14),
]
MODES = ("on", "half", "half+in")


def half_off_gate(n: int, groups: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, groups)`` binary gates with exactly half of each row off, at random per row."""
    gate = torch.ones(n, groups)
    for i in range(n):
        gate[i, torch.randperm(groups, generator=gen)[: groups // 2]] = 0.0
    return gate


def host_time(fn, calls: int = 50) -> float:
    """Milliseconds per call of ``fn`` called back to back: the larger of host and GPU time."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e3


def profile_host(args: argparse.Namespace) -> None:
    """Print the functions where 200 back-to-back fused calls of a small layer spend host time."""
    import cProfile
    import pstats

    dtype, dev = getattr(torch, args.dtype), "cuda"
    x = torch.randn(args.batch, 512, 7, 7, device=dev, dtype=dtype).to(
        memory_format=torch.channels_last)
    w = torch.randn(512, 512, 3, 3, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
    gate, s = torch.ones(args.batch, 512 // args.group_size, device=dev, dtype=dtype), w[:, 0, 0, 0]

    def call():
        return gated_conv2d(x, w, gate, scale=s, shift=s, padding=1, op="triton")

    with torch.no_grad():
        call()
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200):
            call()
        prof.disable()
        torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(14)


def bench_shape(shape: tuple, args: argparse.Namespace, gen: torch.Generator) -> list[dict]:
    """Time every gate pattern of one layer shape; return one record per pattern."""
    from triton.testing import do_bench, do_bench_cudagraph

    name, c_in, c_out, k, stride, size = shape
    dtype, dev, gs = getattr(torch, args.dtype), "cuda", args.group_size
    conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
    bn = nn.BatchNorm2d(c_out).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2, generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)
        bn.weight.uniform_(0.5, 1.5, generator=gen)
        bn.bias.uniform_(-0.2, 0.2, generator=gen)
    conv, bn = (m.to(dev, dtype, memory_format=torch.channels_last) for m in (conv, bn))
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    shift = (bn.bias - bn.running_mean * scale).detach()
    weight = conv.weight.detach()
    x_dense = torch.randn(args.batch, c_in, size, size, generator=gen).to(
        dev, dtype, memory_format=torch.channels_last
    )

    records = []
    for mode in MODES:
        if mode == "on":
            gate = torch.ones(args.batch, c_out // gs)
        else:
            gate = half_off_gate(args.batch, c_out // gs, gen)
        gate = gate.to(dev, dtype)
        gate_c = gate.repeat_interleave(gs, 1)[:, :, None, None].contiguous()
        in_gate, x = None, x_dense
        if mode == "half+in":
            in_gate = half_off_gate(args.batch, c_in // gs, gen).to(dev, dtype)
            x = (x_dense * in_gate.repeat_interleave(gs, 1)[:, :, None, None]).contiguous(
                memory_format=torch.channels_last
            )

        def baseline(x=x, gate_c=gate_c):
            y = F.relu(bn(conv(x)), inplace=True)
            return y.mul_(gate_c)

        def fused(x=x, gate=gate, in_gate=in_gate):
            return gated_conv2d(x, weight, gate, scale=scale, shift=shift, activation="relu",
                                stride=stride, padding=k // 2, in_gate=in_gate, op="triton")

        with torch.no_grad():
            ref, got = baseline().float(), fused().float()
            err = ((got - ref).norm() / ref.norm()).item()
            off_zero = bool(got[(gate_c.expand_as(got) == 0)].eq(0).all())
            if not (err < 2e-2 and off_zero):
                raise SystemExit(f"{name} {mode}: fused output differs (rel err {err:.2e},"
                                 f" gated-off zero: {off_zero})")
            t_base = do_bench(baseline, warmup=args.warmup, rep=args.rep, return_mode="median")
            t_fused = do_bench(fused, warmup=args.warmup, rep=args.rep, return_mode="median")
            # The same calls replayed from a CUDA graph: GPU time alone, no host overhead.
            g_base = do_bench_cudagraph(baseline, rep=args.rep, return_mode="median")
            g_fused = do_bench_cudagraph(fused, rep=args.rep, return_mode="median")
            host_fused = host_time(fused)
        from gatekit.ops import triton_conv

        config = str(getattr(triton_conv._conv, "best_config", "fixed"))
        flops = 2 * args.batch * c_out * c_in * k * k * (size // stride) ** 2
        records.append({
            "shape": name, "mode": mode, "baseline_ms": t_base, "fused_ms": t_fused,
            "speedup": t_base / t_fused, "rel_err": err, "triton_config": config,
            "graph_baseline_ms": g_base, "graph_fused_ms": g_fused,
            "graph_speedup": g_base / g_fused, "fused_call_loop_ms": host_fused,
            "fused_tflops_dense_equiv": flops / t_fused / 1e9,
            "baseline_tflops": flops / t_base / 1e9,
        })
        print(f"  {name:20s} {mode:8s} baseline {t_base * 1e3:7.1f} us  fused"
              f" {t_fused * 1e3:7.1f} us  x{t_base / t_fused:5.2f} | graphs {g_base * 1e3:7.1f}"
              f" / {g_fused * 1e3:7.1f} us  x{g_base / g_fused:5.2f} | fused call loop"
              f" {host_fused * 1e3:6.1f} us  (err {err:.1e}; {config})", flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write JSON, print the ratio table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--group-size", type=int, default=32, help="channels per gate")
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetitions, ms")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gated_conv_gpu.json"))
    parser.add_argument("--profile-host", action="store_true",
                        help="also print where the host time of one fused call goes (cProfile)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    torch.backends.cudnn.benchmark = True
    gen = torch.Generator().manual_seed(0)
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__},"
          f" triton {triton.__version__}, batch {args.batch}, {args.dtype}", flush=True)
    start = time.time()
    header = {
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "triton": triton.__version__, "gatekit": gatekit.__version__,
        "python": platform.python_version(), "batch": args.batch, "dtype": args.dtype,
        "group_size": args.group_size, "timer": "triton.testing.do_bench median",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    for shape in SHAPES:  # the JSON is rewritten after each layer, so a cut-off run keeps its part
        records += bench_shape(shape, args, gen)
        args.out.write_text(json.dumps({**header, "seconds": time.time() - start,
                                        "records": records}, indent=2))

    geo = {}
    for key, what in (("speedup", "eager calls"), ("graph_speedup", "CUDA graph replays")):
        print(f"\n| layer ({what}) | {' | '.join(MODES)} |   (baseline time / fused time)")
        print(f"| --- | {' | '.join('---' for _ in MODES)} |")
        for name, *_ in SHAPES:
            cells = [f"{r[key]:.2f}x" for m in MODES for r in records
                     if r["shape"] == name and r["mode"] == m]
            print(f"| {name} | {' | '.join(cells)} |")
        geo[key] = {m: math.exp(sum(math.log(r[key]) for r in records if r["mode"] == m)
                                / len(SHAPES)) for m in MODES}
        print(f"| geometric mean | {' | '.join(f'{geo[key][m]:.2f}x' for m in MODES)} |")

    args.out.write_text(json.dumps({**header, "seconds": time.time() - start,
                                    "geomean_speedup": geo, "records": records}, indent=2))
    print(f"\nwrote {args.out}")
    if args.profile_host:
        profile_host(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
