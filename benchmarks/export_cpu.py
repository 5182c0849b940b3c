"""Does the exported GaterNet pay in ONNX Runtime?  Plain ONNX vs exported GaterNet vs eager.

Three variants, timed side by side in one process (interleaved call by call, medians), at
each ``--threads`` intra-op thread count (ONNX Runtime's ``intra_op_num_threads`` and
``torch.set_num_threads``; ONNX Runtime's pool threads do not spin between calls, so that
one variant's idle threads do not slow the next one's call):

- ``onnx_plain``: the plain backbone exported with ``torch.onnx.export(dynamo=True)`` at
  the same opset, run with the same session options (what gating has to beat);
- ``onnx_gaternet``: :func:`gatekit.export_onnx` of the GaterNet, gater included, with
  its dense branch above ``--dense-above`` and ``--batching`` (default
  ``"auto"``: per call the union or the per-image path, whichever keeps the
  smaller share of the skippable FLOPs); each row records the batch's kept shares (union
  and per-image) and the branch it took;
- ``onnx_union`` and ``onnx_gather`` (``--compare``): the same export with
  ``batching="union"`` (what every batch ran before the per-image path) and with
  ``batching="gather"`` (every batch per image), each still with its dense branch;
- ``eager_skip``: eager :func:`gatekit.skip_compute` of the same GaterNet with
  ``batching="pattern"`` (the default when the committed results were measured), gater
  included;
- with ``--nchwc-block B`` (and ``--batching union`` or ``gather``, ``--group-size`` a
  multiple of ``B``), ``onnx_gaternet`` is the export's blocked path (``nchwc_block``):
  ResNet-50's sliced convs as ONNX Runtime's NCHWc ``Conv`` on gathered ``B x B`` weight
  blocks, the union of a batch's blocks (``union``) or each image alone in an ONNX
  ``Loop`` (``gather``), its dense branch at the export's default for a blocked file
  unless ``--dense-above`` says otherwise; the trained ResNet-20 (gates of one channel)
  keeps the export's defaults (a ``--cifar-run`` trained with gates in whole blocks, such
  as ``rank_f040_g16_s0.pt``, runs blocked too).  Compare with ``--compare union`` (the same model,
  gathered weights in the plain layout).  The committed grid (``export_cpu.json``)::

      python -m benchmarks.export_cpu --group-size 16 --nchwc-block 16 --batching gather \
          --compare

  and the blocked union grid::

      python -m benchmarks.export_cpu --models resnet50 --group-size 16 --nchwc-block 16 \
          --batching union --compare union --out benchmarks/results/export_cpu_nchwc.json

- with ``--aoti``, ``aoti_gaternet``: :func:`gatekit.export_program` with
  ``for_inductor=True``, compiled and loaded by AOTInductor.

Cases:

- ``resnet50``: torchvision ResNet-50, ``"inner"`` sites, at ``--size`` (224) with a
  ResNet-18 trunk gater on the image resized to ``--gater-size`` (112), random weights
  (BatchNorm statistics randomised), at each ``--open`` fraction: the head's last bias is
  set so that each gate is open on that fraction of random images (per image about that
  fraction is open; the samples of a batch differ, so a batch runs the union of their
  open filters); batches ``--batches`` (1 and 8);
- ``resnet20_run``: the trained CIFAR ResNet-20 conv-gater run ``--cifar-run``
  (``vs_budget_conv_s0.pt``) on the first CIFAR-10 test images of ``--cifar-data``, with
  its own gates, batches ``--cifar-batches`` (1 and 32).

Rows record the open fraction the gates had (per image, and the batch's union).
``--profile`` instead profiles ``onnx_plain`` and ``onnx_gaternet`` at one point (the first
``--open`` fraction, the first batch, the first thread count; ``SessionOptions.enable_profiling``,
node times summed by op type and averaged over ``--repeats`` runs) into
``--out`` (default ``benchmarks/results/export_cpu_profile.json``).  Output:
JSON (``--out``, rewritten after every row, with the machine, the command and the load
average) and a table on stdout.  Timings need a quiet machine.  The grid of gates of one
channel (``export_cpu_group1.json``) was ``python -m benchmarks.export_cpu`` (into
``export_cpu.json`` then); the committed ``export_cpu.json`` is the blocked grid above.

``--quick`` checks the script end to end in a minute or two (small images, one thread,
few repeats, 50% open only); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

import gatekit
from benchmarks import cpu_timing  # the models the eager end-to-end benchmark times

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN = ROOT / "benchmarks" / "results" / "cifar10" / "vs_budget_conv_s0.pt"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _dense_above(value: str) -> float | str | None:
    """``--dense-above``: a share, ``none`` (no dense branch) or ``default``."""
    return {"none": None, "default": "default"}[value] if value in ("none", "default") \
        else float(value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", nargs="+", default=["resnet50", "resnet20_run"],
                   choices=["resnet50", "resnet20_run"])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--open", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--cifar-batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--gater-size", type=int, default=112)
    p.add_argument("--repeats", type=int, default=30, help="timed calls per variant and point")
    p.add_argument("--opset", type=int, default=gatekit.export._api.OPSET)
    p.add_argument("--dense-above", type=_dense_above,
                   default="default",
                   help="export_onnx's dense_above (default: export_onnx's, DENSE_ABOVE, or "
                        "NCHWC_DENSE_ABOVE for a blocked file; 'none': no dense branch)")
    p.add_argument("--batching", default="auto", choices=["union", "gather", "auto"],
                   help="export_onnx's batching (default: auto, as the committed grid was "
                        "measured)")
    p.add_argument("--group-size", type=int, default=1,
                   help="ResNet-50's gates switch this many adjacent channels (default 1)")
    p.add_argument("--nchwc-block", type=int, default=None, choices=gatekit.export.NCHWC_BLOCKS,
                   help="export onnx_gaternet with export_onnx's nchwc_block (the blocked "
                        "path; needs --batching union and a --group-size multiple of it)")
    p.add_argument("--onnx-dir", type=Path, default=None,
                   help="keep the exported ONNX files here and reuse those already there "
                        "(default: a temporary folder, exported afresh)")
    p.add_argument("--export-only", action="store_true",
                   help="export the files (into --onnx-dir) and time nothing")
    p.add_argument("--compare", nargs="*", default=["union", "gather"],
                   choices=["union", "gather", "auto"],
                   help="also time the GaterNet exported with these batchings (onnx_union, "
                        "onnx_gather; default %(default)s; none: --compare alone)")
    p.add_argument("--profile", action="store_true",
                   help="profile one point (see the description) instead of timing the grid")
    p.add_argument("--cifar-run", type=Path, default=DEFAULT_RUN)
    p.add_argument("--cifar-data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.is_file() else None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="default: benchmarks/results/export_cpu.json (with --quick, a file in "
                        "the temporary directory)")
    p.add_argument("--aoti", action="store_true",
                   help="also time aoti_gaternet: export_program(..., for_inductor=True) "
                        "compiled by AOTInductor (minutes per model on a small CPU)")
    p.add_argument("--quick", action="store_true",
                   help="a functional check: 64-px ResNet-50 (32-px gater), 1 thread, 50%% "
                        "open, batches 1 and 2, 3 repeats; numbers mean nothing")
    return p


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Variants are interleaved call by call: a session whose idle pool threads spin after
    # its call takes the other core from the next variant's call (plain ResNet-50 at two
    # threads: 46.8 ms interleaved with spinning sessions, 24.8 ms without, 23.8 ms alone).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_plain(plain: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """The plain backbone as ONNX, as export_onnx writes a GaterNet: dynamo, dynamic batch."""
    batch = torch.export.Dim("batch", min=1)
    x = example.expand(2, *example.shape[1:]).contiguous()
    program = torch.export.export(plain, (x,), dynamic_shapes={"x": {0: batch}}, strict=False)
    torch.onnx.export(program, (), str(path), dynamo=True, input_names=["image"],
                      output_names=["output"], opset_version=opset, verbose=False, optimize=True)


def set_open_fraction(net: gatekit.GaterNet, fraction: float, size: int, seed: int) -> None:
    """Shift the head's last bias so that each gate is open on ``fraction`` of 64 random
    images (a per-gate quantile of its logits)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(64, 3, size, size, generator=gen)
    with torch.no_grad():
        logits = torch.cat([net.gate_logits(images[i : i + 16]) for i in range(0, 64, 16)])
        net.head.fc2.bias -= torch.quantile(logits, 1.0 - fraction, dim=0)


