"""Can a sliced conv run at ONNX Runtime's prepacked rate?  A probe for the export's next path.

ONNX Runtime prepacks a ``Conv`` whose weight is a constant initializer into its blocked
NCHWc layout (``OIhw{B}i{B}o``, ``B`` = 8 on AVX2, 16 on AVX-512) and runs its NCHWc kernels;
the sliced export feeds each conv a weight gathered at run time, which the runtime cannot
prepack.  ONNX Runtime's own ``com.microsoft.nchwc`` ``Conv`` also accepts its filter as a
run-time input already in the blocked layout.  So a weight kept blocked as an initializer,
from which whole ``B x B`` blocks are gathered (gates in groups of ``B``: ``group_size``), could
run at the prepacked rate.  This script times, per conv shape at half the channel blocks
open (ResNet-50's 3x3 and 1x1 convs), three single-conv graphs side by side:

- ``const``: ``Conv`` with the sliced weight as an initializer (what a statically pruned
  model runs; the runtime prepacks it);
- ``dynamic``: ``Conv`` with the sliced weight given at run time (what the export runs today);
- ``blocked_dynamic``: ``ReorderInput``, the NCHWc ``Conv`` with the blocked weight given at
  run time, ``ReorderOutput``.

Each output is checked against ``torch.nn.functional.conv2d``.  Medians of interleaved
calls at one thread (``--threads``).  Writes ``benchmarks/results/ort_blocked_conv.json``::

    python -m benchmarks.ort_blocked_conv
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cpu_timing import cpu_model, time_interleaved

OUT = Path(__file__).resolve().parent / "results" / "ort_blocked_conv.json"
#: (batch, in, out, spatial size, kernel) of ResNet-50 convs, all channels; half of each runs.
SHAPES = [(1, 64, 64, 56, 3), (1, 128, 128, 28, 3), (1, 256, 256, 14, 3), (1, 512, 512, 7, 3),
          (1, 256, 64, 56, 1), (1, 1024, 256, 14, 1), (8, 128, 128, 28, 3)]


def _session(nodes: list, inputs: list, inits: list, nchwc: bool, threads: int) -> Any:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "conv", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=inits)
    opsets = [helper.make_opsetid("", 17)]
    if nchwc:
        opsets.append(helper.make_opsetid("com.microsoft.nchwc", 1))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    model = helper.make_model(graph, opset_imports=opsets)
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def blocked(weight: np.ndarray, block: int) -> np.ndarray:
    """``(out, in, kh, kw)`` in ONNX Runtime's NCHWc filter layout ``OIhw{B}i{B}o``, kept
    4-d (the NCHWc ``Conv`` checks the filter's rank)."""
    o, i, kh, kw = weight.shape
    w = weight.reshape(o // block, block, i // block, block, kh, kw).transpose(0, 2, 4, 5, 3, 1)
    return np.ascontiguousarray(w).reshape(o, i, kh, kw)


def measure(shape: tuple[int, ...], block: int, threads: int, rounds: int, calls: int
            ) -> dict[str, Any]:
    from onnx import TensorProto, helper, numpy_helper

    n, c, o, hw, k = shape
    ci, co = c // 2, o // 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, ci, hw, hw), dtype=np.float32)
    w = rng.standard_normal((co, ci, k, k), dtype=np.float32)
    pads = [k // 2] * 4
    x_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, ci, hw, hw])
    w_in = helper.make_tensor_value_info("w", TensorProto.FLOAT, None)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], pads=pads)
    nchwc = "com.microsoft.nchwc"
    sessions = {
        "const": (_session([conv], [x_in], [numpy_helper.from_array(w, "w")], False, threads),
                  {"x": x}),
        "dynamic": (_session([conv], [x_in, w_in], [], False, threads), {"x": x, "w": w}),
        "blocked_dynamic": (_session(
            [helper.make_node("ReorderInput", ["x"], ["xb"], domain=nchwc),
             helper.make_node("Conv", ["xb", "w"], ["yb"], domain=nchwc, kernel_shape=[k, k],
                              pads=pads),
             helper.make_node("ReorderOutput", ["yb"], ["y"], domain=nchwc, channels=co)],
            [x_in, w_in], [], True, threads), {"x": x, "w": blocked(w, block)}),
    }
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=k // 2)
    errors = {name: float(np.abs(s.run(None, feed)[0] - ref.numpy()).max())
              for name, (s, feed) in sessions.items()}
    times = time_interleaved({name: (lambda s=s, f=feed: s.run(None, f))
                              for name, (s, feed) in sessions.items()}, rounds, calls)
    ms = {name: statistics.median(v) for name, v in times.items()}
    return {"batch": n, "in_open": ci, "out_open": co, "size": hw, "kernel": k,
            "median_ms": ms, "max_abs_error": errors,
            "blocked_dynamic_over_const": ms["blocked_dynamic"] / ms["const"],
            "dynamic_over_const": ms["dynamic"] / ms["const"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--block", type=int, default=16,
                   help="the runtime's NCHWc block: 16 with AVX-512, 8 with AVX2 (default: 16)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    import onnxruntime as ort

    rows = []
    for shape in SHAPES:
        row = measure(shape, args.block, args.threads, args.rounds, args.calls)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "max_abs_error"}), flush=True)
    result = {"cpu": cpu_model(), "onnxruntime": ort.__version__, "threads": args.threads,
              "block": args.block, "rounds": args.rounds, "calls": args.calls,
              "command": "python -m benchmarks.ort_blocked_conv", "rows": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
