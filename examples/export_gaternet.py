"""Export a trained CIFAR GaterNet run to ONNX, check it against eager PyTorch, time it.

    python examples/export_gaternet.py benchmarks/results/cifar10/vs_budget_conv_s0.pt \\
        --out model.onnx

``WEIGHTS`` is a run's ``state_dict`` with its results file beside it (``WEIGHTS`` with the
suffix ``.json``, or ``--results``): the model is rebuilt from the command recorded there
(``gaternet_training.rebuild``), as ``benchmarks/cifar10_evaluate.py`` does.  Steps:

1. rebuild the run and load its weights (eval mode);
2. export it with :func:`gatekit.export_onnx` (gater, gates and skipping in the graph,
   dynamic batch);
3. run the file in ONNX Runtime on ``--images`` CIFAR test images, one image at a time,
   and compare with the eager gated model (largest difference, same predicted class);
4. time ONNX Runtime and the eager :func:`gatekit.skip_compute` model at batch 1 on
   ``--threads`` intra-op threads (medians), and print one line.

A run with a budget input is exported with the budget as the file's second input and
checked at ``--budget``.  ``--nchwc-block auto`` (or 8, 16) exports on ONNX Runtime's
blocked path with each image alone (``nchwc_block=``, ``batching="gather"``; auto: this
machine's block, :func:`gatekit.export.runtime_nchwc_block`): the sites gated in groups of
the block (a run trained with ``--group-size 16``) run blocked, the others as before::

    python examples/export_gaternet.py benchmarks/results/cifar10/rank_f040_g16_s0.pt \
        --out model.onnx --nchwc-block auto

Needs ``pip install "gatekit[export,examples]"``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from gaternet_training.cifar_data import load_data
from gaternet_training.distributed import setup
from gaternet_training.rebuild import load_results, rebuild, run_config

import gatekit

ROOT = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("weights", type=Path, help="the run's state_dict (.pt)")
    p.add_argument("--out", type=Path, default=Path("model.onnx"), help="the ONNX file to write")
    p.add_argument("--results", type=Path, default=None,
                   help="the run's results JSON (default: WEIGHTS with suffix .json)")
    p.add_argument("--data", type=Path, default=None,
                   help="the CIFAR data (default: the data path of the run's recorded "
                        "command, from the repository root)")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--images", type=int, default=200, help="test images to check and time")
    p.add_argument("--budget", type=float, default=1.0,
                   help="a budget-input run: the budget to check and time at")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (both runtimes)")
    p.add_argument("--nchwc-block", choices=["auto", "8", "16"], default=None,
                   help="export on ONNX Runtime's blocked path, each image alone (auto: this "
                        "machine's block); default: the export's defaults")
    return p


def median_ms(fn, inputs: list) -> float:
    fn(inputs[0])  # warm-up
    times = []
    for item in inputs:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import onnxruntime as ort

    # 1. rebuild the run
    results_path = args.results or args.weights.with_suffix(".json")
    results = load_results(results_path, ROOT)
    config = run_config(results, args.data, args.cache_dir, ROOT)
    loaded = load_data(config, setup("cpu"))
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    net = rebuild(results, config, state, len(loaded.classes)).eval()
    images = torch.cat([x for x, _ in loaded.val])[: args.images].contiguous()
    singles = [images[i : i + 1] for i in range(images.shape[0])]
    budget = args.budget if net.budget_input else None
    kw = {} if budget is None else {"budget": budget}

    # 2. export
    block = None
    if args.nchwc_block is not None:
        block = (gatekit.export.runtime_nchwc_block() if args.nchwc_block == "auto"
                 else int(args.nchwc_block))
        if block is None:
            print("--nchwc-block auto: this ONNX Runtime has no NCHWc kernels", file=sys.stderr)
            return 2
    blocked = {} if block is None else {"nchwc_block": block, "batching": "gather"}
    routes = gatekit.export_onnx(net, singles[0], args.out, budget=budget, **blocked)

    # 3. check against eager, image by image
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(args.out), options, providers=["CPUExecutionProvider"])

    def onnx_run(x: torch.Tensor) -> torch.Tensor:
        feed = {"image": x.numpy()}
        if budget is not None:
            feed["budget"] = torch.full((x.shape[0],), budget).numpy()
        return torch.from_numpy(session.run(None, feed)[0])

    torch.set_num_threads(args.threads)
    worst, same = 0.0, 0
    with torch.no_grad():
        for x in singles:
            ref, out = net(x, **kw), onnx_run(x)
            worst = max(worst, (out - ref).abs().max().item())
            same += int(out.argmax(1).item() == ref.argmax(1).item())

    # 4. speed at batch 1
    fast = gatekit.skip_compute(net)
    with torch.no_grad():
        eager_ms = median_ms(lambda x: fast(x, **kw), singles)
    onnx_ms = median_ms(onnx_run, singles)
    skipping = sum(r.mode != "dense" for r in routes)
    print(f"{args.out}: {len(singles)} test images, max |onnx - eager| {worst:.2g}, same class "
          f"{same}/{len(singles)}; batch 1, {args.threads} thread(s): onnxruntime "
          f"{onnx_ms:.2f} ms, eager skip_compute {eager_ms:.2f} ms ({eager_ms / onnx_ms:.2f}x); "
          f"{skipping}/{len(routes)} sites skip"
          + ("" if block is None else f", nchwc_block={block}, each image alone"))
    return 0 if same == len(singles) and worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