def time_variants(fns: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median ms per call of each function, calls interleaved round by round."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def open_fractions(net: gatekit.GaterNet, x: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        gates = net.estimator(net.gate_logits(x))
    return {"per_image": gates.mean().item(), "union": (gates != 0).any(0).float().mean().item()}


def export_variants(name: str, tag: Any, plain, net, example: torch.Tensor,
                    args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The ONNX files of one model: plain, the GaterNet as asked, and (unless that is the
    union already) the GaterNet with union batching; the routes and the exportable.  With
    ``--onnx-dir``, files already there are reused (exporting ResNet-50 takes minutes)."""
    batching = args.batching or gatekit.export.BATCHING
    folder = tmp if args.onnx_dir is None else args.onnx_dir
    folder.mkdir(parents=True, exist_ok=True)
    whole = args.nchwc_block is not None and all(
        s.group_size % args.nchwc_block == 0 for s in net.sites)
    block = args.nchwc_block if name == "resnet50" or whole else None
    if args.nchwc_block is not None and block is None:
        # a trained run of single-channel gates (--cifar-run's default): no blocked path,
        # the export's defaults
        batching = gatekit.export.BATCHING
    dense_above = args.dense_above
    if dense_above == "default":
        dense_above = (gatekit.export.DENSE_ABOVE if block is None
                       else gatekit.export.NCHWC_DENSE_ABOVE)
    blocked = "" if block is None else f"_nchwc{block}"
    if name == "resnet50" and args.group_size != 1:
        name = f"{name}g{args.group_size}"  # a file name part: not the files of group size 1
    stem = f"{name}_{tag}_{example.shape[-1]}px_opset{args.opset}_dense{dense_above}"
    paths = {"onnx_plain": folder / f"{stem}_plain.onnx",
             "onnx_gaternet": folder / f"{stem}_{batching}{blocked}.onnx"}
    for mode in args.compare:
        if mode != batching or blocked:
            paths[f"onnx_{mode}"] = folder / f"{stem}_{mode}.onnx"
    if not paths["onnx_plain"].is_file():
        sibling = next(iter(sorted(folder.glob(f"{name}_*_{stem.split('_', 2)[2]}_plain.onnx"))),
                       None) if args.onnx_dir is not None and name.startswith("resnet50") else None
        if sibling is not None:  # the same seed, the same plain ResNet-50 at every --open
            import onnx

            onnx.save(onnx.load(str(sibling)), str(paths["onnx_plain"]), save_as_external_data=True,
                      location=paths["onnx_plain"].name + ".data")
        else:
            export_plain(plain, example, paths["onnx_plain"], args.opset)
    for key, mode in (("onnx_gaternet", batching), ("onnx_union", "union"),
                      ("onnx_gather", "gather"), ("onnx_auto", "auto")):
        if key in paths and not paths[key].is_file():
            suffix = blocked if key == "onnx_gaternet" else ""
            sibling = next(iter(sorted(folder.glob(
                f"{name}_*_{stem.split('_', 2)[2]}_{mode}{suffix}.onnx"))),
                None) if args.onnx_dir is not None else None
            if sibling is not None and name.startswith("resnet50"):
                rebias(sibling, paths[key], net)
            else:
                gatekit.export_onnx(net, example, paths[key], opset=args.opset,
                                    dense_above=dense_above, batching=mode,
                                    nchwc_block=block if key == "onnx_gaternet" else None)
    import onnx

    stored = {p.key: p.value for p in onnx.load(str(paths["onnx_gaternet"])).metadata_props}
    routes = [gatekit.inference.SiteRoute(**r) for r in json.loads(stored["gatekit.routes"])]
    ready = gatekit.exportable(net, example, dense_above=dense_above or 0.0,
                               batching=batching, nchwc_block=block)
    return {"paths": paths, "routes": routes, "ready": ready, "batching": batching,
            "nchwc_block": ready.nchwc_block, "dense_above": dense_above}


def rebias(source: Path, target: Path, net: gatekit.GaterNet) -> None:
    """``source`` (the same ResNet-50 GaterNet exported at another ``--open``) with the
    head's last bias set to ``net``'s: :func:`set_open_fraction` changes nothing else, so
    the graph is the one ``export_onnx`` would write, without minutes of exporting.  The
    rows' ``max_abs_diff_*`` check the result against eager."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    bias = net.head.fc2.bias.detach().numpy()
    found = [t for t in _initializers(model.graph) if "fc2" in t.name and "bias" in t.name
             and tuple(t.dims) == bias.shape]
    if len(found) != 1:
        raise SystemExit(f"{source}: expected one head fc2 bias initializer, found "
                         f"{[t.name for t in found]}; export afresh (no --onnx-dir)")
    found[0].CopyFrom(numpy_helper.from_array(bias, found[0].name))
    onnx.save(model, str(target), save_as_external_data=True,
              location=target.name + ".data")


def _initializers(graph: Any) -> list[Any]:
    """The initializers of ``graph`` and of its subgraphs (a per-image file keeps its
    weights in its ``Loop``'s body)."""
    out = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                out += _initializers(sub)
    return out


def branch_taken(ready: Any, gates: torch.Tensor, dense_above: float | None) -> dict[str, Any]:
    """The kept shares of a batch and the branch the exported graph runs for it."""
    with torch.no_grad():
        union, per_image = ready.kept_share(gates).item(), ready.per_image_share(gates).item()
        sliced = ready.sliced_share(gates).item()
    if getattr(ready, "per_image_loop", False) and gates.shape[0] > 1:
        # each image alone (an ONNX Loop): each takes its own branch
        with torch.no_grad():
            own = [ready.kept_share(gates[i : i + 1]).item() for i in range(gates.shape[0])]
        dense = sum(dense_above is not None and k > dense_above for k in own)
        return {"kept_share": union, "per_image_share": per_image, "onnx_branch": "loop",
                "own_shares": own, "images_on_dense_branch": dense}
    if dense_above is not None and sliced > dense_above:
        branch = "dense"
    elif ready.batching == "gather" or (
            ready.batching == "auto" and bool(ready.per_image_cheaper(gates))):
        branch = "gather"
    else:
        branch = "union"
    return {"kept_share": union, "per_image_share": per_image, "onnx_branch": branch}


def measure(name: str, plain, net, x_all: torch.Tensor, batches: list[int], label: Any,
            args: argparse.Namespace, tmp: Path, rows: list[dict], report: dict) -> None:
    example = x_all[:1]
    exported = export_variants(name, label, plain, net, example, args, tmp)
    if args.export_only:
        return
    routes, ready = exported["routes"], exported["ready"]
    fast = gatekit.skip_compute(net, batching="pattern")
    compiled = None
    if args.aoti:
        program = gatekit.export_program(net, example, for_inductor=True,
                                         dense_above=exported["dense_above"])
        package = torch._inductor.aoti_compile_and_package(
            program, package_path=str(tmp / f"{name}_gaternet.pt2"))
        compiled = torch._inductor.aoti_load_package(package)
    for threads in args.threads:
        torch.set_num_threads(threads)
        sessions = {k: session(p, threads) for k, p in exported["paths"].items()}
        for batch in batches:
            x = x_all[:batch].contiguous()
            feed = {"image": x.numpy()}
            with torch.no_grad():
                expected = net(x)
                checks = {k: (torch.from_numpy(sessions[k].run(None, feed)[0]) - expected)
                          .abs().max().item() for k in sessions if k != "onnx_plain"}
                variants = {k: (lambda s=s, f=feed: s.run(None, f)) for k, s in sessions.items()}
                variants["eager_skip"] = lambda x=x: fast(x)
                if compiled is not None:
                    variants["aoti_gaternet"] = lambda x=x: compiled(x)
                    aoti_check = (compiled(x) - expected).abs().max().item()
                medians = time_variants(variants, args.repeats)
                gates = net.estimator(net.gate_logits(x))
            row = {"model": name, "open": label, "batch": batch, "threads": threads,
                   "open_fraction": open_fractions(net, x),
                   "batching": exported["batching"], "nchwc_block": exported["nchwc_block"],
                   "dense_above": exported["dense_above"],
                   **branch_taken(ready, gates, exported["dense_above"]),
                   "median_ms": medians,
                   "speedup_vs_onnx_plain": {k: medians["onnx_plain"] / v for k, v in medians.items()},
                   "onnx_gaternet_vs_eager_skip": medians["eager_skip"] / medians["onnx_gaternet"],
                   "max_abs_diff_onnx_vs_eager": checks["onnx_gaternet"],
                   "output_scale": expected.abs().max().item(),
                   **{f"max_abs_diff_{k}_vs_eager": v for k, v in checks.items()
                      if k != "onnx_gaternet"},
                   **({"max_abs_diff_aoti_vs_eager": aoti_check} if compiled is not None else {}),
                   "sites": {m: sum(r.mode == m for r in routes) for m in ("sliced", "scatter", "dense")}}
            rows.append(row)
            print_row(row)
            write(args, report)


def profile(name: str, plain, net, x_all: torch.Tensor, args: argparse.Namespace, tmp: Path,
            report: dict) -> None:
    """Per op type, the mean ms per run of ``onnx_plain`` and ``onnx_gaternet`` at one point."""
    import onnxruntime as ort

    batch, threads = args.batches[0], args.threads[0]
    example, x = x_all[:1], x_all[:batch].contiguous()
    exported = export_variants(name, args.open[0], plain, net, example, args, tmp)
    feed = {"image": x.numpy()}
    out: dict[str, Any] = {}
    with torch.no_grad():
        gates = net.estimator(net.gate_logits(x))
    for key in ("onnx_plain", "onnx_gaternet"):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = str(tmp / key)
        s = ort.InferenceSession(str(exported["paths"][key]), options,
                                 providers=["CPUExecutionProvider"])
        s.run(None, feed)
        s.end_profiling()  # drop the first run (allocation, prepacking)
        options.profile_file_prefix = str(tmp / f"{key}_timed")
        s = ort.InferenceSession(str(exported["paths"][key]), options,
                                 providers=["CPUExecutionProvider"])
        s.run(None, feed)
        start = time.perf_counter()
        for _ in range(args.repeats):
            s.run(None, feed)
        wall = (time.perf_counter() - start) / args.repeats
        events = json.loads(Path(s.end_profiling()).read_text())
        by_op: dict[str, float] = {}
        runs = 0
        for e in events:
            if e.get("cat") == "Session" and e.get("name") == "model_run":
                runs += 1
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                op = e.get("args", {}).get("op_name", "?")
                by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1e3
        runs = max(runs, 1)
        # An If (Loop) node's time holds the nodes its branches (body) ran, which are
        # listed themselves.
        branches, loops = by_op.pop("If", 0.0), by_op.pop("Loop", 0.0)
        out[key] = {"ms_per_run_profiled": 1e3 * wall, "runs": runs,
                    "if_nodes_ms_per_run_incl_branch_nodes": branches / runs,
                    "loop_nodes_ms_per_run_incl_body_nodes": loops / runs,
                    "node_ms_per_run_by_op": dict(sorted(
                        ((k, v / runs) for k, v in by_op.items()), key=lambda kv: -kv[1]))}
        print(key, f"{1e3 * wall:.2f} ms per run (profiled)")
        for op, ms in list(out[key]["node_ms_per_run_by_op"].items())[:12]:
            print(f"  {op:>28} {ms:8.2f} ms")
    report["profile"] = {"model": name, "batch": batch, "threads": threads,
                         "open_fraction": open_fractions(net, x),
                         **branch_taken(exported["ready"], gates, exported["dense_above"]),
                         **out}
    write(args, report)


def print_row(row: dict) -> None:
    med, sp = row["median_ms"], row["speedup_vs_onnx_plain"]
    opened = row["open"] if isinstance(row["open"], str) else f"{row['open']:.2f}"
    print(f"{row['model']:>12} t{row['threads']} b{row['batch']:<3} open {opened:>7} "
          f"(union {row['open_fraction']['union']:.2f}, {row['onnx_branch']}): onnx plain {med['onnx_plain']:.2f} ms, "
          f"onnx gaternet {med['onnx_gaternet']:.2f} ms ({sp['onnx_gaternet']:.2f}x), "
          + "".join(f"{k[5:]} {med[k]:.2f} ms ({sp[k]:.2f}x), "
                    for k in ("onnx_union", "onnx_gather", "onnx_auto") if k in med)
          + f"eager skip "
          f"{med['eager_skip']:.2f} ms ({sp['eager_skip']:.2f}x)"
          + (f", aoti gaternet {med['aoti_gaternet']:.2f} ms ({sp['aoti_gaternet']:.2f}x)"
             if "aoti_gaternet" in med else "")
          + f"; |diff| {row['max_abs_diff_onnx_vs_eager']:.1e}")


def write(args: argparse.Namespace, report: dict) -> None:
    report["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.nchwc_block is not None and (args.batching not in ("union", "gather")
                                         or args.group_size % args.nchwc_block):
        p.error(f"--nchwc-block {args.nchwc_block} needs --batching union or gather and a "
                f"--group-size that is a multiple of it, got --batching {args.batching} "
                f"--group-size {args.group_size}")
    if args.quick:
        args.size, args.gater_size, args.threads, args.open = 64, 32, [1], [0.5]
        args.batches, args.cifar_batches, args.repeats = [1, 2], [1, 2], 3
    if args.out is None:
        stem = "export_cpu_profile" if args.profile else "export_cpu"
        args.out = (Path(tempfile.gettempdir()) / f"{stem}_quick.json" if args.quick
                    else ROOT / "benchmarks" / "results" / f"{stem}.json")
    import onnxruntime as ort

    rows: list[dict] = []
    report = {
        "question": "ONNX Runtime on the CPU: the exported GaterNet (gater included) against "
                    "the plain backbone's ONNX and eager skip_compute",
        "command": "python -m benchmarks.export_cpu " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpu": cpu_timing.cpu_model(), "torch": torch.__version__,
                    "onnxruntime": ort.__version__, "python": platform.python_version(),
                    "platform": platform.platform(), "cpus": os.cpu_count()},
        "load_average_start": os.getloadavg(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": rows,
    }
    gen = torch.Generator().manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            if model == "resnet50":
                for fraction in args.open:
                    torch.manual_seed(args.seed)
                    plain = torchvision.models.resnet50(weights=None)
                    gater = cpu_timing.resnet18_trunk(args.gater_size)
                    cpu_timing.randomise_batchnorm(plain)
                    cpu_timing.randomise_batchnorm(gater)
                    net = gatekit.gate_model(plain, gater, sites="inner",
                                             group_size=args.group_size).eval()
                    set_open_fraction(net, fraction, args.size, args.seed)
                    x = torch.randn(max(args.batches), 3, args.size, args.size, generator=gen)
                    if args.profile:
                        profile(model, plain.eval(), net, x, args, Path(tmp), report)
                        break
                    measure(model, plain.eval(), net, x, args.batches, fraction, args,
                            Path(tmp), rows, report)
            elif not args.profile:
                plain, net, config = cpu_timing.build_run(args.cifar_run)
                x = cpu_timing.test_images(config, args.cifar_data, max(args.cifar_batches), gen)
                measure(model, plain, net, x, args.cifar_batches, "trained", args, Path(tmp),
                        rows, report)
    write(args, report)


if __name__ == "__main__":
    main()
